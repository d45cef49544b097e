//! What a lab looks like: clusters, their nodes and address plans, and the names every
//! namespace, interface and cgroup gets. Pure data, no I/O; [`crate::network`] builds it.
//!
//! Address plan of a cluster (defaults after "default:"):
//! - `node_cidr`, default: `172.20.<cluster id>.0/24`: the cluster network. Its first address
//!   is the WAN router's address on the cluster's bridge; node `i` (0-based) gets the
//!   `10 + i`-th address.
//! - `pod_cidr`, default: `10.244.0.0/16` in every cluster, so pod CIDRs overlap. It is split
//!   into one `/node_pod_prefix` (default: /24) per node, in order. The first address of a
//!   node's pod CIDR is the pods' gateway (on the node's `lo`); pods get the following ones.
//! - `service_cidr`, default: `10.96.0.0/16`: ClusterIPs written to the Service manifests.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// What is wrong with a topology or a name.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error(
        "invalid lab name {0:?}: use 1 to 6 characters from [a-z0-9], starting with a letter (it prefixes every interface name, which Linux limits to 15 characters)"
    )]
    LabName(String),
    #[error(
        "invalid {what} name {name:?}: use a DNS label of at most {max} characters ([a-z0-9] and '-', starting and ending alphanumeric)"
    )]
    Name {
        what: &'static str,
        name: String,
        max: usize,
    },
    #[error("the topology has no cluster; give at least one under `clusters:`")]
    NoCluster,
    #[error("cluster {0:?} appears twice in the topology")]
    DuplicateCluster(String),
    #[error("cluster {cluster:?}: id {id} is out of range; cluster ids are 1..=255")]
    ClusterId { cluster: String, id: u16 },
    #[error("cluster id {0} is used by two clusters; give each cluster its own `id`")]
    DuplicateClusterId(u16),
    #[error("cluster {0:?} has no node; set `nodes:` to 1 or more")]
    NoNode(String),
    #[error("cluster {cluster:?}: node {node:?} appears twice")]
    DuplicateNode { cluster: String, node: String },
    #[error("cluster {cluster:?}: {what} {cidr} is too small for {needed} nodes")]
    TooSmall {
        cluster: String,
        what: &'static str,
        cidr: Ipv4Net,
        needed: usize,
    },
    #[error(
        "cluster {cluster:?}: node_pod_prefix /{prefix} must be longer than the pod CIDR {cidr} and at most /28"
    )]
    NodePodPrefix {
        cluster: String,
        prefix: u8,
        cidr: Ipv4Net,
    },
    #[error(
        "clusters {a:?} and {b:?} have overlapping node CIDRs ({cidr_a} and {cidr_b}); node networks are routed between clusters and must be distinct"
    )]
    NodeCidrOverlap {
        a: String,
        b: String,
        cidr_a: Ipv4Net,
        cidr_b: Ipv4Net,
    },
    #[error(
        "cannot read topology: {0} (expected YAML like `clusters: [{{name: east, nodes: 2}}]`)"
    )]
    Yaml(#[from] serde_yaml_ng::Error),
}

/// The clusters of a lab. This is also the format of the `--topology` YAML file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub clusters: Vec<ClusterSpec>,
    /// Connect every pair of clusters at `up` (a full mesh); `false` leaves them apart until
    /// `clustermesh lab connect`.
    #[serde(default = "default_connect")]
    pub connect: bool,
}

fn default_connect() -> bool {
    true
}

/// One cluster as the user describes it. Only `name` is required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    pub name: String,
    /// Cluster ID (1..=255); defaults to the position in the list, starting at 1.
    #[serde(default)]
    pub id: Option<u16>,
    /// Number of nodes (named `<cluster>-1`, `<cluster>-2`, …) or their explicit names.
    #[serde(default = "default_nodes")]
    pub nodes: Nodes,
    #[serde(default)]
    pub node_cidr: Option<Ipv4Net>,
    #[serde(default = "default_pod_cidr")]
    pub pod_cidr: Ipv4Net,
    #[serde(default = "default_node_pod_prefix")]
    pub node_pod_prefix: u8,
    #[serde(default = "default_service_cidr")]
    pub service_cidr: Ipv4Net,
}

/// Nodes of a cluster: a count or a list of names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Nodes {
    Count(u16),
    Names(Vec<String>),
}

fn default_nodes() -> Nodes {
    Nodes::Count(2)
}
fn default_pod_cidr() -> Ipv4Net {
    "10.244.0.0/16".parse().expect("valid constant")
}
fn default_node_pod_prefix() -> u8 {
    24
}
fn default_service_cidr() -> Ipv4Net {
    "10.96.0.0/16".parse().expect("valid constant")
}

impl ClusterSpec {
    /// A cluster with the default address plan and `nodes` nodes.
    pub fn new(name: &str, nodes: u16) -> Self {
        ClusterSpec {
            name: name.to_owned(),
            id: None,
            nodes: Nodes::Count(nodes),
            node_cidr: None,
            pod_cidr: default_pod_cidr(),
            node_pod_prefix: default_node_pod_prefix(),
            service_cidr: default_service_cidr(),
        }
    }
}

impl Default for Topology {
    /// Two clusters, `east` and `west`, two nodes each, both with pod CIDR 10.244.0.0/16.
    fn default() -> Self {
        Topology {
            clusters: vec![ClusterSpec::new("east", 2), ClusterSpec::new("west", 2)],
            connect: true,
        }
    }
}

impl Topology {
    /// Whether `up` connects every pair of clusters.
    pub fn connect_all(&self) -> bool {
        self.connect
    }

    /// Parses the YAML topology file format.
    pub fn from_yaml(text: &str) -> Result<Self, TopologyError> {
        Ok(serde_yaml_ng::from_str(text)?)
    }

    /// Checks names and address plans and computes every address.
    pub fn plan(&self) -> Result<Vec<ClusterPlan>, TopologyError> {
        if self.clusters.is_empty() {
            return Err(TopologyError::NoCluster);
        }
        let mut plans: Vec<ClusterPlan> = Vec::new();
        for (index, spec) in self.clusters.iter().enumerate() {
            let plan = plan_cluster(index, spec)?;
            for other in &plans {
                if other.name == plan.name {
                    return Err(TopologyError::DuplicateCluster(plan.name));
                }
                if other.id == plan.id {
                    return Err(TopologyError::DuplicateClusterId(plan.id));
                }
                if other.node_cidr.contains(&plan.node_cidr.network())
                    || plan.node_cidr.contains(&other.node_cidr.network())
                {
                    return Err(TopologyError::NodeCidrOverlap {
                        a: other.name.clone(),
                        b: plan.name.clone(),
                        cidr_a: other.node_cidr,
                        cidr_b: plan.node_cidr,
                    });
                }
            }
            plans.push(plan);
        }
        Ok(plans)
    }
}

/// A cluster with every address computed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterPlan {
    pub name: String,
    pub id: u16,
    /// Position in the topology; used in interface names.
    pub index: usize,
    pub node_cidr: Ipv4Net,
    /// The WAN router's address on this cluster's bridge; every node's default gateway.
    pub gateway: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
    pub nodes: Vec<NodePlan>,
}

/// A node with its addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePlan {
    pub name: String,
    pub index: usize,
    pub ip: Ipv4Addr,
    pub pod_cidr: Ipv4Net,
}

impl NodePlan {
    /// The pods' default gateway: the first address of the node's pod CIDR.
    pub fn pod_gateway(&self) -> Ipv4Addr {
        nth_host(self.pod_cidr, 1).expect("pod CIDRs are at least /28")
    }
}

fn plan_cluster(index: usize, spec: &ClusterSpec) -> Result<ClusterPlan, TopologyError> {
    check_dns_label("cluster", &spec.name, 32)?;
    let id = spec.id.unwrap_or(index as u16 + 1);
    if !(1..=255).contains(&id) {
        return Err(TopologyError::ClusterId {
            cluster: spec.name.clone(),
            id,
        });
    }
    let names: Vec<String> = match &spec.nodes {
        Nodes::Count(n) => (1..=*n).map(|i| format!("{}-{i}", spec.name)).collect(),
        Nodes::Names(names) => names.clone(),
    };
    if names.is_empty() {
        return Err(TopologyError::NoNode(spec.name.clone()));
    }
    for (i, name) in names.iter().enumerate() {
        check_dns_label("node", name, 40)?;
        if names[..i].contains(name) {
            return Err(TopologyError::DuplicateNode {
                cluster: spec.name.clone(),
                node: name.clone(),
            });
        }
    }
    let node_cidr = spec.node_cidr.unwrap_or_else(|| {
        Ipv4Net::new(Ipv4Addr::new(172, 20, (id % 256) as u8, 0), 24).expect("valid prefix")
    });
    let gateway = nth_host(node_cidr, 1);
    let last_node = nth_host(node_cidr, 10 + names.len() as u32);
    let (Some(gateway), Some(_)) = (gateway, last_node) else {
        return Err(TopologyError::TooSmall {
            cluster: spec.name.clone(),
            what: "node_cidr",
            cidr: node_cidr,
            needed: names.len(),
        });
    };
    let prefix = spec.node_pod_prefix;
    if prefix <= spec.pod_cidr.prefix_len() || prefix > 28 {
        return Err(TopologyError::NodePodPrefix {
            cluster: spec.name.clone(),
            prefix,
            cidr: spec.pod_cidr,
        });
    }
    let node_pod_cidrs: Vec<Ipv4Net> = spec
        .pod_cidr
        .subnets(prefix)
        .expect("prefix checked above")
        .take(names.len())
        .collect();
    if node_pod_cidrs.len() < names.len() {
        return Err(TopologyError::TooSmall {
            cluster: spec.name.clone(),
            what: "pod_cidr",
            cidr: spec.pod_cidr,
            needed: names.len(),
        });
    }
    let nodes = names
        .into_iter()
        .zip(node_pod_cidrs)
        .enumerate()
        .map(|(i, (name, pod_cidr))| NodePlan {
            name,
            index: i,
            ip: nth_host(node_cidr, 10 + i as u32).expect("size checked above"),
            pod_cidr,
        })
        .collect();
    Ok(ClusterPlan {
        name: spec.name.clone(),
        id,
        index,
        node_cidr,
        gateway,
        pod_cidr: spec.pod_cidr,
        service_cidr: spec.service_cidr,
        nodes,
    })
}

/// The `n`-th address of `net` (0 is the network address), if it is a usable host address.
pub fn nth_host(net: Ipv4Net, n: u32) -> Option<Ipv4Addr> {
    let base = u32::from(net.network());
    let addr = Ipv4Addr::from(base.checked_add(n)?);
    (n > 0 && net.contains(&addr) && addr != net.broadcast()).then_some(addr)
}

/// Checks a Kubernetes-style name: a DNS label of at most `max` characters.
pub fn check_dns_label(what: &'static str, name: &str, max: usize) -> Result<(), TopologyError> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= max
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(TopologyError::Name {
            what,
            name: name.to_owned(),
            max,
        })
    }
}

/// Checks a lab name: 1..=6 of [a-z0-9], starting with a letter.
pub fn check_lab_name(name: &str) -> Result<(), TopologyError> {
    let ok = (1..=6).contains(&name.len())
        && name.as_bytes()[0].is_ascii_lowercase()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(TopologyError::LabName(name.to_owned()))
    }
}

/// Every name the lab gives to kernel objects, derived from the lab name.
///
/// Network namespaces are named `cml-<lab>-…` (so `ip netns list` shows whose they are and
/// `down` finds them after a crash). Interfaces live only inside the lab's own namespaces,
/// never in the host's, and carry the lab name too; all are at most 15 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    lab: String,
}

impl Naming {
    pub fn new(lab: &str) -> Result<Self, TopologyError> {
        check_lab_name(lab)?;
        Ok(Naming {
            lab: lab.to_owned(),
        })
    }

    /// Prefix of every network namespace of this lab.
    pub fn netns_prefix(&self) -> String {
        format!("cml-{}-", self.lab)
    }

    /// The WAN router's namespace: it holds one bridge per cluster and routes between them.
    pub fn wan_netns(&self) -> String {
        format!("cml-{}-wan", self.lab)
    }

    pub fn node_netns(&self, cluster: &str, node: &str) -> String {
        format!("cml-{}-{cluster}-{node}", self.lab)
    }

    pub fn pod_netns(&self, cluster: &str, namespace: &str, pod: &str) -> String {
        format!("cml-{}-{cluster}-pod-{namespace}-{pod}", self.lab)
    }

    /// The cluster's bridge (its "cluster network"), in the WAN namespace.
    pub fn bridge(&self, cluster_index: usize) -> String {
        format!("{}-br{cluster_index}", self.lab)
    }

    /// The WAN-side end of a node's uplink veth (the node side is `eth0`).
    pub fn node_port(&self, cluster_index: usize, node_index: usize) -> String {
        format!("{}-c{cluster_index}n{node_index}", self.lab)
    }

    /// The node-side end of a pod's veth (the pod side is `eth0`).
    pub fn pod_veth(&self, pod_index: u32) -> String {
        format!("{}-p{pod_index}", self.lab)
    }

    /// The lab's cgroup, relative to the cgroup v2 root.
    pub fn cgroup(&self) -> String {
        format!("clustermesh-lab/{}", self.lab)
    }

    pub fn node_cgroup(&self, cluster: &str, node: &str) -> String {
        format!("clustermesh-lab/{}/{cluster}/{node}", self.lab)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_topology_has_overlapping_pod_cidrs_and_distinct_node_networks() {
        let plans = Topology::default().plan().unwrap();
        assert_eq!(plans.len(), 2);
        let (east, west) = (&plans[0], &plans[1]);
        assert_eq!((east.name.as_str(), east.id), ("east", 1));
        assert_eq!((west.name.as_str(), west.id), ("west", 2));
        assert_eq!(east.pod_cidr, west.pod_cidr);
        assert_eq!(east.nodes[0].pod_cidr, west.nodes[0].pod_cidr);
        assert_eq!(east.nodes[0].pod_cidr.to_string(), "10.244.0.0/24");
        assert_eq!(east.nodes[1].pod_cidr.to_string(), "10.244.1.0/24");
        assert_eq!(east.nodes[0].ip, Ipv4Addr::new(172, 20, 1, 10));
        assert_eq!(west.nodes[1].ip, Ipv4Addr::new(172, 20, 2, 11));
        assert_eq!(east.gateway, Ipv4Addr::new(172, 20, 1, 1));
        assert_eq!(east.nodes[0].pod_gateway(), Ipv4Addr::new(10, 244, 0, 1));
        assert_eq!(east.nodes[1].name, "east-2");
    }

    #[test]
    fn yaml_topology_with_defaults() {
        let t = Topology::from_yaml(
            "clusters:\n- name: a\n  nodes: 3\n- name: b\n  nodes: [x, y]\n  pod_cidr: 10.8.0.0/16\n",
        )
        .unwrap();
        let plans = t.plan().unwrap();
        assert_eq!(plans[0].nodes.len(), 3);
        assert_eq!(plans[1].nodes[1].name, "y");
        assert_eq!(plans[1].nodes[1].pod_cidr.to_string(), "10.8.1.0/24");
        assert!(Topology::from_yaml("clusters:\n- name: a\n  bogus: 1\n").is_err());
    }

    #[test]
    fn bad_topologies_are_rejected_with_the_reason() {
        let mut t = Topology::default();
        t.clusters[1].name = "east".into();
        assert!(matches!(t.plan(), Err(TopologyError::DuplicateCluster(_))));

        let mut t = Topology::default();
        t.clusters[1].node_cidr = Some("172.20.1.0/25".parse().unwrap());
        assert!(matches!(
            t.plan(),
            Err(TopologyError::NodeCidrOverlap { .. })
        ));

        let mut t = Topology::default();
        t.clusters[0].nodes = Nodes::Count(0);
        assert!(matches!(t.plan(), Err(TopologyError::NoNode(_))));

        let mut t = Topology::default();
        t.clusters[0].name = "East".into();
        assert!(matches!(t.plan(), Err(TopologyError::Name { .. })));

        let mut t = Topology::default();
        t.clusters[0].node_pod_prefix = 16;
        assert!(matches!(t.plan(), Err(TopologyError::NodePodPrefix { .. })));
    }

    #[test]
    fn interface_names_fit_in_15_characters() {
        let n = Naming::new("abcdef").unwrap();
        for name in [n.bridge(255), n.node_port(255, 999), n.pod_veth(99_999)] {
            assert!(name.len() <= 15, "{name} is too long");
        }
        assert!(Naming::new("abcdefg").is_err());
        assert!(Naming::new("1abc").is_err());
        assert!(Naming::new("a-b").is_err());
        assert_eq!(n.node_netns("east", "east-1"), "cml-abcdef-east-east-1");
    }

    #[test]
    fn nth_host_stays_inside_the_network() {
        let net: Ipv4Net = "10.0.0.0/30".parse().unwrap();
        assert_eq!(nth_host(net, 1), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(nth_host(net, 2), Some(Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(nth_host(net, 3), None, "broadcast");
        assert_eq!(nth_host(net, 0), None, "network address");
    }
}
