//! Mirroring connected peers (what Cilium calls kvstoremesh): each remote cluster's published
//! state is copied into the local etcd's `cache/`, so this cluster's agents only ever watch
//! their own etcd.
//!
//! The set of peers comes from the peers directory (`peers`) and follows it without a restart:
//! a new file connects, a changed file (or rotated certificate) reconnects, a removed file
//! disconnects and deletes that peer's cache. Each peer is mirrored by its own task (`peer`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clustermesh_model::{ClusterName, ExpectedCluster, KeySchema, Kind};
use clustermesh_store::{Client, Session};
use etcd_client::DeleteOptions;
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

pub mod peer;
pub use clustermesh_store::peers;

use peer::{MirrorContext, PeerStatus};
use peers::PeerConfig;

/// How often the peers directory is re-read even without a file-system event (mounted Secrets
/// are updated through symlink swaps that some watchers miss).
const RESCAN: Duration = Duration::from_secs(10);

/// Everything the mirror reports, per peer name.
pub type MirrorStatus = BTreeMap<String, PeerStatus>;

struct RunningPeer {
    config: PeerConfig,
    task: JoinHandle<()>,
    status: watch::Receiver<PeerStatus>,
}

pub struct Mirror {
    task: JoinHandle<()>,
    status: watch::Receiver<MirrorStatus>,
}

/// What the mirror is configured with.
#[derive(Debug, Clone)]
pub struct MirrorSettings {
    /// The peers directory.
    pub dir: PathBuf,
    pub schema: KeySchema,
    /// This cluster: peers may not share its name or ID.
    pub local: ExpectedCluster,
    /// Drop a peer's copy after it has been unreachable this long.
    pub cache_ttl: Option<Duration>,
}

impl Mirror {
    pub fn start(settings: MirrorSettings, local: Client, session: Arc<Session>) -> Mirror {
        let (status_tx, status) = watch::channel(MirrorStatus::new());
        let manager = Manager {
            dir: settings.dir,
            local,
            session,
            schema: settings.schema,
            cluster: settings.local,
            cache_ttl: settings.cache_ttl,
            running: BTreeMap::new(),
            orphans_cleaned: false,
            refused: BTreeMap::new(),
            status: status_tx,
        };
        Mirror {
            task: tokio::spawn(manager.run()),
            status,
        }
    }

    pub fn status(&self) -> MirrorStatus {
        self.status.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<MirrorStatus> {
        self.status.clone()
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Manager {
    dir: PathBuf,
    local: Client,
    session: Arc<Session>,
    schema: KeySchema,
    cluster: ExpectedCluster,
    cache_ttl: Option<Duration>,
    running: BTreeMap<ClusterName, RunningPeer>,
    /// The caches of peers removed while this apiserver was down have been deleted.
    orphans_cleaned: bool,
    /// Peers whose configuration was refused, and why.
    refused: BTreeMap<String, String>,
    status: watch::Sender<MirrorStatus>,
}

impl Manager {
    async fn run(mut self) {
        let (tx, mut changes) = mpsc::channel::<()>(1);
        let watcher = notify::recommended_watcher(move |_event| {
            let _ = tx.try_send(());
        })
        .and_then(|mut w| w.watch(&self.dir, RecursiveMode::NonRecursive).map(|_| w));
        let _watcher = match watcher {
            Ok(w) => Some(w),
            Err(e) => {
                warn!(dir = %self.dir.display(), error = %e, "cannot watch the peers directory; re-reading it every {RESCAN:?}");
                None
            }
        };
        let mut publish = tokio::time::interval(Duration::from_secs(1));
        let mut next_scan = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = changes.recv() => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    while changes.try_recv().is_ok() {}
                    self.reconcile().await;
                    next_scan = tokio::time::Instant::now() + RESCAN;
                }
                _ = tokio::time::sleep_until(next_scan) => {
                    self.reconcile().await;
                    next_scan = tokio::time::Instant::now() + RESCAN;
                }
                _ = publish.tick() => self.publish_status(),
            }
        }
    }

    fn publish_status(&self) {
        let mut all: MirrorStatus = self
            .running
            .iter()
            .map(|(name, p)| (name.to_string(), p.status.borrow().clone()))
            .collect();
        for (name, reason) in &self.refused {
            all.insert(
                name.clone(),
                PeerStatus {
                    last_error: Some(reason.clone()),
                    ..PeerStatus::default()
                },
            );
        }
        self.status.send_if_modified(|s| {
            let changed = *s != all;
            *s = all;
            changed
        });
    }

    /// Makes the running mirrors match the peers directory.
    async fn reconcile(&mut self) {
        let (wanted, problems) = match peers::read_peers(&self.dir, self.cluster.mesh) {
            Ok(r) => r,
            Err(e) => {
                // Keep mirroring what we have: a briefly missing mount must not disconnect.
                error!(error = %e, "cannot read the peers directory; keeping the current peers");
                return;
            }
        };
        self.refused.clear();
        for problem in &problems {
            warn!(%problem, "peer configuration refused");
            let name = match problem {
                peers::PeerConfigError::File { path, .. } => path
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                peers::PeerConfigError::Dir { .. } => String::new(),
            };
            self.refused.insert(name, problem.to_string());
        }

        // Peers no longer configured, or configured differently: stop them.
        let stale: Vec<ClusterName> = self
            .running
            .iter()
            .filter(|(name, p)| wanted.get(*name) != Some(&p.config))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            let peer = self.running.remove(&name).expect("listed above");
            peer.task.abort();
            if !wanted.contains_key(&name) {
                info!(peer = %name, "peer removed; deleting its mirrored state");
                self.delete_cache(&name).await;
            } else {
                info!(peer = %name, "peer configuration changed; reconnecting");
            }
        }

        if !self.orphans_cleaned {
            self.delete_orphaned_caches(&wanted).await;
        }

        // New (or changed) peers: check the mesh rules, then start.
        for (name, config) in wanted {
            if self.running.contains_key(&name) {
                continue;
            }
            if let Some(reason) = self.conflict(&config) {
                warn!(peer = %name, %reason, "peer refused");
                self.refused.insert(name.to_string(), reason);
                continue;
            }
            let (status_tx, status) = watch::channel(PeerStatus::default());
            let ctx = MirrorContext {
                local: self.local.clone(),
                session: self.session.clone(),
                schema: self.schema.clone(),
                mesh: self.cluster.mesh,
                cache_ttl: self.cache_ttl,
                status: status_tx,
            };
            info!(peer = %name, id = %config.id, "connecting peer");
            let task = tokio::spawn(peer::run(config.clone(), ctx));
            self.running.insert(
                name,
                RunningPeer {
                    config,
                    task,
                    status,
                },
            );
        }
        self.publish_status();
    }

    /// Why a peer cannot join, if it cannot: its name or ID is already taken in the mesh.
    fn conflict(&self, config: &PeerConfig) -> Option<String> {
        if config.name == self.cluster.name {
            return Some(format!(
                "peer {} has this cluster's own name; every cluster in a mesh needs its own name",
                config.name
            ));
        }
        if config.id == self.cluster.id {
            return Some(format!(
                "peer {} has cluster ID {}, which is this cluster's ID; every cluster in a mesh needs its own ID",
                config.name, config.id
            ));
        }
        self.running
            .iter()
            .find(|(_, p)| p.config.id == config.id)
            .map(|(other, _)| {
                format!(
                    "peer {} has cluster ID {}, already used by peer {other}; every cluster in a mesh needs its own ID",
                    config.name, config.id
                )
            })
    }

    /// Deletes the cache of every remote that has no peer file at all (removed while this
    /// apiserver was down). A peer whose file is present but refused keeps its last good copy.
    async fn delete_orphaned_caches(&mut self, wanted: &BTreeMap<ClusterName, PeerConfig>) {
        let mut client = self.local.clone();
        let listed = clustermesh_store::list_keys(&mut client, &self.schema.cache_root()).await;
        let Ok((listed, _)) = listed else {
            return; // try again on the next pass
        };
        let mut orphans = std::collections::BTreeSet::new();
        for kv in &listed {
            let key = String::from_utf8_lossy(kv.key());
            let remote = match self.schema.parse(&key) {
                Ok(clustermesh_model::Key::Cache { remote, .. })
                | Ok(clustermesh_model::Key::CacheSynced { remote, .. }) => remote,
                _ => continue,
            };
            if !wanted.contains_key(&remote) && !self.refused.contains_key(remote.as_str()) {
                orphans.insert(remote);
            }
        }
        for remote in orphans {
            info!(peer = %remote, "deleting the mirrored state of a peer that is no longer configured");
            self.delete_cache(&remote).await;
        }
        self.orphans_cleaned = true;
    }

    async fn delete_cache(&self, name: &ClusterName) {
        let mut client = self.local.clone();
        let mut prefixes: Vec<String> = Kind::ALL
            .iter()
            .map(|k| self.schema.cache_prefix(*k, name))
            .collect();
        prefixes.push(self.schema.cache_synced_prefix(name));
        for prefix in prefixes {
            if let Err(e) = client
                .delete(prefix.as_str(), Some(DeleteOptions::new().with_prefix()))
                .await
            {
                error!(peer = %name, %prefix, error = %e, "cannot delete the mirrored state of a removed peer");
            }
        }
    }
}
