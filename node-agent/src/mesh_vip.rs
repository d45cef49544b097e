//! Mesh virtual IPs: one address per (peer cluster, backend IP), from the configured ranges.
//! The connect hook rewrites a remote backend to its mesh VIP; the node routes the ranges
//! locally and the sk_lookup program hands those connections to the tunnel listener, which
//! looks the VIP up in the [`TunnelTable`] to learn the real target.
//!
//! Because peers' pod CIDRs may overlap, the key is (cluster, IP), never the IP alone.
//!
//! Addresses are placed by a stable hash of the key (with linear probing on collision), so a
//! restarted agent gives almost every backend the VIP it had before and the pinned services
//! it adopts stay valid.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use clustermesh_model::ClusterName;
use ipnet::IpNet;
use serde::Serialize;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MeshVipError {
    #[error(
        "the mesh VIP range {range} is full ({capacity} addresses); give --mesh-vip-range a larger range"
    )]
    Exhausted { range: IpNet, capacity: u128 },
    #[error(
        "no mesh VIP range for {family} backends of cluster {cluster}; configure one with --mesh-vip-range"
    )]
    NoRange {
        family: &'static str,
        cluster: ClusterName,
    },
}

/// A remote backend address that needs a mesh VIP.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct RemoteKey {
    pub cluster: ClusterName,
    pub ip: IpAddr,
}

/// Allocates mesh VIPs and remembers them while they are in use.
#[derive(Debug)]
pub struct MeshVipAllocator {
    ranges: Vec<IpNet>,
    by_key: BTreeMap<RemoteKey, IpAddr>,
    used: BTreeSet<IpAddr>,
}

impl MeshVipAllocator {
    pub fn new(ranges: &[IpNet]) -> Self {
        Self {
            ranges: ranges.iter().map(IpNet::trunc).collect(),
            by_key: BTreeMap::new(),
            used: BTreeSet::new(),
        }
    }

    pub fn get(&self, key: &RemoteKey) -> Option<IpAddr> {
        self.by_key.get(key).copied()
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Makes exactly `wanted` hold VIPs: keeps existing ones, allocates new ones, releases the
    /// rest. A key that cannot get one is returned with its error (the others are allocated).
    pub fn sync(&mut self, wanted: &BTreeSet<RemoteKey>) -> Vec<(RemoteKey, MeshVipError)> {
        let gone: Vec<RemoteKey> = self
            .by_key
            .keys()
            .filter(|k| !wanted.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(vip) = self.by_key.remove(&key) {
                self.used.remove(&vip);
            }
        }
        let mut errors = Vec::new();
        for key in wanted {
            if self.by_key.contains_key(key) {
                continue;
            }
            match self.allocate(key) {
                Ok(vip) => {
                    self.by_key.insert(key.clone(), vip);
                    self.used.insert(vip);
                }
                Err(e) => errors.push((key.clone(), e)),
            }
        }
        errors
    }

    /// The key's VIP, allocated now if it has none.
    pub fn acquire(&mut self, key: &RemoteKey) -> Result<IpAddr, MeshVipError> {
        if let Some(vip) = self.by_key.get(key) {
            return Ok(*vip);
        }
        let vip = self.allocate(key)?;
        self.by_key.insert(key.clone(), vip);
        self.used.insert(vip);
        Ok(vip)
    }

    /// Frees the key's VIP; returns it if it had one.
    pub fn release(&mut self, key: &RemoteKey) -> Option<IpAddr> {
        let vip = self.by_key.remove(key)?;
        self.used.remove(&vip);
        Some(vip)
    }

    fn allocate(&self, key: &RemoteKey) -> Result<IpAddr, MeshVipError> {
        let range = self
            .ranges
            .iter()
            .find(|r| r.network().is_ipv4() == key.ip.is_ipv4())
            .ok_or_else(|| MeshVipError::NoRange {
                family: if key.ip.is_ipv4() { "IPv4" } else { "IPv6" },
                cluster: key.cluster.clone(),
            })?;
        let host_bits = u32::from(range.max_prefix_len() - range.prefix_len());
        // Usable offsets 1..size-1: never the network or the all-ones address. Very large
        // IPv6 ranges are capped at 2^64 offsets, far more than any mesh needs.
        let size: u128 = 1u128 << host_bits.min(64);
        if size <= 2 {
            return Err(MeshVipError::Exhausted {
                range: *range,
                capacity: 0,
            });
        }
        let usable = size - 2;
        let start = u128::from(fnv1a(key)) % usable;
        // Probing is bounded by the number of addresses in use, not by the range size.
        for probe in 0..=self.used.len() as u128 {
            let offset = 1 + (start + probe) % usable;
            let vip = nth(range, offset);
            if !self.used.contains(&vip) {
                return Ok(vip);
            }
        }
        Err(MeshVipError::Exhausted {
            range: *range,
            capacity: usable,
        })
    }
}

fn nth(range: &IpNet, offset: u128) -> IpAddr {
    match range.network() {
        IpAddr::V4(net) => IpAddr::V4(Ipv4Addr::from(u32::from(net).wrapping_add(offset as u32))),
        IpAddr::V6(net) => IpAddr::V6(Ipv6Addr::from(u128::from(net).wrapping_add(offset))),
    }
}

/// FNV-1a: small and stable across Rust releases (std's hasher makes no such promise).
fn fnv1a(key: &RemoteKey) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let ip = match key.ip {
        IpAddr::V4(ip) => ip.octets().to_vec(),
        IpAddr::V6(ip) => ip.octets().to_vec(),
    };
    for byte in key.cluster.as_str().bytes().chain([0]).chain(ip) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Where the tunnel sends a connection that arrived for one mesh VIP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TunnelTarget {
    /// The peer cluster that runs the backend.
    pub cluster: ClusterName,
    /// The backend pod's IP in that cluster.
    pub backend_ip: IpAddr,
    /// The backend ports programmed for this VIP; the tunnel should refuse any other.
    pub ports: BTreeSet<u16>,
    /// The peer node hosting the backend, as the peer's service says.
    pub node: Option<String>,
    /// That node's tunnel listener, from its agent's liveness record in the peer's mirror;
    /// `None` when the node has no live agent (nothing to dial).
    pub tunnel_address: Option<SocketAddr>,
}

/// Every mesh VIP the datapath may send to the tunnel, published on a `watch` channel.
/// A VIP is added before any service uses it and removed only after no service does.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TunnelTable {
    pub targets: BTreeMap<IpAddr, TunnelTarget>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(cluster: &str, ip: &str) -> RemoteKey {
        RemoteKey {
            cluster: ClusterName::new(cluster).unwrap(),
            ip: ip.parse().unwrap(),
        }
    }

    fn ranges() -> Vec<IpNet> {
        vec![
            "100.64.0.0/10".parse().unwrap(),
            "fd00:6d65:7368::/48".parse().unwrap(),
        ]
    }

    #[test]
    fn same_ip_in_two_clusters_gets_two_vips_inside_the_range() {
        let mut a = MeshVipAllocator::new(&ranges());
        let wanted = BTreeSet::from([key("east", "10.0.0.1"), key("north", "10.0.0.1")]);
        assert!(a.sync(&wanted).is_empty());
        let east = a.get(&key("east", "10.0.0.1")).unwrap();
        let north = a.get(&key("north", "10.0.0.1")).unwrap();
        assert_ne!(east, north);
        for vip in [east, north] {
            assert!(ranges()[0].contains(&vip), "{vip}");
        }
        let v6 = BTreeSet::from([key("east", "fd00::1")]);
        assert!(a.sync(&v6).is_empty());
        assert!(ranges()[1].contains(&a.get(&key("east", "fd00::1")).unwrap()));
        assert_eq!(a.len(), 1, "the IPv4 keys were released");
    }

    #[test]
    fn vips_are_stable_across_allocators_and_kept_while_wanted() {
        let wanted: BTreeSet<_> = (1..=200)
            .map(|i| key("east", &format!("10.0.{i}.1")))
            .collect();
        let mut a = MeshVipAllocator::new(&ranges());
        let mut b = MeshVipAllocator::new(&ranges());
        assert!(a.sync(&wanted).is_empty());
        assert!(b.sync(&wanted).is_empty());
        for k in &wanted {
            assert_eq!(
                a.get(k),
                b.get(k),
                "a restarted agent gives {k:?} the same VIP"
            );
        }
        let before = a.get(&key("east", "10.0.1.1"));
        let mut fewer = wanted.clone();
        fewer.remove(&key("east", "10.0.2.1"));
        assert!(a.sync(&fewer).is_empty());
        assert_eq!(a.get(&key("east", "10.0.1.1")), before);
        assert_eq!(a.get(&key("east", "10.0.2.1")), None);
    }

    #[test]
    fn a_full_range_says_so_and_never_hands_out_network_or_broadcast() {
        // A /30 has two usable addresses.
        let mut a = MeshVipAllocator::new(&["100.64.0.0/30".parse().unwrap()]);
        let wanted = BTreeSet::from([
            key("east", "10.0.0.1"),
            key("east", "10.0.0.2"),
            key("east", "10.0.0.3"),
        ]);
        let errors = a.sync(&wanted);
        assert_eq!(errors.len(), 1);
        assert!(matches!(
            errors[0].1,
            MeshVipError::Exhausted { capacity: 2, .. }
        ));
        let mut got: Vec<_> = wanted.iter().filter_map(|k| a.get(k)).collect();
        got.sort();
        assert_eq!(
            got,
            [
                "100.64.0.1".parse::<IpAddr>().unwrap(),
                "100.64.0.2".parse().unwrap()
            ]
        );
        let v6 = BTreeSet::from([key("east", "fd00::1")]);
        assert!(matches!(a.sync(&v6)[0].1, MeshVipError::NoRange { .. }));
    }
}
