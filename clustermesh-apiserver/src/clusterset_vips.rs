//! Clusterset VIPs: a global service that exists only in peers (no local Service of the same
//! namespace/name) gets a virtual IP from a configured range (one IPv4, optionally one IPv6),
//! so that local clients can reach it through DNS (`<svc>.<ns>.svc.clusterset.local`) and the
//! agents' socket load balancer, without a local stub Service.
//!
//! The allocator watches the local etcd only: the mirror of every peer's services
//! (`cache/services/v1/`), the mirror's synced markers, and this cluster's own published
//! services (`state/` and `local/`). A service is *wanted* when some peer shares it with at
//! least one frontend (headless services get none: DNS answers those with backends) and no
//! local Service has its name. Allocations are written to
//! `local/clusterset-vips/v1/<cluster>/<ns>/<name>`, not under any lease, so an apiserver
//! restart keeps every address; peers' read-only role covers `state/` only, so they never see
//! them. A VIP is released once its service has been unwanted for the grace period, counted only
//! while the view is complete (every watch listed, every mirrored peer's services synced) — a
//! restarting apiserver or a refilling mirror never frees an address in use.
//!
//! `VipTable` is the pure part (what to allocate and release, given what is wanted); `run` is
//! the I/O around it. Nothing is allocated before this apiserver's own services are published
//! (its `synced/<cluster>/services` marker), so a service the cluster has too never looks
//! remote-only at start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use clustermesh_model::{
    ClusterId, ClusterName, ClustersetVip, ExpectedCluster, Key, KeySchema, Kind, Limits,
    ObjectName, StateValue, decode_clusterset_vip, decode_state,
};
use clustermesh_store::{Client, WatchEvent, WatchReader};
use ipnet::IpNet;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::source::ObjectKey;

/// The default IPv4 range of clusterset VIPs.
pub const DEFAULT_RANGE_V4: &str = "10.255.0.0/16";
/// The default grace before an unwanted VIP is released.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum VipError {
    #[error("cannot read or write clusterset VIPs in the local etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
}

/// What the allocator is configured with.
#[derive(Debug, Clone)]
pub struct VipSettings {
    /// At most one IPv4 and one IPv6 range.
    pub ranges: Vec<IpNet>,
    /// How long a service must be gone before its VIP is released.
    pub grace: Duration,
}

/// What the allocator reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VipStatus {
    /// Every watch has listed once.
    pub listed: bool,
    /// The current allocations.
    pub allocated: BTreeMap<ObjectKey, Vec<IpAddr>>,
    /// A range ran out of addresses (the services that got none).
    pub exhausted: Vec<ObjectKey>,
}

/// What to do after a pass of [`VipTable::plan`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub allocate: Vec<(ObjectKey, Vec<IpAddr>)>,
    pub release: Vec<ObjectKey>,
    pub exhausted: Vec<ObjectKey>,
}

/// The allocations and the rule of when to make and free them, without I/O.
#[derive(Debug)]
pub struct VipTable {
    ranges: Vec<IpNet>,
    grace: Duration,
    allocated: BTreeMap<ObjectKey, Vec<IpAddr>>,
    in_use: BTreeSet<IpAddr>,
    unwanted_since: HashMap<ObjectKey, Instant>,
}

impl VipTable {
    pub fn new(ranges: Vec<IpNet>, grace: Duration) -> Self {
        Self {
            ranges,
            grace,
            allocated: BTreeMap::new(),
            in_use: BTreeSet::new(),
            unwanted_since: HashMap::new(),
        }
    }

    /// Takes over an allocation an earlier run made; false (and nothing kept) if its addresses
    /// are outside the configured ranges or already taken.
    pub fn adopt(&mut self, service: ObjectKey, ips: Vec<IpAddr>) -> bool {
        let fits = ips
            .iter()
            .all(|ip| self.ranges.iter().any(|r| r.contains(ip)) && !self.in_use.contains(ip));
        if !fits || ips.is_empty() || self.allocated.contains_key(&service) {
            return false;
        }
        self.in_use.extend(ips.iter().copied());
        self.allocated.insert(service, ips);
        true
    }

    pub fn allocated(&self) -> &BTreeMap<ObjectKey, Vec<IpAddr>> {
        &self.allocated
    }

    /// Allocates for every wanted service without a VIP; with a `complete` view, releases those
    /// unwanted for the grace period. The plan is already applied to the table; the caller
    /// writes it to etcd.
    pub fn plan(&mut self, wanted: &BTreeSet<ObjectKey>, complete: bool, now: Instant) -> Plan {
        let mut plan = Plan::default();
        for service in wanted {
            self.unwanted_since.remove(service);
            if self.allocated.contains_key(service) {
                continue;
            }
            let ips: Vec<IpAddr> = self
                .ranges
                .clone()
                .iter()
                .filter_map(|range| self.lowest_free(range))
                .collect();
            if ips.len() < self.ranges.len() || ips.is_empty() {
                plan.exhausted.push(service.clone());
                continue;
            }
            self.in_use.extend(ips.iter().copied());
            self.allocated.insert(service.clone(), ips.clone());
            plan.allocate.push((service.clone(), ips));
        }
        if !complete {
            // Nothing counts towards the grace while the view may be missing services.
            self.unwanted_since.clear();
            return plan;
        }
        let unwanted: Vec<ObjectKey> = self
            .allocated
            .keys()
            .filter(|s| !wanted.contains(*s))
            .cloned()
            .collect();
        for service in unwanted {
            let since = *self.unwanted_since.entry(service.clone()).or_insert(now);
            if now.duration_since(since) >= self.grace {
                self.unwanted_since.remove(&service);
                if let Some(ips) = self.allocated.remove(&service) {
                    for ip in ips {
                        self.in_use.remove(&ip);
                    }
                }
                plan.release.push(service);
            }
        }
        plan
    }

    /// The lowest address of `range` not in use (not the network address, nor the IPv4
    /// broadcast address).
    fn lowest_free(&self, range: &IpNet) -> Option<IpAddr> {
        let mut hosts = range.hosts();
        // `hosts()` already skips the IPv4 network and broadcast addresses; skip IPv6's
        // subnet-router anycast address (the network address) too.
        hosts
            .by_ref()
            .take(1 << 20)
            .find(|ip| !self.in_use.contains(ip) && *ip != range.network())
    }
}

/// The running allocator; dropping it stops it (allocations stay in etcd).
pub struct ClustersetVips {
    task: JoinHandle<()>,
    status: watch::Receiver<VipStatus>,
}

impl ClustersetVips {
    /// Loads what an earlier run allocated and starts watching.
    pub async fn start(
        mut client: Client,
        schema: KeySchema,
        cluster: ExpectedCluster,
        settings: VipSettings,
    ) -> Result<ClustersetVips, VipError> {
        let mut table = VipTable::new(settings.ranges.clone(), settings.grace);
        let prefix = schema.clusterset_vip_prefix(&cluster.name);
        let (kvs, _) = clustermesh_store::list(&mut client, &prefix).await?;
        let mut stale = Vec::new();
        for kv in &kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match decode_clusterset_vip(&schema, &key, kv.value(), &cluster, &Limits::default()) {
                Ok(vip) => {
                    let service = ObjectKey::new(vip.namespace, vip.name);
                    if !table.adopt(service.clone(), vip.ips.clone()) {
                        warn!(%key, ips = ?vip.ips, "clusterset VIP outside --clusterset-vip-range or taken twice; releasing it");
                        stale.push(key);
                    }
                }
                Err(e) => {
                    warn!(%key, error = %e, "ignoring a clusterset VIP that does not decode; deleting it");
                    stale.push(key);
                }
            }
        }
        for key in stale {
            client.delete(key.as_str(), None).await?;
        }
        info!(count = table.allocated().len(), ranges = ?settings.ranges, "loaded clusterset VIPs");

        let (status_tx, status) = watch::channel(VipStatus {
            allocated: table.allocated().clone(),
            ..VipStatus::default()
        });
        let allocator = Allocator {
            client,
            schema,
            cluster,
            table,
            view: View::default(),
            status: status_tx,
        };
        Ok(ClustersetVips {
            task: tokio::spawn(allocator.run(settings.grace)),
            status,
        })
    }

    pub fn status(&self) -> VipStatus {
        self.status.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<VipStatus> {
        self.status.clone()
    }
}

impl Drop for ClustersetVips {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Which watch an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Source {
    PeerServices,
    PeerMarkers,
    SharedServices,
    LocalOnlyServices,
    /// `synced/<local>/services`: this apiserver's own services are all published.
    LocalSynced,
}

impl Source {
    const ALL: [Source; 5] = [
        Source::PeerServices,
        Source::PeerMarkers,
        Source::SharedServices,
        Source::LocalOnlyServices,
        Source::LocalSynced,
    ];
}

/// What the watches have shown so far.
#[derive(Debug, Default)]
struct View {
    listed: BTreeSet<Source>,
    /// Per peer: its mirrored services that could take a VIP (by name), and the others.
    peer_services: BTreeMap<ClusterName, BTreeMap<ObjectKey, bool>>,
    /// Peers whose services mirror is complete.
    peer_synced: BTreeSet<ClusterName>,
    /// Local services by etcd key.
    local: BTreeMap<String, ObjectKey>,
    /// The local services are complete (the publisher's synced marker is written): before it,
    /// a service this cluster has too could look remote-only.
    local_synced: bool,
}

impl View {
    fn wanted(&self) -> BTreeSet<ObjectKey> {
        let local: BTreeSet<&ObjectKey> = self.local.values().collect();
        self.peer_services
            .values()
            .flat_map(|services| services.iter())
            .filter(|(name, eligible)| **eligible && !local.contains(name))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Every watch has listed, the local services are published and every mirrored peer's
    /// services are synced.
    fn complete(&self) -> bool {
        self.listed.len() == Source::ALL.len()
            && self.local_synced
            && self
                .peer_services
                .keys()
                .all(|peer| self.peer_synced.contains(peer))
    }
}

struct Allocator {
    client: Client,
    schema: KeySchema,
    cluster: ExpectedCluster,
    table: VipTable,
    view: View,
    status: watch::Sender<VipStatus>,
}

impl Allocator {
    async fn run(mut self, grace: Duration) {
        let (tx, mut events) = mpsc::channel::<(Source, WatchEvent)>(1024);
        let mut readers = Vec::new();
        for source in Source::ALL {
            let prefix = match source {
                Source::PeerServices => self.schema.cache_kind_prefix(Kind::Services),
                Source::PeerMarkers => self.schema.cache_synced_root(),
                Source::SharedServices => {
                    self.schema.state_prefix(Kind::Services, &self.cluster.name)
                }
                Source::LocalOnlyServices => {
                    self.schema.local_prefix(Kind::Services, &self.cluster.name)
                }
                Source::LocalSynced => self.schema.synced(&self.cluster.name, Kind::Services),
            };
            let (reader, mut rx) = WatchReader::spawn(self.client.clone(), prefix, 1024);
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(event) = rx.recv().await {
                    if tx.send((source, event)).await.is_err() {
                        return;
                    }
                }
            });
            readers.push(reader);
        }
        let mut tick = tokio::time::interval(
            (grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)),
        );
        loop {
            tokio::select! {
                event = events.recv() => {
                    let Some((source, event)) = event else { return };
                    self.apply(source, event);
                    // Coalesce a burst into one pass.
                    let window = tokio::time::Instant::now() + Duration::from_millis(20);
                    while let Ok(Some((source, event))) = tokio::time::timeout_at(window, events.recv()).await {
                        self.apply(source, event);
                    }
                }
                _ = tick.tick() => {}
            }
            if self.view.listed.len() < Source::ALL.len() || !self.view.local_synced {
                continue;
            }
            if let Err(e) = self.pass().await {
                warn!(error = %e, "clusterset VIP pass failed; retrying");
            }
        }
    }

    fn apply(&mut self, source: Source, event: WatchEvent) {
        match event {
            WatchEvent::Init => {}
            WatchEvent::InitDone => {
                self.view.listed.insert(source);
            }
            WatchEvent::InitApply(entry) | WatchEvent::Upsert(entry) => {
                self.upsert(source, &entry.key, &entry.value)
            }
            WatchEvent::Delete { key } => self.delete(source, &key),
        }
    }

    fn upsert(&mut self, source: Source, key: &str, value: &[u8]) {
        match (source, self.schema.parse(key)) {
            (
                Source::PeerServices,
                Ok(Key::Cache {
                    remote,
                    object: ObjectName::Service { namespace, name },
                }),
            ) => {
                let eligible = match self.peer_service(&remote, key, value) {
                    Some(s) => s.shared && !s.headless && !s.frontends.is_empty(),
                    None => false,
                };
                self.view
                    .peer_services
                    .entry(remote)
                    .or_default()
                    .insert(ObjectKey::new(namespace, name), eligible);
            }
            (
                Source::PeerMarkers,
                Ok(Key::CacheSynced {
                    remote,
                    kind: Kind::Services,
                }),
            ) => {
                self.view.peer_synced.insert(remote);
            }
            (
                Source::SharedServices | Source::LocalOnlyServices,
                Ok(
                    Key::State {
                        object: ObjectName::Service { namespace, name },
                        ..
                    }
                    | Key::Local {
                        object: ObjectName::Service { namespace, name },
                        ..
                    },
                ),
            ) => {
                self.view
                    .local
                    .insert(key.to_owned(), ObjectKey::new(namespace, name));
            }
            (Source::LocalSynced, Ok(Key::Synced { .. })) => self.view.local_synced = true,
            _ => {}
        }
    }

    /// A peer's mirrored service, decoded strictly for the ID it carries (the mirror checked
    /// that ID against the peer's configuration before copying it).
    fn peer_service(
        &self,
        remote: &ClusterName,
        key: &str,
        value: &[u8],
    ) -> Option<clustermesh_model::GlobalService> {
        let id = serde_json::from_slice::<serde_json::Value>(value)
            .ok()?
            .get("clusterID")?
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .and_then(|id| ClusterId::new(id, self.cluster.mesh).ok())?;
        let expected = ExpectedCluster {
            name: remote.clone(),
            id,
            mesh: self.cluster.mesh,
        };
        match decode_state(&self.schema, key, value, &expected, &Limits::default()) {
            Ok((_, StateValue::Service(s))) => Some(s),
            Ok(_) => None,
            Err(e) => {
                warn!(%key, error = %e, "a mirrored service does not decode; no clusterset VIP for it");
                None
            }
        }
    }

    fn delete(&mut self, source: Source, key: &str) {
        match (source, self.schema.parse(key)) {
            (
                Source::PeerServices,
                Ok(Key::Cache {
                    remote,
                    object: ObjectName::Service { namespace, name },
                }),
            ) => {
                if let Some(services) = self.view.peer_services.get_mut(&remote) {
                    services.remove(&ObjectKey::new(namespace, name));
                    if services.is_empty() {
                        self.view.peer_services.remove(&remote);
                    }
                }
            }
            (
                Source::PeerMarkers,
                Ok(Key::CacheSynced {
                    remote,
                    kind: Kind::Services,
                }),
            ) => {
                self.view.peer_synced.remove(&remote);
            }
            (Source::SharedServices | Source::LocalOnlyServices, _) => {
                self.view.local.remove(key);
            }
            // The marker goes with the publisher's lease; a successor writes it again, and the
            // services it covered stay meanwhile.
            (Source::LocalSynced, _) => {}
            _ => {}
        }
    }

    async fn pass(&mut self) -> Result<(), VipError> {
        let wanted = self.view.wanted();
        let complete = self.view.complete();
        let plan = self.table.plan(&wanted, complete, Instant::now());
        for (service, ips) in &plan.allocate {
            let vip = ClustersetVip {
                cluster: self.cluster.name.clone(),
                cluster_id: self.cluster.id,
                namespace: service.namespace.clone(),
                name: service.name.clone(),
                ips: ips.clone(),
            };
            let key = self.key(service);
            if let Err(e) = self.client.put(key.as_str(), vip.to_json(), None).await {
                // Forget it, so the next pass tries again.
                self.table.allocated.remove(service);
                for ip in ips {
                    self.table.in_use.remove(ip);
                }
                return Err(e.into());
            }
            info!(service = %format!("{}/{}", service.namespace, service.name), ?ips, "allocated a clusterset VIP");
        }
        for service in &plan.release {
            let key = self.key(service);
            self.client.delete(key.as_str(), None).await?;
            info!(service = %format!("{}/{}", service.namespace, service.name), "released a clusterset VIP");
        }
        for service in &plan.exhausted {
            warn!(service = %format!("{}/{}", service.namespace, service.name), "no free clusterset VIP; widen --clusterset-vip-range");
        }
        let status = VipStatus {
            listed: true,
            allocated: self.table.allocated().clone(),
            exhausted: plan.exhausted,
        };
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
        Ok(())
    }

    fn key(&self, service: &ObjectKey) -> String {
        self.schema
            .clusterset_vip(&self.cluster.name, &service.namespace, &service.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str) -> ObjectKey {
        ObjectKey::new("demo", name)
    }

    fn table() -> VipTable {
        VipTable::new(
            vec![
                "10.255.0.0/30".parse().unwrap(),
                "fd00:636c::/126".parse().unwrap(),
            ],
            Duration::from_secs(10),
        )
    }

    fn ips(s: &[&str]) -> Vec<IpAddr> {
        s.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn wanted_services_get_the_lowest_free_address_of_each_range() {
        let mut t = table();
        let now = Instant::now();
        let plan = t.plan(&BTreeSet::from([svc("a"), svc("b")]), true, now);
        assert_eq!(
            plan.allocate,
            vec![
                (svc("a"), ips(&["10.255.0.1", "fd00:636c::1"])),
                (svc("b"), ips(&["10.255.0.2", "fd00:636c::2"])),
            ]
        );
        // A /30 has two host addresses: the third service finds none.
        let plan = t.plan(&BTreeSet::from([svc("a"), svc("b"), svc("c")]), true, now);
        assert!(plan.allocate.is_empty());
        assert_eq!(plan.exhausted, vec![svc("c")]);
        // Stable: nothing changes while the same services are wanted.
        let plan = t.plan(&BTreeSet::from([svc("a"), svc("b")]), true, now);
        assert_eq!(plan, Plan::default());
    }

    #[test]
    fn a_vip_is_released_only_after_the_grace_of_a_complete_view() {
        let mut t = table();
        let t0 = Instant::now();
        t.plan(&BTreeSet::from([svc("a")]), true, t0);
        let none = BTreeSet::new();
        assert!(t.plan(&none, true, t0).release.is_empty());
        assert!(
            t.plan(&none, true, t0 + Duration::from_secs(9))
                .release
                .is_empty()
        );
        // An incomplete view resets the clock.
        assert!(
            t.plan(&none, false, t0 + Duration::from_secs(11))
                .release
                .is_empty()
        );
        assert!(
            t.plan(&none, true, t0 + Duration::from_secs(12))
                .release
                .is_empty()
        );
        // Wanted again in between also resets it.
        t.plan(
            &BTreeSet::from([svc("a")]),
            true,
            t0 + Duration::from_secs(13),
        );
        assert!(
            t.plan(&none, true, t0 + Duration::from_secs(14))
                .release
                .is_empty()
        );
        let plan = t.plan(&none, true, t0 + Duration::from_secs(24));
        assert_eq!(plan.release, vec![svc("a")]);
        assert!(t.allocated().is_empty());
        // The address is free again.
        let plan = t.plan(
            &BTreeSet::from([svc("b")]),
            true,
            t0 + Duration::from_secs(25),
        );
        assert_eq!(plan.allocate[0].1, ips(&["10.255.0.1", "fd00:636c::1"]));
    }

    #[test]
    fn adopted_allocations_are_kept_and_checked_against_the_ranges() {
        let mut t = table();
        assert!(t.adopt(svc("a"), ips(&["10.255.0.2", "fd00:636c::2"])));
        assert!(!t.adopt(svc("b"), ips(&["10.255.0.2"])), "taken");
        assert!(!t.adopt(svc("c"), ips(&["10.0.0.1"])), "outside the range");
        let plan = t.plan(&BTreeSet::from([svc("a"), svc("d")]), true, Instant::now());
        assert_eq!(
            plan.allocate,
            vec![(svc("d"), ips(&["10.255.0.1", "fd00:636c::1"]))]
        );
    }

    #[test]
    fn the_view_wants_peer_services_that_have_no_local_namesake() {
        let mut view = View::default();
        let east = ClusterName::new("east").unwrap();
        view.peer_services.insert(
            east.clone(),
            BTreeMap::from([
                (svc("remote"), true),
                (svc("both"), true),
                (svc("headless"), false),
            ]),
        );
        view.local.insert("k".into(), svc("both"));
        assert_eq!(view.wanted(), BTreeSet::from([svc("remote")]));
        assert!(!view.complete());
        view.listed.extend(Source::ALL);
        assert!(!view.complete(), "east's mirror is not synced");
        view.peer_synced.insert(east);
        assert!(!view.complete(), "the local services are not published yet");
        view.local_synced = true;
        assert!(view.complete());
    }
}
