//! Wires the apiserver together: connect to the cluster's etcd, announce the cluster, keep a
//! session, run the source, publish every new view, mirror the peers.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clustermesh_model::{ClusterConfig, MaxConnectedClusters};
use clustermesh_store::{HeartbeatWriter, Session, connect};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::agent_certs::RunningIssuer;
use crate::clusterset_vips::{ClustersetVips, VipSettings, VipStatus};
use crate::config::{Config, SourceKind};
use crate::mirror::{Mirror, MirrorSettings, MirrorStatus};
use crate::publish::{PublishCounts, Publisher};
use crate::security::EtcdSecurity;
use crate::source::kubernetes::KubernetesSource;
use crate::source::{ClusterSource, ViewReceiver, manifests::ManifestsSource};

/// Views arriving within this window are published in one pass.
const COALESCE: Duration = Duration::from_millis(20);

/// What the apiserver reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The first full view of every kind is published (and its synced markers written).
    pub ready: bool,
    pub published: PublishCounts,
    pub last_error: Option<String>,
}

/// A running apiserver.
pub struct Running {
    status: watch::Receiver<Status>,
    task: JoinHandle<()>,
    source: JoinHandle<()>,
    mirror: Option<Mirror>,
    health: JoinHandle<()>,
    health_addr: std::net::SocketAddr,
    status_api: JoinHandle<()>,
    status_addr: std::net::SocketAddr,
    clusterset_vips: ClustersetVips,
    agent_certs: Option<RunningIssuer>,
    // Kept alive for as long as the apiserver runs.
    _session: Arc<Session>,
    _heartbeat: HeartbeatWriter,
}

impl Running {
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Where /healthz, /readyz and /metrics are served (the bound port, if 0 was asked).
    pub fn health_addr(&self) -> std::net::SocketAddr {
        self.health_addr
    }

    /// Where the gRPC status API is served (the bound port, if 0 was asked).
    pub fn status_addr(&self) -> std::net::SocketAddr {
        self.status_addr
    }

    /// Where the agent certificate issuer listens, if it runs (the bound port, if 0 was asked).
    pub fn agent_certs_addr(&self) -> Option<std::net::SocketAddr> {
        self.agent_certs.as_ref().map(|i| i.addr)
    }

    /// Per connected (or refused) peer: connected, synced, counts, last error.
    pub fn peers(&self) -> MirrorStatus {
        self.mirror.as_ref().map(Mirror::status).unwrap_or_default()
    }

    /// The clusterset VIPs of remote-only global services.
    pub fn clusterset_vips(&self) -> VipStatus {
        self.clusterset_vips.status()
    }

    /// Waits until the first full view is published.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let mut status = self.status.clone();
        match tokio::time::timeout(timeout, status.wait_for(|s| s.ready)).await {
            Ok(Ok(_)) => Ok(()),
            _ => bail!(
                "not ready after {timeout:?}; last error: {:?}",
                self.status.borrow().last_error
            ),
        }
    }

    /// Stops at once without revoking the lease: what it published stays until the lease
    /// expires, so a successor started within the TTL takes over without a gap. (This is also
    /// what a crash looks like to etcd.)
    pub fn stop(self) {
        self.task.abort();
        self.source.abort();
        self.health.abort();
        self.status_api.abort();
        if let Some(issuer) = self.agent_certs {
            issuer.task.abort();
        }
    }
}

/// Connects, announces the cluster and starts publishing. Returns once everything is started;
/// errors here are configuration or connectivity problems worth failing the start for.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    info!(config = %serde_json::to_string(&config).unwrap_or_default(), "starting");
    let cluster = config.cluster.clone();
    let schema = config.schema.clone();
    let mut client = connect(&config.etcd)
        .await
        .context("connecting to this cluster's etcd")?;

    let cluster_config = ClusterConfig {
        cluster: cluster.name.clone(),
        id: cluster.id,
        max_connected_clusters: cluster.mesh,
        synced_canaries: true,
        ca_fingerprint: config.ca_fingerprint.clone(),
    };
    // Not under a lease: peers must be able to identify this cluster even while it restarts.
    client
        .put(
            schema.cluster_config(&cluster.name),
            cluster_config.to_json(),
            None,
        )
        .await
        .context("writing this cluster's config to etcd")?;
    if cluster.mesh == MaxConnectedClusters::Max511 {
        info!("mesh allows 511 clusters: identities use 15 cluster-local bits");
    }

    let security = if config.etcd.tls.is_some() && config.etcd_auth {
        Some(
            EtcdSecurity::setup(client.clone(), schema.clone(), cluster.clone())
                .await
                .context("setting up etcd users, roles and authentication")?,
        )
    } else {
        if config.etcd.tls.is_none() {
            warn!(
                "etcd without TLS: no client authentication and no read-only peers; use this only for local tests"
            );
        }
        None
    };
    // Shared by the publisher (users for every node it sees) and the agent certificate
    // issuer (the user of the node it issues for, which the publisher may not have seen yet).
    let security = security.map(|s| Arc::new(tokio::sync::Mutex::new(s)));

    let session = Arc::new(
        Session::start(client.clone(), config.lease_ttl)
            .await
            .context("starting the etcd session")?,
    );
    let heartbeat = HeartbeatWriter::start(
        client.clone(),
        &session,
        schema.heartbeat(),
        cluster.clone(),
        config.heartbeat_interval,
    );
    let publisher = Publisher::start(
        client.clone(),
        &session,
        schema.clone(),
        cluster.clone(),
        config.identity_grace,
    )
    .await
    .context("starting the publisher")?;

    let source = match config.source {
        SourceKind::Manifests => {
            let dir = config
                .manifests_dir
                .clone()
                .context("--manifests-dir is required with --source manifests")?;
            ClusterSource::Manifests(ManifestsSource::new(dir))
        }
        SourceKind::Kubernetes => ClusterSource::Kubernetes(match &config.kubeconfig {
            Some(path) => KubernetesSource::from_kubeconfig(path, config.kube_context.as_deref())
                .await
                .context("--kubeconfig")?,
            None => KubernetesSource::in_cluster()
                .context("in-cluster Kubernetes config (outside a pod, give --kubeconfig)")?,
        }),
    };
    let agent_certs = match &config.agent_certs {
        Some(settings) => {
            let kube = crate::agent_certs::kube_client(
                config.kubeconfig.as_deref(),
                config.kube_context.as_deref(),
            )
            .await
            .context("the Kubernetes client of the agent certificate issuer")?;
            Some(
                crate::agent_certs::serve(settings.clone(), kube, security.clone())
                    .await
                    .context("starting the agent certificate issuer")?,
            )
        }
        None => None,
    };
    let (views_tx, views) = watch::channel(None);
    let source = tokio::spawn(async move {
        if let Err(e) = source.run(views_tx).await {
            error!(error = %e, "the cluster source stopped");
        }
    });

    let mirror = config.peers_dir.clone().map(|dir| {
        let settings = MirrorSettings {
            dir,
            schema: schema.clone(),
            local: cluster.clone(),
            cache_ttl: config.peer_cache_ttl,
        };
        Mirror::start(settings, client.clone(), session.clone())
    });

    let clusterset_vips = ClustersetVips::start(
        client.clone(),
        schema.clone(),
        cluster.clone(),
        VipSettings {
            ranges: config.clusterset_vip_range.clone(),
            grace: config.clusterset_vip_grace,
        },
    )
    .await
    .context("starting the clusterset VIP allocator")?;

    let (status_tx, status) = watch::channel(Status::default());
    // Passes also run without changes, so unused identities are released on time.
    let resync = (config.identity_grace / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let task = tokio::spawn(publish_loop(views, publisher, security, status_tx, resync));
    let (health_addr, health) = crate::http::serve(
        config.health_addr,
        status.clone(),
        mirror.as_ref().map(Mirror::subscribe),
        agent_certs.as_ref().map(|i| i.stats.clone()),
    )
    .await
    .with_context(|| format!("listening on --health-addr {}", config.health_addr))?;
    let (status_addr, status_api) = crate::status_api::serve(
        config.status_addr,
        cluster.clone(),
        status.clone(),
        mirror.as_ref().map(Mirror::subscribe),
    )
    .await
    .with_context(|| format!("listening on --status-addr {}", config.status_addr))?;
    Ok(Running {
        status,
        task,
        source,
        mirror,
        health,
        health_addr,
        status_api,
        status_addr,
        clusterset_vips,
        agent_certs,
        _session: session,
        _heartbeat: heartbeat,
    })
}

async fn publish_loop(
    mut views: ViewReceiver,
    mut publisher: Publisher,
    security: Option<Arc<tokio::sync::Mutex<EtcdSecurity>>>,
    status: watch::Sender<Status>,
    resync: Duration,
) {
    loop {
        tokio::select! {
            changed = views.changed() => {
                if changed.is_err() {
                    warn!("the cluster source ended; publishing stops");
                    return;
                }
                tokio::time::sleep(COALESCE).await;
            }
            _ = tokio::time::sleep(resync) => {}
        }
        let Some(view) = views.borrow_and_update().clone() else {
            continue;
        };
        if let Some(security) = &security {
            let nodes = view.nodes.keys().cloned().collect();
            if let Err(e) = security.lock().await.ensure_agents(&nodes).await {
                error!(error = %e, "cannot create etcd users for new nodes' agents");
            }
        }
        match publisher.publish(&view).await {
            Ok(counts) => {
                publisher.flush().await;
                let ready = publisher.is_synced();
                status.send_modify(|s| {
                    if ready && !s.ready {
                        info!("first full sync published; ready");
                    }
                    s.ready = ready;
                    s.published = counts;
                    s.last_error = None;
                });
            }
            Err(e) => {
                error!(error = %e, "publishing failed; will retry with the next change");
                status.send_modify(|s| s.last_error = Some(e.to_string()));
                // Retry the same view after a pause even if nothing changes.
                tokio::time::sleep(Duration::from_secs(1)).await;
                views.mark_changed();
            }
        }
    }
}
