//! The agent's gRPC status API (`api/proto/agent.proto`), what `clustermesh status` calls for
//! a node. Served on a unix socket (the default: only processes on the node reach it) and,
//! optionally, on TCP. It carries the same content as the JSON `/status` endpoint
//! ([`crate::status`]): counts, names, addresses and error messages, never keys or secrets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clustermesh_api::agent::agent_status_server::{AgentStatus, AgentStatusServer};
use clustermesh_api::agent::{
    AgentStatusReply, Backend, Frontend, GetStatusRequest, PassReport, PeerView,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::{Request, Response};
use tracing::{error, info};

use crate::status::{Status, StatusError};

/// Who this agent is, for the reply.
#[derive(Debug, Clone)]
pub struct NodeName {
    pub cluster: String,
    pub cluster_id: u16,
    pub node: String,
}

struct StatusService {
    node: NodeName,
    status: watch::Receiver<Status>,
    tunnel_streams: watch::Receiver<usize>,
}

/// The reply for a status snapshot (pure, so it is tested without a server).
pub fn reply(node: &NodeName, status: &Status, tunnel_streams: usize) -> AgentStatusReply {
    AgentStatusReply {
        cluster_name: node.cluster.clone(),
        cluster_id: u32::from(node.cluster_id),
        node: node.node.clone(),
        ready: status.ready,
        waiting_for: status.waiting_for.clone().unwrap_or_default(),
        local_synced: status.local_synced,
        local_services: status.local_services as u64,
        peers: status
            .peers
            .iter()
            .map(|(name, p)| PeerView {
                name: name.clone(),
                connected: p.connected,
                synced: p.synced,
                cluster_id: p.cluster_id.map(u32::from).unwrap_or(0),
                services: p.services as u64,
                agents: p.agents as u64,
            })
            .collect(),
        frontends: status
            .frontends
            .iter()
            .map(|f| Frontend {
                namespace: f.service.namespace.clone(),
                name: f.service.name.clone(),
                address: f.frontend.to_string(),
                protocol: f.protocol.to_owned(),
                backends: f
                    .backends
                    .iter()
                    .map(|b| Backend {
                        cluster: b.cluster.clone(),
                        address: b.addr.to_string(),
                        node: b.node.clone().unwrap_or_default(),
                        state: b.state.to_owned(),
                        mesh_vip: b.mesh_vip.map(|v| v.to_string()).unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect(),
        passes: status.passes,
        last_pass: status.last_pass.as_ref().map(|p| PassReport {
            upserted: p.upserted as u64,
            deleted: p.deleted as u64,
            unchanged: p.unchanged as u64,
            duration_micros: p.duration.as_micros() as u64,
            errors: p.errors.clone(),
        }),
        liveness_record_written: status.liveness_record_written,
        rejected: status
            .rejected
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        last_error: status.last_error.clone().unwrap_or_default(),
        tunnel_streams: tunnel_streams as u64,
    }
}

#[tonic::async_trait]
impl AgentStatus for StatusService {
    async fn get_status(
        &self,
        _request: Request<GetStatusRequest>,
    ) -> Result<Response<AgentStatusReply>, tonic::Status> {
        let status = self.status.borrow().clone();
        let streams = *self.tunnel_streams.borrow();
        Ok(Response::new(reply(&self.node, &status, streams)))
    }
}

/// Where the gRPC API listens.
#[derive(Debug, Clone)]
pub struct GrpcListen {
    pub socket: Option<PathBuf>,
    pub tcp: Option<SocketAddr>,
}

/// Serves the API on the unix socket and/or TCP address until the tasks are aborted.
pub async fn serve(
    listen: &GrpcListen,
    node: NodeName,
    status: watch::Receiver<Status>,
    tunnel_streams: watch::Receiver<usize>,
) -> Result<Vec<JoinHandle<()>>, StatusError> {
    let service = || {
        AgentStatusServer::new(StatusService {
            node: node.clone(),
            status: status.clone(),
            tunnel_streams: tunnel_streams.clone(),
        })
    };
    let mut tasks = Vec::new();
    if let Some(path) = &listen.socket {
        let listener = bind_unix(path)?;
        info!(path = %path.display(), "gRPC status API listening on unix socket");
        let service = service();
        tasks.push(tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await;
            if let Err(e) = result {
                error!(error = %e, "gRPC status API (unix socket) stopped");
            }
        }));
    }
    if let Some(addr) = listen.tcp {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| StatusError::Tcp { addr, source })?;
        info!(%addr, "gRPC status API listening");
        let service = service();
        tasks.push(tokio::spawn(async move {
            let result = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await;
            if let Err(e) = result {
                error!(error = %e, "gRPC status API stopped");
            }
        }));
    }
    Ok(tasks)
}

fn bind_unix(path: &Path) -> Result<tokio::net::UnixListener, StatusError> {
    let unix = |source| StatusError::Unix {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(unix)?;
    }
    // A socket file left by an earlier run would make bind fail.
    let _ = std::fs::remove_file(path);
    tokio::net::UnixListener::bind(path).map_err(unix)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::inputs::PeerSummary;
    use crate::merge::ServiceName;
    use crate::program::PassReport as Pass;
    use crate::status::{BackendStatus, FrontendStatus};

    #[tokio::test]
    async fn the_status_is_served_on_the_unix_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run").join("agent.sock");
        let status = Status {
            ready: true,
            peers: [(
                "west".to_owned(),
                PeerSummary {
                    connected: true,
                    synced: true,
                    cluster_id: Some(2),
                    services: 3,
                    agents: 2,
                },
            )]
            .into(),
            frontends: vec![FrontendStatus {
                service: ServiceName::new("demo", "echo"),
                frontend: "10.96.0.10:80".parse().unwrap(),
                protocol: "TCP",
                backends: vec![BackendStatus {
                    cluster: "west".into(),
                    addr: "10.244.1.5:8080".parse().unwrap(),
                    node: Some("west-1".into()),
                    state: "active",
                    mesh_vip: Some("100.64.0.9".parse().unwrap()),
                }],
            }],
            passes: 7,
            last_pass: Some(Pass {
                duration: Duration::from_micros(1500),
                ..Pass::default()
            }),
            ..Status::default()
        };
        let (_status_tx, status_rx) = watch::channel(status);
        let (_streams_tx, streams_rx) = watch::channel(4);
        let node = NodeName {
            cluster: "east".into(),
            cluster_id: 1,
            node: "east-1".into(),
        };
        let tasks = serve(
            &GrpcListen {
                socket: Some(socket.clone()),
                tcp: None,
            },
            node,
            status_rx,
            streams_rx,
        )
        .await
        .unwrap();

        let channel = tonic::transport::Endpoint::from_static("http://agent.local")
            .connect_with_connector(tower_service_fn(socket))
            .await
            .unwrap();
        let mut client =
            clustermesh_api::agent::agent_status_client::AgentStatusClient::new(channel);
        let reply = client
            .get_status(GetStatusRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(reply.ready);
        assert_eq!(
            (reply.cluster_name.as_str(), reply.node.as_str()),
            ("east", "east-1")
        );
        assert_eq!(reply.peers[0].name, "west");
        assert_eq!(reply.peers[0].agents, 2);
        let backend = &reply.frontends[0].backends[0];
        assert_eq!(
            (backend.cluster.as_str(), backend.mesh_vip.as_str()),
            ("west", "100.64.0.9")
        );
        assert_eq!(reply.last_pass.unwrap().duration_micros, 1500);
        assert_eq!(reply.tunnel_streams, 4);
        for task in tasks {
            task.abort();
        }
    }

    /// A connector that dials the unix socket whatever the URI says.
    fn tower_service_fn(
        socket: PathBuf,
    ) -> impl tower::Service<
        http::Uri,
        Response = hyper_util::rt::TokioIo<tokio::net::UnixStream>,
        Error = std::io::Error,
        Future = impl Send,
    > + Clone {
        tower::service_fn(move |_: http::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        })
    }
}
