//! The checked values the mesh stores in etcd. Each type encodes to its JSON wire form with
//! `to_json`; reading one back from bytes goes through `decode`, which checks everything.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use crate::cluster::{ClusterId, ClusterName, IdentityId, MaxConnectedClusters};
use crate::wire;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transport port, 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct L4Port {
    pub protocol: Protocol,
    pub port: u16,
}

/// Named ports, as in a Kubernetes Service (`""` is the name of an unnamed port).
pub type Ports = BTreeMap<String, L4Port>;

/// Which backends of a global service a cluster prefers (`clustermesh.io/affinity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Affinity {
    /// All backends of all clusters.
    #[default]
    None,
    /// Local backends while any is ready; remote ones only when none is.
    Local,
    /// Remote backends while any is ready; local ones only when none is.
    Remote,
}

impl Affinity {
    pub fn as_str(self) -> &'static str {
        match self {
            Affinity::None => "none",
            Affinity::Local => "local",
            Affinity::Remote => "remote",
        }
    }

    pub fn parse(s: &str) -> Option<Affinity> {
        match s {
            "none" | "" => Some(Affinity::None),
            "local" => Some(Affinity::Local),
            "remote" => Some(Affinity::Remote),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frontend {
    pub ip: IpAddr,
    pub ports: Ports,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub ip: IpAddr,
    pub ports: Ports,
    /// The Kubernetes node that runs the backend pod, when known.
    pub node: Option<String>,
    pub zone: Option<String>,
    pub hostname: Option<String>,
    pub ready: bool,
}

/// A global service as one cluster publishes it: its frontends and its ready backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalService {
    pub cluster: ClusterName,
    pub cluster_id: ClusterId,
    pub namespace: String,
    pub name: String,
    /// Sorted by IP, one entry per IP.
    pub frontends: Vec<Frontend>,
    /// Sorted by IP, one entry per IP.
    pub backends: Vec<Backend>,
    pub shared: bool,
    pub affinity: Affinity,
    pub include_external: bool,
    /// A headless Service (`clusterIP: None`): no frontends; DNS answers with its backends.
    pub headless: bool,
    pub labels: BTreeMap<String, String>,
    pub selector: BTreeMap<String, String>,
    /// When the publishing apiserver last changed this service's content, by its clock
    /// (milliseconds since the epoch). Agents measure propagation lag from it; it is not
    /// part of what is programmed.
    pub modified_unix_millis: Option<u64>,
}

fn ports_wire(ports: &Ports) -> wire::PortsWire {
    ports
        .iter()
        .map(|(name, p)| {
            let w = wire::L4Wire {
                protocol: p.protocol.as_str().to_owned(),
                port: u64::from(p.port),
            };
            (name.clone(), w)
        })
        .collect()
}

fn json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).expect("wire types serialize infallibly: string keys, plain fields")
}

impl GlobalService {
    pub fn to_json(&self) -> Vec<u8> {
        let by_ip = |f: &dyn Fn(&Backend) -> Option<String>| {
            self.backends
                .iter()
                .filter_map(|b| f(b).map(|v| (b.ip.to_string(), v)))
                .collect()
        };
        let w = wire::ServiceWire {
            cluster: self.cluster.to_string(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            frontends: self
                .frontends
                .iter()
                .map(|f| (f.ip.to_string(), ports_wire(&f.ports)))
                .collect(),
            backends: self
                .backends
                .iter()
                .map(|b| (b.ip.to_string(), ports_wire(&b.ports)))
                .collect(),
            hostnames: by_ip(&|b| b.hostname.clone()),
            zones: self
                .backends
                .iter()
                .filter_map(|b| {
                    let zone = b.zone.clone()?;
                    Some((b.ip.to_string(), wire::ZoneWire { zone }))
                })
                .collect(),
            nodes: by_ip(&|b| b.node.clone()),
            not_ready: self
                .backends
                .iter()
                .filter(|b| !b.ready)
                .map(|b| b.ip.to_string())
                .collect(),
            labels: self.labels.clone(),
            selector: self.selector.clone(),
            include_external: self.include_external,
            shared: self.shared,
            affinity: (self.affinity != Affinity::None).then(|| self.affinity.as_str().to_owned()),
            headless: self.headless,
            modified_unix_millis: self.modified_unix_millis,
            cluster_id: u64::from(self.cluster_id.get()),
        };
        json(&w)
    }
}

/// The clusterset VIP(s) the local apiserver allocated for a global service that exists only in
/// peers: one IPv4 and/or one IPv6 address, stable while the service exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClustersetVip {
    pub cluster: ClusterName,
    pub cluster_id: ClusterId,
    pub namespace: String,
    pub name: String,
    /// At most one address per family, IPv4 first.
    pub ips: Vec<IpAddr>,
}

impl ClustersetVip {
    pub fn to_json(&self) -> Vec<u8> {
        json(&wire::ClustersetVipWire {
            cluster: self.cluster.to_string(),
            cluster_id: u64::from(self.cluster_id.get()),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            ips: self.ips.iter().map(ToString::to_string).collect(),
        })
    }
}

/// A pod IP and what it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub cluster: ClusterName,
    pub cluster_id: ClusterId,
    pub ip: IpAddr,
    pub identity: IdentityId,
    pub node: String,
    pub host_ip: Option<IpAddr>,
    pub namespace: String,
    pub pod: String,
}

impl Endpoint {
    pub fn to_json(&self) -> Vec<u8> {
        json(&wire::EndpointWire {
            cluster: self.cluster.to_string(),
            cluster_id: u64::from(self.cluster_id.get()),
            ip: self.ip.to_string(),
            identity: u64::from(self.identity.get()),
            node: self.node.clone(),
            host_ip: self.host_ip.map(|ip| ip.to_string()),
            namespace: self.namespace.clone(),
            pod: self.pod.clone(),
        })
    }
}

/// A numeric identity and the label set it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub cluster: ClusterName,
    pub cluster_id: ClusterId,
    pub id: IdentityId,
    pub labels: BTreeMap<String, String>,
}

impl Identity {
    pub fn to_json(&self) -> Vec<u8> {
        json(&wire::IdentityWire {
            cluster: self.cluster.to_string(),
            cluster_id: u64::from(self.cluster_id.get()),
            id: u64::from(self.id.get()),
            labels: self.labels.clone(),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeAddressKind {
    InternalIp,
    ExternalIp,
}

impl NodeAddressKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeAddressKind::InternalIp => "InternalIP",
            NodeAddressKind::ExternalIp => "ExternalIP",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "InternalIP" => Some(Self::InternalIp),
            "ExternalIP" => Some(Self::ExternalIp),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    pub kind: NodeAddressKind,
    pub ip: IpAddr,
}

/// What Kubernetes knows of a node, published by the apiserver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub cluster: ClusterName,
    pub cluster_id: ClusterId,
    pub name: String,
    pub addresses: Vec<NodeAddress>,
    pub pod_cidrs: Vec<IpNet>,
    pub zone: Option<String>,
}

impl Node {
    pub fn to_json(&self) -> Vec<u8> {
        json(&wire::NodeWire {
            cluster: self.cluster.to_string(),
            cluster_id: u64::from(self.cluster_id.get()),
            name: self.name.clone(),
            addresses: self
                .addresses
                .iter()
                .map(|a| wire::NodeAddressWire {
                    kind: a.kind.as_str().to_owned(),
                    ip: a.ip.to_string(),
                })
                .collect(),
            pod_cidrs: self.pod_cidrs.iter().map(|c| c.to_string()).collect(),
            zone: self.zone.clone(),
        })
    }
}

/// A node agent's liveness record, written by the agent under its own lease: where its tunnel
/// listens and which certificate it presents there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub cluster: ClusterName,
    pub cluster_id: ClusterId,
    pub node: String,
    pub tunnel_address: SocketAddr,
    /// `sha256:<hex>` of the agent's tunnel certificate (DER).
    pub cert_fingerprint: String,
    /// Changes on every reboot of the node, so a peer can tell a restart from a hiccup.
    pub boot_id: String,
}

impl Agent {
    pub fn to_json(&self) -> Vec<u8> {
        json(&wire::AgentWire {
            cluster: self.cluster.to_string(),
            cluster_id: u64::from(self.cluster_id.get()),
            node: self.node.clone(),
            tunnel_address: self.tunnel_address.to_string(),
            cert_fingerprint: self.cert_fingerprint.clone(),
            boot_id: self.boot_id.clone(),
        })
    }
}

/// What a cluster says about itself at `cluster-config/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub cluster: ClusterName,
    pub id: ClusterId,
    pub max_connected_clusters: MaxConnectedClusters,
    /// The cluster writes `synced/<cluster>/<kind>` markers (readers may wait for them).
    pub synced_canaries: bool,
    /// `sha256:<hex>` of the cluster's CA certificate (DER).
    pub ca_fingerprint: Option<String>,
}

impl ClusterConfig {
    pub fn to_json(&self) -> Vec<u8> {
        json(&wire::ClusterConfigWire {
            cluster: self.cluster.to_string(),
            id: u64::from(self.id.get()),
            capabilities: Some(wire::CapabilitiesWire {
                max_connected_clusters: u64::from(u32::from(self.max_connected_clusters)),
                synced_canaries: self.synced_canaries,
                cached: false,
            }),
            ca_fingerprint: self.ca_fingerprint.clone(),
        })
    }
}

/// A timestamp a cluster writes: the heartbeat and the synced markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub cluster: ClusterName,
    pub cluster_id: ClusterId,
    pub unix_millis: u64,
}

impl Marker {
    pub fn to_json(&self) -> Vec<u8> {
        json(&wire::MarkerWire {
            cluster: self.cluster.to_string(),
            cluster_id: u64::from(self.cluster_id.get()),
            unix_millis: self.unix_millis,
        })
    }
}

/// Any value found under a `state/` or `cache/` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateValue {
    Service(GlobalService),
    Endpoint(Endpoint),
    Identity(Identity),
    Node(Node),
    Agent(Agent),
}

impl StateValue {
    pub fn to_json(&self) -> Vec<u8> {
        match self {
            StateValue::Service(v) => v.to_json(),
            StateValue::Endpoint(v) => v.to_json(),
            StateValue::Identity(v) => v.to_json(),
            StateValue::Node(v) => v.to_json(),
            StateValue::Agent(v) => v.to_json(),
        }
    }
}
