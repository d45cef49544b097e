//! Health, readiness and Prometheus metrics over HTTP.
//!
//! - `/healthz`: 200 while the process runs.
//! - `/readyz`: 200 once the first full view of every kind is published (and its synced markers
//!   written), 503 with the reason before that.
//! - `/metrics`: objects published per kind, problems found in Kubernetes objects, and per peer:
//!   connected, synced, objects mirrored per kind, values refused per reason, seconds since the
//!   last mirrored change; with the agent certificate issuer, certificates issued and requests
//!   refused per reason.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info};

use std::sync::Arc;

use crate::agent_certs::IssuerStats;
use crate::app::Status;
use crate::mirror::MirrorStatus;

#[derive(Clone)]
struct Sources {
    status: watch::Receiver<Status>,
    peers: Option<watch::Receiver<MirrorStatus>>,
    agent_certs: Option<Arc<IssuerStats>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerKindLabels {
    peer: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerReasonLabels {
    peer: String,
    reason: String,
}

/// Serves on `addr` until the returned task is aborted.
pub async fn serve(
    addr: SocketAddr,
    status: watch::Receiver<Status>,
    peers: Option<watch::Receiver<MirrorStatus>>,
    agent_certs: Option<Arc<IssuerStats>>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Sources {
            status,
            peers,
            agent_certs,
        });
    info!(%bound, "health and metrics listening");
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            error!(error = %e, "health and metrics server stopped");
        }
    });
    Ok((bound, task))
}

async fn readyz(State(sources): State<Sources>) -> (StatusCode, String) {
    let status = sources.status.borrow().clone();
    if status.ready {
        (StatusCode::OK, "ready\n".into())
    } else {
        let why = status
            .last_error
            .unwrap_or_else(|| "the first full sync is not published yet".into());
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
    }
}

/// Builds the metrics from the current status at every scrape: everything exported is a
/// gauge of current state, so there is nothing to keep between scrapes.
async fn metrics(State(sources): State<Sources>) -> (StatusCode, String) {
    let status = sources.status.borrow().clone();
    let peers = sources
        .peers
        .as_ref()
        .map(|p| p.borrow().clone())
        .unwrap_or_default();
    let mut registry = Registry::with_prefix("clustermesh_apiserver");

    let ready = Gauge::<i64>::default();
    ready.set(i64::from(status.ready));
    registry.register("ready", "1 once the first full sync is published", ready);

    let published = Family::<KindLabels, Gauge>::default();
    let p = &status.published;
    for (kind, n) in [
        ("services", p.services),
        ("local_services", p.local_services),
        ("endpoints", p.endpoints),
        ("identities", p.identities),
        ("nodes", p.nodes),
    ] {
        published
            .get_or_create(&KindLabels { kind: kind.into() })
            .set(n as i64);
    }
    registry.register(
        "published_objects",
        "Objects published into this cluster's etcd",
        published,
    );

    let problems = Gauge::<i64>::default();
    problems.set(p.problems.len() as i64);
    registry.register(
        "object_problems",
        "Kubernetes objects not published as they are (see the logs)",
        problems,
    );

    let connected = Family::<PeerLabels, Gauge>::default();
    let synced = Family::<PeerLabels, Gauge>::default();
    let last_event_age = Family::<PeerLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let mirrored = Family::<PeerKindLabels, Gauge>::default();
    let rejected = Family::<PeerReasonLabels, Gauge>::default();
    let now = clustermesh_store::unix_millis_now();
    for (peer, s) in &peers {
        let labels = PeerLabels { peer: peer.clone() };
        connected.get_or_create(&labels).set(i64::from(s.connected));
        synced.get_or_create(&labels).set(i64::from(s.synced));
        if let Some(at) = s.last_event_millis {
            last_event_age
                .get_or_create(&labels)
                .set(now.saturating_sub(at) as f64 / 1000.0);
        }
        for (kind, n) in &s.counts {
            mirrored
                .get_or_create(&PeerKindLabels {
                    peer: peer.clone(),
                    kind: kind.clone(),
                })
                .set(*n as i64);
        }
        for (reason, n) in &s.rejected {
            rejected
                .get_or_create(&PeerReasonLabels {
                    peer: peer.clone(),
                    reason: reason.clone(),
                })
                .set(*n as i64);
        }
    }
    registry.register(
        "peer_connected",
        "1 while the peer's etcd is connected and watched",
        connected,
    );
    registry.register(
        "peer_synced",
        "1 once the peer's mirror is complete",
        synced,
    );
    registry.register(
        "peer_last_event_age_seconds",
        "Seconds since the last change mirrored from the peer",
        last_event_age,
    );
    registry.register(
        "peer_mirrored_objects",
        "Objects in the local copy of the peer's state",
        mirrored,
    );
    registry.register(
        "peer_rejected_values",
        "Values from the peer refused by validation since start, by reason (alert on growth)",
        rejected,
    );

    if let Some(stats) = &sources.agent_certs {
        let issued = Counter::<u64>::default();
        issued.inc_by(stats.issued());
        registry.register(
            "agent_certs_issued",
            "Agent certificates issued since start",
            issued,
        );
        let refused = Family::<ReasonLabels, Counter>::default();
        for (reason, n) in stats.refused() {
            refused
                .get_or_create(&ReasonLabels {
                    reason: reason.into(),
                })
                .inc_by(n);
        }
        registry.register(
            "agent_certs_refused",
            "Agent certificate requests refused since start, by reason (alert on growth)",
            refused,
        );
    }

    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => (StatusCode::OK, text),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
