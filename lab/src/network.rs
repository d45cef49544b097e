//! Builds a lab's network out of namespaces, bridges, veth pairs and routes, and takes it
//! down again. Everything lives in the lab's own namespaces; the host's root namespace is
//! never touched.
//!
//! ```text
//!                     cml-<lab>-wan  (routes between cluster networks, ip_forward=1)
//!      bridge <lab>-br0 172.20.1.1/24          bridge <lab>-br1 172.20.2.1/24
//!         |                  |                     |                  |
//!   eth0 172.20.1.10   eth0 172.20.1.11      eth0 172.20.2.10   eth0 172.20.2.11
//!   cml-<lab>-east-east-1  …-east-east-2     cml-<lab>-west-west-1  …-west-west-2
//!   lo 10.244.0.1/32       lo 10.244.1.1/32  lo 10.244.0.1/32       lo 10.244.1.1/32
//!   10.244.1.0/24 via .11  10.244.0.0/24 via .10   (same inside west: pod CIDRs overlap)
//!     |  <lab>-p0 ─ eth0 10.244.0.2/32  cml-<lab>-east-pod-default-echo-0
//! ```
//!
//! Nodes route other nodes' pod CIDRs of their own cluster via those nodes' IPs, and
//! everything else to the WAN router. The WAN router knows only node networks, so a pod IP
//! of another cluster is unreachable (ICMP net unreachable), as in real clouds, while node
//! IPs are reachable across clusters. Pod traffic is not masqueraded.

use std::net::Ipv4Addr;

use crate::netns::{NetNs, NetNsError};
use crate::topology::{ClusterPlan, Naming, NodePlan};

/// What can go wrong while building the network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("building the network of {what}: {source}")]
    Build {
        what: String,
        #[source]
        source: NetNsError,
    },
}

fn ctx(what: impl Into<String>) -> impl FnOnce(NetNsError) -> NetworkError {
    let what = what.into();
    move |source| NetworkError::Build { what, source }
}

/// Creates the WAN router namespace with one bridge per cluster (the cluster networks).
pub fn create_wan(naming: &Naming, clusters: &[ClusterPlan]) -> Result<(), NetworkError> {
    let what = "the WAN router";
    let wan = NetNs::create(&naming.wan_netns()).map_err(ctx(what))?;
    wan.sysctl("net.ipv4.ip_forward", "1").map_err(ctx(what))?;
    for cluster in clusters {
        let what = format!("cluster {}'s bridge", cluster.name);
        let br = naming.bridge(cluster.index);
        let gw = format!("{}/{}", cluster.gateway, cluster.node_cidr.prefix_len());
        wan.ip(&["link", "add", &br, "type", "bridge"])
            .map_err(ctx(&what))?;
        wan.ip(&["addr", "add", &gw, "dev", &br])
            .map_err(ctx(&what))?;
        wan.ip(&["link", "set", &br, "up"]).map_err(ctx(&what))?;
    }
    wan.keep();
    Ok(())
}

/// Creates a node: its namespace, its uplink into the cluster bridge, the pods' gateway
/// address and routes to the other nodes' pod CIDRs.
pub fn create_node(
    naming: &Naming,
    cluster: &ClusterPlan,
    node: &NodePlan,
) -> Result<(), NetworkError> {
    let what = format!("node {}/{}", cluster.name, node.name);
    let name = naming.node_netns(&cluster.name, &node.name);
    let ns = NetNs::create(&name).map_err(ctx(&what))?;
    ns.sysctl("net.ipv4.ip_forward", "1").map_err(ctx(&what))?;
    let wan = NetNs::open(&naming.wan_netns()).map_err(ctx(&what))?;
    let port = naming.node_port(cluster.index, node.index);
    wan.ip(&[
        "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &name,
    ])
    .map_err(ctx(&what))?;
    wan.ip(&[
        "link",
        "set",
        &port,
        "master",
        &naming.bridge(cluster.index),
    ])
    .map_err(ctx(&what))?;
    wan.ip(&["link", "set", &port, "up"]).map_err(ctx(&what))?;
    let addr = format!("{}/{}", node.ip, cluster.node_cidr.prefix_len());
    ns.ip(&["addr", "add", &addr, "dev", "eth0"])
        .map_err(ctx(&what))?;
    ns.ip(&["link", "set", "eth0", "up"]).map_err(ctx(&what))?;
    let pod_gw = format!("{}/32", node.pod_gateway());
    ns.ip(&["addr", "add", &pod_gw, "dev", "lo"])
        .map_err(ctx(&what))?;
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        &cluster.gateway.to_string(),
    ])
    .map_err(ctx(&what))?;
    for other in cluster.nodes.iter().filter(|n| n.name != node.name) {
        ns.ip(&[
            "route",
            "add",
            &other.pod_cidr.to_string(),
            "via",
            &other.ip.to_string(),
        ])
        .map_err(ctx(&what))?;
    }
    ns.keep();
    Ok(())
}

/// Where a pod is plugged in.
#[derive(Debug, Clone)]
pub struct PodLink<'a> {
    pub node_netns: &'a str,
    pub pod_netns: &'a str,
    /// Node-side veth name.
    pub veth: &'a str,
    pub ip: Ipv4Addr,
    pub gateway: Ipv4Addr,
}

/// Creates a pod's namespace and its veth pair into the node, with a /32 address, a default
/// route via the node's pod gateway and the node's route back.
pub fn create_pod(link: &PodLink<'_>) -> Result<(), NetworkError> {
    let what = format!("pod namespace {}", link.pod_netns);
    let pod = NetNs::create(link.pod_netns).map_err(ctx(&what))?;
    let node = NetNs::open(link.node_netns).map_err(ctx(&what))?;
    let ip = link.ip.to_string();
    let gw = link.gateway.to_string();
    node.ip(&[
        "link",
        "add",
        link.veth,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        link.pod_netns,
    ])
    .map_err(ctx(&what))?;
    node.ip(&["link", "set", link.veth, "up"])
        .map_err(ctx(&what))?;
    node.ip(&[
        "route",
        "add",
        &format!("{ip}/32"),
        "dev",
        link.veth,
        "src",
        &gw,
    ])
    .map_err(ctx(&what))?;
    pod.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"])
        .map_err(ctx(&what))?;
    pod.ip(&["link", "set", "eth0", "up"]).map_err(ctx(&what))?;
    pod.ip(&["route", "add", &gw, "dev", "eth0", "scope", "link"])
        .map_err(ctx(&what))?;
    pod.ip(&["route", "add", "default", "via", &gw, "dev", "eth0"])
        .map_err(ctx(&what))?;
    pod.keep();
    Ok(())
}
