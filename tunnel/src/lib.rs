//! The encrypted node-to-node tunnel of clustermesh.
//!
//! Connections from local pods to *mesh virtual IPs* (handed to the outbound listener by the
//! eBPF `sk_lookup` program) are carried as HTTP/2 `CONNECT <backend-ip>:<port>` streams over
//! a few pooled TLS 1.3 connections per peer node (`connections_per_peer`, default 2, taken in
//! turn), in the spirit of Istio's HBONE. The receiving
//! node authorizes each stream and dials the backend in its own cluster.
//!
//! # What the agent does
//!
//! ```ignore
//! let metrics = Arc::new(Metrics::new(&mut registry));
//! let (routes_tx, routes) = watch::channel(RoutingTable::new());
//! let (authz_tx, authz) = watch::channel(AuthorizationView::default());
//! let tunnel = Tunnel::start(
//!     config,                                   // TunnelConfig, serde, validated here
//!     TunnelInputs { routes, authz, policy: Arc::new(AllowAll) },
//!     metrics,
//!     TcpListener::bind("0.0.0.0:4244").await?, // inbound: peers connect here (mTLS)
//!     outbound_listener,                        // the socket sk_lookup hands VIP connections to
//! )?;
//! // On every change of the mesh: routes_tx.send_replace(..), authz_tx.send_replace(..).
//! tunnel.shutdown(Duration::from_secs(10)).await;
//! ```
//!
//! # Trust and authorization
//!
//! Each node has a certificate with the URI SAN
//! `spiffe://<trust-domain>/cluster/<cluster>/node/<node>` issued by its cluster's CA
//! ([`identity`]). A peer's certificate is verified against the CA bundle of the cluster it
//! names, and only the local cluster and the clusters in
//! [`AuthorizationView::connected`] are trusted ([`tls`]); anything else fails the handshake
//! with a counted reason. Certificate, key and CA files are re-read every
//! `cert_reload_interval_ms`; a new certificate is used for new connections once it validates,
//! and established connections keep running.
//!
//! Every stream is then decided by [`authz::authorize`]: the peer's cluster is connected, the
//! source-cluster header is the peer's own cluster, the target is in
//! [`AuthorizationView::shared_backends`], and the [`PolicyHook`] agrees. Refusals are answered
//! with a status and an `x-clustermesh-refused` header ([`framing`]) and counted in
//! [`Metrics`]; the tunnel is never an open proxy.
//!
//! # Robustness
//!
//! Connect, handshake and idle timeouts; HTTP/2 flow control releases capacity only once data
//! reached the socket (no unbounded buffers); half-close is passed through as END_STREAM and
//! TCP shutdown; a peer connection whose PINGs go unanswered is closed, failing its streams at
//! once, and the node is re-dialed with exponential backoff; [`Tunnel::shutdown`] drains with a
//! deadline.

pub mod authz;
pub mod config;
mod drain;
pub mod framing;
pub mod identity;
mod inbound;
pub mod metrics;
mod outbound;
mod pool;
mod relay;
pub mod routing;
pub mod testing;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use authz::{AllowAll, AuthorizationView, PolicyHook};
pub use config::{ConfigError, TunnelConfig};
pub use identity::NodeIdentity;
pub use metrics::Metrics;
pub use pool::expect_identity;
pub use routing::{RemoteTarget, RoutingTable};
pub use tls::{CredentialPaths, TlsError, TrustBundle};

use drain::{Drain, Phase};
use pool::Pool;
use tls::TlsConfigs;

/// Why the tunnel cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("node credentials: {0}")]
    Tls(#[from] TlsError),
}

/// The live views the agent feeds the tunnel with.
pub struct TunnelInputs {
    /// Mesh VIPs → remote backends, for the outbound side.
    pub routes: watch::Receiver<RoutingTable>,
    /// Connected clusters with their CA bundles, and the backends this cluster shares.
    pub authz: watch::Receiver<AuthorizationView>,
    /// Asked last, for every stream the view allows.
    pub policy: Arc<dyn PolicyHook>,
}

pub(crate) struct Shared {
    config: TunnelConfig,
    tls: watch::Receiver<Arc<TlsConfigs>>,
    routes: watch::Receiver<RoutingTable>,
    authz: watch::Receiver<AuthorizationView>,
    policy: Arc<dyn PolicyHook>,
    metrics: Arc<Metrics>,
    pool: Pool,
    drain: Drain,
}

/// A running tunnel. Dropping it without [`Tunnel::shutdown`] leaves its tasks running until
/// the runtime ends.
pub struct Tunnel {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

/// What [`Tunnel::shutdown`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Streams still open at the deadline, which were cut.
    pub streams_cut: usize,
}

impl Tunnel {
    /// Validates the configuration, loads the node credentials (failing with the file at
    /// fault) and starts serving both listeners. Must be called inside a Tokio runtime.
    pub fn start(
        config: TunnelConfig,
        inputs: TunnelInputs,
        metrics: Arc<Metrics>,
        inbound: TcpListener,
        outbound: TcpListener,
    ) -> Result<Self, TunnelError> {
        config.validate()?;
        tracing::info!(?config, "starting tunnel");
        let tls = tls::start_reloader(
            config.credentials.clone(),
            config.identity(),
            inputs.authz.clone(),
            TunnelConfig::ms(config.cert_reload_interval_ms),
            metrics.clone(),
        )?;
        let shared = Arc::new(Shared {
            pool: Pool::new(config.clone(), tls.clone(), metrics.clone()),
            config,
            tls,
            routes: inputs.routes,
            authz: inputs.authz,
            policy: inputs.policy,
            metrics,
            drain: Drain::new(),
        });
        let tasks = vec![
            tokio::spawn(inbound::serve(inbound, shared.clone())),
            tokio::spawn(outbound::serve(outbound, shared.clone())),
        ];
        Ok(Self { shared, tasks })
    }

    /// The identity this node presents now (changes when a rotated certificate is loaded).
    pub fn identity(&self) -> NodeIdentity {
        self.shared.tls.borrow().identity.clone()
    }

    /// Streams open now, both directions.
    pub fn active_streams(&self) -> usize {
        self.shared.drain.active_streams()
    }

    /// Stops accepting connections and streams, tells peers (GOAWAY), waits up to `deadline`
    /// for open streams to finish, then cuts the rest.
    pub async fn shutdown(self, deadline: Duration) -> DrainReport {
        let drain = &self.shared.drain;
        drain.set(Phase::Draining);
        let _ = tokio::time::timeout(deadline, drain.idle()).await;
        let streams_cut = drain.active_streams();
        if streams_cut > 0 {
            tracing::warn!(streams_cut, "drain deadline reached; cutting open streams");
        }
        drain.set(Phase::Stopped);
        for task in self.tasks {
            task.abort();
        }
        DrainReport { streams_cut }
    }
}
