//! What the node agent programs into the datapath: services, their backends and their affinity.
//! Plain values, no I/O.

use std::{net::SocketAddr, time::Duration};

/// The transport protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number the kernel uses (`IPPROTO_TCP`, `IPPROTO_UDP`).
    pub fn ip_protocol_number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    pub fn from_ip_protocol_number(number: u8) -> Option<Self> {
        match number {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }
}

/// What a client dials: a service's virtual IP, port and protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub addr: SocketAddr,
    pub protocol: Protocol,
}

/// Like Kubernetes `service.spec.sessionAffinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionAffinity {
    #[default]
    None,
    /// Connections from one client (for socket load balancing: one network namespace, i.e. one
    /// pod) go to the same backend until it has been idle for `timeout`
    /// (`sessionAffinityConfig.clientIP.timeoutSeconds`, whole seconds, at least one).
    ClientIp { timeout: Duration },
}

/// A service as the datapath sees it: a frontend and the backends that are active for it.
///
/// Which backends are active is the agent's decision (local and remote, topology, readiness);
/// the datapath picks one of them at random for each new connection or unconnected datagram. A
/// backend in another cluster is given by its mesh virtual IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub frontend: Frontend,
    /// Same address family as the frontend. Empty: connections to the frontend are refused.
    pub backends: Vec<SocketAddr>,
    pub affinity: SessionAffinity,
}
