//! The node agent: watches the local cluster's etcd (never Kubernetes, never a peer), merges
//! every global service's local and remote backends, and programs the eBPF socket load
//! balancer; remote backends are reached through mesh VIPs that the tunnel resolves with the
//! [`mesh_vip::TunnelTable`] this agent publishes.
//!
//! - `bootstrap`: obtaining and renewing this node's certificate from the apiserver's issuer;
//! - `config`: flags and `CLUSTERMESH_*` environment, checked into a `Config`;
//! - `dns`: the `clusterset.local` DNS server (pure zone logic in `dns::zone`);
//! - `inputs`: the etcd watches and the state they build;
//! - `merge`: the pure merge of local and peer services into desired frontends;
//! - `mesh_vip`: mesh VIP allocation and the tunnel table;
//! - `program`: diffing desired against programmed and writing the difference;
//! - `routes`: the local routes of the mesh VIP ranges;
//! - `liveness`: the node's agent record under the agent's lease;
//! - `metrics`, `status`, `status_grpc`: Prometheus metrics, the JSON status endpoints and the
//!   gRPC status API;
//! - `tunnel`: the agent's side of the encrypted node-to-node tunnel;
//! - `app`: the wiring.

pub mod app;
pub mod bootstrap;
pub mod config;
pub mod dns;
pub mod inputs;
pub mod liveness;
pub mod merge;
pub mod mesh_vip;
pub mod metrics;
pub mod program;
pub mod routes;
pub mod status;
pub mod status_grpc;
pub mod tunnel;
