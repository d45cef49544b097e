//! The lab's state directory: what `up` built and what `deploy` added, so that every later
//! command (and `down` after a crash) knows what exists.
//!
//! ```text
//! <state>/lab.json                      a [`LabState`]
//! <state>/lock                          flock(2)ed by every command that changes the lab
//! <state>/clusters/<cluster>/manifests  Kubernetes YAML of the cluster (see `manifests`)
//! <state>/clusters/<cluster>/etcd       the cluster's etcd data
//! <state>/processes/…                   supervision (see `supervisor`)
//! ```

use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use crate::supervisor::write_atomic;
use crate::topology::{ClusterPlan, NodePlan, Topology};

/// What can go wrong with the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "no lab in {0}: run `clustermesh lab up` first (or pass the right --name / --state-dir)"
    )]
    NoLab(PathBuf),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot lock {path}: {source} (is another `clustermesh lab` command running?)")]
    Lock {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{path} is not a lab state file: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Write(#[from] crate::supervisor::SupervisorError),
}

/// How to run the binary that provides the lab's helper commands (`supervise`,
/// `echo-server`): the `clustermesh` CLI with prefix `["lab"]`, or the lab crate's own
/// `clustermesh-lab-helper` with no prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Helper {
    pub program: PathBuf,
    pub prefix_args: Vec<String>,
}

impl Helper {
    /// The arguments to run helper `command` with `args`.
    pub fn args(&self, command: &str, args: &[String]) -> Vec<String> {
        let mut out = self.prefix_args.clone();
        out.push(command.to_owned());
        out.extend_from_slice(args);
        out
    }
}

/// Binaries of the components that do not exist yet; `None` means "not available".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentBinaries {
    pub apiserver: Option<PathBuf>,
    pub agent: Option<PathBuf>,
}

/// Service annotation `clustermesh.io/affinity`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    #[default]
    None,
    Local,
    Remote,
}

impl Affinity {
    pub fn as_str(self) -> &'static str {
        match self {
            Affinity::None => "none",
            Affinity::Local => "local",
            Affinity::Remote => "remote",
        }
    }
}

/// A pod the lab made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRecord {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    /// Lab-wide pod number; names the node-side veth.
    pub index: u32,
    pub netns: String,
    pub veth: String,
    pub cgroup: PathBuf,
    /// The deployment (`app` label) it belongs to, if any.
    pub app: Option<String>,
    /// The echo server's port when it runs one.
    pub port: Option<u16>,
}

impl PodRecord {
    /// `<namespace>/<name>`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The supervised process id of its workload.
    pub fn process_id(&self) -> String {
        format!("{}.pod.{}.{}", self.cluster, self.namespace, self.name)
    }
}

/// A deployment of the echo workload with its Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub cluster_ip: Ipv4Addr,
    pub port: u16,
    pub replicas: u32,
    pub global: bool,
    pub shared: bool,
    pub affinity: Affinity,
}

/// Everything the lab made, persisted as `lab.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub state_dir: PathBuf,
    pub topology: Topology,
    pub clusters: Vec<ClusterPlan>,
    /// The lab's cgroup (absolute); nodes are `<cgroup_dir>/<cluster>/<node>`.
    pub cgroup_dir: PathBuf,
    /// The lab's bpffs directory for pinned maps, e.g. `/sys/fs/bpf/clustermesh-lab/<lab>`.
    pub bpffs_dir: Option<PathBuf>,
    pub helper: Helper,
    pub binaries: ComponentBinaries,
    pub pods: Vec<PodRecord>,
    pub services: Vec<ServiceRecord>,
    pub next_pod_index: u32,
}

impl LabState {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("lab.json")
    }

    pub fn load(state_dir: &Path) -> Result<Self, StateError> {
        let path = Self::path(state_dir);
        let text = match fs::read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StateError::NoLab(state_dir.to_owned()));
            }
            Err(source) => {
                return Err(StateError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        serde_json::from_slice(&text).map_err(|source| StateError::Json { path, source })
    }

    pub fn save(&self) -> Result<(), StateError> {
        let json = serde_json::to_vec_pretty(self).expect("state serializes");
        Ok(write_atomic(&Self::path(&self.state_dir), &json)?)
    }

    pub fn cluster(&self, name: &str) -> Option<&ClusterPlan> {
        self.clusters.iter().find(|c| c.name == name)
    }

    pub fn node(&self, cluster: &str, node: &str) -> Option<&NodePlan> {
        self.cluster(cluster)?.nodes.iter().find(|n| n.name == node)
    }

    pub fn manifests_dir(&self, cluster: &str) -> PathBuf {
        manifests_dir(&self.state_dir, cluster)
    }

    pub fn node_cgroup(&self, cluster: &str, node: &str) -> PathBuf {
        self.cgroup_dir.join(cluster).join(node)
    }

    pub fn pod(&self, cluster: &str, namespace: &str, name: &str) -> Option<&PodRecord> {
        self.pods
            .iter()
            .find(|p| p.cluster == cluster && p.namespace == namespace && p.name == name)
    }

    pub fn service(&self, cluster: &str, namespace: &str, name: &str) -> Option<&ServiceRecord> {
        self.services
            .iter()
            .find(|s| s.cluster == cluster && s.namespace == namespace && s.name == name)
    }
}

/// `<state>/clusters/<cluster>/manifests`.
pub fn manifests_dir(state_dir: &Path, cluster: &str) -> PathBuf {
    state_dir.join("clusters").join(cluster).join("manifests")
}

/// An exclusive lock on the state directory, released on drop.
#[derive(Debug)]
pub struct StateLock {
    _lock: Flock<File>,
}

impl StateLock {
    /// Takes the lock, waiting for other lab commands to finish.
    pub fn acquire(state_dir: &Path) -> Result<Self, StateError> {
        fs::create_dir_all(state_dir).map_err(|source| StateError::Io {
            action: "create",
            path: state_dir.to_owned(),
            source,
        })?;
        let path = state_dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StateError::Io {
                action: "open",
                path: path.clone(),
                source,
            })?;
        let lock = Flock::lock(file, FlockArg::LockExclusive)
            .map_err(|(_, source)| StateError::Lock { path, source })?;
        Ok(StateLock { _lock: lock })
    }
}
