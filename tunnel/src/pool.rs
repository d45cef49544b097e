//! Pooled TLS 1.3 + HTTP/2 connections to each peer node (`connections_per_peer`, taken in
//! turn by new streams), dialed on first use, re-dialed with backoff when they die, and checked
//! to be the node the routing table named.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Ping, SendStream};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, timeout};
use tokio_rustls::TlsConnector;

use crate::config::TunnelConfig;
use crate::framing::ConnectRequest;
use crate::identity::NodeIdentity;
use crate::metrics::{DialLabels, DialResult, HandshakeRefusal, Metrics, Side};
use crate::routing::RemoteTarget;
use crate::tls::{TlsConfigs, classify_handshake_error};

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to peer node {node} at {addr}: {source}")]
    Connect {
        node: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("peer node {node} at {addr} did not {what} within {timeout:?}")]
    Timeout {
        node: String,
        addr: SocketAddr,
        what: &'static str,
        timeout: Duration,
    },
    #[error("TLS handshake with peer node {node} at {addr} failed ({reason:?}): {detail}")]
    Handshake {
        node: String,
        addr: SocketAddr,
        reason: HandshakeRefusal,
        detail: String,
    },
    #[error("HTTP/2 with peer node {node} at {addr} failed: {source}")]
    H2 {
        node: String,
        addr: SocketAddr,
        source: h2::Error,
    },
    #[error(
        "peer node {node} at {addr} failed recently; next dial in {remaining:?} (is its agent running and the tunnel port reachable?)"
    )]
    BackingOff {
        node: String,
        addr: SocketAddr,
        remaining: Duration,
    },
}

/// Checks, without I/O, that the verified identity of the dialed node is the one meant: the
/// certificate chain was verified against the CA of the cluster it names, and that cluster and
/// node must be the routing table's.
pub fn expect_identity(
    found: &NodeIdentity,
    target: &RemoteTarget,
) -> Result<(), HandshakeRefusal> {
    if found.cluster == target.cluster && found.node == target.node {
        Ok(())
    } else {
        Err(HandshakeRefusal::UnexpectedPeer)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PeerKey {
    tunnel: SocketAddr,
    cluster: String,
    node: String,
    /// Which of the node's connections.
    lane: u32,
}

struct PeerConn {
    send: SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
}

#[derive(Default)]
struct PeerState {
    conn: Option<PeerConn>,
    backoff: Option<ExponentialBackoff>,
    retry_at: Option<Instant>,
}

pub(crate) struct Pool {
    config: TunnelConfig,
    tls: watch::Receiver<Arc<TlsConfigs>>,
    metrics: Arc<Metrics>,
    peers: Mutex<HashMap<PeerKey, Arc<tokio::sync::Mutex<PeerState>>>>,
    /// Counts streams opened, to spread them over a node's connections.
    next_lane: AtomicU32,
}

impl Pool {
    pub fn new(
        config: TunnelConfig,
        tls: watch::Receiver<Arc<TlsConfigs>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            config,
            tls,
            metrics,
            peers: Mutex::new(HashMap::new()),
            next_lane: AtomicU32::new(0),
        }
    }

    /// Opens a CONNECT stream to `target` over the pooled connection to its node, dialing it if
    /// there is none. Fails at once while the node is in dial backoff.
    pub async fn open(
        &self,
        target: &RemoteTarget,
        request: &ConnectRequest,
    ) -> Result<(SendStream<Bytes>, ResponseFuture), PoolError> {
        let lane = self.next_lane.fetch_add(1, Ordering::Relaxed)
            % self.config.connections_per_peer.max(1);
        let key = PeerKey {
            tunnel: target.tunnel,
            cluster: target.cluster.clone(),
            node: target.node.clone(),
            lane,
        };
        let slot = self
            .peers
            .lock()
            .expect("pool lock")
            .entry(key.clone())
            .or_default()
            .clone();
        // Two tries: a pooled connection can die between our check and our request.
        let mut last_error = None;
        for _ in 0..2 {
            let (sender, closed) = self.connection(&slot, &key, target).await?;
            let ready = sender.ready().await;
            let mut sender = match ready {
                Ok(sender) => sender,
                Err(source) => {
                    closed.store(true, Ordering::Relaxed);
                    last_error = Some(PoolError::H2 {
                        node: key.node.clone(),
                        addr: key.tunnel,
                        source,
                    });
                    continue;
                }
            };
            match sender.send_request(request.to_http(), false) {
                Ok((response, send)) => return Ok((send, response)),
                Err(source) => {
                    closed.store(true, Ordering::Relaxed);
                    last_error = Some(PoolError::H2 {
                        node: key.node.clone(),
                        addr: key.tunnel,
                        source,
                    });
                }
            }
        }
        Err(last_error.expect("the loop ran"))
    }

    async fn connection(
        &self,
        slot: &tokio::sync::Mutex<PeerState>,
        key: &PeerKey,
        target: &RemoteTarget,
    ) -> Result<(SendRequest<Bytes>, Arc<AtomicBool>), PoolError> {
        // Streams to one node wait here while it is dialed, so one dial serves them all.
        let mut state = slot.lock().await;
        if let Some(conn) = &state.conn
            && !conn.closed.load(Ordering::Relaxed)
        {
            return Ok((conn.send.clone(), conn.closed.clone()));
        }
        state.conn = None;
        if let Some(at) = state.retry_at {
            let now = Instant::now();
            if now < at {
                return Err(PoolError::BackingOff {
                    node: key.node.clone(),
                    addr: key.tunnel,
                    remaining: at - now,
                });
            }
        }
        match self.dial(key, target).await {
            Ok(conn) => {
                self.metrics
                    .peer_dials
                    .get_or_create(&DialLabels {
                        result: DialResult::Connected,
                    })
                    .inc();
                tracing::debug!(node = %key.node, addr = %key.tunnel, "connected to peer node");
                let handle = (conn.send.clone(), conn.closed.clone());
                state.conn = Some(conn);
                state.backoff = None;
                state.retry_at = None;
                Ok(handle)
            }
            Err(error) => {
                self.metrics
                    .peer_dials
                    .get_or_create(&DialLabels {
                        result: DialResult::Failed,
                    })
                    .inc();
                let max = TunnelConfig::ms(self.config.dial_backoff_max_ms);
                let delay = state
                    .backoff
                    .get_or_insert_with(|| {
                        ExponentialBuilder::default()
                            .with_min_delay(TunnelConfig::ms(self.config.dial_backoff_min_ms))
                            .with_max_delay(max)
                            .with_jitter()
                            .without_max_times()
                            .build()
                    })
                    .next()
                    .unwrap_or(max);
                state.retry_at = Some(Instant::now() + delay);
                tracing::warn!(%error, retry_in = ?delay, "dial to peer node failed");
                Err(error)
            }
        }
    }

    async fn dial(&self, key: &PeerKey, target: &RemoteTarget) -> Result<PeerConn, PoolError> {
        let connect_timeout = TunnelConfig::ms(self.config.connect_timeout_ms);
        let handshake_timeout = TunnelConfig::ms(self.config.handshake_timeout_ms);
        let timed_out = |what, timeout| PoolError::Timeout {
            node: key.node.clone(),
            addr: key.tunnel,
            what,
            timeout,
        };
        let tcp = timeout(connect_timeout, TcpStream::connect(key.tunnel))
            .await
            .map_err(|_| timed_out("accept a TCP connection", connect_timeout))?
            .map_err(|source| PoolError::Connect {
                node: key.node.clone(),
                addr: key.tunnel,
                source,
            })?;
        tcp.set_nodelay(true).ok();
        let configs = self.tls.borrow().clone();
        let connector = TlsConnector::from(configs.client.clone());
        // The name is not what is verified (the SPIFFE identity is); an IP sends no SNI.
        let name = ServerName::IpAddress(key.tunnel.ip().into());
        let handshake_error = |reason: HandshakeRefusal, detail: String| {
            self.metrics
                .handshakes_refused
                .get_or_create(&crate::metrics::HandshakeLabels {
                    side: Side::Outbound,
                    reason,
                })
                .inc();
            PoolError::Handshake {
                node: key.node.clone(),
                addr: key.tunnel,
                reason,
                detail,
            }
        };
        let tls = match timeout(handshake_timeout, connector.connect(name, tcp)).await {
            Err(_) => {
                return Err(handshake_error(
                    HandshakeRefusal::Timeout,
                    format!("no answer within {handshake_timeout:?}"),
                ));
            }
            Ok(Err(error)) => {
                let (reason, detail) = classify_handshake_error(&error);
                return Err(handshake_error(reason, detail));
            }
            Ok(Ok(tls)) => tls,
        };
        let found = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(NodeIdentity::from_certificate);
        match found {
            Some(Ok(found)) => {
                if let Err(reason) = expect_identity(&found, target) {
                    return Err(handshake_error(
                        reason,
                        format!(
                            "expected node {} of cluster {}, found {found}",
                            target.node, target.cluster
                        ),
                    ));
                }
            }
            _ => {
                return Err(handshake_error(
                    HandshakeRefusal::BadIdentity,
                    "verified peer has no identity".to_owned(),
                ));
            }
        }
        let h2_handshake = h2::client::Builder::new()
            .initial_window_size(self.config.stream_window)
            .initial_connection_window_size(self.config.connection_window)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_send_buffer_size(MAX_FRAME_SIZE as usize)
            .handshake::<_, Bytes>(tls);
        let (send, mut connection) = timeout(handshake_timeout, h2_handshake)
            .await
            .map_err(|_| timed_out("complete the HTTP/2 handshake", handshake_timeout))?
            .map_err(|source| PoolError::H2 {
                node: key.node.clone(),
                addr: key.tunnel,
                source,
            })?;
        let closed = Arc::new(AtomicBool::new(false));
        let ping = connection.ping_pong();
        let keepalive = TunnelConfig::ms(self.config.keepalive_interval_ms);
        let task_closed = closed.clone();
        let node = key.node.clone();
        tokio::spawn(async move {
            // Ending this task drops the connection, which fails every stream on it at once.
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%node, %error, "peer connection ended");
                    }
                }
                () = keep_alive(ping, keepalive) => {
                    tracing::warn!(%node, "peer node stopped answering pings; closing its connection");
                }
            }
            task_closed.store(true, Ordering::Relaxed);
        });
        Ok(PeerConn { send, closed })
    }
}

/// Largest HTTP/2 frame we accept and send: fewer, larger frames cost less per byte.
pub(crate) const MAX_FRAME_SIZE: u32 = 256 * 1024;

/// Returns when a PING goes unanswered for an interval.
async fn keep_alive(ping: Option<h2::PingPong>, interval: Duration) {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match timeout(interval, ping.ping(Ping::opaque())).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
    }
}
