//! The JSON shapes stored in etcd, exactly as serde reads and writes them. Nothing here is
//! trusted: `decode` turns these into the checked types of `values`.
//!
//! The service layout follows Cilium's ClusterService (`frontends`/`backends` as
//! `ip -> port name -> {Protocol, Port}`, `hostnames`, `zones`, `clusterID`), so Cilium's
//! published fixtures decode; our additions (`nodes`, `notReady`, `affinity`, `headless`) are optional.
//! Numbers that have a range (ports, IDs) are read as u64 so that an out-of-range value is our
//! own typed error, not a generic JSON one.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct L4Wire {
    #[serde(rename = "Protocol", alias = "protocol")]
    pub protocol: String,
    #[serde(rename = "Port", alias = "port")]
    pub port: u64,
}

pub(crate) type PortsWire = BTreeMap<String, L4Wire>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ZoneWire {
    pub zone: String,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ServiceWire {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub frontends: BTreeMap<String, PortsWire>,
    #[serde(default)]
    pub backends: BTreeMap<String, PortsWire>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hostnames: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub zones: BTreeMap<String, ZoneWire>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub not_ready: BTreeSet<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub include_external: bool,
    #[serde(default = "default_true")]
    pub shared: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<String>,
    /// Ours, optional: Cilium's layout has no such field (a headless service has no frontends).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub headless: bool,
    /// Ours, optional: when the publishing apiserver last changed the service (its clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_unix_millis: Option<u64>,
    #[serde(rename = "clusterID")]
    pub cluster_id: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClustersetVipWire {
    pub cluster: String,
    #[serde(rename = "clusterID")]
    pub cluster_id: u64,
    pub namespace: String,
    pub name: String,
    pub ips: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EndpointWire {
    pub cluster: String,
    #[serde(rename = "clusterID")]
    pub cluster_id: u64,
    pub ip: String,
    pub identity: u64,
    pub node: String,
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
    pub namespace: String,
    pub pod: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IdentityWire {
    pub cluster: String,
    #[serde(rename = "clusterID")]
    pub cluster_id: u64,
    pub id: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct NodeAddressWire {
    #[serde(rename = "type")]
    pub kind: String,
    pub ip: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct NodeWire {
    pub cluster: String,
    #[serde(rename = "clusterID")]
    pub cluster_id: u64,
    pub name: String,
    #[serde(default)]
    pub addresses: Vec<NodeAddressWire>,
    #[serde(default, rename = "podCIDRs")]
    pub pod_cidrs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AgentWire {
    pub cluster: String,
    #[serde(rename = "clusterID")]
    pub cluster_id: u64,
    pub node: String,
    pub tunnel_address: String,
    pub cert_fingerprint: String,
    #[serde(rename = "bootID")]
    pub boot_id: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CapabilitiesWire {
    #[serde(default = "default_max_connected")]
    pub max_connected_clusters: u64,
    #[serde(default)]
    pub synced_canaries: bool,
    #[serde(default)]
    pub cached: bool,
}

fn default_max_connected() -> u64 {
    255
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ClusterConfigWire {
    pub cluster: String,
    pub id: u64,
    #[serde(default)]
    pub capabilities: Option<CapabilitiesWire>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MarkerWire {
    pub cluster: String,
    #[serde(rename = "clusterID")]
    pub cluster_id: u64,
    pub unix_millis: u64,
}
