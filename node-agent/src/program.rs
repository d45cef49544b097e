//! Programming the datapath: the merge's desired frontends become eBPF services, remote
//! backends become mesh VIPs, and only the difference from what is programmed is written.
//!
//! Each service is written with one `upsert_service` call, which the ebpf crate orders so that
//! no connection ever sees a half-updated backend set. The tunnel table is published with a new
//! VIP before any service points at it, and loses a VIP only after no service does.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clustermesh_ebpf::{Datapath, DatapathError, Frontend, Service, SessionAffinity};
use clustermesh_model::ClusterName;
use ipnet::IpNet;
use serde::Serialize;
use tokio::sync::watch;

use crate::merge::{BackendLocation, Desired, MergedBackend};
use crate::mesh_vip::{MeshVipAllocator, MeshVipError, RemoteKey, TunnelTable, TunnelTarget};

#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error("reading the services pinned by an earlier run: {0}")]
    Adopt(#[source] DatapathError),
    #[error("programming service {frontend:?}: {source}")]
    Upsert {
        frontend: Frontend,
        #[source]
        source: DatapathError,
    },
    #[error("removing service {frontend:?}: {source}")]
    Delete {
        frontend: Frontend,
        #[source]
        source: DatapathError,
    },
    #[error(transparent)]
    MeshVip(#[from] MeshVipError),
}

/// The datapath operations the programmer needs; the eBPF datapath in production, a map in
/// unit tests.
pub trait ServiceTable {
    fn upsert_service(&mut self, service: &Service) -> Result<(), DatapathError>;
    fn delete_service(&mut self, frontend: &Frontend) -> Result<(), DatapathError>;
    fn services(&self) -> Result<Vec<Service>, DatapathError>;
}

impl ServiceTable for Datapath {
    fn upsert_service(&mut self, service: &Service) -> Result<(), DatapathError> {
        Datapath::upsert_service(self, service)
    }
    fn delete_service(&mut self, frontend: &Frontend) -> Result<(), DatapathError> {
        Datapath::delete_service(self, frontend)
    }
    fn services(&self) -> Result<Vec<Service>, DatapathError> {
        Datapath::services(self)
    }
}

/// What one programming pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PassReport {
    pub upserted: usize,
    pub deleted: usize,
    pub unchanged: usize,
    /// Programmed backends per cluster (`""` is the local cluster).
    pub backends_by_cluster: BTreeMap<String, usize>,
    pub errors: Vec<String>,
    #[serde(with = "millis")]
    pub duration: Duration,
}

mod millis {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }
}

pub struct Programmer<T> {
    table: T,
    /// What the datapath holds, as far as we know (read back from the pinned maps at start).
    current: BTreeMap<Frontend, Service>,
    vips: MeshVipAllocator,
    tunnel: watch::Sender<TunnelTable>,
    /// Remote backends that clients dial at their mesh VIP directly rather than through a
    /// service frontend: those of headless global services, which DNS hands out.
    direct_remotes: Vec<MergedBackend>,
    direct_remotes_changed: bool,
    /// What each programmed frontend uses of the mesh, so that a pass over a few frontends
    /// updates the shared bookkeeping below without walking every frontend.
    uses: HashMap<Frontend, FrontendUses>,
    /// What the direct remotes use.
    direct_uses: FrontendUses,
    /// Every remote backend in use, with its ports and how many users each port has: a VIP
    /// is held while any frontend (or the direct remotes) uses it.
    remote_refs: HashMap<RemoteKey, RemoteRefs>,
    /// Programmed backends per cluster (`""` is the local cluster), over all frontends.
    backends_by_cluster: BTreeMap<String, usize>,
}

/// Which frontends a pass looks at.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Every frontend, desired or programmed; tunnel targets are refreshed too (a peer node's
    /// tunnel address may have changed).
    All,
    /// Only these (the frontends of services whose inputs changed, before and after).
    Frontends(&'a BTreeSet<Frontend>),
}

/// One use of a remote backend: its (cluster, IP), the port, and the node that hosts it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RemoteUse {
    key: RemoteKey,
    port: u16,
    node: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct FrontendUses {
    remotes: Vec<RemoteUse>,
    /// Active backends per cluster (`""` is the local cluster).
    backends_by_cluster: Vec<(String, usize)>,
}

impl FrontendUses {
    fn of<'a>(backends: impl Iterator<Item = &'a MergedBackend>) -> Self {
        let mut uses = FrontendUses::default();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for backend in backends {
            let cluster = match &backend.location {
                BackendLocation::Local => String::new(),
                BackendLocation::Remote { cluster } => {
                    uses.remotes.push(RemoteUse {
                        key: RemoteKey {
                            cluster: cluster.clone(),
                            ip: backend.addr.ip(),
                        },
                        port: backend.addr.port(),
                        node: backend.node.clone(),
                    });
                    cluster.to_string()
                }
            };
            *counts.entry(cluster).or_default() += 1;
        }
        uses.backends_by_cluster = counts.into_iter().collect();
        uses
    }
}

#[derive(Debug, Clone, Default)]
struct RemoteRefs {
    ports: BTreeMap<u16, usize>,
    node: Option<String>,
}

impl<T: ServiceTable> Programmer<T> {
    /// Takes over `table` as it is: services pinned by an earlier run stay untouched until the
    /// first pass reconciles them.
    pub fn adopt(table: T, mesh_vip_ranges: &[IpNet]) -> Result<Self, ProgramError> {
        let current = table
            .services()
            .map_err(ProgramError::Adopt)?
            .into_iter()
            .map(|s| (s.frontend, s))
            .collect();
        Ok(Self {
            table,
            current,
            vips: MeshVipAllocator::new(mesh_vip_ranges),
            tunnel: watch::channel(TunnelTable::default()).0,
            direct_remotes: Vec::new(),
            direct_remotes_changed: false,
            uses: HashMap::new(),
            direct_uses: FrontendUses::default(),
            remote_refs: HashMap::new(),
            backends_by_cluster: BTreeMap::new(),
        })
    }

    /// Sets the remote backends the next passes give mesh VIPs (and tunnel targets) to without
    /// a frontend: the backends of headless services.
    pub fn set_direct_remotes(&mut self, backends: Vec<MergedBackend>) {
        if self.direct_remotes != backends {
            self.direct_remotes = backends;
            self.direct_remotes_changed = true;
        }
    }

    /// The tunnel's view of the mesh VIPs (see [`TunnelTable`]).
    pub fn subscribe_tunnel_table(&self) -> watch::Receiver<TunnelTable> {
        self.tunnel.subscribe()
    }

    pub fn programmed(&self) -> &BTreeMap<Frontend, Service> {
        &self.current
    }

    /// The datapath itself, for what is not a service (the tunnel listener).
    pub fn table_mut(&mut self) -> &mut T {
        &mut self.table
    }

    pub fn table(&self) -> &T {
        &self.table
    }

    pub fn mesh_vip(
        &self,
        cluster: &ClusterName,
        ip: std::net::IpAddr,
    ) -> Option<std::net::IpAddr> {
        self.vips.get(&RemoteKey {
            cluster: cluster.clone(),
            ip,
        })
    }

    /// Makes the datapath equal to `desired` (every frontend). `tunnel_address` says where a
    /// peer node's tunnel listens, from that peer's agent records.
    pub fn apply(
        &mut self,
        desired: &Desired,
        tunnel_address: impl Fn(&ClusterName, &str) -> Option<SocketAddr>,
    ) -> PassReport {
        self.apply_scoped(desired, Scope::All, tunnel_address)
    }

    /// Makes the datapath equal to `desired` for the frontends in `scope`; the others are
    /// taken to be programmed already. The cost is that of the frontends in scope, not of all.
    pub fn apply_scoped(
        &mut self,
        desired: &Desired,
        scope: Scope<'_>,
        tunnel_address: impl Fn(&ClusterName, &str) -> Option<SocketAddr>,
    ) -> PassReport {
        let started = Instant::now();
        let mut report = PassReport::default();
        let all = matches!(scope, Scope::All);
        let frontends: Vec<Frontend> = match scope {
            Scope::All => {
                let mut all: BTreeSet<Frontend> = desired.keys().copied().collect();
                all.extend(self.current.keys().copied());
                all.extend(self.uses.keys().copied());
                all.into_iter().collect()
            }
            Scope::Frontends(set) => set.iter().copied().collect(),
        };

        // 1. Bookkeeping: what the frontends in scope use now, instead of what they used.
        let mut touched: BTreeSet<RemoteKey> = BTreeSet::new();
        for frontend in &frontends {
            let new = desired
                .get(frontend)
                .map(|merged| FrontendUses::of(merged.active()))
                .unwrap_or_default();
            let old = self.uses.remove(frontend).unwrap_or_default();
            self.replace_uses(&old, &new, &mut touched);
            if !new.remotes.is_empty() || !new.backends_by_cluster.is_empty() {
                self.uses.insert(*frontend, new);
            }
        }
        if self.direct_remotes_changed || all {
            let new = FrontendUses::of(self.direct_remotes.iter());
            let old = std::mem::take(&mut self.direct_uses);
            // Direct remotes are not programmed backends: keep them out of the counts.
            let new = FrontendUses {
                backends_by_cluster: Vec::new(),
                ..new
            };
            self.replace_uses(&old, &new, &mut touched);
            self.direct_uses = new;
            self.direct_remotes_changed = false;
        }

        // 2. Mesh VIPs for remote backends that are used and have none yet.
        for key in &touched {
            if self.remote_refs.contains_key(key)
                && let Err(error) = self.vips.acquire(key)
            {
                report
                    .errors
                    .push(format!("{}/{}: {error}", key.cluster, key.ip));
            }
        }

        // 3. New VIPs are known to the tunnel before a service sends connections to them.
        // Changed in place: cloning the whole table costs more than the pass's map writes once
        // there are thousands of remote backends.
        let refresh: Vec<&RemoteKey> = if all {
            self.remote_refs.keys().collect()
        } else {
            touched
                .iter()
                .filter(|k| self.remote_refs.contains_key(*k))
                .collect()
        };
        let targets: Vec<(std::net::IpAddr, TunnelTarget)> = refresh
            .into_iter()
            .filter_map(|key| {
                let vip = self.vips.get(key)?;
                let refs = &self.remote_refs[key];
                Some((
                    vip,
                    TunnelTarget {
                        cluster: key.cluster.clone(),
                        backend_ip: key.ip,
                        ports: refs.ports.keys().copied().collect(),
                        node: refs.node.clone(),
                        tunnel_address: refs
                            .node
                            .as_deref()
                            .and_then(|n| tunnel_address(&key.cluster, n)),
                    },
                ))
            })
            .collect();
        self.tunnel.send_if_modified(|t| {
            let mut changed = false;
            for (vip, target) in targets {
                if t.targets.get(&vip) != Some(&target) {
                    t.targets.insert(vip, target);
                    changed = true;
                }
            }
            changed
        });

        // 4. The services in scope: write what differs, delete what is no longer wanted.
        for frontend in &frontends {
            let Some(merged) = desired.get(frontend) else {
                if !self.current.contains_key(frontend) {
                    continue;
                }
                match self.table.delete_service(frontend) {
                    Ok(()) => {
                        self.current.remove(frontend);
                        report.deleted += 1;
                    }
                    Err(source) => report.errors.push(
                        ProgramError::Delete {
                            frontend: *frontend,
                            source,
                        }
                        .to_string(),
                    ),
                }
                continue;
            };
            let service = self.service(frontend, merged);
            if self.current.get(frontend) == Some(&service) {
                report.unchanged += 1;
                continue;
            }
            match self.table.upsert_service(&service) {
                Ok(()) => {
                    self.current.insert(*frontend, service);
                    report.upserted += 1;
                }
                Err(source) => report.errors.push(
                    ProgramError::Upsert {
                        frontend: *frontend,
                        source,
                    }
                    .to_string(),
                ),
            }
        }

        // 5. Only now may VIPs no service uses leave the tunnel's table and be freed.
        let released: Vec<std::net::IpAddr> = touched
            .iter()
            .filter(|key| !self.remote_refs.contains_key(*key))
            .filter_map(|key| self.vips.release(key))
            .collect();
        if !released.is_empty() {
            self.tunnel.send_if_modified(|t| {
                let mut changed = false;
                for vip in &released {
                    changed |= t.targets.remove(vip).is_some();
                }
                changed
            });
        }

        report.backends_by_cluster = self.backends_by_cluster.clone();
        report.duration = started.elapsed();
        report
    }

    /// Updates the reference counts and per-cluster totals from `old` to `new`, recording
    /// which remote backends were involved.
    fn replace_uses(
        &mut self,
        old: &FrontendUses,
        new: &FrontendUses,
        touched: &mut BTreeSet<RemoteKey>,
    ) {
        // Add before removing, so a backend kept by this frontend never drops to zero users.
        for u in &new.remotes {
            let refs = self.remote_refs.entry(u.key.clone()).or_default();
            *refs.ports.entry(u.port).or_default() += 1;
            if u.node.is_some() {
                refs.node = u.node.clone();
            }
            touched.insert(u.key.clone());
        }
        for u in &old.remotes {
            if let Some(refs) = self.remote_refs.get_mut(&u.key) {
                if let Some(n) = refs.ports.get_mut(&u.port) {
                    *n -= 1;
                    if *n == 0 {
                        refs.ports.remove(&u.port);
                    }
                }
                if refs.ports.is_empty() {
                    self.remote_refs.remove(&u.key);
                }
            }
            touched.insert(u.key.clone());
        }
        for (cluster, n) in &new.backends_by_cluster {
            *self.backends_by_cluster.entry(cluster.clone()).or_default() += n;
        }
        for (cluster, n) in &old.backends_by_cluster {
            if let Some(total) = self.backends_by_cluster.get_mut(cluster) {
                *total = total.saturating_sub(*n);
                if *total == 0 {
                    self.backends_by_cluster.remove(cluster);
                }
            }
        }
    }

    /// The eBPF service for one frontend: local backends as they are, remote ones at their
    /// mesh VIP (left out while they have none).
    fn service(&self, frontend: &Frontend, merged: &crate::merge::MergedFrontend) -> Service {
        let mut backends: Vec<SocketAddr> = merged
            .active()
            .filter_map(|backend| match &backend.location {
                BackendLocation::Local => Some(backend.addr),
                BackendLocation::Remote { cluster } => {
                    let vip = self.vips.get(&RemoteKey {
                        cluster: cluster.clone(),
                        ip: backend.addr.ip(),
                    })?;
                    Some(SocketAddr::new(vip, backend.addr.port()))
                }
            })
            .collect();
        backends.sort();
        backends.dedup();
        Service {
            frontend: *frontend,
            backends,
            affinity: SessionAffinity::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::{MergedFrontend, ServiceName};
    use clustermesh_ebpf::Protocol;

    /// A service table in memory that counts writes.
    #[derive(Default)]
    struct Fake {
        services: BTreeMap<Frontend, Service>,
        writes: usize,
    }

    impl ServiceTable for Fake {
        fn upsert_service(&mut self, service: &Service) -> Result<(), DatapathError> {
            self.writes += 1;
            self.services.insert(service.frontend, service.clone());
            Ok(())
        }
        fn delete_service(&mut self, frontend: &Frontend) -> Result<(), DatapathError> {
            self.writes += 1;
            self.services.remove(frontend);
            Ok(())
        }
        fn services(&self) -> Result<Vec<Service>, DatapathError> {
            Ok(self.services.values().cloned().collect())
        }
    }

    fn frontend(addr: &str) -> Frontend {
        Frontend {
            addr: addr.parse().unwrap(),
            protocol: Protocol::Tcp,
        }
    }

    /// A backend address and its cluster (`None` for local).
    type BackendSpec<'a> = (&'a str, Option<&'a str>);

    fn desired(entries: &[(&str, &[BackendSpec])]) -> Desired {
        entries
            .iter()
            .map(|(vip, backends)| {
                (
                    frontend(vip),
                    MergedFrontend {
                        service: ServiceName::new("demo", "echo"),
                        port_name: "http".into(),
                        backends: backends
                            .iter()
                            .map(|(addr, cluster)| MergedBackend {
                                location: match cluster {
                                    None => BackendLocation::Local,
                                    Some(c) => BackendLocation::Remote {
                                        cluster: ClusterName::new(*c).unwrap(),
                                    },
                                },
                                addr: addr.parse().unwrap(),
                                node: Some("node-1".into()),
                                active: true,
                            })
                            .collect(),
                    },
                )
            })
            .collect()
    }

    fn ranges() -> Vec<IpNet> {
        vec!["100.64.0.0/10".parse().unwrap()]
    }

    #[test]
    fn remote_backends_go_through_mesh_vips_recorded_for_the_tunnel() {
        let mut p = Programmer::adopt(Fake::default(), &ranges()).unwrap();
        let tunnel = p.subscribe_tunnel_table();
        let want = desired(&[(
            "10.96.0.10:80",
            &[("10.1.0.1:8080", None), ("10.1.0.1:8080", Some("east"))],
        )]);
        let east = ClusterName::new("east").unwrap();
        let report = p.apply(&want, |c, n| {
            (c == &east && n == "node-1").then(|| "192.168.2.2:4244".parse().unwrap())
        });
        assert!(report.errors.is_empty(), "{report:?}");
        let vip = p.mesh_vip(&east, "10.1.0.1".parse().unwrap()).unwrap();
        let service = &p.table().services[&frontend("10.96.0.10:80")];
        let mut expected = vec!["10.1.0.1:8080".parse().unwrap(), SocketAddr::new(vip, 8080)];
        expected.sort();
        assert_eq!(service.backends, expected);
        let table = tunnel.borrow().clone();
        let target = &table.targets[&vip];
        assert_eq!(target.cluster, east);
        assert_eq!(target.backend_ip.to_string(), "10.1.0.1");
        assert_eq!(target.ports, BTreeSet::from([8080]));
        assert_eq!(
            target.tunnel_address,
            Some("192.168.2.2:4244".parse().unwrap())
        );
        assert_eq!(report.backends_by_cluster["east"], 1);
    }

    #[test]
    fn direct_remotes_get_mesh_vips_and_tunnel_targets_without_a_frontend() {
        let mut p = Programmer::adopt(Fake::default(), &ranges()).unwrap();
        let tunnel = p.subscribe_tunnel_table();
        let east = ClusterName::new("east").unwrap();
        p.set_direct_remotes(vec![MergedBackend {
            location: BackendLocation::Remote {
                cluster: east.clone(),
            },
            addr: "10.1.0.9:5432".parse().unwrap(),
            node: Some("node-1".into()),
            active: true,
        }]);
        let report = p.apply(&Desired::new(), |_, _| {
            Some("192.168.2.2:4244".parse().unwrap())
        });
        assert!(report.errors.is_empty(), "{report:?}");
        assert!(p.table().services.is_empty(), "no frontend is programmed");
        let vip = p.mesh_vip(&east, "10.1.0.9".parse().unwrap()).unwrap();
        assert_eq!(tunnel.borrow().targets[&vip].ports, BTreeSet::from([5432]));
        // Gone from the list: the VIP and its target go too.
        p.set_direct_remotes(Vec::new());
        p.apply(&Desired::new(), |_, _| None);
        assert_eq!(p.mesh_vip(&east, "10.1.0.9".parse().unwrap()), None);
        assert!(tunnel.borrow().targets.is_empty());
    }

    #[test]
    fn only_the_difference_is_written_and_pinned_services_are_adopted() {
        let mut pinned = Fake::default();
        pinned
            .upsert_service(&Service {
                frontend: frontend("10.96.0.10:80"),
                backends: vec!["10.1.0.1:8080".parse().unwrap()],
                affinity: SessionAffinity::None,
            })
            .unwrap();
        pinned
            .upsert_service(&Service {
                frontend: frontend("10.96.0.99:80"),
                backends: vec!["10.1.0.9:8080".parse().unwrap()],
                affinity: SessionAffinity::None,
            })
            .unwrap();
        pinned.writes = 0;
        let mut p = Programmer::adopt(pinned, &ranges()).unwrap();
        let want = desired(&[
            ("10.96.0.10:80", &[("10.1.0.1:8080", None)]),
            ("10.96.0.11:80", &[("10.1.0.2:8080", None)]),
        ]);
        let report = p.apply(&want, |_, _| None);
        // The adopted service that is still wanted is not rewritten; the stale one goes.
        assert_eq!(
            (report.unchanged, report.upserted, report.deleted),
            (1, 1, 1)
        );
        assert_eq!(p.table().writes, 2);
        let again = p.apply(&want, |_, _| None);
        assert_eq!((again.unchanged, again.upserted, again.deleted), (2, 0, 0));
        assert_eq!(p.table().writes, 2, "a pass without changes writes nothing");
    }

    #[test]
    fn a_vip_leaves_the_tunnel_table_when_no_service_uses_it() {
        let mut p = Programmer::adopt(Fake::default(), &ranges()).unwrap();
        let tunnel = p.subscribe_tunnel_table();
        p.apply(
            &desired(&[("10.96.0.10:80", &[("10.2.0.1:8080", Some("east"))])]),
            |_, _| None,
        );
        assert_eq!(tunnel.borrow().targets.len(), 1);
        let report = p.apply(
            &desired(&[("10.96.0.10:80", &[("10.1.0.1:8080", None)])]),
            |_, _| None,
        );
        assert_eq!(report.upserted, 1);
        assert!(tunnel.borrow().targets.is_empty());
    }
    /// The frontends whose desired state differs between two passes.
    fn changed(before: &Desired, after: &Desired) -> BTreeSet<Frontend> {
        before
            .keys()
            .chain(after.keys())
            .filter(|f| before.get(*f) != after.get(*f))
            .copied()
            .collect()
    }

    #[test]
    fn passes_over_changed_frontends_only_end_where_full_passes_do() {
        let steps: Vec<Desired> = vec![
            desired(&[
                (
                    "10.96.0.10:80",
                    &[("10.1.0.1:8080", None), ("10.2.0.1:8080", Some("east"))],
                ),
                ("10.96.0.11:80", &[("10.2.0.1:8080", Some("east"))]),
                ("10.96.0.12:80", &[("10.2.0.2:9090", Some("west"))]),
            ]),
            // One service loses the shared remote backend: the other still holds its VIP.
            desired(&[
                ("10.96.0.10:80", &[("10.1.0.1:8080", None)]),
                ("10.96.0.11:80", &[("10.2.0.1:8080", Some("east"))]),
                ("10.96.0.12:80", &[("10.2.0.2:9090", Some("west"))]),
            ]),
            // A frontend goes, another gains a port on the same remote backend.
            desired(&[
                (
                    "10.96.0.11:80",
                    &[
                        ("10.2.0.1:8080", Some("east")),
                        ("10.2.0.1:8443", Some("east")),
                    ],
                ),
                ("10.96.0.12:80", &[("10.2.0.2:9090", Some("west"))]),
            ]),
            desired(&[("10.96.0.12:80", &[("10.1.0.7:9090", None)])]),
            Desired::new(),
        ];
        let mut scoped = Programmer::adopt(Fake::default(), &ranges()).unwrap();
        let scoped_tunnel = scoped.subscribe_tunnel_table();
        let mut previous = Desired::new();
        for (i, want) in steps.iter().enumerate() {
            let report =
                scoped.apply_scoped(want, Scope::Frontends(&changed(&previous, want)), |_, _| {
                    None
                });
            assert!(report.errors.is_empty(), "step {i}: {report:?}");
            let mut full = Programmer::adopt(Fake::default(), &ranges()).unwrap();
            let full_tunnel = full.subscribe_tunnel_table();
            let full_report = full.apply(want, |_, _| None);
            assert_eq!(scoped.table().services, full.table().services, "step {i}");
            assert_eq!(*scoped_tunnel.borrow(), *full_tunnel.borrow(), "step {i}");
            assert_eq!(
                report.backends_by_cluster, full_report.backends_by_cluster,
                "step {i}"
            );
            previous = want.clone();
        }
        assert!(scoped.table().services.is_empty());
        assert!(
            scoped_tunnel.borrow().targets.is_empty(),
            "every VIP released"
        );
        assert_eq!(
            scoped.mesh_vip(
                &ClusterName::new("east").unwrap(),
                "10.2.0.1".parse().unwrap()
            ),
            None
        );
    }

    #[test]
    fn a_scoped_pass_writes_only_its_frontends() {
        let mut p = Programmer::adopt(Fake::default(), &ranges()).unwrap();
        let first = desired(&[
            ("10.96.0.10:80", &[("10.1.0.1:8080", None)]),
            ("10.96.0.11:80", &[("10.1.0.2:8080", None)]),
        ]);
        p.apply(&first, |_, _| None);
        let writes = p.table().writes;
        let second = desired(&[
            ("10.96.0.10:80", &[("10.1.0.1:8080", None)]),
            ("10.96.0.11:80", &[("10.1.0.3:8080", None)]),
        ]);
        let only = BTreeSet::from([frontend("10.96.0.11:80")]);
        let report = p.apply_scoped(&second, Scope::Frontends(&only), |_, _| None);
        assert_eq!((report.upserted, report.unchanged), (1, 0));
        assert_eq!(p.table().writes, writes + 1);
    }
}
