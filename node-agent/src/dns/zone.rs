//! The `clusterset.local` zone, without I/O: a [`DnsView`] built from the agent's merged view,
//! and [`resolve`], a function from the view and one question to the answer. Everything the
//! server says about the zone is decided here, so every rule is a table test.
//!
//! Names (KEP-1645, the Multi-Cluster Services API):
//! - `<svc>.<ns>.svc.<zone>` A/AAAA: the service's VIPs (its local cluster IPs, or the
//!   clusterset VIP the local apiserver allocated for a remote-only service); for a headless
//!   service, the ready backends of every cluster (remote ones as their mesh VIPs);
//! - `_<port>._<proto>.<svc>.<ns>.svc.<zone>` SRV for every named port: the service name as
//!   target, or for a headless service one record per backend, targeting
//! - `<hostname>.<cluster>.<svc>.<ns>.svc.<zone>` A/AAAA: one backend of a headless service in
//!   one cluster (the backend's hostname, or its address with dashes when it has none).
//!
//! Negative answers follow RFC 2308: a name that does not exist is NXDOMAIN, a name that exists
//! (or has names below it) without records of the asked type is NODATA; both carry the zone's
//! SOA in the authority section, its minimum set to the TTL so negative caching stays short.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use clustermesh_model::{ClusterName, GlobalService, Protocol};

use crate::merge::{MergeInput, ServiceName};

/// The default zone of clusterset names.
pub const DEFAULT_ZONE: &str = "clusterset.local.";

/// A named port of a service or backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    /// Lower case (DNS labels compare case-insensitively).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One ready backend of a headless service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsEndpoint {
    pub cluster: String,
    /// The label used in `<hostname>.<cluster>.<svc>...` (lower case).
    pub hostname: String,
    /// The address a client dials: the pod IP for a local backend, its mesh VIP for a remote one.
    pub address: IpAddr,
    pub ports: Vec<NamedPort>,
}

/// What DNS knows of one global service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsService {
    pub headless: bool,
    /// The service's VIPs (none for a headless service).
    pub vips: Vec<IpAddr>,
    /// The service's ports (named ones get SRV records).
    pub ports: Vec<NamedPort>,
    /// Ready backends of a headless service, every cluster's.
    pub endpoints: Vec<DnsEndpoint>,
}

/// Everything the zone answers from; replaced as a whole after every programming pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsView {
    /// False until the agent's first full sync: names in the zone get SERVFAIL meanwhile, so a
    /// client retries rather than caching a wrong NXDOMAIN.
    pub ready: bool,
    /// By (namespace, name), lower case.
    /// Shared (`Arc`) so that publishing a new view after a change copies pointers, not
    /// every service.
    pub services: BTreeMap<(String, String), Arc<DnsService>>,
}

/// `10.1.2.3` → `10-1-2-3`, `fd00::1` → `fd00--1`: a backend's label when it has no hostname.
pub fn address_label(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

fn named_ports<'a>(
    ports: impl Iterator<Item = (&'a String, &'a clustermesh_model::L4Port)>,
) -> Vec<NamedPort> {
    ports
        .map(|(name, p)| NamedPort {
            name: name.to_ascii_lowercase(),
            protocol: p.protocol,
            port: p.port,
        })
        .collect()
}

impl DnsView {
    /// Builds the view from the merge's input: the local services, every peer's effective
    /// services (shared ones, under the merge's sync rule) and the clusterset VIPs.
    /// `mesh_vip` gives the mesh VIP of a remote backend, if it has one.
    pub fn build(
        input: &MergeInput,
        local_cluster: &ClusterName,
        mesh_vip: impl Fn(&ClusterName, IpAddr) -> Option<IpAddr>,
    ) -> DnsView {
        let mut view = DnsView {
            ready: true,
            services: BTreeMap::new(),
        };
        view.update_services(input, &input.service_names(), local_cluster, mesh_vip);
        view
    }

    /// Rebuilds the named services' entries only (added, changed or removed): what a pass
    /// needs after a change to a few services. Returns whether any entry changed (a new
    /// backend of a service with a VIP changes nothing here).
    pub fn update_services(
        &mut self,
        input: &MergeInput,
        names: &BTreeSet<ServiceName>,
        local_cluster: &ClusterName,
        mesh_vip: impl Fn(&ClusterName, IpAddr) -> Option<IpAddr>,
    ) -> bool {
        let mut changed = false;
        for name in names {
            let key = (
                name.namespace.to_ascii_lowercase(),
                name.name.to_ascii_lowercase(),
            );
            match dns_service(input, name, local_cluster, &mesh_vip) {
                Some(service) => {
                    if self.services.get(&key).map(Arc::as_ref) != Some(&service) {
                        self.services.insert(key, Arc::new(service));
                        changed = true;
                    }
                }
                None => changed |= self.services.remove(&key).is_some(),
            }
        }
        changed
    }
}

/// One service's entry, or `None` if it has nothing to answer with.
fn dns_service(
    input: &MergeInput,
    name: &ServiceName,
    local_cluster: &ClusterName,
    mesh_vip: &impl Fn(&ClusterName, IpAddr) -> Option<IpAddr>,
) -> Option<DnsService> {
    let local = input.local.get(name).map(Arc::as_ref);
    let peers: Vec<(&ClusterName, &GlobalService, &crate::merge::PeerInput)> = input
        .peers
        .iter()
        .filter_map(|peer| {
            let service = peer.effective()?.get(name)?;
            service
                .shared
                .then_some((&peer.name, service.as_ref(), peer))
        })
        .collect();
    let first = local.or_else(|| peers.first().map(|(_, s, _)| *s))?;
    let headless = first.headless;
    let (vips, ports) = if headless {
        (Vec::new(), Vec::new())
    } else {
        let vips: Vec<IpAddr> = match local {
            Some(local) => local.frontends.iter().map(|f| f.ip).collect(),
            None => input.clusterset_vips.get(name).cloned().unwrap_or_default(),
        };
        let ports = first
            .frontends
            .first()
            .map(|f| named_ports(f.ports.iter()))
            .unwrap_or_default();
        (vips, ports)
    };
    if !headless && vips.is_empty() {
        // A remote-only service before its clusterset VIP exists: nothing to dial yet.
        return None;
    }
    let mut endpoints = Vec::new();
    if headless {
        let locals = local
            .into_iter()
            .flat_map(|s| s.backends.iter())
            .filter(|b| b.ready)
            .map(|b| (local_cluster, b, Some(b.ip)));
        let remotes = peers.iter().flat_map(|(cluster, s, peer)| {
            s.backends
                .iter()
                .filter(|b| b.ready && b.node.as_ref().is_some_and(|n| peer.live_nodes.contains(n)))
                .map(|b| (*cluster, b, mesh_vip(cluster, b.ip)))
        });
        for (cluster, backend, address) in locals.chain(remotes) {
            let Some(address) = address else { continue };
            endpoints.push(DnsEndpoint {
                cluster: cluster.to_string(),
                hostname: backend
                    .hostname
                    .as_deref()
                    .map(str::to_ascii_lowercase)
                    .unwrap_or_else(|| address_label(backend.ip)),
                address,
                ports: named_ports(backend.ports.iter()),
            });
        }
    }
    Some(DnsService {
        headless,
        vips,
        ports,
        endpoints,
    })
}

/// The ready TCP backends of peers' headless services on nodes with a live agent: clients get
/// their mesh VIPs from DNS and dial them directly, so they need mesh VIPs and tunnel targets
/// without any service frontend (see `Programmer::set_direct_remotes`).
pub fn headless_remote_backends(input: &MergeInput) -> Vec<crate::merge::MergedBackend> {
    let mut out = Vec::new();
    for peer in &input.peers {
        for service in peer.effective().into_iter().flat_map(|s| s.values()) {
            if !(service.shared && service.headless) {
                continue;
            }
            for backend in &service.backends {
                let live = backend
                    .node
                    .as_ref()
                    .is_some_and(|n| peer.live_nodes.contains(n));
                if !(backend.ready && live) {
                    continue;
                }
                for port in backend.ports.values() {
                    if port.protocol != Protocol::Tcp {
                        continue; // the tunnel carries TCP streams only
                    }
                    out.push(crate::merge::MergedBackend {
                        location: crate::merge::BackendLocation::Remote {
                            cluster: peer.name.clone(),
                        },
                        addr: std::net::SocketAddr::new(backend.ip, port.port),
                        node: backend.node.clone(),
                        active: true,
                    });
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// What to do with a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// Not in the zone: ask the upstream.
    Forward,
    Answer(ZoneAnswer),
}

/// An authoritative answer from the zone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ZoneAnswer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    /// The SOA of a negative answer.
    pub authorities: Vec<Record>,
    /// Addresses of SRV targets.
    pub additionals: Vec<Record>,
}

/// The zone's settings.
#[derive(Debug, Clone)]
pub struct Zone {
    pub origin: Name,
    pub ttl: u32,
}

impl Zone {
    pub fn new(origin: &str, ttl: u32) -> Result<Zone, hickory_proto::ProtoError> {
        let mut origin = Name::from_ascii(origin)?.to_lowercase();
        origin.set_fqdn(true);
        Ok(Zone { origin, ttl })
    }

    fn soa(&self) -> Record {
        let mname = Name::from_ascii("ns.dns")
            .and_then(|n| n.append_domain(&self.origin))
            .unwrap_or_else(|_| self.origin.clone());
        let rname = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(&self.origin))
            .unwrap_or_else(|_| self.origin.clone());
        // A constant serial: the zone has no transfers, and every answer is from the live view.
        let soa = SOA::new(mname, rname, 1, 7200, 1800, 86400, self.ttl);
        Record::from_rdata(self.origin.clone(), self.ttl, RData::SOA(soa))
    }

    fn negative(&self, rcode: ResponseCode) -> ZoneAnswer {
        ZoneAnswer {
            rcode,
            authorities: vec![self.soa()],
            ..ZoneAnswer::default()
        }
    }

    fn address_records(
        &self,
        owner: &Name,
        ips: impl Iterator<Item = IpAddr>,
        qtype: RecordType,
    ) -> Vec<Record> {
        ips.filter_map(|ip| match (ip, qtype) {
            (IpAddr::V4(v4), RecordType::A) => Some(RData::A(A(v4))),
            (IpAddr::V6(v6), RecordType::AAAA) => Some(RData::AAAA(AAAA(v6))),
            _ => None,
        })
        .map(|rdata| Record::from_rdata(owner.clone(), self.ttl, rdata))
        .collect()
    }

    /// Records if there are any, else NODATA (the name exists).
    fn records_or_nodata(&self, answers: Vec<Record>, additionals: Vec<Record>) -> ZoneAnswer {
        if answers.is_empty() {
            return self.negative(ResponseCode::NoError);
        }
        ZoneAnswer {
            rcode: ResponseCode::NoError,
            answers,
            authorities: Vec::new(),
            additionals,
        }
    }
}

fn protocol_label(label: &str) -> Option<Protocol> {
    match label {
        "_tcp" => Some(Protocol::Tcp),
        "_udp" => Some(Protocol::Udp),
        "_sctp" => Some(Protocol::Sctp),
        _ => None,
    }
}

/// Answers one question. `qname` may be in any case; answers use the lower-case name.
pub fn resolve(zone: &Zone, view: &DnsView, qname: &Name, qtype: RecordType) -> Resolution {
    let qname = qname.to_lowercase();
    if !zone.origin.zone_of(&qname) {
        return Resolution::Forward;
    }
    if !view.ready {
        return Resolution::Answer(ZoneAnswer {
            rcode: ResponseCode::ServFail,
            ..ZoneAnswer::default()
        });
    }
    let owner = {
        let mut n = qname.clone();
        n.set_fqdn(true);
        n
    };
    // The labels left of the origin, right to left: [svc-label, ns, svc, ...].
    let extra = usize::from(qname.num_labels()) - usize::from(zone.origin.num_labels());
    let labels: Vec<String> = qname
        .iter()
        .take(extra)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .rev()
        .collect();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let nx = || Resolution::Answer(zone.negative(ResponseCode::NXDomain));
    let nodata = || Resolution::Answer(zone.negative(ResponseCode::NoError));
    let answer = match labels.as_slice() {
        [] => {
            if qtype == RecordType::SOA {
                return Resolution::Answer(ZoneAnswer {
                    rcode: ResponseCode::NoError,
                    answers: vec![zone.soa()],
                    ..ZoneAnswer::default()
                });
            }
            return nodata();
        }
        ["svc"] => {
            return if view.services.is_empty() {
                nx()
            } else {
                nodata()
            };
        }
        ["svc", ns] => {
            let any = view.services.keys().any(|(n, _)| n == ns);
            return if any { nodata() } else { nx() };
        }
        ["svc", ns, svc, rest @ ..] => {
            let Some(service) = view.services.get(&((*ns).to_owned(), (*svc).to_owned())) else {
                return nx();
            };
            let service_name = || {
                let mut n = qname.trim_to(usize::from(zone.origin.num_labels()) + 3);
                n.set_fqdn(true);
                n
            };
            match rest {
                [] => {
                    let ips: Vec<IpAddr> = if service.headless {
                        service.endpoints.iter().map(|e| e.address).collect()
                    } else {
                        service.vips.clone()
                    };
                    zone.records_or_nodata(
                        zone.address_records(&owner, ips.into_iter(), qtype),
                        Vec::new(),
                    )
                }
                [proto] if proto.starts_with('_') => {
                    let Some(protocol) = protocol_label(proto) else {
                        return nx();
                    };
                    let ports = if service.headless {
                        service
                            .endpoints
                            .iter()
                            .flat_map(|e| e.ports.iter())
                            .collect::<Vec<_>>()
                    } else {
                        service.ports.iter().collect()
                    };
                    if ports
                        .iter()
                        .any(|p| p.protocol == protocol && !p.name.is_empty())
                    {
                        return nodata();
                    }
                    return nx();
                }
                [proto, port] if proto.starts_with('_') && port.starts_with('_') => {
                    let Some(protocol) = protocol_label(proto) else {
                        return nx();
                    };
                    let port_name = &port[1..];
                    let matches = |p: &&NamedPort| {
                        p.protocol == protocol && p.name == port_name && !p.name.is_empty()
                    };
                    let mut answers = Vec::new();
                    let mut additionals = Vec::new();
                    if service.headless {
                        let offered = service
                            .endpoints
                            .iter()
                            .any(|e| e.ports.iter().any(|p| matches(&p)));
                        if !offered {
                            return nx();
                        }
                        for endpoint in &service.endpoints {
                            let Some(p) = endpoint.ports.iter().find(matches) else {
                                continue;
                            };
                            let Ok(target) = Name::from_ascii(format!(
                                "{}.{}",
                                endpoint.hostname, endpoint.cluster
                            ))
                            .and_then(|n| n.append_domain(&service_name())) else {
                                continue;
                            };
                            if qtype == RecordType::SRV {
                                answers.push(Record::from_rdata(
                                    owner.clone(),
                                    zone.ttl,
                                    RData::SRV(SRV::new(0, 100, p.port, target.clone())),
                                ));
                                for t in [RecordType::A, RecordType::AAAA] {
                                    additionals.extend(zone.address_records(
                                        &target,
                                        std::iter::once(endpoint.address),
                                        t,
                                    ));
                                }
                            }
                        }
                    } else {
                        let Some(p) = service.ports.iter().find(matches) else {
                            return nx();
                        };
                        if qtype == RecordType::SRV {
                            let target = service_name();
                            answers.push(Record::from_rdata(
                                owner.clone(),
                                zone.ttl,
                                RData::SRV(SRV::new(0, 100, p.port, target.clone())),
                            ));
                            for t in [RecordType::A, RecordType::AAAA] {
                                additionals.extend(zone.address_records(
                                    &target,
                                    service.vips.iter().copied(),
                                    t,
                                ));
                            }
                        }
                    }
                    zone.records_or_nodata(answers, additionals)
                }
                [cluster] if service.headless => {
                    if service.endpoints.iter().any(|e| e.cluster == *cluster) {
                        return nodata();
                    }
                    return nx();
                }
                [cluster, hostname] if service.headless => {
                    let ips: Vec<IpAddr> = service
                        .endpoints
                        .iter()
                        .filter(|e| e.cluster == *cluster && e.hostname == *hostname)
                        .map(|e| e.address)
                        .collect();
                    if ips.is_empty() {
                        return nx();
                    }
                    zone.records_or_nodata(
                        zone.address_records(&owner, ips.into_iter(), qtype),
                        Vec::new(),
                    )
                }
                _ => return nx(),
            }
        }
        _ => return nx(),
    };
    Resolution::Answer(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clustermesh_model::{Backend, ClusterId, Frontend, L4Port, MaxConnectedClusters, Ports};

    use crate::merge::{PeerInput, ServiceMap};

    fn cluster(name: &str) -> ClusterName {
        ClusterName::new(name).unwrap()
    }

    fn ports(named: &[(&str, Protocol, u16)]) -> Ports {
        named
            .iter()
            .map(|(n, protocol, port)| {
                (
                    (*n).to_owned(),
                    L4Port {
                        protocol: *protocol,
                        port: *port,
                    },
                )
            })
            .collect()
    }

    /// `demo/<name>` of `cluster`: frontends `vips` (none: headless) on port http/80, backends
    /// `(ip, hostname, node)` on http/8080.
    fn service(
        cluster_name: &str,
        name: &str,
        vips: &[&str],
        backends: &[(&str, Option<&str>, &str)],
    ) -> Arc<GlobalService> {
        Arc::new(GlobalService {
            cluster: cluster(cluster_name),
            cluster_id: ClusterId::new(1, MaxConnectedClusters::Max255).unwrap(),
            namespace: "demo".into(),
            name: name.into(),
            frontends: vips
                .iter()
                .map(|ip| Frontend {
                    ip: ip.parse().unwrap(),
                    ports: ports(&[("http", Protocol::Tcp, 80), ("", Protocol::Udp, 53)]),
                })
                .collect(),
            backends: backends
                .iter()
                .map(|(ip, hostname, node)| Backend {
                    ip: ip.parse().unwrap(),
                    ports: ports(&[("http", Protocol::Tcp, 8080)]),
                    node: Some((*node).into()),
                    zone: None,
                    hostname: hostname.map(str::to_owned),
                    ready: true,
                })
                .collect(),
            shared: true,
            affinity: Default::default(),
            include_external: false,
            modified_unix_millis: None,
            headless: vips.is_empty(),
            labels: Default::default(),
            selector: Default::default(),
        })
    }

    fn map(services: Vec<Arc<GlobalService>>) -> ServiceMap {
        services
            .into_iter()
            .map(|s| (ServiceName::of(&s), s))
            .collect()
    }

    fn view() -> DnsView {
        let east = map(vec![
            service(
                "east",
                "remote-only",
                &["10.96.9.9"],
                &[("10.2.0.1", None, "e1")],
            ),
            service(
                "east",
                "db",
                &[],
                &[
                    ("10.2.0.5", Some("db-0"), "e1"),
                    ("10.2.0.6", Some("db-1"), "dead"),
                ],
            ),
        ]);
        let input = MergeInput {
            local: map(vec![
                service(
                    "west",
                    "echo",
                    &["10.96.0.10", "fd00:96::10"],
                    &[("10.1.0.1", None, "w1")],
                ),
                service("west", "db", &[], &[("10.1.0.5", Some("db-0"), "w1")]),
            ]),
            peers: vec![PeerInput {
                name: cluster("east"),
                synced: true,
                current: Arc::new(east),
                last_synced: None,
                live_nodes: ["e1".to_owned()].into(),
            }],
            clusterset_vips: BTreeMap::from([(
                ServiceName::new("demo", "remote-only"),
                vec!["10.255.0.1".parse().unwrap()],
            )]),
        };
        DnsView::build(&input, &cluster("west"), |c, ip| {
            (c.as_str() == "east").then(|| match ip.to_string().as_str() {
                "10.2.0.5" => "100.64.0.5".parse().unwrap(),
                _ => "100.64.0.99".parse().unwrap(),
            })
        })
    }

    fn ask(name: &str, qtype: RecordType) -> Resolution {
        let zone = Zone::new(DEFAULT_ZONE, 5).unwrap();
        resolve(&zone, &view(), &Name::from_ascii(name).unwrap(), qtype)
    }

    /// (rcode, answers as text, has SOA in authority).
    fn text(r: Resolution) -> (ResponseCode, Vec<String>, bool) {
        let Resolution::Answer(a) = r else {
            panic!("forwarded")
        };
        let answers = a
            .answers
            .iter()
            .map(|r| format!("{} {} {}", r.name, r.ttl, r.data))
            .collect();
        let soa = a
            .authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA);
        (a.rcode, answers, soa)
    }

    #[test]
    fn a_service_resolves_to_its_vips_by_family() {
        assert_eq!(
            text(ask("echo.demo.svc.clusterset.local.", RecordType::A)),
            (
                ResponseCode::NoError,
                vec!["echo.demo.svc.clusterset.local. 5 10.96.0.10".to_owned()],
                false
            )
        );
        assert_eq!(
            text(ask("ECHO.Demo.svc.clusterset.local", RecordType::AAAA)).1,
            ["echo.demo.svc.clusterset.local. 5 fd00:96::10"]
        );
    }

    #[test]
    fn a_remote_only_service_resolves_to_its_clusterset_vip() {
        assert_eq!(
            text(ask("remote-only.demo.svc.clusterset.local.", RecordType::A)).1,
            ["remote-only.demo.svc.clusterset.local. 5 10.255.0.1"]
        );
        // No IPv6 clusterset VIP: NODATA, not NXDOMAIN.
        assert_eq!(
            text(ask(
                "remote-only.demo.svc.clusterset.local.",
                RecordType::AAAA
            )),
            (ResponseCode::NoError, vec![], true)
        );
    }

    #[test]
    fn named_ports_have_srv_records() {
        let (rcode, answers, _) = text(ask(
            "_http._tcp.echo.demo.svc.clusterset.local.",
            RecordType::SRV,
        ));
        assert_eq!(rcode, ResponseCode::NoError);
        assert_eq!(
            answers,
            [
                "_http._tcp.echo.demo.svc.clusterset.local. 5 0 100 80 echo.demo.svc.clusterset.local."
            ]
        );
        // The wrong protocol, an unknown port: NXDOMAIN; a port name asked for A: NODATA.
        for name in [
            "_http._udp.echo.demo.svc.clusterset.local.",
            "_grpc._tcp.echo.demo.svc.clusterset.local.",
            "_http._xyz.echo.demo.svc.clusterset.local.",
        ] {
            assert_eq!(
                text(ask(name, RecordType::SRV)).0,
                ResponseCode::NXDomain,
                "{name}"
            );
        }
        assert_eq!(
            text(ask(
                "_http._tcp.echo.demo.svc.clusterset.local.",
                RecordType::A
            )),
            (ResponseCode::NoError, vec![], true)
        );
        // `_tcp.<svc>` has names below it.
        assert_eq!(
            text(ask("_tcp.echo.demo.svc.clusterset.local.", RecordType::SRV)).0,
            ResponseCode::NoError
        );
    }

    #[test]
    fn a_headless_service_answers_with_ready_backends_of_every_cluster() {
        let (_, mut answers, _) = text(ask("db.demo.svc.clusterset.local.", RecordType::A));
        answers.sort();
        // West's own backend by pod IP; east's live one by mesh VIP; east's backend on a dead
        // node is left out.
        assert_eq!(
            answers,
            [
                "db.demo.svc.clusterset.local. 5 10.1.0.5",
                "db.demo.svc.clusterset.local. 5 100.64.0.5",
            ]
        );
        let (_, mut srv, _) = text(ask(
            "_http._tcp.db.demo.svc.clusterset.local.",
            RecordType::SRV,
        ));
        srv.sort();
        assert_eq!(
            srv,
            [
                "_http._tcp.db.demo.svc.clusterset.local. 5 0 100 8080 db-0.east.db.demo.svc.clusterset.local.",
                "_http._tcp.db.demo.svc.clusterset.local. 5 0 100 8080 db-0.west.db.demo.svc.clusterset.local.",
            ]
        );
    }

    #[test]
    fn a_pod_of_a_headless_service_in_a_given_cluster() {
        assert_eq!(
            text(ask(
                "db-0.east.db.demo.svc.clusterset.local.",
                RecordType::A
            ))
            .1,
            ["db-0.east.db.demo.svc.clusterset.local. 5 100.64.0.5"]
        );
        assert_eq!(
            text(ask(
                "db-0.west.db.demo.svc.clusterset.local.",
                RecordType::A
            ))
            .1,
            ["db-0.west.db.demo.svc.clusterset.local. 5 10.1.0.5"]
        );
        assert_eq!(
            text(ask(
                "db-1.east.db.demo.svc.clusterset.local.",
                RecordType::A
            ))
            .0,
            ResponseCode::NXDomain,
            "db-1 runs on a dead node"
        );
        assert_eq!(
            text(ask("east.db.demo.svc.clusterset.local.", RecordType::A)),
            (ResponseCode::NoError, vec![], true),
            "a cluster label with pods below it exists"
        );
        assert_eq!(
            text(ask("north.db.demo.svc.clusterset.local.", RecordType::A)).0,
            ResponseCode::NXDomain
        );
        // Per-cluster names exist only for headless services.
        assert_eq!(
            text(ask("x.west.echo.demo.svc.clusterset.local.", RecordType::A)).0,
            ResponseCode::NXDomain
        );
    }

    #[test]
    fn negative_answers_distinguish_nxdomain_from_nodata() {
        for (name, qtype, rcode) in [
            (
                "nope.demo.svc.clusterset.local.",
                RecordType::A,
                ResponseCode::NXDomain,
            ),
            (
                "echo.other.svc.clusterset.local.",
                RecordType::A,
                ResponseCode::NXDomain,
            ),
            (
                "echo.demo.pod.clusterset.local.",
                RecordType::A,
                ResponseCode::NXDomain,
            ),
            (
                "echo.demo.svc.clusterset.local.",
                RecordType::TXT,
                ResponseCode::NoError,
            ),
            (
                "echo.demo.svc.clusterset.local.",
                RecordType::SRV,
                ResponseCode::NoError,
            ),
            (
                "demo.svc.clusterset.local.",
                RecordType::A,
                ResponseCode::NoError,
            ),
            (
                "svc.clusterset.local.",
                RecordType::A,
                ResponseCode::NoError,
            ),
            ("clusterset.local.", RecordType::A, ResponseCode::NoError),
        ] {
            let (got, answers, soa) = text(ask(name, qtype));
            assert_eq!(
                (got, answers.len(), soa),
                (rcode, 0, true),
                "{name} {qtype}"
            );
        }
        let (rcode, answers, _) = text(ask("clusterset.local.", RecordType::SOA));
        assert_eq!(rcode, ResponseCode::NoError);
        assert!(
            answers[0].contains("hostmaster.clusterset.local."),
            "{answers:?}"
        );
        // The SOA's minimum (negative TTL) is the record TTL.
        let Resolution::Answer(a) = ask("nope.demo.svc.clusterset.local.", RecordType::A) else {
            panic!()
        };
        let RData::SOA(soa) = &a.authorities[0].data else {
            panic!()
        };
        assert_eq!(soa.minimum, 5);
    }

    #[test]
    fn other_names_are_forwarded_and_an_unready_view_fails_softly() {
        assert_eq!(ask("example.com.", RecordType::A), Resolution::Forward);
        assert_eq!(
            ask("kubernetes.default.svc.cluster.local.", RecordType::A),
            Resolution::Forward
        );
        let zone = Zone::new(DEFAULT_ZONE, 5).unwrap();
        let r = resolve(
            &zone,
            &DnsView::default(),
            &Name::from_ascii("echo.demo.svc.clusterset.local.").unwrap(),
            RecordType::A,
        );
        assert_eq!(text(r).0, ResponseCode::ServFail);
    }

    #[test]
    fn headless_remote_backends_need_mesh_vips() {
        let input = MergeInput {
            peers: vec![PeerInput {
                name: cluster("east"),
                synced: true,
                current: Arc::new(map(vec![
                    service(
                        "east",
                        "db",
                        &[],
                        &[("10.2.0.5", None, "e1"), ("10.2.0.6", None, "dead")],
                    ),
                    service("east", "echo", &["10.96.0.1"], &[("10.2.0.7", None, "e1")]),
                ])),
                last_synced: None,
                live_nodes: ["e1".to_owned()].into(),
            }],
            ..MergeInput::default()
        };
        let backends: Vec<String> = headless_remote_backends(&input)
            .iter()
            .map(|b| b.addr.to_string())
            .collect();
        assert_eq!(backends, ["10.2.0.5:8080"]);
    }

    #[test]
    fn a_remote_only_service_without_a_vip_is_not_in_the_view() {
        let mut input = MergeInput::default();
        input.peers.push(PeerInput {
            name: cluster("east"),
            synced: true,
            current: Arc::new(map(vec![service("east", "x", &["10.96.0.1"], &[])])),
            last_synced: None,
            live_nodes: Default::default(),
        });
        let view = DnsView::build(&input, &cluster("west"), |_, _| None);
        assert!(view.services.is_empty());
        input.clusterset_vips.insert(
            ServiceName::new("demo", "x"),
            vec!["10.255.0.3".parse().unwrap()],
        );
        let view = DnsView::build(&input, &cluster("west"), |_, _| None);
        assert_eq!(
            view.services[&("demo".to_owned(), "x".to_owned())]
                .vips
                .len(),
            1
        );
    }
}
