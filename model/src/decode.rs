//! Strict decoding of what another cluster (or another process) wrote into etcd.
//!
//! A value is accepted only if its key parses, it names the cluster it was read for (in the key,
//! in the value, and by ID), every address, CIDR and port is well formed, and it stays within the
//! size limits. Anything else is a typed `DecodeError`, so the caller can count it by reason and
//! keep its last good state. No input makes these functions panic (see the proptests).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::cluster::{ClusterError, ClusterId, ClusterName, IdentityId, MaxConnectedClusters};
use crate::keys::{Key, KeyError, KeySchema, ObjectName};
use crate::names::{is_dns_label, is_dns_subdomain};
use crate::values::*;
use crate::wire;

/// Bounds on what one value may hold, so a peer cannot make us allocate without limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_value_bytes: usize,
    pub max_frontends: usize,
    pub max_backends: usize,
    pub max_ports_per_address: usize,
    pub max_labels: usize,
    pub max_addresses: usize,
    pub max_pod_cidrs: usize,
    /// Longest free-text field (zones, hostnames, fingerprints, boot IDs, label values).
    pub max_text_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // etcd refuses requests over 1.5 MiB by default; a value near that is a mistake.
            max_value_bytes: 1024 * 1024,
            max_frontends: 16,
            max_backends: 10_000,
            max_ports_per_address: 128,
            max_labels: 64,
            max_addresses: 16,
            max_pod_cidrs: 8,
            max_text_bytes: 317,
        }
    }
}

/// The cluster a value is read for: a configured peer, or the local cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedCluster {
    pub name: ClusterName,
    pub id: ClusterId,
    pub mesh: MaxConnectedClusters,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("value is {len} bytes, over the limit of {limit}")]
    Oversize { len: usize, limit: usize },
    #[error("value is not valid JSON for a {what}: {reason}")]
    Json { what: &'static str, reason: String },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("key {0:?} does not hold a state value")]
    NotAStateKey(String),
    #[error("key belongs to cluster {found:?}, but it was read for cluster {expected:?}")]
    UnexpectedCluster { expected: String, found: String },
    #[error("value names cluster {value:?}, but its key names cluster {key:?}")]
    ClusterNameMismatch { key: String, value: String },
    #[error("value names cluster {0:?}, which is not a valid cluster name")]
    BadClusterName(String),
    #[error("cluster ID in the value: {0}")]
    ClusterIdOutOfRange(ClusterError),
    #[error("value carries cluster ID {found}, but cluster {cluster:?} has ID {expected}")]
    ClusterIdMismatch {
        cluster: String,
        expected: u16,
        found: u64,
    },
    #[error("{field} {value:?} is not a valid IP address")]
    BadIp { field: &'static str, value: String },
    #[error("{field} {value:?} is not a valid CIDR")]
    BadCidr { field: &'static str, value: String },
    #[error("{field} has port {value}; ports must be 1..=65535")]
    BadPort { field: String, value: u64 },
    #[error("{field} has protocol {value:?}; expected TCP, UDP or SCTP")]
    BadProtocol { field: String, value: String },
    #[error("{what}: {count} entries, over the limit of {limit}")]
    TooMany {
        what: &'static str,
        count: usize,
        limit: usize,
    },
    #[error("{field} in the value is {value:?}, but the key says {key:?}")]
    ObjectMismatch {
        field: &'static str,
        key: String,
        value: String,
    },
    #[error("{field} {value:?} is not valid: {reason}")]
    BadField {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("identity {id}: {source}")]
    BadIdentity { id: u64, source: ClusterError },
    #[error("identity {id} belongs to cluster ID {owner}, not to {cluster:?} (ID {cluster_id})")]
    ForeignIdentity {
        id: u32,
        owner: u16,
        cluster: String,
        cluster_id: u16,
    },
}

impl DecodeError {
    /// A short stable name for metrics labels (`rejected_total{reason="..."}`).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Oversize { .. } => "oversize",
            DecodeError::Json { .. } => "json",
            DecodeError::Key(KeyError::UnknownSchemaVersion { .. }) => "schema_version",
            DecodeError::Key(_) | DecodeError::NotAStateKey(_) => "key",
            DecodeError::UnexpectedCluster { .. } => "unexpected_cluster",
            DecodeError::ClusterNameMismatch { .. } | DecodeError::BadClusterName(_) => {
                "cluster_name"
            }
            DecodeError::ClusterIdOutOfRange(_) | DecodeError::ClusterIdMismatch { .. } => {
                "cluster_id"
            }
            DecodeError::BadIp { .. } | DecodeError::BadCidr { .. } => "address",
            DecodeError::BadPort { .. } | DecodeError::BadProtocol { .. } => "port",
            DecodeError::TooMany { .. } => "too_many",
            DecodeError::ObjectMismatch { .. } => "object_mismatch",
            DecodeError::BadField { .. } => "field",
            DecodeError::BadIdentity { .. } | DecodeError::ForeignIdentity { .. } => "identity",
        }
    }
}

/// Decodes a value found under a `state/` key (the publishing cluster's own etcd), a `cache/`
/// key (the local mirror of a peer) or a `local/` key, read for `expected`.
pub fn decode_state(
    schema: &KeySchema,
    key: &str,
    value: &[u8],
    expected: &ExpectedCluster,
    limits: &Limits,
) -> Result<(Key, StateValue), DecodeError> {
    check_size(value, limits)?;
    let parsed = schema.parse(key)?;
    let (cluster, object) = match &parsed {
        Key::State { cluster, object } => (cluster, object),
        Key::Cache { remote, object } => (remote, object),
        Key::Local { cluster, object } => (cluster, object),
        _ => return Err(DecodeError::NotAStateKey(key.to_owned())),
    };
    if *cluster != expected.name {
        return Err(DecodeError::UnexpectedCluster {
            expected: expected.name.to_string(),
            found: cluster.to_string(),
        });
    }
    let value = match object {
        ObjectName::Service { namespace, name } => {
            let w: wire::ServiceWire = parse_json(value, "global service")?;
            let svc = service(w, expected, limits)?;
            same("namespace", namespace, &svc.namespace)?;
            same("name", name, &svc.name)?;
            StateValue::Service(svc)
        }
        ObjectName::Endpoint(ip) => {
            let ep = endpoint(parse_json(value, "endpoint")?, expected, limits)?;
            same("ip", &ip.to_string(), &ep.ip.to_string())?;
            StateValue::Endpoint(ep)
        }
        ObjectName::Identity(id) => {
            let identity = identity(parse_json(value, "identity")?, expected, limits)?;
            same("id", &id.to_string(), &identity.id.to_string())?;
            StateValue::Identity(identity)
        }
        ObjectName::Node(name) => {
            let node = node(parse_json(value, "node")?, expected, limits)?;
            same("name", name, &node.name)?;
            StateValue::Node(node)
        }
        ObjectName::Agent(name) => {
            let agent = agent(parse_json(value, "agent record")?, expected, limits)?;
            same("node", name, &agent.node)?;
            StateValue::Agent(agent)
        }
    };
    Ok((parsed, value))
}

/// Decodes `cluster-config/<name>`. The ID is not known before this is read, so only the name is
/// checked against what was expected; the returned ID is what later values are checked against.
pub fn decode_cluster_config(
    schema: &KeySchema,
    key: &str,
    value: &[u8],
    expected: &ClusterName,
    limits: &Limits,
) -> Result<ClusterConfig, DecodeError> {
    check_size(value, limits)?;
    let Key::ClusterConfig(key_cluster) = schema.parse(key)? else {
        return Err(DecodeError::Key(KeyError::UnknownLayout(key.to_owned())));
    };
    if key_cluster != *expected {
        return Err(DecodeError::UnexpectedCluster {
            expected: expected.to_string(),
            found: key_cluster.to_string(),
        });
    }
    let w: wire::ClusterConfigWire = parse_json(value, "cluster config")?;
    let cluster = cluster_name(&w.cluster, &key_cluster)?;
    let caps = w.capabilities.unwrap_or(wire::CapabilitiesWire {
        max_connected_clusters: 255,
        synced_canaries: false,
        cached: false,
    });
    let mesh = u32::try_from(caps.max_connected_clusters)
        .ok()
        .and_then(|m| MaxConnectedClusters::try_from(m).ok())
        .ok_or(DecodeError::BadField {
            field: "capabilities.maxConnectedClusters",
            value: caps.max_connected_clusters.to_string(),
            reason: "must be 255 or 511",
        })?;
    let id = u32::try_from(w.id)
        .map_err(|_| ClusterError::IdOutOfRange {
            id: u32::MAX,
            max: mesh.max_cluster_id(),
        })
        .and_then(|id| ClusterId::new(id, mesh))
        .map_err(DecodeError::ClusterIdOutOfRange)?;
    if let Some(fp) = &w.ca_fingerprint {
        check_fingerprint("caFingerprint", fp)?;
    }
    Ok(ClusterConfig {
        cluster,
        id,
        max_connected_clusters: mesh,
        synced_canaries: caps.synced_canaries,
        ca_fingerprint: w.ca_fingerprint,
    })
}

/// Decodes a clusterset VIP (`local/clusterset-vips/v1/<cluster>/<ns>/<name>`) of `expected`,
/// the local cluster: the key, the value's cluster name and ID, the service name, and one or two
/// addresses (at most one per family, neither unspecified nor multicast).
pub fn decode_clusterset_vip(
    schema: &KeySchema,
    key: &str,
    value: &[u8],
    expected: &ExpectedCluster,
    limits: &Limits,
) -> Result<ClustersetVip, DecodeError> {
    check_size(value, limits)?;
    let Key::ClustersetVip {
        cluster: key_cluster,
        namespace,
        name,
    } = schema.parse(key)?
    else {
        return Err(DecodeError::Key(KeyError::UnknownLayout(key.to_owned())));
    };
    if key_cluster != expected.name {
        return Err(DecodeError::UnexpectedCluster {
            expected: expected.name.to_string(),
            found: key_cluster.to_string(),
        });
    }
    let w: wire::ClustersetVipWire = parse_json(value, "clusterset VIP")?;
    let cluster = cluster_name(&w.cluster, &key_cluster)?;
    let cluster_id = cluster_id(w.cluster_id, expected)?;
    same("namespace", &namespace, &w.namespace)?;
    same("name", &name, &w.name)?;
    limit("clusterset VIP addresses", w.ips.len(), 2)?;
    let mut ips = Vec::with_capacity(w.ips.len());
    for s in &w.ips {
        ips.push(ip("clusterset VIP", s)?);
    }
    let v4 = ips.iter().filter(|ip| ip.is_ipv4()).count();
    if ips.is_empty() || v4 > 1 || ips.len() - v4 > 1 {
        return Err(DecodeError::BadField {
            field: "ips",
            value: w.ips.join(","),
            reason: "expected one IPv4 and/or one IPv6 address",
        });
    }
    ips.sort_by_key(|ip| ip.is_ipv6());
    Ok(ClustersetVip {
        cluster,
        cluster_id,
        namespace,
        name,
        ips,
    })
}

/// Decodes a heartbeat or a synced marker written by `expected`.
pub fn decode_marker(
    value: &[u8],
    expected: &ExpectedCluster,
    limits: &Limits,
) -> Result<Marker, DecodeError> {
    check_size(value, limits)?;
    let w: wire::MarkerWire = parse_json(value, "marker")?;
    let cluster = cluster_name(&w.cluster, &expected.name)?;
    let cluster_id = cluster_id(w.cluster_id, expected)?;
    Ok(Marker {
        cluster,
        cluster_id,
        unix_millis: w.unix_millis,
    })
}

fn check_size(value: &[u8], limits: &Limits) -> Result<(), DecodeError> {
    if value.len() > limits.max_value_bytes {
        return Err(DecodeError::Oversize {
            len: value.len(),
            limit: limits.max_value_bytes,
        });
    }
    Ok(())
}

fn parse_json<T: serde::de::DeserializeOwned>(
    value: &[u8],
    what: &'static str,
) -> Result<T, DecodeError> {
    serde_json::from_slice(value).map_err(|e| DecodeError::Json {
        what,
        reason: e.to_string(),
    })
}

fn same(field: &'static str, key: &str, value: &str) -> Result<(), DecodeError> {
    if key != value {
        return Err(DecodeError::ObjectMismatch {
            field,
            key: key.to_owned(),
            value: value.to_owned(),
        });
    }
    Ok(())
}

fn cluster_name(value: &str, key: &ClusterName) -> Result<ClusterName, DecodeError> {
    let name =
        ClusterName::new(value).map_err(|_| DecodeError::BadClusterName(value.to_owned()))?;
    if name != *key {
        return Err(DecodeError::ClusterNameMismatch {
            key: key.to_string(),
            value: value.to_owned(),
        });
    }
    Ok(name)
}

fn cluster_id(found: u64, expected: &ExpectedCluster) -> Result<ClusterId, DecodeError> {
    let max = expected.mesh.max_cluster_id();
    let id = u32::try_from(found)
        .ok()
        .filter(|id| (1..=u32::from(max)).contains(id))
        .ok_or(DecodeError::ClusterIdOutOfRange(
            ClusterError::IdOutOfRange {
                id: u32::try_from(found).unwrap_or(u32::MAX),
                max,
            },
        ))?;
    if id != u32::from(expected.id.get()) {
        return Err(DecodeError::ClusterIdMismatch {
            cluster: expected.name.to_string(),
            expected: expected.id.get(),
            found,
        });
    }
    Ok(expected.id)
}

fn ip(field: &'static str, s: &str) -> Result<IpAddr, DecodeError> {
    let ip: IpAddr = s.parse().map_err(|_| DecodeError::BadIp {
        field,
        value: s.to_owned(),
    })?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(DecodeError::BadIp {
            field,
            value: s.to_owned(),
        });
    }
    Ok(ip)
}

fn limit(what: &'static str, count: usize, limit: usize) -> Result<(), DecodeError> {
    if count > limit {
        return Err(DecodeError::TooMany { what, count, limit });
    }
    Ok(())
}

fn text(
    field: &'static str,
    s: &str,
    limits: &Limits,
    valid: fn(&str) -> bool,
    reason: &'static str,
) -> Result<String, DecodeError> {
    if s.len() > limits.max_text_bytes || !valid(s) {
        return Err(DecodeError::BadField {
            field,
            value: s.chars().take(80).collect(),
            reason,
        });
    }
    Ok(s.to_owned())
}

fn printable(s: &str) -> bool {
    !s.chars().any(char::is_control)
}

fn check_fingerprint(field: &'static str, s: &str) -> Result<(), DecodeError> {
    let ok = s
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()));
    if !ok {
        return Err(DecodeError::BadField {
            field,
            value: s.chars().take(80).collect(),
            reason: "expected sha256:<64 hex digits>",
        });
    }
    Ok(())
}

fn ports(owner: &str, w: wire::PortsWire, limits: &Limits) -> Result<Ports, DecodeError> {
    limit(
        "ports of one address",
        w.len(),
        limits.max_ports_per_address,
    )?;
    let mut out = Ports::new();
    for (name, l4) in w {
        let field = || format!("port {name:?} of {owner}");
        if name.len() > 63 || !printable(&name) {
            return Err(DecodeError::BadField {
                field: "port name",
                value: name.chars().take(80).collect(),
                reason: "port names are at most 63 printable characters",
            });
        }
        let protocol = Protocol::parse(&l4.protocol).ok_or_else(|| DecodeError::BadProtocol {
            field: field(),
            value: l4.protocol.clone(),
        })?;
        let port = u16::try_from(l4.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| DecodeError::BadPort {
                field: field(),
                value: l4.port,
            })?;
        out.insert(name, L4Port { protocol, port });
    }
    Ok(out)
}

fn labels(
    w: BTreeMap<String, String>,
    limits: &Limits,
) -> Result<BTreeMap<String, String>, DecodeError> {
    limit("labels", w.len(), limits.max_labels)?;
    for (k, v) in &w {
        text(
            "label key",
            k,
            limits,
            |s| !s.is_empty() && printable(s),
            "",
        )?;
        text("label value", v, limits, printable, "must be printable")?;
    }
    Ok(w)
}

fn service(
    w: wire::ServiceWire,
    expected: &ExpectedCluster,
    limits: &Limits,
) -> Result<GlobalService, DecodeError> {
    let cluster = cluster_name(&w.cluster, &expected.name)?;
    let cluster_id = cluster_id(w.cluster_id, expected)?;
    let namespace = text(
        "namespace",
        &w.namespace,
        limits,
        is_dns_label,
        "must be a DNS label",
    )?;
    let name = text("name", &w.name, limits, is_dns_label, "must be a DNS label")?;
    limit("frontends", w.frontends.len(), limits.max_frontends)?;
    limit("backends", w.backends.len(), limits.max_backends)?;

    let mut frontends = Vec::with_capacity(w.frontends.len());
    for (addr, p) in w.frontends {
        let ip = ip("frontend", &addr)?;
        frontends.push(Frontend {
            ip,
            ports: ports(&format!("frontend {addr}"), p, limits)?,
        });
    }
    let mut backends = Vec::with_capacity(w.backends.len());
    for (addr, p) in w.backends {
        let ip = ip("backend", &addr)?;
        let ports = ports(&format!("backend {addr}"), p, limits)?;
        let node = match w.nodes.get(&addr) {
            Some(n) => Some(text(
                "backend node",
                n,
                limits,
                is_dns_subdomain,
                "must be a DNS subdomain",
            )?),
            None => None,
        };
        let zone = match w.zones.get(&addr) {
            Some(z) => Some(text(
                "backend zone",
                &z.zone,
                limits,
                printable,
                "must be printable",
            )?),
            None => None,
        };
        let hostname = match w.hostnames.get(&addr) {
            Some(h) => Some(text(
                "backend hostname",
                h,
                limits,
                is_dns_label,
                "must be a DNS label",
            )?),
            None => None,
        };
        backends.push(Backend {
            ip,
            ports,
            node,
            zone,
            hostname,
            ready: !w.not_ready.contains(&addr),
        });
    }
    // Two spellings of one address would be two map keys for one backend.
    frontends.sort_by_key(|f| f.ip);
    backends.sort_by_key(|b| b.ip);
    if frontends.windows(2).any(|p| p[0].ip == p[1].ip)
        || backends.windows(2).any(|p| p[0].ip == p[1].ip)
    {
        return Err(DecodeError::BadField {
            field: "frontends/backends",
            value: format!("{namespace}/{name}"),
            reason: "the same IP address appears twice",
        });
    }
    let affinity = match w.affinity.as_deref() {
        None => Affinity::None,
        Some(a) => Affinity::parse(a).ok_or(DecodeError::BadField {
            field: "affinity",
            value: a.chars().take(80).collect(),
            reason: "expected none, local or remote",
        })?,
    };
    Ok(GlobalService {
        cluster,
        cluster_id,
        namespace,
        name,
        frontends,
        backends,
        shared: w.shared,
        affinity,
        include_external: w.include_external,
        headless: w.headless,
        labels: labels(w.labels, limits)?,
        selector: labels(w.selector, limits)?,
        modified_unix_millis: w.modified_unix_millis,
    })
}

fn identity_id(raw: u64, expected: &ExpectedCluster) -> Result<IdentityId, DecodeError> {
    let id32 = u32::try_from(raw).map_err(|_| DecodeError::BadIdentity {
        id: raw,
        source: ClusterError::IdentityWithoutCluster {
            id: u32::MAX,
            cluster_bits: u32::MAX,
        },
    })?;
    let id = IdentityId::from_raw(id32, expected.mesh)
        .map_err(|source| DecodeError::BadIdentity { id: raw, source })?;
    let owner = id.cluster_id(expected.mesh);
    if owner != expected.id {
        return Err(DecodeError::ForeignIdentity {
            id: id32,
            owner: owner.get(),
            cluster: expected.name.to_string(),
            cluster_id: expected.id.get(),
        });
    }
    Ok(id)
}

fn endpoint(
    w: wire::EndpointWire,
    expected: &ExpectedCluster,
    limits: &Limits,
) -> Result<Endpoint, DecodeError> {
    Ok(Endpoint {
        cluster: cluster_name(&w.cluster, &expected.name)?,
        cluster_id: cluster_id(w.cluster_id, expected)?,
        ip: ip("endpoint ip", &w.ip)?,
        identity: identity_id(w.identity, expected)?,
        node: text(
            "node",
            &w.node,
            limits,
            is_dns_subdomain,
            "must be a DNS subdomain",
        )?,
        host_ip: w.host_ip.as_deref().map(|s| ip("hostIP", s)).transpose()?,
        namespace: text(
            "namespace",
            &w.namespace,
            limits,
            is_dns_label,
            "must be a DNS label",
        )?,
        pod: text(
            "pod",
            &w.pod,
            limits,
            is_dns_subdomain,
            "must be a DNS subdomain",
        )?,
    })
}

fn identity(
    w: wire::IdentityWire,
    expected: &ExpectedCluster,
    limits: &Limits,
) -> Result<Identity, DecodeError> {
    Ok(Identity {
        cluster: cluster_name(&w.cluster, &expected.name)?,
        cluster_id: cluster_id(w.cluster_id, expected)?,
        id: identity_id(w.id, expected)?,
        labels: labels(w.labels, limits)?,
    })
}

fn node(
    w: wire::NodeWire,
    expected: &ExpectedCluster,
    limits: &Limits,
) -> Result<Node, DecodeError> {
    limit("node addresses", w.addresses.len(), limits.max_addresses)?;
    limit("pod CIDRs", w.pod_cidrs.len(), limits.max_pod_cidrs)?;
    let mut addresses = Vec::with_capacity(w.addresses.len());
    for a in &w.addresses {
        let kind = NodeAddressKind::parse(&a.kind).ok_or_else(|| DecodeError::BadField {
            field: "address type",
            value: a.kind.chars().take(80).collect(),
            reason: "expected InternalIP or ExternalIP",
        })?;
        addresses.push(NodeAddress {
            kind,
            ip: ip("node address", &a.ip)?,
        });
    }
    let mut pod_cidrs = Vec::with_capacity(w.pod_cidrs.len());
    for c in &w.pod_cidrs {
        let net: IpNet = c.parse().map_err(|_| DecodeError::BadCidr {
            field: "podCIDR",
            value: c.clone(),
        })?;
        pod_cidrs.push(net);
    }
    Ok(Node {
        cluster: cluster_name(&w.cluster, &expected.name)?,
        cluster_id: cluster_id(w.cluster_id, expected)?,
        name: text(
            "name",
            &w.name,
            limits,
            is_dns_subdomain,
            "must be a DNS subdomain",
        )?,
        addresses,
        pod_cidrs,
        zone: w
            .zone
            .as_deref()
            .map(|z| text("zone", z, limits, printable, "must be printable"))
            .transpose()?,
    })
}

fn agent(
    w: wire::AgentWire,
    expected: &ExpectedCluster,
    limits: &Limits,
) -> Result<Agent, DecodeError> {
    let tunnel_address: SocketAddr =
        w.tunnel_address
            .parse()
            .map_err(|_| DecodeError::BadField {
                field: "tunnelAddress",
                value: w.tunnel_address.chars().take(80).collect(),
                reason: "expected ip:port",
            })?;
    ip("tunnelAddress", &tunnel_address.ip().to_string())?;
    if tunnel_address.port() == 0 {
        return Err(DecodeError::BadPort {
            field: "tunnelAddress".to_owned(),
            value: 0,
        });
    }
    check_fingerprint("certFingerprint", &w.cert_fingerprint)?;
    Ok(Agent {
        cluster: cluster_name(&w.cluster, &expected.name)?,
        cluster_id: cluster_id(w.cluster_id, expected)?,
        node: text(
            "node",
            &w.node,
            limits,
            is_dns_subdomain,
            "must be a DNS subdomain",
        )?,
        tunnel_address,
        cert_fingerprint: w.cert_fingerprint,
        boot_id: text(
            "bootID",
            &w.boot_id,
            limits,
            |s| !s.is_empty() && printable(s),
            "must be non-empty and printable",
        )?,
    })
}
