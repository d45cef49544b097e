//! Whole clusters on one Linux machine: network namespaces, cgroups, pods behind veth pairs,
//! a routed WAN, supervised processes.
//!
//! The building blocks other crates' tests may use on their own:
//! - [`netns::NetNs`]: a named network namespace, deleted on drop;
//! - [`cgroup::Cgroup`]: a cgroup v2 directory, emptied and removed on drop.

pub mod cgroup;
pub mod echo;
pub mod host;
pub mod lab;
pub mod manifests;
pub mod netns;
pub mod network;
pub mod state;
pub mod supervisor;
pub mod topology;

pub use lab::{DeploySpec, Lab, LabConfig, LabError, down};
