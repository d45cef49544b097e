//! Programming the datapath: the merge's desired frontends become eBPF services, remote
//! backends become mesh VIPs, and only the difference from what is programmed is written.
//!
//! Each service is written with one `upsert_service` call, which the ebpf crate orders so that
//! no connection ever sees a half-updated backend set. The tunnel table is published with a new
//! VIP before any service points at it, and loses a VIP only after no service does.

use std::collections::{BTreeMap, BTreeSet};
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
        })
    }

    /// Sets the remote backends the next passes give mesh VIPs (and tunnel targets) to without
    /// a frontend: the backends of headless services.
    pub fn set_direct_remotes(&mut self, backends: Vec<MergedBackend>) {
        self.direct_remotes = backends;
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

    /// Makes the datapath equal to `desired`. `tunnel_address` says where a peer node's tunnel
    /// listens, from that peer's agent records.
    pub fn apply(
        &mut self,
        desired: &Desired,
        tunnel_address: impl Fn(&ClusterName, &str) -> Option<SocketAddr>,
    ) -> PassReport {
        let started = Instant::now();
        let mut report = PassReport::default();

        // Mesh VIPs for every active remote backend.
        let wanted: BTreeSet<RemoteKey> = desired
            .values()
            .flat_map(|f| f.active())
            .chain(self.direct_remotes.iter())
            .filter_map(|b| match &b.location {
                BackendLocation::Remote { cluster } => Some(RemoteKey {
                    cluster: cluster.clone(),
                    ip: b.addr.ip(),
                }),
                BackendLocation::Local => None,
            })
            .collect();
        for (key, error) in self.vips.sync(&wanted) {
            report
                .errors
                .push(format!("{}/{}: {error}", key.cluster, key.ip));
        }

        // The services to program, and the tunnel table they need.
        let mut table = TunnelTable::default();
        let mut services: BTreeMap<Frontend, Service> = BTreeMap::new();
        for (frontend, merged) in desired {
            let mut backends = Vec::new();
            for backend in merged.active() {
                let addr = match &backend.location {
                    BackendLocation::Local => backend.addr,
                    BackendLocation::Remote { cluster } => {
                        let key = RemoteKey {
                            cluster: cluster.clone(),
                            ip: backend.addr.ip(),
                        };
                        let Some(vip) = self.vips.get(&key) else {
                            continue;
                        };
                        let target = table.targets.entry(vip).or_insert_with(|| TunnelTarget {
                            cluster: cluster.clone(),
                            backend_ip: backend.addr.ip(),
                            ports: BTreeSet::new(),
                            node: backend.node.clone(),
                            tunnel_address: backend
                                .node
                                .as_deref()
                                .and_then(|n| tunnel_address(cluster, n)),
                        });
                        target.ports.insert(backend.addr.port());
                        SocketAddr::new(vip, backend.addr.port())
                    }
                };
                let cluster = match &backend.location {
                    BackendLocation::Local => String::new(),
                    BackendLocation::Remote { cluster } => cluster.to_string(),
                };
                *report.backends_by_cluster.entry(cluster).or_default() += 1;
                backends.push(addr);
            }
            backends.sort();
            backends.dedup();
            services.insert(
                *frontend,
                Service {
                    frontend: *frontend,
                    backends,
                    affinity: SessionAffinity::None,
                },
            );
        }

        for backend in &self.direct_remotes {
            let BackendLocation::Remote { cluster } = &backend.location else {
                continue;
            };
            let key = RemoteKey {
                cluster: cluster.clone(),
                ip: backend.addr.ip(),
            };
            let Some(vip) = self.vips.get(&key) else {
                continue;
            };
            let target = table.targets.entry(vip).or_insert_with(|| TunnelTarget {
                cluster: cluster.clone(),
                backend_ip: backend.addr.ip(),
                ports: BTreeSet::new(),
                node: backend.node.clone(),
                tunnel_address: backend
                    .node
                    .as_deref()
                    .and_then(|n| tunnel_address(cluster, n)),
            });
            target.ports.insert(backend.addr.port());
        }

        // New VIPs are known to the tunnel before a service sends connections to them.
        // Added in place: cloning the whole table to build the union costs more than the
        // pass's map writes once there are thousands of remote backends.
        self.tunnel.send_if_modified(|t| {
            let mut changed = false;
            for (vip, target) in &table.targets {
                if t.targets.get(vip) != Some(target) {
                    t.targets.insert(*vip, target.clone());
                    changed = true;
                }
            }
            changed
        });

        for (frontend, service) in &services {
            if self.current.get(frontend) == Some(service) {
                report.unchanged += 1;
                continue;
            }
            match self.table.upsert_service(service) {
                Ok(()) => {
                    self.current.insert(*frontend, service.clone());
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
        let gone: Vec<Frontend> = self
            .current
            .keys()
            .filter(|f| !services.contains_key(f))
            .copied()
            .collect();
        for frontend in gone {
            match self.table.delete_service(&frontend) {
                Ok(()) => {
                    self.current.remove(&frontend);
                    report.deleted += 1;
                }
                Err(source) => report
                    .errors
                    .push(ProgramError::Delete { frontend, source }.to_string()),
            }
        }

        // Only now may VIPs no service uses leave the tunnel's table.
        self.tunnel.send_if_modified(|t| {
            let changed = *t != table;
            *t = table;
            changed
        });
        report.duration = started.elapsed();
        report
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
}
