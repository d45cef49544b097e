//! The gRPC status API (`api/proto/apiserver.proto`) that `clustermesh status` calls: this
//! cluster's name and ID, what it publishes, and every peer's mirror state.
//!
//! It serves plain gRPC on the address given with `--status-addr` (loopback by default, so
//! only processes on the same node or in the same pod reach it); it reveals counts and error
//! messages, never keys or values.

use std::net::SocketAddr;

use clustermesh_api::apiserver::apiserver_status_server::{ApiserverStatus, ApiserverStatusServer};
use clustermesh_api::apiserver::{ApiserverStatusReply, GetStatusRequest, PeerStatus};
use clustermesh_model::ExpectedCluster;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response};
use tracing::{error, info};

use crate::app::Status;
use crate::mirror::MirrorStatus;

struct StatusService {
    cluster: ExpectedCluster,
    status: watch::Receiver<Status>,
    peers: Option<watch::Receiver<MirrorStatus>>,
}

fn counts<'a>(
    m: impl IntoIterator<Item = (&'a String, &'a usize)>,
) -> std::collections::HashMap<String, u64> {
    m.into_iter().map(|(k, v)| (k.clone(), *v as u64)).collect()
}

#[tonic::async_trait]
impl ApiserverStatus for StatusService {
    async fn get_status(
        &self,
        _request: Request<GetStatusRequest>,
    ) -> Result<Response<ApiserverStatusReply>, tonic::Status> {
        let status = self.status.borrow().clone();
        let peers = self
            .peers
            .as_ref()
            .map(|p| p.borrow().clone())
            .unwrap_or_default();
        let p = &status.published;
        let published = [
            ("services", p.services),
            ("local_services", p.local_services),
            ("endpoints", p.endpoints),
            ("identities", p.identities),
            ("nodes", p.nodes),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v as u64))
        .collect();
        Ok(Response::new(ApiserverStatusReply {
            cluster_name: self.cluster.name.to_string(),
            cluster_id: u32::from(self.cluster.id.get()),
            ready: status.ready,
            published,
            problems: p.problems.clone(),
            last_error: status.last_error.unwrap_or_default(),
            peers: peers
                .into_iter()
                .map(|(name, s)| PeerStatus {
                    name,
                    connected: s.connected,
                    synced: s.synced,
                    last_error: s.last_error.unwrap_or_default(),
                    last_event_unix_millis: s.last_event_millis.unwrap_or(0),
                    mirrored: counts(&s.counts),
                    rejected: s.rejected.into_iter().collect(),
                })
                .collect(),
        }))
    }
}

/// Serves the status API on `addr` until the returned task is aborted.
pub async fn serve(
    addr: SocketAddr,
    cluster: ExpectedCluster,
    status: watch::Receiver<Status>,
    peers: Option<watch::Receiver<MirrorStatus>>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let service = ApiserverStatusServer::new(StatusService {
        cluster,
        status,
        peers,
    });
    info!(%bound, "gRPC status API listening");
    let task = tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await;
        if let Err(e) = result {
            error!(error = %e, "gRPC status API stopped");
        }
    });
    Ok((bound, task))
}
