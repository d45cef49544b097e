//! The agent's status, and the HTTP endpoints that serve it on TCP and on a unix socket:
//! `/status` (JSON: peers, services with their backends, last programming pass, errors),
//! `/metrics` (Prometheus), `/healthz` and `/readyz`.
//!
//! The gRPC status API ([`crate::status_grpc`]) serves the same content.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info};

use crate::inputs::PeerSummary;
use crate::merge::{BackendLocation, ServiceName};
use crate::program::PassReport;

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("cannot listen for status on {addr}: {source} (is another agent running?)")]
    Tcp {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot listen for status on the unix socket {path}: {source}")]
    Unix {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One backend of one frontend, as the status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendStatus {
    /// `local`, or the peer cluster's name.
    pub cluster: String,
    pub addr: SocketAddr,
    pub node: Option<String>,
    /// `active` or `standby` (held back by affinity).
    pub state: &'static str,
    /// For remote backends: the mesh VIP the datapath sends to.
    pub mesh_vip: Option<std::net::IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FrontendStatus {
    pub service: ServiceName,
    pub frontend: SocketAddr,
    pub protocol: &'static str,
    pub backends: Vec<BackendStatus>,
}

impl BackendStatus {
    pub fn cluster_of(location: &BackendLocation) -> String {
        match location {
            BackendLocation::Local => "local".into(),
            BackendLocation::Remote { cluster } => cluster.to_string(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Status {
    /// The first full sync is in and the datapath was programmed from it.
    pub ready: bool,
    /// Before readiness: what the agent is waiting for.
    pub waiting_for: Option<String>,
    pub local_synced: bool,
    pub local_services: usize,
    pub peers: BTreeMap<String, PeerSummary>,
    pub frontends: Vec<FrontendStatus>,
    pub passes: u64,
    pub last_pass: Option<PassReport>,
    pub liveness_record_written: bool,
    /// Values refused by strict decoding, by reason.
    pub rejected: BTreeMap<String, u64>,
    pub last_error: Option<String>,
}

#[derive(Clone)]
struct Shared {
    status: watch::Receiver<Status>,
    registry: Arc<Mutex<Registry>>,
}

fn router(status: watch::Receiver<Status>, registry: Arc<Mutex<Registry>>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/status", get(status_json))
        .route("/metrics", get(metrics))
        .with_state(Shared { status, registry })
}

/// Serves on `addr` (and on `socket`, if given) until the returned tasks are aborted.
pub async fn serve(
    addr: SocketAddr,
    socket: Option<&Path>,
    status: watch::Receiver<Status>,
    registry: Arc<Mutex<Registry>>,
) -> Result<(SocketAddr, Vec<JoinHandle<()>>), StatusError> {
    let app = router(status, registry);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StatusError::Tcp { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| StatusError::Tcp { addr, source })?;
    info!(%bound, "status listening");
    let mut tasks = Vec::new();
    let tcp_app = app.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, tcp_app).await {
            error!(error = %e, "status server stopped");
        }
    }));
    if let Some(path) = socket {
        // A socket file left by an earlier run would make bind fail.
        let _ = std::fs::remove_file(path);
        let listener =
            tokio::net::UnixListener::bind(path).map_err(|source| StatusError::Unix {
                path: path.to_owned(),
                source,
            })?;
        info!(path = %path.display(), "status listening on unix socket");
        tasks.push(tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                error!(error = %e, "status server (unix socket) stopped");
            }
        }));
    }
    Ok((bound, tasks))
}

async fn readyz(State(shared): State<Shared>) -> (StatusCode, String) {
    let status = shared.status.borrow().clone();
    if status.ready {
        (StatusCode::OK, "ready\n".into())
    } else {
        let why = status.waiting_for.unwrap_or_else(|| "starting".into());
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
    }
}

async fn status_json(State(shared): State<Shared>) -> axum::Json<Status> {
    axum::Json(shared.status.borrow().clone())
}

async fn metrics(State(shared): State<Shared>) -> (StatusCode, String) {
    let mut text = String::new();
    let registry = shared.registry.lock().expect("metrics registry poisoned");
    match prometheus_client::encoding::text::encode(&mut text, &registry) {
        Ok(()) => (StatusCode::OK, text),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}
