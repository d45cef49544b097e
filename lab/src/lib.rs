//! Whole clusters on one Linux machine: network namespaces, cgroups, pods behind veth pairs,
//! a routed WAN, supervised processes. Runs as root; never touches the host's own network
//! namespace.
//!
//! # Building blocks (usable on their own, e.g. by eBPF tests)
//! - [`netns::NetNs`]: a named network namespace, deleted on drop; run a closure inside it
//!   ([`netns::NetNs::run`]) or spawn a command inside it ([`netns::NetNs::command`]).
//! - [`cgroup::Cgroup`]: a cgroup v2 directory, emptied (SIGKILL) and removed on drop; attach
//!   cgroup eBPF programs to `File::open(cg.path())`.
//!
//! # A lab
//! [`Lab::up`] builds, from a [`topology::Topology`] (default: clusters `east` and `west`, two
//! nodes each, both with pod CIDR 10.244.0.0/16):
//! - a WAN router namespace `cml-<lab>-wan` with one bridge per cluster (the cluster network)
//!   that routes between the clusters' node networks only ([`network`] draws it);
//! - per node a namespace `cml-<lab>-<cluster>-<node>` on the bridge, with its node IP, the
//!   pods' gateway on `lo` and routes to the other nodes' pod CIDRs, and a cgroup
//!   `<cgroup2>/clustermesh-lab/<lab>/<cluster>/<node>` holding everything that runs on the
//!   node (`etcd/`, `apiserver/`, `agent/`, `pod-<ns>-<name>/`, `exec/`);
//! - per pod a namespace `cml-<lab>-<cluster>-pod-<ns>-<name>` behind a veth pair into its
//!   node, with a /32 from the node's pod CIDR;
//! - a detached supervisor daemon ([`supervisor`]) that keeps one etcd per cluster running on
//!   the cluster's first node (`https://<node ip>:2379`, mTLS: clients need a certificate from
//!   the cluster's CA, see [`mesh`] and [`Lab::etcd_config`]; `/health` in plain HTTP on
//!   `127.0.0.1:2381` in that node's namespace only), restarts what dies and logs to the
//!   state directory (default `/run/clustermesh-lab/<lab>`, see [`state`]);
//! - a manifest directory per cluster (`<state>/clusters/<cluster>/manifests`) with Node,
//!   Namespace, Pod, Service and EndpointSlice YAML ([`manifests`]).
//!
//! [`Lab::deploy`] and [`Lab::scale`] run the [`echo`] server in pods; [`down`] removes
//! everything, also after a crash. Tests hold a [`LabGuard`], which takes the lab down when
//! dropped, also when the test panics.
//!
//! # The mesh components
//! `up` starts an apiserver per cluster and an agent per node when their binaries are given
//! ([`LabConfig::binaries`]; the CLI takes the ones built next to it, or
//! `--apiserver-bin`/`--agent-bin`). [`Lab::apiserver_spec`] and [`Lab::agent_spec`] give their
//! [`supervisor::ProcessSpec`] (namespace, cgroup, environment). They get these variables:
//!
//! | variable | value |
//! |---|---|
//! | `CLUSTERMESH_LAB`, `CLUSTERMESH_LAB_STATE_DIR` | lab name, state directory |
//! | `CLUSTERMESH_CLUSTER_NAME`, `CLUSTERMESH_CLUSTER_ID` | the cluster |
//! | `CLUSTERMESH_ETCD_ENDPOINTS` | `https://<ip>:2379` of the cluster's etcd |
//! | `CLUSTERMESH_ETCD_CA`, `_CERT`, `_KEY` | the cluster CA and the process's etcd client certificate ([`mesh`]): CN `clustermesh-apiserver` for the apiserver, `agent-<node>` for an agent; the apiserver turns etcd authentication on, as in production |
//! | `CLUSTERMESH_MANIFESTS_DIR` | the cluster's manifest directory |
//! | `CLUSTERMESH_NODE_NAME`, `CLUSTERMESH_NODE_IP`, `CLUSTERMESH_NODE_POD_CIDR` | the node |
//! | `CLUSTERMESH_NODE_CGROUP` | the node's cgroup (attach cgroup eBPF programs here) |
//! | `CLUSTERMESH_BPFFS_DIR` | `/sys/fs/bpf/clustermesh-lab/<lab>/<cluster>/<node>` for pins (not created) |
//! | `CLUSTERMESH_PEERS_DIR` | the cluster's peers directory ([`mesh`]: one file per connected cluster) |
//! | `CLUSTERMESH_TUNNEL_CERT`, `_KEY`, `_CA`, `CLUSTERMESH_TRUST_DOMAIN` | the node's tunnel certificate from the cluster CA ([`mesh`]) |
//! | `CLUSTERMESH_GRPC_SOCKET` | the agent's gRPC status socket, `<state>/clusters/<c>/nodes/<n>/agent.sock` |

pub mod cgroup;
pub mod echo;
pub mod host;
pub mod lab;
pub mod manifests;
pub mod mesh;
pub mod netns;
pub mod network;
pub mod state;
pub mod supervisor;
pub mod topology;

pub use clustermesh_store::{EtcdConfig, TlsPaths};
pub use lab::{DeploySpec, Lab, LabConfig, LabError, LabGuard, down};
