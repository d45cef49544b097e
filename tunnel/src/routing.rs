//! The sending side's table, fed by the agent: which remote backend a mesh VIP stands for.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// Where a mesh VIP leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteTarget {
    /// The cluster that hosts the backend.
    pub cluster: String,
    /// The node that hosts the backend; its certificate must name this node.
    pub node: String,
    /// The tunnel listener of that node.
    pub tunnel: SocketAddr,
    /// The backend's IP in its own cluster (pod CIDRs may overlap between clusters).
    pub backend_ip: IpAddr,
    /// The backend's port; `None` keeps the port the client connected to on the VIP.
    pub backend_port: Option<u16>,
}

/// The result of a lookup: the target and the backend address to CONNECT to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved<'a> {
    pub target: &'a RemoteTarget,
    pub backend: SocketAddr,
}

/// Mesh VIPs → remote targets. An entry for `(ip, Some(port))` wins over one for `(ip, None)`.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    entries: HashMap<(IpAddr, Option<u16>), RemoteTarget>,
    /// Security identity IDs of local pods by IP, sent along so the receiver's policy can
    /// use them.
    source_identities: HashMap<IpAddr, u32>,
}

impl RoutingTable {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, vip: IpAddr, port: Option<u16>, target: RemoteTarget) {
        self.entries.insert((canonical(vip), port), target);
    }

    pub fn remove(&mut self, vip: IpAddr, port: Option<u16>) -> Option<RemoteTarget> {
        self.entries.remove(&(canonical(vip), port))
    }

    pub fn set_source_identity(&mut self, pod_ip: IpAddr, identity: Option<u32>) {
        match identity {
            Some(id) => self.source_identities.insert(canonical(pod_ip), id),
            None => self.source_identities.remove(&canonical(pod_ip)),
        };
    }

    pub fn source_identity(&self, pod_ip: IpAddr) -> Option<u32> {
        self.source_identities.get(&canonical(pod_ip)).copied()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Looks up the local address of an accepted connection (the VIP the client dialed).
    pub fn resolve(&self, local: SocketAddr) -> Option<Resolved<'_>> {
        let ip = canonical(local.ip());
        let target = self
            .entries
            .get(&(ip, Some(local.port())))
            .or_else(|| self.entries.get(&(ip, None)))?;
        let port = target.backend_port.unwrap_or(local.port());
        Some(Resolved {
            target,
            backend: SocketAddr::new(target.backend_ip, port),
        })
    }
}

/// A dual-stack listener reports IPv4 clients as `::ffff:a.b.c.d`; the table speaks IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(port: Option<u16>) -> RemoteTarget {
        RemoteTarget {
            cluster: "east".into(),
            node: "n1".into(),
            tunnel: "192.0.2.1:4244".parse().unwrap(),
            backend_ip: "10.0.0.5".parse().unwrap(),
            backend_port: port,
        }
    }

    #[test]
    fn exact_port_wins_and_unknown_vips_miss() {
        let mut table = RoutingTable::new();
        let vip: IpAddr = "100.64.0.1".parse().unwrap();
        table.insert(vip, None, target(None));
        table.insert(vip, Some(443), target(Some(8443)));
        let any = table.resolve("100.64.0.1:80".parse().unwrap()).unwrap();
        assert_eq!(any.backend, "10.0.0.5:80".parse().unwrap());
        let exact = table.resolve("100.64.0.1:443".parse().unwrap()).unwrap();
        assert_eq!(exact.backend, "10.0.0.5:8443".parse().unwrap());
        let mapped = table.resolve("[::ffff:100.64.0.1]:80".parse().unwrap());
        assert!(mapped.is_some());
        assert!(table.resolve("100.64.0.2:80".parse().unwrap()).is_none());
    }
}
