//! The service merge: from what the local etcd holds (the local cluster's global services and
//! the mirror of every connected peer) to the backends each service frontend should use.
//!
//! This is a pure function so that every rule of issue 5 is a table test:
//! - a service's backends are the local ones plus, for every connected peer that shares a
//!   service of the same namespace/name, that peer's ready backends;
//! - `affinity: local` uses only local backends while at least one is ready, else the remote
//!   ones; `remote` is the mirror image; `none` uses all;
//! - a peer whose mirror is not synced contributes what it contributed when it last was synced:
//!   nothing new, and nothing removed (the caller freezes that view, see [`PeerInput`]);
//! - a disconnected peer is simply absent from the input, so its backends are gone;
//! - an unreachable peer's mirror stays in etcd (the apiserver keeps it), so it keeps its last
//!   good backends without any rule here;
//! - a service with no local Service gets the clusterset VIP the local apiserver allocated, if
//!   any (without one there is nothing a client could dial, so it is not programmed).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use clustermesh_ebpf::{Frontend, Protocol};
use clustermesh_model::{Affinity, ClusterName, GlobalService, Protocol as ModelProtocol};
use serde::Serialize;

/// A global service's identity across clusters: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl ServiceName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn of(service: &GlobalService) -> Self {
        Self::new(&service.namespace, &service.name)
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A peer's services, keyed by namespace/name.
pub type ServiceMap = BTreeMap<ServiceName, Arc<GlobalService>>;

/// One connected peer, as its local mirror shows it. A peer that is not connected (its mirror
/// was deleted by the local apiserver) is not in the input at all.
#[derive(Debug, Clone)]
pub struct PeerInput {
    pub name: ClusterName,
    /// The mirror of the peer's services is complete (`cache/synced/<peer>/services`).
    pub synced: bool,
    /// What the mirror holds now.
    pub current: Arc<ServiceMap>,
    /// What the mirror held the last time it was synced; `None` if it never was. Used while
    /// `synced` is false, so a refilling mirror neither adds nor removes backends.
    pub last_synced: Option<Arc<ServiceMap>>,
    /// The peer's nodes whose agent is alive (its liveness record is in the mirror). Only
    /// their backends can be reached through the tunnel; a dead node's are left out.
    pub live_nodes: BTreeSet<String>,
}

impl PeerInput {
    /// The services this peer contributes under the sync rule.
    pub fn effective(&self) -> Option<&ServiceMap> {
        if self.synced {
            Some(&self.current)
        } else {
            self.last_synced.as_deref()
        }
    }
}

/// Everything the merge reads.
#[derive(Debug, Clone, Default)]
pub struct MergeInput {
    /// The local cluster's global services, shared (`state/`) and local-only (`local/`).
    pub local: ServiceMap,
    pub peers: Vec<PeerInput>,
    /// Clusterset VIPs the local apiserver allocated for remote-only global services (an IPv4
    /// and/or an IPv6 address).
    pub clusterset_vips: BTreeMap<ServiceName, Vec<IpAddr>>,
}

/// Where a chosen backend lives.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum BackendLocation {
    /// A pod of this cluster: dialed directly.
    Local,
    /// A pod of a peer: dialed through the tunnel, at a mesh VIP.
    Remote { cluster: ClusterName },
}

/// One backend address of one frontend.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct MergedBackend {
    pub location: BackendLocation,
    pub addr: SocketAddr,
    pub node: Option<String>,
    /// Used now; false for a standby backend (kept back by affinity).
    pub active: bool,
}

/// What one frontend (VIP, port, protocol) should balance over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MergedFrontend {
    pub service: ServiceName,
    /// The port's name in the Service (`""` for an unnamed port).
    pub port_name: String,
    /// Sorted: local first, then by cluster and address.
    pub backends: Vec<MergedBackend>,
}

impl MergedFrontend {
    pub fn active(&self) -> impl Iterator<Item = &MergedBackend> {
        self.backends.iter().filter(|b| b.active)
    }
}

/// The merge's output: every frontend to program.
pub type Desired = BTreeMap<Frontend, MergedFrontend>;

fn datapath_protocol(p: ModelProtocol) -> Option<Protocol> {
    match p {
        ModelProtocol::Tcp => Some(Protocol::Tcp),
        ModelProtocol::Udp => Some(Protocol::Udp),
        // The socket load balancer handles TCP and UDP only.
        ModelProtocol::Sctp => None,
    }
}

/// Computes the desired frontends from the inputs.
pub fn merge(input: &MergeInput) -> Desired {
    merge_services(input, &input.service_names())
}

/// Computes the desired frontends of the named services only: what a pass needs after a
/// change to a few services, instead of every service of every cluster.
pub fn merge_services(input: &MergeInput, names: &BTreeSet<ServiceName>) -> Desired {
    let mut desired = Desired::new();
    for name in names {
        let local = input.local.get(name).map(Arc::as_ref);
        let peers: Vec<(&PeerInput, &GlobalService)> = input
            .peers
            .iter()
            .filter_map(|peer| {
                let service = peer.effective()?.get(name)?;
                // The peer's apiserver publishes unshared services only for its own agents;
                // this check keeps us right even if one ever reaches the mirror.
                service.shared.then_some((peer, service.as_ref()))
            })
            .collect();
        merge_service(
            name,
            local,
            &peers,
            input.clusterset_vips.get(name).map(Vec::as_slice),
            &mut desired,
        );
    }
    desired
}

impl MergeInput {
    /// Every service name that the local cluster or a peer publishes.
    pub fn service_names(&self) -> BTreeSet<ServiceName> {
        let mut names: BTreeSet<ServiceName> = self.local.keys().cloned().collect();
        for peer in &self.peers {
            if let Some(services) = peer.effective() {
                names.extend(services.keys().cloned());
            }
        }
        names
    }
}

fn merge_service(
    name: &ServiceName,
    local: Option<&GlobalService>,
    peers: &[(&PeerInput, &GlobalService)],
    clusterset_vip: Option<&[IpAddr]>,
    desired: &mut Desired,
) {
    // Frontends: the local Service's cluster IPs; for a remote-only service the clusterset VIP
    // with the ports of the first peer (by name) that publishes it.
    let (frontend_ips, affinity) = match (local, peers.first()) {
        (Some(local), _) => (
            local
                .frontends
                .iter()
                .map(|f| (f.ip, &f.ports))
                .collect::<Vec<_>>(),
            local.affinity,
        ),
        (None, Some((_, first))) => {
            let Some(vips) = clusterset_vip else { return };
            let Some(ports) = first.frontends.first().map(|f| &f.ports) else {
                return;
            };
            // No local backends exist, so affinity cannot change the choice.
            (
                vips.iter().map(|vip| (*vip, ports)).collect(),
                Affinity::None,
            )
        }
        (None, None) => return,
    };

    let local_ready: Vec<_> = local
        .into_iter()
        .flat_map(|s| s.backends.iter())
        .filter(|b| b.ready)
        .collect();
    // A remote backend is usable when it is ready and its node's agent is alive to take the
    // tunnel stream.
    let remote_ready: Vec<_> = peers
        .iter()
        .flat_map(|(peer, s)| s.backends.iter().map(move |b| (*peer, b)))
        .filter(|(peer, b)| {
            b.ready
                && b.node
                    .as_ref()
                    .is_some_and(|node| peer.live_nodes.contains(node))
        })
        .map(|(peer, b)| (&peer.name, b))
        .collect();

    for (ip, ports) in frontend_ips {
        for (port_name, port) in ports {
            let Some(protocol) = datapath_protocol(port.protocol) else {
                continue;
            };
            let frontend = Frontend {
                addr: SocketAddr::new(ip, port.port),
                protocol,
            };
            // A backend serves this frontend if it has the same named port with the same
            // protocol, in the frontend's address family.
            let target = |b: &clustermesh_model::Backend| {
                let p = b.ports.get(port_name)?;
                (p.protocol == port.protocol && b.ip.is_ipv4() == ip.is_ipv4())
                    .then(|| SocketAddr::new(b.ip, p.port))
            };
            let locals: Vec<MergedBackend> = local_ready
                .iter()
                .filter_map(|b| {
                    Some(MergedBackend {
                        location: BackendLocation::Local,
                        addr: target(b)?,
                        node: b.node.clone(),
                        active: true,
                    })
                })
                .collect();
            // The tunnel carries TCP streams only: a UDP frontend is served by local backends.
            let reachable_remotes = match protocol {
                Protocol::Tcp => remote_ready.as_slice(),
                Protocol::Udp => &[],
            };
            let remotes: Vec<MergedBackend> = reachable_remotes
                .iter()
                .filter_map(|(cluster, b)| {
                    Some(MergedBackend {
                        location: BackendLocation::Remote {
                            cluster: (*cluster).clone(),
                        },
                        addr: target(b)?,
                        node: b.node.clone(),
                        active: true,
                    })
                })
                .collect();
            let (use_local, use_remote) = match affinity {
                Affinity::None => (true, true),
                Affinity::Local => (true, locals.is_empty()),
                Affinity::Remote => (remotes.is_empty(), true),
            };
            let mut backends: Vec<MergedBackend> = locals
                .into_iter()
                .map(|b| MergedBackend {
                    active: use_local,
                    ..b
                })
                .chain(remotes.into_iter().map(|b| MergedBackend {
                    active: use_remote,
                    ..b
                }))
                .collect();
            backends.sort();
            backends.dedup();
            desired.insert(
                frontend,
                MergedFrontend {
                    service: name.clone(),
                    port_name: port_name.clone(),
                    backends,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clustermesh_model::{Backend, ClusterId, L4Port, MaxConnectedClusters, Ports};

    fn cluster(name: &str) -> ClusterName {
        ClusterName::new(name).unwrap()
    }

    fn http() -> Ports {
        Ports::from([(
            "http".to_owned(),
            L4Port {
                protocol: ModelProtocol::Tcp,
                port: 80,
            },
        )])
    }

    fn target(port: u16) -> Ports {
        Ports::from([(
            "http".to_owned(),
            L4Port {
                protocol: ModelProtocol::Tcp,
                port,
            },
        )])
    }

    /// A service `demo/echo` of `cluster` with frontend `vip:80` and `(ip, ready)` backends on
    /// port 8080.
    fn service(cluster_name: &str, vip: &str, backends: &[(&str, bool)]) -> GlobalService {
        GlobalService {
            cluster: cluster(cluster_name),
            cluster_id: ClusterId::new(1, MaxConnectedClusters::Max255).unwrap(),
            namespace: "demo".into(),
            name: "echo".into(),
            frontends: vec![clustermesh_model::Frontend {
                ip: vip.parse().unwrap(),
                ports: http(),
            }],
            backends: backends
                .iter()
                .map(|(ip, ready)| Backend {
                    ip: ip.parse().unwrap(),
                    ports: target(8080),
                    node: Some("node-1".into()),
                    zone: None,
                    hostname: None,
                    ready: *ready,
                })
                .collect(),
            shared: true,
            affinity: Affinity::None,
            include_external: false,
            modified_unix_millis: None,
            headless: false,
            labels: Default::default(),
            selector: Default::default(),
        }
    }

    fn with_affinity(mut s: GlobalService, affinity: Affinity) -> GlobalService {
        s.affinity = affinity;
        s
    }

    fn map(services: Vec<GlobalService>) -> ServiceMap {
        services
            .into_iter()
            .map(|s| (ServiceName::of(&s), Arc::new(s)))
            .collect()
    }

    fn peer(name: &str, services: Vec<GlobalService>) -> PeerInput {
        let current = Arc::new(map(services));
        PeerInput {
            name: cluster(name),
            synced: true,
            last_synced: Some(current.clone()),
            current,
            live_nodes: BTreeSet::from(["node-1".to_owned()]),
        }
    }

    fn frontend(addr: &str) -> Frontend {
        Frontend {
            addr: addr.parse().unwrap(),
            protocol: Protocol::Tcp,
        }
    }

    /// The active backends of `addr` as `cluster/ip:port` strings, sorted.
    fn active(desired: &Desired, addr: &str) -> Vec<String> {
        desired
            .get(&frontend(addr))
            .unwrap_or_else(|| panic!("{addr} is not in {desired:?}"))
            .active()
            .map(describe)
            .collect()
    }

    fn standby(desired: &Desired, addr: &str) -> Vec<String> {
        desired[&frontend(addr)]
            .backends
            .iter()
            .filter(|b| !b.active)
            .map(describe)
            .collect()
    }

    fn describe(b: &MergedBackend) -> String {
        match &b.location {
            BackendLocation::Local => format!("local/{}", b.addr),
            BackendLocation::Remote { cluster } => format!("{cluster}/{}", b.addr),
        }
    }

    const VIP: &str = "10.96.0.10:80";

    #[test]
    fn local_and_every_connected_peer_are_merged() {
        let input = MergeInput {
            local: map(vec![service("west", "10.96.0.10", &[("10.1.0.1", true)])]),
            peers: vec![
                peer(
                    "east",
                    vec![service("east", "10.97.0.9", &[("10.2.0.1", true)])],
                ),
                peer(
                    "north",
                    vec![service("north", "10.98.0.9", &[("10.3.0.1", true)])],
                ),
            ],
            ..Default::default()
        };
        let desired = merge(&input);
        // The local Service's VIP is the frontend; the peers' VIPs mean nothing here.
        assert_eq!(desired.keys().collect::<Vec<_>>(), vec![&frontend(VIP)]);
        assert_eq!(
            active(&desired, VIP),
            [
                "local/10.1.0.1:8080",
                "east/10.2.0.1:8080",
                "north/10.3.0.1:8080"
            ]
        );
        assert_eq!(
            desired[&frontend(VIP)].backends[1].node.as_deref(),
            Some("node-1")
        );
    }

    #[test]
    fn backends_on_a_peer_node_without_a_live_agent_are_left_out() {
        let mut peer_service = service(
            "east",
            "10.97.0.9",
            &[("10.2.0.1", true), ("10.2.0.2", true)],
        );
        peer_service.backends[1].node = Some("node-2".into());
        let mut east = peer("east", vec![peer_service]);
        let input = |east: &PeerInput| MergeInput {
            local: map(vec![service("west", "10.96.0.10", &[("10.1.0.1", true)])]),
            peers: vec![east.clone()],
            ..Default::default()
        };
        // node-2 has no agent record: nothing could take the tunnel stream there.
        assert_eq!(
            active(&merge(&input(&east)), VIP),
            ["local/10.1.0.1:8080", "east/10.2.0.1:8080"]
        );
        east.live_nodes.insert("node-2".into());
        assert_eq!(
            active(&merge(&input(&east)), VIP),
            [
                "local/10.1.0.1:8080",
                "east/10.2.0.1:8080",
                "east/10.2.0.2:8080"
            ]
        );
        // Every peer node dead: with affinity remote, local backends take over.
        east.live_nodes.clear();
        let mut local = service("west", "10.96.0.10", &[("10.1.0.1", true)]);
        local.affinity = Affinity::Remote;
        let desired = merge(&MergeInput {
            local: map(vec![local]),
            peers: vec![east],
            ..Default::default()
        });
        assert_eq!(active(&desired, VIP), ["local/10.1.0.1:8080"]);
    }

    #[test]
    fn udp_frontends_use_local_backends_only() {
        let with_udp = |mut s: GlobalService| {
            let udp = |port| L4Port {
                protocol: ModelProtocol::Udp,
                port,
            };
            s.frontends[0].ports.insert("dns".into(), udp(53));
            for b in &mut s.backends {
                b.ports.insert("dns".into(), udp(5353));
            }
            s
        };
        let input = MergeInput {
            local: map(vec![with_udp(service(
                "west",
                "10.96.0.10",
                &[("10.1.0.1", true)],
            ))]),
            peers: vec![peer(
                "east",
                vec![with_udp(service(
                    "east",
                    "10.97.0.9",
                    &[("10.2.0.1", true)],
                ))],
            )],
            ..Default::default()
        };
        let desired = merge(&input);
        let udp = Frontend {
            addr: "10.96.0.10:53".parse().unwrap(),
            protocol: Protocol::Udp,
        };
        let udp_backends: Vec<String> = desired[&udp]
            .backends
            .iter()
            .map(|b| b.addr.to_string())
            .collect();
        assert_eq!(udp_backends, ["10.1.0.1:5353"], "the tunnel carries no UDP");
        assert_eq!(
            active(&desired, VIP),
            ["local/10.1.0.1:8080", "east/10.2.0.1:8080"],
            "TCP still merges both"
        );
    }

    #[test]
    fn a_peer_that_does_not_share_contributes_nothing() {
        let mut unshared = service("east", "10.97.0.9", &[("10.2.0.1", true)]);
        unshared.shared = false;
        let input = MergeInput {
            local: map(vec![service("west", "10.96.0.10", &[("10.1.0.1", true)])]),
            peers: vec![peer("east", vec![unshared])],
            ..Default::default()
        };
        assert_eq!(active(&merge(&input), VIP), ["local/10.1.0.1:8080"]);
    }

    #[test]
    fn not_ready_backends_are_never_used() {
        let input = MergeInput {
            local: map(vec![service(
                "west",
                "10.96.0.10",
                &[("10.1.0.1", true), ("10.1.0.2", false)],
            )]),
            peers: vec![peer(
                "east",
                vec![service("east", "10.97.0.9", &[("10.2.0.1", false)])],
            )],
            ..Default::default()
        };
        let desired = merge(&input);
        assert_eq!(active(&desired, VIP), ["local/10.1.0.1:8080"]);
        assert!(standby(&desired, VIP).is_empty());
    }

    #[test]
    fn affinity_local_uses_local_backends_while_one_is_ready() {
        let local = |backends: &[(&str, bool)]| {
            map(vec![with_affinity(
                service("west", "10.96.0.10", backends),
                Affinity::Local,
            )])
        };
        let peers = vec![peer(
            "east",
            vec![service("east", "10.97.0.9", &[("10.2.0.1", true)])],
        )];

        let one_ready = MergeInput {
            local: local(&[("10.1.0.1", true), ("10.1.0.2", false)]),
            peers: peers.clone(),
            ..Default::default()
        };
        let desired = merge(&one_ready);
        assert_eq!(active(&desired, VIP), ["local/10.1.0.1:8080"]);
        assert_eq!(standby(&desired, VIP), ["east/10.2.0.1:8080"]);

        let none_ready = MergeInput {
            local: local(&[("10.1.0.1", false)]),
            peers,
            ..Default::default()
        };
        assert_eq!(active(&merge(&none_ready), VIP), ["east/10.2.0.1:8080"]);
    }

    #[test]
    fn affinity_remote_is_the_mirror_image() {
        let local = map(vec![with_affinity(
            service("west", "10.96.0.10", &[("10.1.0.1", true)]),
            Affinity::Remote,
        )]);
        let with_remote = MergeInput {
            local: local.clone(),
            peers: vec![peer(
                "east",
                vec![service("east", "10.97.0.9", &[("10.2.0.1", true)])],
            )],
            ..Default::default()
        };
        let desired = merge(&with_remote);
        assert_eq!(active(&desired, VIP), ["east/10.2.0.1:8080"]);
        assert_eq!(standby(&desired, VIP), ["local/10.1.0.1:8080"]);

        let remote_not_ready = MergeInput {
            local,
            peers: vec![peer(
                "east",
                vec![service("east", "10.97.0.9", &[("10.2.0.1", false)])],
            )],
            ..Default::default()
        };
        assert_eq!(
            active(&merge(&remote_not_ready), VIP),
            ["local/10.1.0.1:8080"]
        );
    }

    #[test]
    fn affinity_none_uses_all() {
        let input = MergeInput {
            local: map(vec![with_affinity(
                service("west", "10.96.0.10", &[("10.1.0.1", true)]),
                Affinity::None,
            )]),
            peers: vec![peer(
                "east",
                vec![service("east", "10.97.0.9", &[("10.2.0.1", true)])],
            )],
            ..Default::default()
        };
        let desired = merge(&input);
        assert_eq!(
            active(&desired, VIP),
            ["local/10.1.0.1:8080", "east/10.2.0.1:8080"]
        );
        assert!(standby(&desired, VIP).is_empty());
    }

    #[test]
    fn a_peer_not_yet_synced_adds_nothing_and_removes_nothing() {
        let local = map(vec![service("west", "10.96.0.10", &[("10.1.0.1", true)])]);
        // Never synced: its partial mirror is ignored.
        let mut filling = peer(
            "east",
            vec![service("east", "10.97.0.9", &[("10.2.0.1", true)])],
        );
        filling.synced = false;
        filling.last_synced = None;
        let input = MergeInput {
            local: local.clone(),
            peers: vec![filling],
            ..Default::default()
        };
        assert_eq!(active(&merge(&input), VIP), ["local/10.1.0.1:8080"]);

        // Synced before, refilling now: the last synced view stands, new and removed backends
        // of the partial view are both ignored.
        let mut refilling = peer(
            "east",
            vec![service("east", "10.97.0.9", &[("10.2.0.1", true)])],
        );
        refilling.synced = false;
        refilling.current = Arc::new(map(vec![service(
            "east",
            "10.97.0.9",
            &[("10.2.0.9", true)],
        )]));
        let input = MergeInput {
            local,
            peers: vec![refilling],
            ..Default::default()
        };
        assert_eq!(
            active(&merge(&input), VIP),
            ["local/10.1.0.1:8080", "east/10.2.0.1:8080"]
        );
    }

    #[test]
    fn a_disconnected_peer_is_absent_and_its_backends_are_gone() {
        let local = map(vec![service("west", "10.96.0.10", &[("10.1.0.1", true)])]);
        let connected = MergeInput {
            local: local.clone(),
            peers: vec![peer(
                "east",
                vec![service("east", "10.97.0.9", &[("10.2.0.1", true)])],
            )],
            ..Default::default()
        };
        assert_eq!(active(&merge(&connected), VIP).len(), 2);
        let disconnected = MergeInput {
            local,
            peers: vec![],
            ..Default::default()
        };
        assert_eq!(active(&merge(&disconnected), VIP), ["local/10.1.0.1:8080"]);
    }

    #[test]
    fn an_unreachable_peer_keeps_its_last_good_backends() {
        // The apiserver keeps an unreachable peer's mirror and its synced marker: to the merge
        // it is a synced peer like any other, so nothing changes.
        let input = MergeInput {
            local: map(vec![service("west", "10.96.0.10", &[("10.1.0.1", true)])]),
            peers: vec![peer(
                "east",
                vec![service("east", "10.97.0.9", &[("10.2.0.1", true)])],
            )],
            ..Default::default()
        };
        assert_eq!(
            active(&merge(&input), VIP),
            ["local/10.1.0.1:8080", "east/10.2.0.1:8080"]
        );
    }

    #[test]
    fn a_remote_only_service_uses_the_clusterset_vip() {
        let peers = vec![peer(
            "east",
            vec![service("east", "10.97.0.9", &[("10.2.0.1", true)])],
        )];
        let without_vip = MergeInput {
            peers: peers.clone(),
            ..Default::default()
        };
        assert!(
            merge(&without_vip).is_empty(),
            "nothing to dial without a clusterset VIP"
        );

        let with_vip = MergeInput {
            peers,
            clusterset_vips: BTreeMap::from([(
                ServiceName::new("demo", "echo"),
                vec!["10.100.0.7".parse().unwrap(), "fd00::7".parse().unwrap()],
            )]),
            ..Default::default()
        };
        let desired = merge(&with_vip);
        assert_eq!(active(&desired, "10.100.0.7:80"), ["east/10.2.0.1:8080"]);
        // Both families get a frontend; the IPv6 one has no IPv6 backend to use.
        assert_eq!(desired.len(), 2);
        assert!(active(&desired, "[fd00::7]:80").is_empty());
    }

    #[test]
    fn a_local_service_without_peers_has_only_local_backends_and_sctp_is_skipped() {
        let mut s = service("west", "10.96.0.10", &[("10.1.0.1", true)]);
        s.frontends[0].ports.insert(
            "sctp".into(),
            L4Port {
                protocol: ModelProtocol::Sctp,
                port: 9,
            },
        );
        let desired = merge(&MergeInput {
            local: map(vec![s]),
            ..Default::default()
        });
        assert_eq!(desired.len(), 1);
        assert_eq!(active(&desired, VIP), ["local/10.1.0.1:8080"]);
    }

    #[test]
    fn backends_of_the_other_address_family_are_left_out() {
        let input = MergeInput {
            local: map(vec![service(
                "west",
                "10.96.0.10",
                &[("10.1.0.1", true), ("fd00::1", true)],
            )]),
            ..Default::default()
        };
        assert_eq!(active(&merge(&input), VIP), ["local/10.1.0.1:8080"]);
    }
    fn named(mut s: GlobalService, name: &str) -> GlobalService {
        s.name = name.into();
        s
    }

    #[test]
    fn merging_some_services_gives_exactly_their_part_of_the_whole_merge() {
        let input = MergeInput {
            local: map(vec![
                named(service("west", "10.96.0.10", &[("10.1.0.1", true)]), "a"),
                named(service("west", "10.96.0.11", &[("10.1.0.2", true)]), "b"),
            ]),
            peers: vec![peer(
                "east",
                vec![
                    named(service("east", "10.97.0.9", &[("10.2.0.1", true)]), "b"),
                    named(service("east", "10.97.0.8", &[("10.2.0.2", true)]), "c"),
                ],
            )],
            clusterset_vips: BTreeMap::from([(
                ServiceName::new("demo", "c"),
                vec!["10.99.0.1".parse().unwrap()],
            )]),
        };
        let whole = merge(&input);
        assert_eq!(whole.len(), 3, "{whole:?}");
        for names in [vec!["a"], vec!["b", "c"], vec!["c"], vec!["missing"]] {
            let names: BTreeSet<ServiceName> =
                names.iter().map(|n| ServiceName::new("demo", *n)).collect();
            let part = merge_services(&input, &names);
            let expected: Desired = whole
                .iter()
                .filter(|(_, m)| names.contains(&m.service))
                .map(|(f, m)| (*f, m.clone()))
                .collect();
            assert_eq!(part, expected, "{names:?}");
        }
    }
}
