//! The sending side: local connections to mesh VIPs (handed over by the sk_lookup program),
//! looked up by their local address and carried to the peer node that hosts the backend.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::Shared;
use crate::config::TunnelConfig;
use crate::drain::Phase;
use crate::framing::{ConnectRequest, response_refusal};
use crate::metrics::{DirectionLabels, OutboundLabels, OutboundRefusal, Side};
use crate::relay::{Counters, RelayError, relay};

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.drain.reached(Phase::Draining) => return,
        };
        match accepted {
            Ok((tcp, client)) => {
                let span = tracing::debug_span!("tunnel_outbound", %client);
                tokio::spawn(connection(tcp, shared.clone()).instrument(span));
            }
            Err(error) => {
                tracing::warn!(%error, "outbound listener accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(tcp: TcpStream, shared: Arc<Shared>) {
    let _guard = shared.drain.stream();
    let refuse = |reason: OutboundRefusal, detail: &str| {
        shared
            .metrics
            .outbound_refused
            .get_or_create(&OutboundLabels { reason })
            .inc();
        tracing::warn!(?reason, %detail, "local connection closed instead of tunneled");
    };
    // With sk_lookup the local address is the mesh VIP the client dialed.
    let (vip, client) = match (tcp.local_addr(), tcp.peer_addr()) {
        (Ok(vip), Ok(client)) => (vip, client),
        _ => return,
    };
    tcp.set_nodelay(true).ok();
    let (target, request) = {
        let routes = shared.routes.borrow();
        let Some(resolved) = routes.resolve(vip) else {
            drop(routes);
            return refuse(OutboundRefusal::UnknownVip, &format!("no route for {vip}"));
        };
        let request = ConnectRequest {
            target: resolved.backend,
            source_cluster: shared.config.cluster.clone(),
            source_node: shared.config.node.clone(),
            source_identity: routes.source_identity(client.ip()).unwrap_or(0),
        };
        (resolved.target.clone(), request)
    };
    let (send, response) = match shared.pool.open(&target, &request).await {
        Ok(opened) => opened,
        Err(error) => return refuse(OutboundRefusal::PeerUnavailable, &error.to_string()),
    };
    let labels = DirectionLabels {
        direction: Side::Outbound,
    };
    let metrics = &shared.metrics;
    let to_peer = metrics.bytes_sent.get_or_create(&labels).clone();
    let unused = prometheus_client::metrics::counter::Counter::default();
    let active = metrics.streams_active.get_or_create(&labels).clone();
    active.inc();
    let accepted = async {
        let response = response.await?;
        if let Some(refusal) = response_refusal(&response) {
            return Err(RelayError::Refused(refusal));
        }
        metrics.streams_opened.get_or_create(&labels).inc();
        Ok(response.into_body())
    };
    let result = relay(
        tcp,
        send,
        accepted,
        TunnelConfig::ms(shared.config.idle_timeout_ms),
        Counters {
            to_stream: &to_peer,
            to_tcp: &unused,
        },
        shared.drain.reached(Phase::Stopped),
    )
    .await;
    active.dec();
    match result {
        Ok(()) => {}
        Err(RelayError::Refused(refusal)) => {
            refuse(
                OutboundRefusal::RefusedByPeer,
                &format!("{} refused {}: {refusal}", target.node, request.target),
            );
        }
        Err(error) => {
            metrics.streams_failed.get_or_create(&labels).inc();
            tracing::debug!(%error, "outbound stream ended with an error");
        }
    }
}
