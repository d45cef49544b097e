//! The mesh-VIP capture: which destinations the sk_lookup program hands to the agent's tunnel
//! listener, and which socket that is.

use ipnet::IpNet;

use super::{Datapath, map_error};
use crate::{
    DatapathError,
    maps::{MeshVipRangeAddr, TUNNEL_LISTENER_IPV4, TUNNEL_LISTENER_IPV6, names},
};

/// Which tunnel listener [`Datapath::set_tunnel_listener`] sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressFamily {
    Ipv4,
    Ipv6,
}

impl Datapath {
    pub fn set_mesh_vip_ranges(&mut self, ranges: &[IpNet]) -> Result<(), DatapathError> {
        let wanted: Vec<IpNet> = ranges.iter().map(IpNet::trunc).collect();
        for range in &wanted {
            self.mesh_vip_ranges
                .insert(&MeshVipRangeAddr::key(*range), 1, 0)
                .map_err(map_error(names::MESH_VIP_RANGES, "adding a mesh VIP range"))?;
        }
        let present: Vec<_> = self
            .mesh_vip_ranges
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_error(names::MESH_VIP_RANGES, "listing mesh VIP ranges"))?;
        for key in present {
            let stale = MeshVipRangeAddr::range(&key).is_none_or(|range| !wanted.contains(&range));
            if stale {
                self.mesh_vip_ranges.remove(&key).map_err(map_error(
                    names::MESH_VIP_RANGES,
                    "removing a mesh VIP range",
                ))?;
            }
        }
        Ok(())
    }

    /// Hands connections to mesh VIPs of one address family to `listener`, a listening TCP
    /// socket in the namespace the sk_lookup program is attached to. The kernel drops it from
    /// the map when the socket closes; a restarted agent sets its new listener again.
    pub fn set_tunnel_listener(
        &mut self,
        family: AddressFamily,
        listener: &impl std::os::fd::AsRawFd,
    ) -> Result<(), DatapathError> {
        let index = match family {
            AddressFamily::Ipv4 => TUNNEL_LISTENER_IPV4,
            AddressFamily::Ipv6 => TUNNEL_LISTENER_IPV6,
        };
        self.tunnel_listeners
            .set(index, listener, 0)
            .map_err(map_error(
                names::TUNNEL_LISTENERS,
                "setting the tunnel listener",
            ))
    }
}
