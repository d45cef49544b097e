//! The agent's side of the tunnel: starts [`clustermesh_tunnel::Tunnel`] with this node's
//! credentials and keeps its two live views current:
//!
//! - the routing table (mesh VIP → remote backend, its node and that node's tunnel listener),
//!   translated from the programmer's [`TunnelTable`] whenever it changes;
//! - the authorization view: the connected peers with the CA bundle each one's nodes are
//!   trusted with (from the peers directory, re-read every few seconds, so connecting or
//!   disconnecting a cluster needs no restart), and the backends this cluster shares (from
//!   the control loop).

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clustermesh_model::MaxConnectedClusters;
use clustermesh_tunnel::metrics::{DirectionLabels, Side};
use clustermesh_tunnel::{
    AllowAll, AuthorizationView, CredentialPaths, Metrics, RemoteTarget, RoutingTable, TrustBundle,
    Tunnel, TunnelConfig, TunnelInputs,
};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::TunnelSettings;
use crate::mesh_vip::{TunnelTable, TunnelTarget};

/// How often the peers directory is re-read for connected clusters and their CA bundles.
const PEERS_POLL: Duration = Duration::from_secs(2);

/// How long [`AgentTunnel::shutdown`] lets open streams finish.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentTunnelError {
    #[error("cannot listen for tunnel peers on {addr}: {source} (is another agent running?)")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tunnel(#[from] clustermesh_tunnel::TunnelError),
}

/// The running tunnel and the tasks that feed it.
pub struct AgentTunnel {
    tunnel: Tunnel,
    metrics: Arc<Metrics>,
    feeders: Vec<JoinHandle<()>>,
}

/// Open tunnel streams, both directions, from the tunnel's metrics (cheap to clone and read
/// from anywhere, e.g. the status API).
#[derive(Clone)]
pub struct StreamCount(Option<Arc<Metrics>>);

impl StreamCount {
    /// For an agent without a tunnel: always 0.
    pub fn none() -> Self {
        Self(None)
    }

    pub fn get(&self) -> usize {
        let Some(metrics) = &self.0 else { return 0 };
        [Side::Inbound, Side::Outbound]
            .into_iter()
            .map(|direction| {
                metrics
                    .streams_active
                    .get_or_create(&DirectionLabels { direction })
                    .get()
            })
            .sum::<i64>()
            .max(0) as usize
    }
}

/// What the tunnel is started with, besides the listeners.
pub struct TunnelStart<'a> {
    pub settings: &'a TunnelSettings,
    pub cluster: &'a str,
    pub node: &'a str,
    pub peers_dir: Option<PathBuf>,
    pub mesh: MaxConnectedClusters,
    /// The programmer's mesh VIPs.
    pub table: watch::Receiver<TunnelTable>,
    /// Backends of the global services this cluster shares, from the control loop.
    pub shared_backends: watch::Receiver<HashSet<SocketAddr>>,
}

impl AgentTunnel {
    /// Binds the inbound listener and starts the tunnel. `outbound` is the listener already
    /// registered with the datapath's sk_lookup program.
    pub async fn start(
        start: TunnelStart<'_>,
        outbound: std::net::TcpListener,
        registry: &mut Registry,
    ) -> Result<Self, AgentTunnelError> {
        let settings = start.settings;
        let inbound = tokio::net::TcpListener::bind(settings.listen)
            .await
            .map_err(|source| AgentTunnelError::Listen {
                addr: settings.listen,
                source,
            })?;
        let outbound_error = |source| AgentTunnelError::Listen {
            addr: settings.outbound,
            source,
        };
        outbound.set_nonblocking(true).map_err(outbound_error)?;
        let outbound = tokio::net::TcpListener::from_std(outbound).map_err(outbound_error)?;
        Ok(Self::run(start, inbound, outbound, registry)?)
    }

    fn run(
        mut start: TunnelStart<'_>,
        inbound: tokio::net::TcpListener,
        outbound: tokio::net::TcpListener,
        registry: &mut Registry,
    ) -> Result<Self, clustermesh_tunnel::TunnelError> {
        let settings = start.settings;
        let config = TunnelConfig::new(
            &settings.trust_domain,
            start.cluster,
            start.node,
            CredentialPaths {
                cert: settings.cert.clone(),
                key: settings.key.clone(),
                ca: settings.ca.clone(),
            },
        );
        let metrics = Arc::new(Metrics::new(registry.sub_registry_with_prefix("tunnel")));

        // The routes and the feeder's record of what they were made from come from one read
        // of the table; a change after it wakes the feeder.
        let targets = start.table.borrow_and_update().targets.clone();
        let (routes_tx, routes) = watch::channel(routing_table(&targets));
        let connected = read_connected(start.peers_dir.as_ref(), start.mesh);
        let (authz_tx, authz) = watch::channel(AuthorizationView {
            connected: connected.clone(),
            shared_backends: start.shared_backends.borrow().clone(),
        });

        let tunnel = Tunnel::start(
            config,
            TunnelInputs {
                routes,
                authz,
                policy: Arc::new(AllowAll),
            },
            metrics.clone(),
            inbound,
            outbound,
        )?;
        info!(
            listen = %settings.listen,
            outbound = %settings.outbound,
            peers = ?connected.keys().collect::<Vec<_>>(),
            "tunnel started"
        );
        let feeders = vec![
            tokio::spawn(feed_routes(start.table, targets, routes_tx)),
            tokio::spawn(feed_authorization(
                start.peers_dir,
                start.mesh,
                start.shared_backends,
                connected,
                authz_tx,
            )),
        ];
        Ok(Self {
            tunnel,
            metrics,
            feeders,
        })
    }

    /// Open tunnel streams, both directions.
    pub fn active_streams(&self) -> usize {
        self.tunnel.active_streams()
    }

    pub fn stream_count(&self) -> StreamCount {
        StreamCount(Some(self.metrics.clone()))
    }

    /// Drains open streams for up to [`DRAIN_DEADLINE`], then stops.
    pub async fn shutdown(self) {
        for feeder in &self.feeders {
            feeder.abort();
        }
        let report = self.tunnel.shutdown(DRAIN_DEADLINE).await;
        info!(streams_cut = report.streams_cut, "tunnel stopped");
    }
}

/// The tunnel's routing table for the programmer's mesh VIPs. A VIP whose node has no live
/// agent (no tunnel address) gets no entry: its connections are closed at once, which is
/// what the client should see for a backend nobody can reach.
fn routing_table(targets: &BTreeMap<IpAddr, TunnelTarget>) -> RoutingTable {
    let mut routes = RoutingTable::new();
    for (vip, target) in targets {
        if let Some(route) = route(target) {
            routes.insert(*vip, None, route);
        }
    }
    routes
}

fn route(target: &TunnelTarget) -> Option<RemoteTarget> {
    let (Some(node), Some(tunnel)) = (&target.node, target.tunnel_address) else {
        return None;
    };
    Some(RemoteTarget {
        cluster: target.cluster.to_string(),
        node: node.clone(),
        tunnel,
        backend_ip: target.backend_ip,
        backend_port: None,
    })
}

/// Keeps the routing table equal to the programmer's tunnel table, changing only the VIPs
/// that differ: rebuilding the whole table after every pass cost more than the pass itself
/// at 20k remote backends. `last` is what the current routes were made from.
async fn feed_routes(
    mut table: watch::Receiver<TunnelTable>,
    mut last: BTreeMap<IpAddr, TunnelTarget>,
    routes: watch::Sender<RoutingTable>,
) {
    while table.changed().await.is_ok() {
        let (removed, changed) = diff_targets(&last, &table.borrow_and_update().targets);
        if removed.is_empty() && changed.is_empty() {
            continue;
        }
        routes.send_modify(|r| {
            for vip in &removed {
                r.remove(*vip, None);
            }
            for (vip, target) in &changed {
                match route(target) {
                    Some(route) => r.insert(*vip, None, route),
                    None => {
                        r.remove(*vip, None);
                    }
                }
            }
        });
        for vip in removed {
            last.remove(&vip);
        }
        last.extend(changed);
    }
}

/// VIPs in `old` but not in `new`, and entries of `new` that are not in `old` as they are.
/// One walk over both sorted maps, without allocating for unchanged entries.
fn diff_targets(
    old: &BTreeMap<IpAddr, TunnelTarget>,
    new: &BTreeMap<IpAddr, TunnelTarget>,
) -> (Vec<IpAddr>, Vec<(IpAddr, TunnelTarget)>) {
    let mut removed = Vec::new();
    let mut changed = Vec::new();
    let mut old_entries = old.iter().peekable();
    for (vip, target) in new {
        while let Some((old_vip, _)) = old_entries.peek()
            && *old_vip < vip
        {
            removed.push(**old_vip);
            old_entries.next();
        }
        match old_entries.peek() {
            Some((old_vip, old_target)) if *old_vip == vip => {
                if *old_target != target {
                    changed.push((*vip, target.clone()));
                }
                old_entries.next();
            }
            _ => changed.push((*vip, target.clone())),
        }
    }
    removed.extend(old_entries.map(|(vip, _)| *vip));
    (removed, changed)
}

/// Connected clusters and their nodes' CA bundles, from the peers directory. A peer whose
/// bundle cannot be read is left out (its nodes are refused) and the reason logged.
fn read_connected(
    dir: Option<&PathBuf>,
    mesh: MaxConnectedClusters,
) -> BTreeMap<String, TrustBundle> {
    let Some(dir) = dir else {
        return BTreeMap::new();
    };
    let peers = match clustermesh_store::read_peers(dir, mesh) {
        Ok((peers, problems)) => {
            for problem in problems {
                warn!(%problem, "peer configuration refused; its nodes are not trusted");
            }
            peers
        }
        Err(error) => {
            warn!(%error, "cannot read the peers directory; no peer is trusted");
            return BTreeMap::new();
        }
    };
    let mut connected = BTreeMap::new();
    for (name, peer) in peers {
        let Some(ca) = &peer.tunnel_ca else {
            warn!(peer = %name, "the peer file names no CA (ca or tunnel_ca); its nodes are not trusted");
            continue;
        };
        match TrustBundle::from_pem_file(ca) {
            Ok(bundle) => {
                connected.insert(name.to_string(), bundle);
            }
            Err(error) => warn!(peer = %name, %error, "its nodes are not trusted"),
        }
    }
    connected
}

async fn feed_authorization(
    peers_dir: Option<PathBuf>,
    mesh: MaxConnectedClusters,
    mut shared_backends: watch::Receiver<HashSet<SocketAddr>>,
    mut connected: BTreeMap<String, TrustBundle>,
    authz: watch::Sender<AuthorizationView>,
) {
    let mut poll = tokio::time::interval(PEERS_POLL);
    loop {
        tokio::select! {
            changed = shared_backends.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = poll.tick() => {
                let now = read_connected(peers_dir.as_ref(), mesh);
                if now == connected {
                    continue;
                }
                info!(peers = ?now.keys().collect::<Vec<_>>(), "connected peers changed");
                connected = now;
            }
        }
        authz.send_replace(AuthorizationView {
            connected: connected.clone(),
            shared_backends: shared_backends.borrow_and_update().clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clustermesh_model::ClusterName;

    use super::*;
    use crate::mesh_vip::TunnelTarget;

    #[test]
    fn only_vips_with_a_live_node_are_routed() {
        let mut table = TunnelTable::default();
        let target = |node: Option<&str>, tunnel: Option<&str>| TunnelTarget {
            cluster: ClusterName::new("west").unwrap(),
            backend_ip: "10.244.1.5".parse().unwrap(),
            ports: BTreeSet::from([8080]),
            node: node.map(str::to_owned),
            tunnel_address: tunnel.map(|t| t.parse().unwrap()),
        };
        table.targets.insert(
            "100.64.0.1".parse().unwrap(),
            target(Some("west-1"), Some("172.20.2.10:4244")),
        );
        table
            .targets
            .insert("100.64.0.2".parse().unwrap(), target(Some("west-2"), None));
        table
            .targets
            .insert("100.64.0.3".parse().unwrap(), target(None, None));
        let routes = routing_table(&table.targets);
        let resolved = routes
            .resolve("100.64.0.1:8080".parse().unwrap())
            .expect("a live node's VIP is routed");
        assert_eq!(resolved.backend, "10.244.1.5:8080".parse().unwrap());
        assert_eq!(resolved.target.node, "west-1");
        assert!(routes.resolve("100.64.0.2:8080".parse().unwrap()).is_none());
        assert!(routes.resolve("100.64.0.3:8080".parse().unwrap()).is_none());
    }
    fn target(node: &str, backend: &str) -> TunnelTarget {
        TunnelTarget {
            cluster: ClusterName::new("west").unwrap(),
            backend_ip: backend.parse().unwrap(),
            ports: BTreeSet::from([8080]),
            node: Some(node.to_owned()),
            tunnel_address: Some("172.20.2.10:4244".parse().unwrap()),
        }
    }

    fn vip(last: u8) -> IpAddr {
        IpAddr::from([100, 64, 0, last])
    }

    #[test]
    fn the_diff_names_removed_vips_and_new_or_changed_targets_only() {
        let old = BTreeMap::from([
            (vip(1), target("a", "10.0.0.1")),
            (vip(2), target("a", "10.0.0.2")),
            (vip(4), target("a", "10.0.0.4")),
            (vip(9), target("a", "10.0.0.9")),
        ]);
        let new = BTreeMap::from([
            (vip(2), target("a", "10.0.0.2")),
            (vip(3), target("a", "10.0.0.3")),
            (vip(4), target("b", "10.0.0.4")),
        ]);
        let (removed, changed) = diff_targets(&old, &new);
        assert_eq!(removed, [vip(1), vip(9)]);
        let changed: Vec<IpAddr> = changed.into_iter().map(|(v, _)| v).collect();
        assert_eq!(changed, [vip(3), vip(4)]);
        assert_eq!(diff_targets(&new, &new), (vec![], vec![]));
    }

    #[tokio::test]
    async fn the_routes_follow_the_tunnel_table() {
        let (table_tx, mut table_rx) = watch::channel(TunnelTable::default());
        let targets = table_rx.borrow_and_update().targets.clone();
        let (routes_tx, mut routes) = watch::channel(routing_table(&targets));
        let feeder = tokio::spawn(feed_routes(table_rx, targets, routes_tx));
        let resolves = |routes: &RoutingTable, v: u8| {
            routes
                .resolve(SocketAddr::new(vip(v), 8080))
                .map(|r| r.target.node.clone())
        };
        table_tx.send_modify(|t| {
            t.targets.insert(vip(1), target("a", "10.0.0.1"));
            t.targets.insert(vip(2), target("a", "10.0.0.2"));
        });
        routes.changed().await.unwrap();
        assert_eq!(
            resolves(&routes.borrow_and_update(), 2).as_deref(),
            Some("a")
        );
        table_tx.send_modify(|t| {
            t.targets.remove(&vip(1));
            t.targets.insert(vip(2), target("b", "10.0.0.2"));
        });
        routes.changed().await.unwrap();
        let now = routes.borrow_and_update();
        assert_eq!(resolves(&now, 1), None);
        assert_eq!(resolves(&now, 2).as_deref(), Some("b"));
        assert_eq!(now.len(), 1);
        drop(now);
        feeder.abort();
    }
}
