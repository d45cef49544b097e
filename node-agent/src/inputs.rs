//! What the agent reads from its own cluster's etcd, and nothing else: the local cluster's
//! global services (shared under `state/`, local-only under `local/`), the local synced marker,
//! the clusterset VIPs the local apiserver allocated (`local/clusterset-vips/`), and the
//! `cache/` mirror of every connected peer (services, agent records, synced markers)
//! that the local apiserver maintains.
//!
//! Every value is decoded strictly (`model::decode_state`) for the cluster it claims to be
//! from; a value that fails is counted by reason and never used. A peer's cluster ID is taken
//! from its mirror's synced markers (written by the local apiserver, which checked the peer's
//! ID against its peer configuration); until a marker says who the peer is, its values wait
//! undecoded — which is also the merge rule: a peer that never synced contributes nothing.
//!
//! A peer is *connected* while anything of it is in the mirror; the apiserver deletes the whole
//! mirror when it disconnects a peer, so the peer then disappears from the input.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use clustermesh_model::{
    Agent, ClusterId, ClusterName, ClustersetVip, ExpectedCluster, GlobalService, Key, KeySchema,
    Kind, Limits, MaxConnectedClusters, ObjectName, StateValue, decode_clusterset_vip,
    decode_marker, decode_state,
};
use clustermesh_store::{Client, WatchEvent, WatchReader};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::merge::{MergeInput, PeerInput, ServiceMap, ServiceName};

/// Which watch an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Source {
    /// `state/services/v1/<local>/`
    SharedServices,
    /// `local/services/v1/<local>/`
    LocalOnlyServices,
    /// `synced/<local>/services`
    LocalSynced,
    /// `cache/`: every peer's mirror.
    Cache,
    /// `local/clusterset-vips/v1/<local>/`: VIPs of remote-only services.
    ClustersetVips,
}

impl Source {
    pub const ALL: [Source; 5] = [
        Source::SharedServices,
        Source::LocalOnlyServices,
        Source::LocalSynced,
        Source::Cache,
        Source::ClustersetVips,
    ];

    fn prefix(self, schema: &KeySchema, local: &ClusterName) -> String {
        match self {
            Source::SharedServices => schema.state_prefix(Kind::Services, local),
            Source::LocalOnlyServices => schema.local_prefix(Kind::Services, local),
            Source::LocalSynced => schema.synced(local, Kind::Services),
            Source::Cache => schema.cache_root(),
            Source::ClustersetVips => schema.clusterset_vip_prefix(local),
        }
    }
}

/// The watch readers behind the inputs; dropping this stops them.
pub struct Watches {
    _readers: Vec<WatchReader>,
}

/// Starts one watch reader per source; their events arrive, tagged, on the returned channel.
pub fn watch(
    client: &Client,
    schema: &KeySchema,
    local: &ClusterName,
) -> (Watches, mpsc::Receiver<(Source, WatchEvent)>) {
    let (tx, rx) = mpsc::channel(4096);
    let mut readers = Vec::new();
    for source in Source::ALL {
        let (reader, mut events) =
            WatchReader::spawn(client.clone(), source.prefix(schema, local), 1024);
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if tx.send((source, event)).await.is_err() {
                    return;
                }
            }
        });
        readers.push(reader);
    }
    (Watches { _readers: readers }, rx)
}

/// One peer's mirror as far as the agent uses it.
#[derive(Debug, Default)]
struct PeerState {
    id: Option<ClusterId>,
    /// Values that arrived before the peer's ID was known, by key.
    undecoded: BTreeMap<String, Vec<u8>>,
    /// Service keys by etcd key, so a delete (which carries only the key) finds its service.
    services: Arc<ServiceMap>,
    agents: BTreeMap<String, Agent>,
    /// Kinds whose mirror is complete.
    markers: BTreeSet<Kind>,
    /// The services when the mirror was last synced, taken when it stops being synced. Not
    /// kept while synced: holding a second reference would make every update copy the map.
    last_synced: Option<Arc<ServiceMap>>,
}

impl PeerState {
    fn is_empty(&self) -> bool {
        self.undecoded.is_empty()
            && self.services.is_empty()
            && self.agents.is_empty()
            && self.markers.is_empty()
    }

    fn synced(&self) -> bool {
        self.id.is_some() && self.markers.contains(&Kind::Services)
    }
}

/// Per peer, for status output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerSummary {
    pub connected: bool,
    pub synced: bool,
    pub cluster_id: Option<u16>,
    pub services: usize,
    pub agents: usize,
}

/// What changed since the last pass took the changes: the services to merge again, or
/// everything when something all services depend on changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// A first list completed, a sync marker or a peer's node agents changed, a peer came or
    /// went: merge every service.
    pub everything: bool,
    /// Services (local, a peer's, or a clusterset VIP's) whose inputs changed.
    pub services: BTreeSet<ServiceName>,
    /// A local service changed: the set of backends the tunnel may dial is recomputed.
    pub local: bool,
    /// The change stamps (publishing apiserver's clock, ms) of services updated by watch
    /// events after the first list: the propagation-lag metric measures from them.
    pub stamps: Vec<u64>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        !self.everything && self.services.is_empty() && !self.local && self.stamps.is_empty()
    }
}

/// Everything read so far.
#[derive(Debug)]
pub struct Inputs {
    schema: KeySchema,
    local: ExpectedCluster,
    limits: Limits,
    /// Local services by etcd key (shared and local-only keys differ).
    local_services: BTreeMap<String, Arc<GlobalService>>,
    local_synced: bool,
    /// Clusterset VIPs by etcd key.
    clusterset_vips: BTreeMap<String, ClustersetVip>,
    peers: BTreeMap<ClusterName, PeerState>,
    initialized: BTreeSet<Source>,
    /// Values refused, by `DecodeError::reason()`.
    pub rejected: BTreeMap<&'static str, u64>,
    pub last_rejection: Option<String>,
    changes: Changes,
    /// The event being applied came from a watch after the first list.
    stamp_from_watch: bool,
}

impl Inputs {
    pub fn new(schema: KeySchema, local: ExpectedCluster) -> Self {
        Self {
            schema,
            local,
            limits: Limits::default(),
            local_services: BTreeMap::new(),
            local_synced: false,
            clusterset_vips: BTreeMap::new(),
            peers: BTreeMap::new(),
            initialized: BTreeSet::new(),
            rejected: BTreeMap::new(),
            last_rejection: None,
            // The first pass merges everything.
            changes: Changes {
                everything: true,
                ..Changes::default()
            },
            stamp_from_watch: false,
        }
    }

    /// Every watch has delivered its first full list.
    pub fn listed(&self) -> bool {
        Source::ALL.iter().all(|s| self.initialized.contains(s))
    }

    /// The local apiserver's first full sync of services is in etcd.
    pub fn local_synced(&self) -> bool {
        self.local_synced
    }

    /// Peers whose mirror exists, and whether each is synced.
    pub fn peers(&self) -> BTreeMap<ClusterName, PeerSummary> {
        self.peers
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    PeerSummary {
                        connected: true,
                        synced: p.synced(),
                        cluster_id: p.id.map(ClusterId::get),
                        services: p.services.len(),
                        agents: p.agents.len(),
                    },
                )
            })
            .collect()
    }

    pub fn local_service_count(&self) -> usize {
        self.local_services.len()
    }

    /// Every `ip:port` of a backend of a local global service that this cluster shares with
    /// its peers: the only targets the tunnel's receiving side may dial.
    pub fn shared_backends(&self) -> HashSet<SocketAddr> {
        let shared_prefix = Source::SharedServices.prefix(&self.schema, &self.local.name);
        self.local_services
            .iter()
            .filter(|(key, service)| key.starts_with(&shared_prefix) && service.shared)
            .flat_map(|(_, service)| service.backends.iter())
            .filter(|backend| backend.ready)
            .flat_map(|backend| {
                backend
                    .ports
                    .values()
                    .map(move |port| SocketAddr::new(backend.ip, port.port))
            })
            .collect()
    }

    /// The tunnel listener of `node` in `cluster`, if that node's agent is alive there.
    pub fn tunnel_address(&self, cluster: &ClusterName, node: &str) -> Option<SocketAddr> {
        self.peers
            .get(cluster)?
            .agents
            .get(node)
            .map(|a| a.tunnel_address)
    }

    /// What changed since the last call.
    pub fn take_changes(&mut self) -> Changes {
        std::mem::take(&mut self.changes)
    }

    /// Applies one watch event. Returns whether anything the merge reads may have changed.
    pub fn apply(&mut self, source: Source, event: WatchEvent) -> bool {
        match event {
            WatchEvent::Init => false,
            WatchEvent::InitDone => {
                self.initialized.insert(source);
                self.changes.everything = true;
                true
            }
            WatchEvent::InitApply(entry) => self.upsert(source, &entry.key, entry.value),
            WatchEvent::Upsert(entry) => {
                // A first list brings services changed long ago: only later updates count
                // for the propagation lag.
                self.stamp_from_watch = true;
                let changed = self.upsert(source, &entry.key, entry.value);
                self.stamp_from_watch = false;
                changed
            }
            WatchEvent::Delete { key } => self.delete(source, &key),
        }
    }

    fn note_stamp(&mut self, service: &GlobalService) {
        if self.stamp_from_watch
            && let Some(stamp) = service.modified_unix_millis
        {
            self.changes.stamps.push(stamp);
        }
    }

    fn reject(&mut self, key: &str, reason: &'static str, error: impl std::fmt::Display) {
        tracing::warn!(%key, %error, "refused a value from the local etcd; not used");
        *self.rejected.entry(reason).or_default() += 1;
        self.last_rejection = Some(format!("{key}: {error}"));
    }

    fn upsert(&mut self, source: Source, key: &str, value: Vec<u8>) -> bool {
        match source {
            Source::SharedServices | Source::LocalOnlyServices => {
                match decode_state(&self.schema, key, &value, &self.local, &self.limits) {
                    Ok((_, StateValue::Service(service))) => {
                        self.note_stamp(&service);
                        self.changes.services.insert(ServiceName::of(&service));
                        self.changes.local = true;
                        self.local_services
                            .insert(key.to_owned(), Arc::new(service));
                        true
                    }
                    Ok(_) => false,
                    Err(e) => {
                        self.reject(key, e.reason(), &e);
                        false
                    }
                }
            }
            Source::LocalSynced => match decode_marker(&value, &self.local, &self.limits) {
                Ok(_) => {
                    let was = self.local_synced;
                    self.local_synced = true;
                    self.changes.everything |= !was;
                    !was
                }
                Err(e) => {
                    self.reject(key, e.reason(), &e);
                    false
                }
            },
            Source::Cache => self.upsert_cache(key, value),
            Source::ClustersetVips => {
                match decode_clusterset_vip(&self.schema, key, &value, &self.local, &self.limits) {
                    Ok(vip) => {
                        self.changes
                            .services
                            .insert(ServiceName::new(&vip.namespace, &vip.name));
                        self.clusterset_vips.insert(key.to_owned(), vip);
                        true
                    }
                    Err(e) => {
                        self.reject(key, e.reason(), &e);
                        false
                    }
                }
            }
        }
    }

    fn upsert_cache(&mut self, key: &str, value: Vec<u8>) -> bool {
        let parsed = match self.schema.parse(key) {
            Ok(k) => k,
            Err(e) => {
                self.reject(key, "key", &e);
                return false;
            }
        };
        match parsed {
            Key::CacheSynced { remote, kind } => self.peer_marker(remote, kind, key, &value),
            Key::Cache { remote, object } => {
                if !matches!(object.kind(), Kind::Services | Kind::Agents) {
                    // Endpoints, identities and node facts are not needed by the merge.
                    return false;
                }
                if remote == self.local.name {
                    self.reject(key, "unexpected_cluster", "a mirror of the local cluster");
                    return false;
                }
                let peer = self.peers.entry(remote).or_default();
                if peer.id.is_none() {
                    peer.undecoded.insert(key.to_owned(), value);
                    return false;
                }
                self.decode_peer_value(key, &value)
            }
            _ => false,
        }
    }

    /// Decodes a mirrored value of a peer whose ID is known and stores it.
    fn decode_peer_value(&mut self, key: &str, value: &[u8]) -> bool {
        let Ok(Key::Cache { remote, .. }) = self.schema.parse(key) else {
            return false;
        };
        let Some(id) = self.peers.get(&remote).and_then(|p| p.id) else {
            return false;
        };
        let expected = ExpectedCluster {
            name: remote.clone(),
            id,
            mesh: self.local.mesh,
        };
        let decoded = decode_state(&self.schema, key, value, &expected, &self.limits);
        match decoded {
            Ok((_, StateValue::Service(service))) => {
                self.note_stamp(&service);
                let peer = self.peers.get_mut(&remote).expect("peer exists");
                let name = ServiceName::of(&service);
                Arc::make_mut(&mut peer.services).insert(name.clone(), Arc::new(service));
                self.changes.services.insert(name);
                true
            }
            Ok((_, StateValue::Agent(agent))) => {
                let peer = self.peers.get_mut(&remote).expect("peer exists");
                if peer.agents.get(&agent.node) == Some(&agent) {
                    return false; // rewritten as it was
                }
                peer.agents.insert(agent.node.clone(), agent);
                // Which remote backends are reachable, and through which tunnel address.
                self.changes.everything = true;
                true
            }
            Ok(_) => false,
            Err(e) => {
                self.reject(key, e.reason(), &e);
                false
            }
        }
    }

    fn peer_marker(&mut self, remote: ClusterName, kind: Kind, key: &str, value: &[u8]) -> bool {
        // The marker carries the peer's ID; read it, then check the whole marker against it.
        let id = serde_json::from_slice::<serde_json::Value>(value)
            .ok()
            .and_then(|v| v.get("clusterID")?.as_u64())
            .and_then(|id| u32::try_from(id).ok())
            .and_then(|id| ClusterId::new(id, self.local.mesh).ok());
        let Some(id) = id else {
            self.reject(key, "cluster_id", "synced marker without a valid clusterID");
            return false;
        };
        let expected = ExpectedCluster {
            name: remote.clone(),
            id,
            mesh: self.local.mesh,
        };
        if let Err(e) = decode_marker(value, &expected, &self.limits) {
            self.reject(key, e.reason(), &e);
            return false;
        }
        let peer = self.peers.entry(remote).or_default();
        if let Some(known) = peer.id
            && known != id
        {
            self.reject(
                key,
                "cluster_id",
                format!("marker says cluster ID {id}, earlier ones said {known}"),
            );
            return false;
        }
        self.changes.everything |= peer.markers.insert(kind) || peer.id.is_none();
        if peer.id.is_some() && peer.synced() {
            peer.last_synced = None; // the current map is the synced one again
        }
        if peer.id.is_none() {
            peer.id = Some(id);
            let waiting = std::mem::take(&mut peer.undecoded);
            // Values held back until now are a first appearance, not a change to measure.
            let from_watch = std::mem::replace(&mut self.stamp_from_watch, false);
            for (key, value) in waiting {
                self.decode_peer_value(&key, &value);
            }
            self.stamp_from_watch = from_watch;
        }
        true
    }

    fn delete(&mut self, source: Source, key: &str) -> bool {
        match source {
            Source::SharedServices | Source::LocalOnlyServices => {
                let Some(service) = self.local_services.remove(key) else {
                    return false;
                };
                self.changes.services.insert(ServiceName::of(&service));
                self.changes.local = true;
                true
            }
            Source::ClustersetVips => {
                let Some(vip) = self.clusterset_vips.remove(key) else {
                    return false;
                };
                self.changes
                    .services
                    .insert(ServiceName::new(&vip.namespace, &vip.name));
                true
            }
            Source::LocalSynced => {
                // The marker goes only with the apiserver's lease; what we program stays, and a
                // new apiserver writes it again after its own sync.
                false
            }
            Source::Cache => {
                let Ok(parsed) = self.schema.parse(key) else {
                    return false;
                };
                let (remote, changed) = match parsed {
                    Key::CacheSynced { remote, kind } => {
                        let changed = self.peers.get_mut(&remote).is_some_and(|p| {
                            let was_synced = p.synced();
                            let removed = p.markers.remove(&kind);
                            if was_synced && !p.synced() {
                                // What the merge keeps using until the mirror is synced again.
                                p.last_synced = Some(p.services.clone());
                            }
                            removed
                        });
                        self.changes.everything |= changed;
                        (remote, changed)
                    }
                    Key::Cache { remote, object } => {
                        let Some(peer) = self.peers.get_mut(&remote) else {
                            return false;
                        };
                        let changed = peer.undecoded.remove(key).is_some()
                            || match &object {
                                ObjectName::Service { namespace, name } => {
                                    let name = ServiceName::new(namespace, name);
                                    let removed = peer.services.contains_key(&name)
                                        && Arc::make_mut(&mut peer.services)
                                            .remove(&name)
                                            .is_some();
                                    if removed {
                                        self.changes.services.insert(name);
                                    }
                                    removed
                                }
                                ObjectName::Agent(node) => {
                                    let removed = peer.agents.remove(node).is_some();
                                    self.changes.everything |= removed;
                                    removed
                                }
                                _ => false,
                            };
                        (remote, changed)
                    }
                    _ => return false,
                };
                // Nothing of the peer left: the apiserver disconnected it.
                if self.peers.get(&remote).is_some_and(PeerState::is_empty) {
                    self.peers.remove(&remote);
                    self.changes.everything = true;
                    return true;
                }
                changed
            }
        }
    }

    /// The merge's input now.
    pub fn merge_input(&self) -> MergeInput {
        let mut local = ServiceMap::new();
        for service in self.local_services.values() {
            // A service moving between shared and local-only is briefly under both keys; they
            // describe the same Service, either will do.
            local.insert(ServiceName::of(service), service.clone());
        }
        let peers = self
            .peers
            .iter()
            .map(|(name, p)| {
                let synced = p.synced();
                PeerInput {
                    name: name.clone(),
                    synced,
                    current: p.services.clone(),
                    last_synced: p.last_synced.clone(),
                    live_nodes: p.agents.keys().cloned().collect(),
                }
            })
            .collect();
        MergeInput {
            local,
            peers,
            clusterset_vips: self
                .clusterset_vips
                .values()
                .map(|vip| (ServiceName::new(&vip.namespace, &vip.name), vip.ips.clone()))
                .collect(),
        }
    }

    pub fn mesh(&self) -> MaxConnectedClusters {
        self.local.mesh
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clustermesh_model::{Affinity, Marker};
    use clustermesh_store::Entry;

    fn cluster(name: &str, id: u32) -> ExpectedCluster {
        ExpectedCluster {
            name: ClusterName::new(name).unwrap(),
            id: ClusterId::new(id, MaxConnectedClusters::Max255).unwrap(),
            mesh: MaxConnectedClusters::Max255,
        }
    }

    fn service(of: &ExpectedCluster, name: &str) -> GlobalService {
        GlobalService {
            cluster: of.name.clone(),
            cluster_id: of.id,
            namespace: "demo".into(),
            name: name.into(),
            frontends: Vec::new(),
            backends: Vec::new(),
            shared: true,
            affinity: Affinity::None,
            include_external: false,
            modified_unix_millis: None,
            headless: false,
            labels: Default::default(),
            selector: Default::default(),
        }
    }

    fn upsert(key: String, value: Vec<u8>) -> WatchEvent {
        WatchEvent::Upsert(Entry {
            key,
            value,
            mod_revision: 1,
        })
    }

    fn names(changes: &Changes) -> Vec<String> {
        changes.services.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn changes_name_the_services_touched_and_everything_only_when_all_depend_on_it() {
        let schema = KeySchema::default();
        let west = cluster("west", 1);
        let east = cluster("east", 2);
        let mut inputs = Inputs::new(schema.clone(), west.clone());
        assert!(
            inputs.take_changes().everything,
            "the first pass merges all"
        );
        assert!(inputs.take_changes().is_empty());

        // A local service: that name, and the tunnel's shared set.
        let object = |name: &str| ObjectName::Service {
            namespace: "demo".into(),
            name: name.into(),
        };
        inputs.apply(
            Source::SharedServices,
            upsert(
                schema.state(&west.name, &object("a")),
                service(&west, "a").to_json(),
            ),
        );
        let changes = inputs.take_changes();
        assert_eq!(
            (names(&changes), changes.local, changes.everything),
            (vec!["demo/a".to_owned()], true, false)
        );

        // A peer's marker says who it is: everything (its services now count).
        let marker = Marker {
            cluster: east.name.clone(),
            cluster_id: east.id,
            unix_millis: 1,
        };
        inputs.apply(
            Source::Cache,
            upsert(
                schema.cache_synced(&east.name, Kind::Services),
                marker.to_json(),
            ),
        );
        assert!(inputs.take_changes().everything);

        // A peer's service: that name only; not a local change. Its change stamp is kept
        // for the propagation-lag metric (a first list's would not be).
        let key = schema.cache(&east.name, &object("b"));
        let mut b = service(&east, "b");
        b.modified_unix_millis = Some(1_700_000_000_000);
        inputs.apply(
            Source::Cache,
            WatchEvent::InitApply(Entry {
                key: key.clone(),
                value: b.to_json(),
                mod_revision: 1,
            }),
        );
        assert!(inputs.take_changes().stamps.is_empty());
        inputs.apply(Source::Cache, upsert(key.clone(), b.to_json()));
        let changes = inputs.take_changes();
        assert_eq!(changes.stamps, [1_700_000_000_000]);
        assert_eq!(
            (names(&changes), changes.local, changes.everything),
            (vec!["demo/b".to_owned()], false, false)
        );

        // A peer node's agent: which remote backends are reachable, for every service.
        let agent = Agent {
            cluster: east.name.clone(),
            cluster_id: east.id,
            node: "node-1".into(),
            tunnel_address: "192.168.2.2:4244".parse().unwrap(),
            cert_fingerprint: format!("sha256:{}", "0".repeat(64)),
            boot_id: "8d2f0c1e-1b7a-4c1e-9a39-2b5f6c7d8e9f".into(),
        };
        let agent_key = schema.cache(&east.name, &ObjectName::Agent("node-1".into()));
        inputs.apply(Source::Cache, upsert(agent_key.clone(), agent.to_json()));
        assert!(inputs.rejected.is_empty(), "{:?}", inputs.last_rejection);
        assert!(inputs.take_changes().everything);
        inputs.apply(Source::Cache, upsert(agent_key, agent.to_json()));
        assert!(
            inputs.take_changes().is_empty(),
            "the same record again changes nothing"
        );

        // The mirror stops being synced: the merge keeps what it held, and takes nothing new.
        inputs.apply(
            Source::Cache,
            WatchEvent::Delete {
                key: schema.cache_synced(&east.name, Kind::Services),
            },
        );
        assert!(inputs.take_changes().everything);
        let c = schema.cache(&east.name, &object("c"));
        inputs.apply(Source::Cache, upsert(c, service(&east, "c").to_json()));
        let input = inputs.merge_input();
        let effective: Vec<String> = input.peers[0]
            .effective()
            .unwrap()
            .keys()
            .map(ToString::to_string)
            .collect();
        assert_eq!(effective, ["demo/b"]);
        assert_eq!(input.peers[0].current.len(), 2);
        drop(input);

        // The peer's service goes: that name.
        inputs.take_changes();
        inputs.apply(Source::Cache, WatchEvent::Delete { key });
        assert_eq!(names(&inputs.take_changes()), ["demo/b"]);
    }
}
