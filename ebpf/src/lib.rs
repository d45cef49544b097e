//! The socket load-balancing datapath of the node agent.
//!
//! C eBPF programs (`src/bpf/datapath.bpf.c`, built by `build.rs`) attached to the node's cgroup
//! v2 hierarchy rewrite the destination of `connect()` and `sendmsg()` from a service VIP to one
//! of its backends, and back for `recvmsg()` and `getpeername()`; an `sk_lookup` program hands
//! connections to mesh virtual IPs (backends in other clusters) to the agent's tunnel listener.
//! Everything is pinned under bpffs so that an agent restart does not interrupt traffic.
//!
//! ```no_run
//! # fn main() -> Result<(), clustermesh_ebpf::DatapathError> {
//! use clustermesh_ebpf::{Datapath, DatapathConfig, Frontend, Protocol, Service, SessionAffinity};
//!
//! let mut datapath = Datapath::load(&DatapathConfig::default())?;
//! datapath.attach_cgroup("/sys/fs/cgroup/unified".as_ref())?;
//! datapath.attach_sk_lookup("/proc/self/ns/net".as_ref())?;
//! datapath.upsert_service(&Service {
//!     frontend: Frontend { addr: "10.96.0.10:53".parse().unwrap(), protocol: Protocol::Udp },
//!     backends: vec!["10.244.1.5:53".parse().unwrap(), "100.64.0.7:53".parse().unwrap()],
//!     affinity: SessionAffinity::None,
//! })?;
//! # Ok(()) }
//! ```

mod datapath;
mod error;
mod maps;
mod service;
mod sys;

pub use datapath::{AddressFamily, Datapath, DatapathConfig, MAX_BACKENDS_PER_SERVICE};
pub use error::DatapathError;
pub use service::{Frontend, Protocol, Service, SessionAffinity};
