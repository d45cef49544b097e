//! The receiving side: TLS connections from peer nodes, CONNECT streams authorized one by one,
//! and the dial to the local backend.

use std::sync::Arc;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::Request;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::Shared;
use crate::authz::authorize;
use crate::config::TunnelConfig;
use crate::drain::Phase;
use crate::framing::{ConnectRequest, accepted_response, refusal_response};
use crate::identity::NodeIdentity;
use crate::metrics::{
    DirectionLabels, HandshakeLabels, HandshakeRefusal, InboundLabels, InboundRefusal, Side,
};
use crate::pool::MAX_FRAME_SIZE;
use crate::relay::{Counters, RelayError, relay};
use crate::tls::classify_handshake_error;

pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.drain.reached(Phase::Draining) => return,
        };
        match accepted {
            Ok((tcp, remote)) => {
                let span = tracing::info_span!("tunnel_inbound", %remote);
                tokio::spawn(connection(tcp, shared.clone()).instrument(span));
            }
            Err(error) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(%error, "tunnel listener accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(tcp: TcpStream, shared: Arc<Shared>) {
    tcp.set_nodelay(true).ok();
    let handshake_timeout = TunnelConfig::ms(shared.config.handshake_timeout_ms);
    let refuse = |reason: HandshakeRefusal, detail: &str| {
        shared
            .metrics
            .handshakes_refused
            .get_or_create(&HandshakeLabels {
                side: Side::Inbound,
                reason,
            })
            .inc();
        tracing::warn!(?reason, %detail, "peer handshake refused");
    };
    let acceptor = TlsAcceptor::from(shared.tls.borrow().server.clone());
    let tls = match timeout(handshake_timeout, acceptor.accept(tcp)).await {
        Err(_) => return refuse(HandshakeRefusal::Timeout, "no TLS handshake in time"),
        Ok(Err(error)) => {
            let (reason, detail) = classify_handshake_error(&error);
            return refuse(reason, &detail);
        }
        Ok(Ok(tls)) => tls,
    };
    // The verifier already checked the chain against the CA of the cluster this names.
    let peer = match tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(NodeIdentity::from_certificate)
    {
        Some(Ok(peer)) => peer,
        _ => {
            return refuse(
                HandshakeRefusal::BadIdentity,
                "verified peer has no identity",
            );
        }
    };
    let h2_handshake = h2::server::Builder::new()
        .initial_window_size(shared.config.stream_window)
        .initial_connection_window_size(shared.config.connection_window)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(MAX_FRAME_SIZE as usize)
        .max_concurrent_streams(shared.config.max_concurrent_streams)
        .handshake::<_, Bytes>(tls);
    let mut conn = match timeout(handshake_timeout, h2_handshake).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(error)) => return refuse(HandshakeRefusal::Protocol, &error.to_string()),
        Err(_) => return refuse(HandshakeRefusal::Timeout, "no HTTP/2 preface in time"),
    };
    tracing::debug!(%peer, "peer connected");
    let peer = Arc::new(peer);
    let mut draining = false;
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((request, respond))) => {
                    let span = tracing::debug_span!("stream", target = %request.uri());
                    tokio::spawn(stream(request, respond, peer.clone(), shared.clone()).instrument(span));
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "peer connection failed");
                    return;
                }
                None => return,
            },
            () = shared.drain.reached(Phase::Draining), if !draining => {
                // GOAWAY: the peer opens no new streams here; open ones run on.
                draining = true;
                conn.graceful_shutdown();
            }
            () = shared.drain.reached(Phase::Stopped) => return,
        }
    }
}

async fn stream(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: Arc<NodeIdentity>,
    shared: Arc<Shared>,
) {
    let _guard = shared.drain.stream();
    let refuse = |respond: &mut SendResponse<Bytes>, reason: InboundRefusal, detail: &str| {
        shared
            .metrics
            .inbound_refused
            .get_or_create(&InboundLabels { reason })
            .inc();
        tracing::warn!(peer = %peer, ?reason, %detail, "stream refused");
        // The peer may have reset the stream already; nothing more to do then.
        let _ = respond.send_response(refusal_response(reason), true);
    };
    let connect = match ConnectRequest::from_http(&request) {
        Ok(connect) => connect,
        Err(error) => return refuse(&mut respond, InboundRefusal::BadRequest, &error.to_string()),
    };
    if shared.drain.is_draining() {
        return refuse(
            &mut respond,
            InboundRefusal::Draining,
            "this node is shutting down",
        );
    }
    let decision = authorize(
        &shared.authz.borrow(),
        &shared.config.cluster,
        shared.policy.as_ref(),
        &peer,
        &connect,
    );
    if let Err(error) = decision {
        return refuse(&mut respond, error.refusal(), &error.to_string());
    }
    let connect_timeout = TunnelConfig::ms(shared.config.connect_timeout_ms);
    let backend = match timeout(connect_timeout, TcpStream::connect(connect.target)).await {
        Ok(Ok(backend)) => backend,
        Ok(Err(error)) => {
            return refuse(
                &mut respond,
                InboundRefusal::BackendUnreachable,
                &error.to_string(),
            );
        }
        Err(_) => {
            return refuse(
                &mut respond,
                InboundRefusal::BackendUnreachable,
                &format!("no TCP connection within {connect_timeout:?}"),
            );
        }
    };
    backend.set_nodelay(true).ok();
    let send = match respond.send_response(accepted_response(), false) {
        Ok(send) => send,
        Err(error) => {
            tracing::debug!(%error, "peer went away before the stream was accepted");
            return;
        }
    };
    let labels = DirectionLabels {
        direction: Side::Inbound,
    };
    let metrics = &shared.metrics;
    metrics.streams_opened.get_or_create(&labels).inc();
    let active = metrics.streams_active.get_or_create(&labels).clone();
    active.inc();
    let to_backend = metrics.bytes_sent.get_or_create(&labels).clone();
    let unused = prometheus_client::metrics::counter::Counter::default();
    let result = relay(
        backend,
        send,
        std::future::ready(Ok::<_, RelayError>(request.into_body())),
        TunnelConfig::ms(shared.config.idle_timeout_ms),
        // Bytes from the backend back to the peer are counted by the sender as received.
        Counters {
            to_stream: &unused,
            to_tcp: &to_backend,
        },
        shared.drain.reached(Phase::Stopped),
    )
    .await;
    active.dec();
    if let Err(error) = result {
        metrics.streams_failed.get_or_create(&labels).inc();
        tracing::debug!(%error, "inbound stream ended with an error");
    }
}
