//! A whole lab: bring it up, inspect it, deploy workloads, run things in it, take it down.
//!
//! [`Lab::up`] builds the network ([`crate::network`]), one cgroup per node under
//! `<cgroup v2 root>/clustermesh-lab/<lab>/<cluster>/<node>`, the manifest directories,
//! starts the supervisor daemon and registers one etcd per cluster (and the apiserver and
//! agents when their binaries are given). [`down`] removes all of it, from the state directory
//! alone, also after a crash.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clustermesh_store::{EtcdConfig, TlsPaths};
use serde::Serialize;

use crate::cgroup::{self, CgroupError, cgroup2_root};
use crate::echo;
use crate::host::{self, HostError};
use crate::manifests::{ManifestDir, ManifestError};
use crate::mesh;
use crate::netns::{self, NetNs, NetNsError};
use crate::network::{self, NetworkError, PodLink};
use crate::state::{
    Affinity, ComponentBinaries, Helper, LabState, PodRecord, ServiceRecord, StateError, StateLock,
};
use crate::supervisor::{Component, ProcessSpec, Processes, RunState, SupervisorError};
use crate::topology::{self, ClusterPlan, Naming, Topology, TopologyError, nth_host};

/// Default parent of state directories: `/run/clustermesh-lab/<lab>`.
pub const DEFAULT_STATE_ROOT: &str = "/run/clustermesh-lab";
/// etcd's client port on every cluster's etcd (mTLS).
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's plain-HTTP `/health` and `/metrics` port, on loopback in the etcd node's namespace
/// only (it serves no keys).
pub const ETCD_METRICS_PORT: u16 = 2381;
/// Where each node's agent forwards DNS names outside its zone (loopback in the node's namespace).
pub const LAB_DNS_UPSTREAM: &str = "127.0.0.1:5353";

/// What can go wrong with a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Mesh(#[from] mesh::MeshError),
    #[error("cluster {0:?} cannot be connected to itself")]
    SelfConnect(String),
    #[error(transparent)]
    NetNs(#[from] NetNsError),
    #[error(transparent)]
    Supervisor(#[from] SupervisorError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(
        "lab {name:?} already exists (state in {dir}); take it down first with `clustermesh lab down --name {name}`"
    )]
    Exists { name: String, dir: PathBuf },
    #[error(
        "network namespaces of lab {name:?} are left over from an earlier run ({examples}); remove them with `clustermesh lab down --name {name}`"
    )]
    Leftovers { name: String, examples: String },
    #[error(
        "etcd binary {0:?} not found; install Debian's etcd (`apt-get install etcd-server`) or pass --etcd-bin"
    )]
    NoEtcd(PathBuf),
    #[error("no cluster {name:?} in this lab (clusters: {known})")]
    UnknownCluster { name: String, known: String },
    #[error("no node {node:?} in cluster {cluster:?} (nodes: {known})")]
    UnknownNode {
        cluster: String,
        node: String,
        known: String,
    },
    #[error("no pod {pod:?} in cluster {cluster:?}; `clustermesh lab status` lists the pods")]
    UnknownPod { cluster: String, pod: String },
    #[error(
        "no deployment {name:?} in cluster {cluster:?}; create it with `clustermesh lab deploy`"
    )]
    UnknownDeployment { cluster: String, name: String },
    #[error(
        "deployment {name:?} already exists in cluster {cluster:?}; change its size with `clustermesh lab scale`"
    )]
    DeploymentExists { cluster: String, name: String },
    #[error("pod {pod:?} already exists in cluster {cluster:?}")]
    PodExists { cluster: String, pod: String },
    #[error("node {node} has no free pod IP left in {cidr}; use a shorter node_pod_prefix")]
    PodCidrFull { node: String, cidr: ipnet::Ipv4Net },
    #[error("cluster {cluster} has no free service IP left in {cidr}")]
    ServiceCidrFull {
        cluster: String,
        cidr: ipnet::Ipv4Net,
    },
    #[error("{what} did not become ready within {secs} s; see its log {log}")]
    NotReady {
        what: String,
        secs: u64,
        log: PathBuf,
    },
}

/// How to create a lab.
#[derive(Debug, Clone)]
pub struct LabConfig {
    /// 1..=6 characters of [a-z0-9]; prefixes every namespace and interface.
    pub name: String,
    pub state_dir: PathBuf,
    /// The binary that provides `supervise` and `echo-server`.
    pub helper: Helper,
    /// Debian's etcd (found in PATH when not absolute).
    pub etcd_bin: PathBuf,
    /// Binaries of the apiserver and agents; `None` = not available (not started).
    pub binaries: ComponentBinaries,
    /// How long `up` waits for every etcd to be healthy.
    pub ready_timeout: Duration,
}

impl LabConfig {
    /// A config with the default state directory and etcd from PATH.
    pub fn new(name: &str, helper: Helper) -> Self {
        LabConfig {
            name: name.to_owned(),
            state_dir: default_state_dir(name),
            helper,
            etcd_bin: "etcd".into(),
            binaries: ComponentBinaries::default(),
            ready_timeout: Duration::from_secs(30),
        }
    }
}

/// `/run/clustermesh-lab/<name>`.
pub fn default_state_dir(name: &str) -> PathBuf {
    Path::new(DEFAULT_STATE_ROOT).join(name)
}

/// What to deploy: N replicas of the echo server behind a Service.
#[derive(Debug, Clone)]
pub struct DeploySpec {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub replicas: u32,
    pub port: u16,
    pub global: bool,
    pub shared: bool,
    pub affinity: Affinity,
}

impl DeploySpec {
    /// `replicas` echo servers named `name` in namespace `default`, port 8080, global,
    /// shared, affinity none.
    pub fn echo(cluster: &str, name: &str, replicas: u32) -> Self {
        DeploySpec {
            cluster: cluster.to_owned(),
            namespace: "default".into(),
            name: name.to_owned(),
            replicas,
            port: echo::DEFAULT_PORT,
            global: true,
            shared: true,
            affinity: Affinity::None,
        }
    }
}

/// Annotation changes for [`Lab::annotate`]; `None` leaves one as it is.
#[derive(Debug, Clone, Copy, Default)]
pub struct Annotations {
    pub global: Option<bool>,
    pub shared: Option<bool>,
    pub affinity: Option<Affinity>,
}

/// A lab that exists (its state directory has been read).
#[derive(Debug)]
pub struct Lab {
    state: LabState,
    naming: Naming,
}

impl Lab {
    /// Builds the lab and starts its processes; waits until every etcd is healthy.
    /// On failure everything built so far is removed again (logs stay in the state directory).
    pub fn up(config: &LabConfig, topology: &Topology) -> Result<Lab, LabError> {
        let cgroup_root = host::preflight()?;
        let naming = Naming::new(&config.name)?;
        let clusters = topology.plan()?;
        let state_dir = &config.state_dir;
        if LabState::path(state_dir).exists() {
            return Err(LabError::Exists {
                name: config.name.clone(),
                dir: state_dir.clone(),
            });
        }
        let leftovers = NetNs::list_with_prefix(&naming.netns_prefix());
        if !leftovers.is_empty() {
            return Err(LabError::Leftovers {
                name: config.name.clone(),
                examples: leftovers.into_iter().take(3).collect::<Vec<_>>().join(", "),
            });
        }
        let etcd_bin = host::which(&config.etcd_bin.to_string_lossy())
            .ok_or_else(|| LabError::NoEtcd(config.etcd_bin.clone()))?;
        let lock = StateLock::acquire(state_dir)?;
        if host::ensure_bpffs()? {
            tracing::info!("mounted bpffs at {}", host::BPFFS);
        }
        let bpffs_dir = Path::new(host::BPFFS)
            .join("clustermesh-lab")
            .join(&config.name);
        let _ = std::fs::create_dir_all(&bpffs_dir);
        let state = LabState {
            name: config.name.clone(),
            state_dir: state_dir.clone(),
            topology: topology.clone(),
            clusters,
            cgroup_dir: cgroup_root.join(naming.cgroup()),
            bpffs_dir: Some(bpffs_dir),
            helper: config.helper.clone(),
            binaries: config.binaries.clone(),
            pods: Vec::new(),
            services: Vec::new(),
            next_pod_index: 0,
        };
        // Saved first, so that `down` finds everything even if we crash half-way.
        state.save()?;
        let lab = Lab { state, naming };
        let built = lab.build(&etcd_bin);
        drop(lock);
        match built.and_then(|()| lab.wait_etcd_healthy(config.ready_timeout)) {
            Ok(()) => Ok(lab),
            Err(err) => {
                tracing::error!(
                    "bringing the lab up failed: {err}; removing what was built (logs stay in {})",
                    state_dir.display()
                );
                if let Err(cleanup) = teardown(&lab.state.name, state_dir, true) {
                    tracing::error!("cleanup after the failure failed too: {cleanup}");
                }
                Err(err)
            }
        }
    }

    fn build(&self, etcd_bin: &Path) -> Result<(), LabError> {
        let s = &self.state;
        tracing::info!(
            "creating the WAN router and {} cluster network(s)",
            s.clusters.len()
        );
        network::create_wan(&self.naming, &s.clusters)?;
        for cluster in &s.clusters {
            tracing::info!(
                "cluster {} (id {}): {} node(s) on {}, pod CIDR {}",
                cluster.name,
                cluster.id,
                cluster.nodes.len(),
                cluster.node_cidr,
                cluster.pod_cidr
            );
            let manifests = ManifestDir::new(s.manifests_dir(&cluster.name));
            for node in &cluster.nodes {
                network::create_node(&self.naming, cluster, node)?;
                let cg = s.node_cgroup(&cluster.name, &node.name);
                std::fs::create_dir_all(&cg).map_err(|source| {
                    LabError::Cgroup(CgroupError::Io {
                        action: "create cgroup",
                        path: cg.clone(),
                        source,
                    })
                })?;
                manifests.write_node(&cluster.name, node)?;
                if let Some(bpffs) = &s.bpffs_dir {
                    // Where the node's agent pins its maps; removed by `down`.
                    let _ = std::fs::create_dir_all(bpffs.join(&cluster.name).join(&node.name));
                }
            }
            manifests.write_namespace("default")?;
            let nodes: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
            let pki = mesh::ClusterPki::new(&s.state_dir, &cluster.name);
            pki.issue(&cluster.name, &nodes)?;
            pki.issue_etcd(&cluster.name, etcd_node(cluster).ip.into(), &nodes)?;
            std::fs::create_dir_all(mesh::peers_dir(&s.state_dir, &cluster.name)).map_err(
                |source| {
                    LabError::Mesh(mesh::MeshError::Io {
                        action: "create",
                        path: mesh::peers_dir(&s.state_dir, &cluster.name),
                        source,
                    })
                },
            )?;
        }
        if self.state.topology.connect_all() {
            tracing::info!("connecting every pair of clusters (a full mesh)");
            for (i, a) in s.clusters.iter().enumerate() {
                for b in &s.clusters[i + 1..] {
                    self.connect(&a.name, &b.name)?;
                }
            }
        }
        tracing::info!("starting the supervisor");
        let procs = self.processes();
        procs.spawn_daemon(
            &s.helper.program,
            &s.helper.args(
                "supervise",
                &["--state-dir".into(), s.state_dir.display().to_string()],
            ),
        )?;
        for cluster in &s.clusters {
            procs.register(&self.etcd_spec(cluster, etcd_bin))?;
            if let Some(program) = &s.binaries.apiserver {
                procs.register(&self.apiserver_spec(&cluster.name, program)?)?;
            }
            if let Some(program) = &s.binaries.agent {
                for node in &cluster.nodes {
                    procs.register(&self.agent_spec(&cluster.name, &node.name, program)?)?;
                }
            }
        }
        Ok(())
    }

    /// Connects clusters `a` and `b` both ways: each gets a peer file for the other (its etcd,
    /// its CA and a read-only client certificate from its CA). Their apiservers start
    /// mirroring and their agents trust each other's nodes within seconds; nothing restarts.
    /// Connecting twice changes nothing.
    pub fn connect(&self, a: &str, b: &str) -> Result<(), LabError> {
        if a == b {
            return Err(LabError::SelfConnect(a.to_owned()));
        }
        self.connect_one_way(a, b)?;
        self.connect_one_way(b, a)
    }

    /// Writes `from`'s peer file for `to`: `from`'s apiserver mirrors `to` (over mTLS, as
    /// `to`'s read-only `remote` user). Writing it twice changes nothing.
    pub fn connect_one_way(&self, from: &str, to: &str) -> Result<(), LabError> {
        if from == to {
            return Err(LabError::SelfConnect(from.to_owned()));
        }
        let (from, to) = (self.cluster(from)?, self.cluster(to)?);
        let dir = &self.state.state_dir;
        let entry = mesh::PeerEntry {
            name: to.name.clone(),
            id: to.id,
            etcd: etcd_url(to),
            ca: mesh::ClusterPki::new(dir, &to.name).ca(),
        };
        mesh::write_peer(dir, &from.name, &entry)?;
        Ok(())
    }

    /// Disconnects `a` and `b` both ways; returns whether they were connected.
    pub fn disconnect(&self, a: &str, b: &str) -> Result<bool, LabError> {
        let (ca, cb) = (self.cluster(a)?, self.cluster(b)?);
        let dir = &self.state.state_dir;
        let one = mesh::remove_peer(dir, &ca.name, &cb.name)?;
        let other = mesh::remove_peer(dir, &cb.name, &ca.name)?;
        Ok(one || other)
    }

    /// The clusters `cluster` is connected to.
    pub fn peers_of(&self, cluster: &str) -> Result<Vec<String>, LabError> {
        let c = self.cluster(cluster)?;
        Ok(mesh::connected_peers(&self.state.state_dir, &c.name))
    }

    /// Reads the lab in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Lab, LabError> {
        let state = LabState::load(state_dir)?;
        let naming = Naming::new(&state.name)?;
        Ok(Lab { state, naming })
    }

    pub fn state(&self) -> &LabState {
        &self.state
    }

    pub fn naming(&self) -> &Naming {
        &self.naming
    }

    /// The lab's supervised processes.
    pub fn processes(&self) -> Processes {
        Processes::new(&self.state.state_dir)
    }

    /// A failure drill: stops every supervised process on a node (its agent, its pods'
    /// workloads, etcd/apiserver on a first node) and keeps them stopped until
    /// [`Lab::start_node`]. The namespaces stay. Returns the ids it stopped.
    pub fn stop_node(&self, cluster: &str, node: &str) -> Result<Vec<String>, LabError> {
        self.node(cluster, node)?;
        let procs = self.processes();
        let ids: Vec<String> = procs
            .list()
            .into_iter()
            .filter(|p| p.spec.cluster == cluster && p.spec.node == node)
            .map(|p| p.spec.id)
            .collect();
        for id in &ids {
            procs.stop(id)?;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while ids.iter().any(|id| {
            procs
                .status(id)
                .is_some_and(|s| s.state == RunState::Running)
        }) {
            if Instant::now() > deadline {
                return Err(LabError::NotReady {
                    what: format!("stopping the processes of node {cluster}/{node}"),
                    secs: 10,
                    log: procs.daemon_log_path(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(ids)
    }

    /// Lets every stopped process of a node run again. Returns their ids.
    pub fn start_node(&self, cluster: &str, node: &str) -> Result<Vec<String>, LabError> {
        self.node(cluster, node)?;
        let procs = self.processes();
        let mut ids = Vec::new();
        for p in procs.list() {
            if p.spec.cluster == cluster && p.spec.node == node && p.stop_requested {
                procs.start(&p.spec.id)?;
                ids.push(p.spec.id);
            }
        }
        Ok(ids)
    }

    pub fn cluster(&self, name: &str) -> Result<&ClusterPlan, LabError> {
        self.state
            .cluster(name)
            .ok_or_else(|| LabError::UnknownCluster {
                name: name.to_owned(),
                known: self
                    .state
                    .clusters
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    fn node(&self, cluster: &str, node: &str) -> Result<&topology::NodePlan, LabError> {
        let c = self.cluster(cluster)?;
        c.nodes
            .iter()
            .find(|n| n.name == node)
            .ok_or_else(|| LabError::UnknownNode {
                cluster: cluster.to_owned(),
                node: node.to_owned(),
                known: c
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The network namespace of a node (for `NetNs::open`).
    pub fn node_netns(&self, cluster: &str, node: &str) -> Result<String, LabError> {
        self.node(cluster, node)?;
        Ok(self.naming.node_netns(cluster, node))
    }

    /// The cgroup of a node (absolute), where eBPF programs for that node attach.
    pub fn node_cgroup(&self, cluster: &str, node: &str) -> Result<PathBuf, LabError> {
        self.node(cluster, node)?;
        Ok(self.state.node_cgroup(cluster, node))
    }

    /// The directory of the cluster's Kubernetes YAML.
    pub fn manifests_dir(&self, cluster: &str) -> Result<PathBuf, LabError> {
        self.cluster(cluster)?;
        Ok(self.state.manifests_dir(cluster))
    }

    /// `https://<ip>:2379`, the client endpoint of the cluster's etcd (reachable from every
    /// node of every cluster, not from the host). It requires a client certificate from the
    /// cluster's CA: use [`Lab::etcd_config`].
    pub fn etcd_endpoint(&self, cluster: &str) -> Result<String, LabError> {
        let c = self.cluster(cluster)?;
        Ok(etcd_url(c))
    }

    /// How the lab's tools reach the cluster's etcd: its endpoint, the cluster CA and the
    /// client certificate of [`mesh::LAB_ADMIN_USER`] (etcd's root user). Connect from a
    /// namespace that reaches the endpoint (any lab node).
    pub fn etcd_config(&self, cluster: &str) -> Result<EtcdConfig, LabError> {
        self.etcd_config_as(cluster, mesh::LAB_ADMIN_USER)
    }

    /// Like [`Lab::etcd_config`], with the client certificate of another of the cluster's etcd
    /// users ([`mesh::APISERVER_USER`], `agent-<node>`).
    pub fn etcd_config_as(&self, cluster: &str, user: &str) -> Result<EtcdConfig, LabError> {
        let c = self.cluster(cluster)?;
        let pki = mesh::ClusterPki::new(&self.state.state_dir, &c.name);
        Ok(EtcdConfig::mtls(
            etcd_url(c),
            TlsPaths {
                ca: pki.ca(),
                cert: pki.etcd_client_cert(user),
                key: pki.etcd_client_key(user),
            },
        ))
    }

    /// A pod by cluster and `<namespace>/<name>` (or just `<name>` in `default`).
    pub fn pod(&self, cluster: &str, pod: &str) -> Result<&PodRecord, LabError> {
        self.cluster(cluster)?;
        let (ns, name) = pod.split_once('/').unwrap_or(("default", pod));
        self.state
            .pod(cluster, ns, name)
            .ok_or_else(|| LabError::UnknownPod {
                cluster: cluster.to_owned(),
                pod: pod.to_owned(),
            })
    }

    /// The pods of a deployment, sorted by name.
    pub fn deployment_pods(&self, cluster: &str, namespace: &str, name: &str) -> Vec<&PodRecord> {
        let mut pods: Vec<_> = self
            .state
            .pods
            .iter()
            .filter(|p| {
                p.cluster == cluster && p.namespace == namespace && p.app.as_deref() == Some(name)
            })
            .collect();
        pods.sort_by_key(|p| pod_ordinal(&p.name));
        pods
    }

    fn base_env(
        &self,
        cluster: &ClusterPlan,
        node: &topology::NodePlan,
        etcd_user: &str,
    ) -> BTreeMap<String, String> {
        let s = &self.state;
        let mut env = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            env.insert(k.to_owned(), v);
        };
        put("CLUSTERMESH_LAB", s.name.clone());
        put(
            "CLUSTERMESH_LAB_STATE_DIR",
            s.state_dir.display().to_string(),
        );
        put("CLUSTERMESH_CLUSTER_NAME", cluster.name.clone());
        put("CLUSTERMESH_CLUSTER_ID", cluster.id.to_string());
        let pki = mesh::ClusterPki::new(&s.state_dir, &cluster.name);
        put("CLUSTERMESH_ETCD_ENDPOINTS", etcd_url(cluster));
        put("CLUSTERMESH_ETCD_CA", pki.ca().display().to_string());
        put(
            "CLUSTERMESH_ETCD_CERT",
            pki.etcd_client_cert(etcd_user).display().to_string(),
        );
        put(
            "CLUSTERMESH_ETCD_KEY",
            pki.etcd_client_key(etcd_user).display().to_string(),
        );
        put(
            "CLUSTERMESH_MANIFESTS_DIR",
            s.manifests_dir(&cluster.name).display().to_string(),
        );
        put("CLUSTERMESH_NODE_NAME", node.name.clone());
        put("CLUSTERMESH_NODE_IP", node.ip.to_string());
        put("CLUSTERMESH_NODE_POD_CIDR", node.pod_cidr.to_string());
        put(
            "CLUSTERMESH_NODE_CGROUP",
            s.node_cgroup(&cluster.name, &node.name)
                .display()
                .to_string(),
        );
        put(
            "CLUSTERMESH_PEERS_DIR",
            mesh::peers_dir(&s.state_dir, &cluster.name)
                .display()
                .to_string(),
        );
        put("CLUSTERMESH_TRUST_DOMAIN", mesh::TRUST_DOMAIN.to_owned());
        put(
            "CLUSTERMESH_TUNNEL_CERT",
            pki.node_cert(&node.name).display().to_string(),
        );
        put(
            "CLUSTERMESH_TUNNEL_KEY",
            pki.node_key(&node.name).display().to_string(),
        );
        put("CLUSTERMESH_TUNNEL_CA", pki.ca().display().to_string());
        // The agent's DNS server forwards names outside clusterset.local to the lab's stand-in
        // for kube-dns: whatever answers on loopback port 5353 in the node's namespace (nothing
        // by default, so such names get SERVFAIL; the DNS end-to-end test starts one).
        put("CLUSTERMESH_DNS_UPSTREAM", LAB_DNS_UPSTREAM.to_owned());
        // Every lab node shares the host's filesystem: one gRPC socket per node.
        put(
            "CLUSTERMESH_GRPC_SOCKET",
            agent_socket(&s.state_dir, &cluster.name, &node.name)
                .display()
                .to_string(),
        );
        if let Some(bpffs) = &s.bpffs_dir {
            put(
                "CLUSTERMESH_BPFFS_DIR",
                bpffs
                    .join(&cluster.name)
                    .join(&node.name)
                    .display()
                    .to_string(),
            );
        }
        env
    }

    fn etcd_spec(&self, cluster: &ClusterPlan, etcd_bin: &Path) -> ProcessSpec {
        let node = etcd_node(cluster);
        let s = &self.state;
        let data = s
            .state_dir
            .join("clusters")
            .join(&cluster.name)
            .join("etcd");
        // The only member talks to itself on loopback: no peer traffic leaves the node.
        let peer = "http://127.0.0.1:2380".to_owned();
        let pki = mesh::ClusterPki::new(&s.state_dir, &cluster.name);
        ProcessSpec {
            id: format!("{}.etcd", cluster.name),
            component: Component::Etcd,
            cluster: cluster.name.clone(),
            node: node.name.clone(),
            pod: None,
            netns: self.naming.node_netns(&cluster.name, &node.name),
            cgroup: s.node_cgroup(&cluster.name, &node.name).join("etcd"),
            program: etcd_bin.to_owned(),
            args: vec![
                "--name".into(),
                cluster.name.clone(),
                "--data-dir".into(),
                data.display().to_string(),
                "--listen-client-urls".into(),
                format!(
                    "https://{}:{ETCD_CLIENT_PORT},https://127.0.0.1:{ETCD_CLIENT_PORT}",
                    node.ip
                ),
                "--advertise-client-urls".into(),
                etcd_url(cluster),
                // Clients need a certificate from the cluster CA; its CN is their etcd user.
                // (etcd already requires one once --trusted-ca-file is set; the flag says it.)
                "--cert-file".into(),
                pki.etcd_server_cert().display().to_string(),
                "--key-file".into(),
                pki.etcd_server_key().display().to_string(),
                "--trusted-ca-file".into(),
                pki.ca().display().to_string(),
                "--client-cert-auth".into(),
                // `/health` for the lab's readiness checks, on loopback only.
                "--listen-metrics-urls".into(),
                format!("http://127.0.0.1:{ETCD_METRICS_PORT}"),
                "--listen-peer-urls".into(),
                peer.clone(),
                "--initial-advertise-peer-urls".into(),
                peer.clone(),
                "--initial-cluster".into(),
                format!("{}={peer}", cluster.name),
            ],
            env: BTreeMap::new(),
        }
    }

    /// The process spec of a cluster's apiserver running `program`: on the cluster's first
    /// node (beside etcd), in `<node cgroup>/apiserver`, configured through the `CLUSTERMESH_*`
    /// environment variables listed in the crate documentation. Add `args` as the apiserver
    /// needs them, then [`Processes::register`] it (`lab.processes().register(&spec)`).
    pub fn apiserver_spec(&self, cluster: &str, program: &Path) -> Result<ProcessSpec, LabError> {
        let c = self.cluster(cluster)?;
        let node = etcd_node(c);
        let program = program.to_owned();
        Ok(ProcessSpec {
            id: format!("{cluster}.apiserver"),
            component: Component::Apiserver,
            cluster: cluster.to_owned(),
            node: node.name.clone(),
            pod: None,
            netns: self.naming.node_netns(cluster, &node.name),
            cgroup: self
                .state
                .node_cgroup(cluster, &node.name)
                .join("apiserver"),
            program,
            args: Vec::new(),
            env: {
                // As in production: mTLS with CN `clustermesh-apiserver` (etcd's root role),
                // and the apiserver turns etcd authentication on (CLUSTERMESH_ETCD_AUTH's
                // default), so agents and peers get only their users' permissions.
                let mut env = self.base_env(c, node, mesh::APISERVER_USER);
                env.insert("CLUSTERMESH_SOURCE".into(), "manifests".into());
                env
            },
        })
    }

    /// The process spec of a node's agent running `program`: in the node's namespace and
    /// `<node cgroup>/agent`, configured like the apiserver (see [`Lab::apiserver_spec`]).
    pub fn agent_spec(
        &self,
        cluster: &str,
        node: &str,
        program: &Path,
    ) -> Result<ProcessSpec, LabError> {
        let c = self.cluster(cluster)?;
        let n = self.node(cluster, node)?;
        let program = program.to_owned();
        Ok(ProcessSpec {
            id: format!("{cluster}.agent.{node}"),
            component: Component::Agent,
            cluster: cluster.to_owned(),
            node: node.to_owned(),
            pod: None,
            netns: self.naming.node_netns(cluster, node),
            cgroup: self.state.node_cgroup(cluster, node).join("agent"),
            program,
            args: Vec::new(),
            env: self.base_env(c, n, &mesh::agent_user(node)),
        })
    }

    /// Whether the cluster's etcd answers `GET /health` with `"health":"true"` (on its
    /// loopback metrics port, in its node's namespace).
    pub fn etcd_healthy(&self, cluster: &str) -> Result<bool, LabError> {
        let c = self.cluster(cluster)?;
        let node = etcd_node(c);
        let ns = NetNs::open(&self.naming.node_netns(cluster, &node.name))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], ETCD_METRICS_PORT));
        Ok(ns.run(move || http_health(addr))?)
    }

    fn wait_etcd_healthy(&self, timeout: Duration) -> Result<(), LabError> {
        for cluster in &self.state.clusters {
            tracing::info!("waiting for etcd of cluster {}", cluster.name);
            let deadline = Instant::now() + timeout;
            while !self.etcd_healthy(&cluster.name)? {
                if Instant::now() > deadline {
                    return Err(LabError::NotReady {
                        what: format!("etcd of cluster {}", cluster.name),
                        secs: timeout.as_secs(),
                        log: self.processes().log_path(&format!("{}.etcd", cluster.name)),
                    });
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Runs `f` with the state locked and freshly read, then saves it.
    fn change<R>(
        &mut self,
        f: impl FnOnce(&mut Lab) -> Result<R, LabError>,
    ) -> Result<R, LabError> {
        let _lock = StateLock::acquire(&self.state.state_dir)?;
        self.state = LabState::load(&self.state.state_dir)?;
        let result = f(self);
        self.state.save()?;
        result
    }

    /// Creates an empty pod (no workload) on `node` (default: the node with fewest pods),
    /// named `name` (default `client-<n>`) in namespace `namespace`.
    pub fn create_pod(
        &mut self,
        cluster: &str,
        node: Option<&str>,
        namespace: &str,
        name: Option<&str>,
    ) -> Result<PodRecord, LabError> {
        self.change(|lab| {
            let name = match name {
                Some(n) => n.to_owned(),
                None => lab.free_pod_name(cluster, namespace, "client"),
            };
            let node = match node {
                Some(n) => n.to_owned(),
                None => lab.least_loaded_node(cluster, |_| true)?,
            };
            lab.add_pod(cluster, &node, namespace, &name, None, None)
        })
    }

    /// Removes a pod: stops its workload, deletes its namespace, veth and cgroup.
    pub fn delete_pod(&mut self, cluster: &str, pod: &str) -> Result<(), LabError> {
        let record = self.pod(cluster, pod)?.clone();
        self.change(|lab| lab.remove_pod(&record))
    }

    /// Deploys `spec.replicas` echo servers spread over the nodes, with a Service and
    /// EndpointSlice, and waits until every replica answers.
    pub fn deploy(&mut self, spec: &DeploySpec) -> Result<Vec<PodRecord>, LabError> {
        topology::check_dns_label("deployment", &spec.name, 40)?;
        topology::check_dns_label("namespace", &spec.namespace, 40)?;
        let pods = self.change(|lab| {
            let c = lab.cluster(&spec.cluster)?.clone();
            if lab
                .state
                .service(&c.name, &spec.namespace, &spec.name)
                .is_some()
            {
                return Err(LabError::DeploymentExists {
                    cluster: c.name.clone(),
                    name: spec.name.clone(),
                });
            }
            let used: Vec<Ipv4Addr> = lab
                .state
                .services
                .iter()
                .filter(|s| s.cluster == c.name)
                .map(|s| s.cluster_ip)
                .collect();
            let cluster_ip = (10..)
                .map_while(|k| nth_host(c.service_cidr, k))
                .find(|ip| !used.contains(ip))
                .ok_or(LabError::ServiceCidrFull {
                    cluster: c.name.clone(),
                    cidr: c.service_cidr,
                })?;
            lab.state.services.push(ServiceRecord {
                cluster: c.name.clone(),
                namespace: spec.namespace.clone(),
                name: spec.name.clone(),
                cluster_ip,
                port: spec.port,
                replicas: 0,
                global: spec.global,
                shared: spec.shared,
                affinity: spec.affinity,
            });
            ManifestDir::new(lab.state.manifests_dir(&c.name)).write_namespace(&spec.namespace)?;
            lab.resize(&c.name, &spec.namespace, &spec.name, spec.replicas)
        })?;
        self.wait_pods_answer(&pods, Duration::from_secs(15))?;
        Ok(pods)
    }

    /// Changes the number of replicas of a deployment; returns the new pods.
    pub fn scale(
        &mut self,
        cluster: &str,
        namespace: &str,
        name: &str,
        replicas: u32,
    ) -> Result<Vec<PodRecord>, LabError> {
        let pods = self.change(|lab| {
            lab.cluster(cluster)?;
            if lab.state.service(cluster, namespace, name).is_none() {
                return Err(LabError::UnknownDeployment {
                    cluster: cluster.to_owned(),
                    name: format!("{namespace}/{name}"),
                });
            }
            lab.resize(cluster, namespace, name, replicas)
        })?;
        self.wait_pods_answer(&pods, Duration::from_secs(15))?;
        Ok(pods)
    }

    /// Changes a deployed Service's clustermesh annotations (those given) and rewrites its
    /// manifest; the apiserver publishes the change.
    pub fn annotate(
        &mut self,
        cluster: &str,
        namespace: &str,
        name: &str,
        change: Annotations,
    ) -> Result<(), LabError> {
        self.change(|lab| {
            lab.cluster(cluster)?;
            let svc = lab
                .state
                .services
                .iter_mut()
                .find(|s| s.cluster == cluster && s.namespace == namespace && s.name == name)
                .ok_or_else(|| LabError::UnknownDeployment {
                    cluster: cluster.to_owned(),
                    name: format!("{namespace}/{name}"),
                })?;
            if let Some(global) = change.global {
                svc.global = global;
            }
            if let Some(shared) = change.shared {
                svc.shared = shared;
            }
            if let Some(affinity) = change.affinity {
                svc.affinity = affinity;
            }
            let svc = svc.clone();
            let pods = lab.deployment_pods(cluster, namespace, name);
            ManifestDir::new(lab.state.manifests_dir(cluster)).write_service(&svc, &pods)?;
            Ok(())
        })
    }

    /// Adds or removes echo pods until the deployment has `replicas`, and rewrites its
    /// Service and EndpointSlice. Returns the pods it added.
    fn resize(
        &mut self,
        cluster: &str,
        namespace: &str,
        name: &str,
        replicas: u32,
    ) -> Result<Vec<PodRecord>, LabError> {
        let port = self
            .state
            .service(cluster, namespace, name)
            .map(|s| s.port)
            .unwrap_or(echo::DEFAULT_PORT);
        // Scaling down withdraws the endpoints first and stops the pods a grace period later,
        // as Kubernetes does for terminating pods: clients move to other backends without a
        // refused connection.
        let current: Vec<PodRecord> = self
            .deployment_pods(cluster, namespace, name)
            .into_iter()
            .cloned()
            .collect();
        if current.len() as u32 > replicas {
            let (kept, leaving) = current.split_at(replicas as usize);
            if let Some(svc) = self.state.service(cluster, namespace, name) {
                let kept: Vec<&PodRecord> = kept.iter().collect();
                ManifestDir::new(self.state.manifests_dir(cluster)).write_service(svc, &kept)?;
            }
            tracing::info!(
                "endpoints of {} pod(s) withdrawn; stopping them in {:?}",
                leaving.len(),
                TERMINATION_GRACE
            );
            std::thread::sleep(TERMINATION_GRACE);
        }
        let mut added = Vec::new();
        loop {
            let current: Vec<PodRecord> = self
                .deployment_pods(cluster, namespace, name)
                .into_iter()
                .cloned()
                .collect();
            if current.len() as u32 > replicas {
                let last = current.last().expect("more than zero");
                tracing::info!("removing pod {}/{} from {cluster}", last.key(), last.node);
                self.remove_pod(last)?;
            } else if (current.len() as u32) < replicas {
                let pod_name = self.free_pod_name(cluster, namespace, name);
                let node = self.least_loaded_node(cluster, |p| {
                    p.namespace == namespace && p.app.as_deref() == Some(name)
                })?;
                tracing::info!("starting pod {namespace}/{pod_name} on {cluster}/{node}");
                added.push(self.add_pod(
                    cluster,
                    &node,
                    namespace,
                    &pod_name,
                    Some(name),
                    Some(port),
                )?);
            } else {
                break;
            }
        }
        let svc = self
            .state
            .services
            .iter_mut()
            .find(|s| s.cluster == cluster && s.namespace == namespace && s.name == name)
            .expect("checked by the callers");
        svc.replicas = replicas;
        let svc = svc.clone();
        let pods = self.deployment_pods(cluster, namespace, name);
        ManifestDir::new(self.state.manifests_dir(cluster)).write_service(&svc, &pods)?;
        Ok(added)
    }

    fn free_pod_name(&self, cluster: &str, namespace: &str, base: &str) -> String {
        (0..)
            .map(|k| format!("{base}-{k}"))
            .find(|n| self.state.pod(cluster, namespace, n).is_none())
            .expect("some name is free")
    }

    /// The node with the fewest pods matching `filter` (first in order on ties).
    fn least_loaded_node(
        &self,
        cluster: &str,
        filter: impl Fn(&PodRecord) -> bool,
    ) -> Result<String, LabError> {
        let c = self.cluster(cluster)?;
        let count = |node: &str| {
            self.state
                .pods
                .iter()
                .filter(|p| p.cluster == cluster && p.node == node && filter(p))
                .count()
        };
        Ok(c.nodes
            .iter()
            .min_by_key(|n| count(&n.name))
            .expect("clusters have nodes")
            .name
            .clone())
    }

    fn add_pod(
        &mut self,
        cluster: &str,
        node: &str,
        namespace: &str,
        name: &str,
        app: Option<&str>,
        port: Option<u16>,
    ) -> Result<PodRecord, LabError> {
        topology::check_dns_label("pod", name, 40)?;
        topology::check_dns_label("namespace", namespace, 40)?;
        if self.state.pod(cluster, namespace, name).is_some() {
            return Err(LabError::PodExists {
                cluster: cluster.to_owned(),
                pod: format!("{namespace}/{name}"),
            });
        }
        let n = self.node(cluster, node)?.clone();
        let used: Vec<Ipv4Addr> = self
            .state
            .pods
            .iter()
            .filter(|p| p.cluster == cluster && p.node == node)
            .map(|p| p.ip)
            .collect();
        let ip = (2..)
            .map_while(|k| nth_host(n.pod_cidr, k))
            .find(|ip| !used.contains(ip))
            .ok_or(LabError::PodCidrFull {
                node: format!("{cluster}/{node}"),
                cidr: n.pod_cidr,
            })?;
        let index = self.state.next_pod_index;
        self.state.next_pod_index += 1;
        let record = PodRecord {
            cluster: cluster.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            node: node.to_owned(),
            ip,
            index,
            netns: self.naming.pod_netns(cluster, namespace, name),
            veth: self.naming.pod_veth(index),
            cgroup: self
                .state
                .node_cgroup(cluster, node)
                .join(format!("pod-{namespace}-{name}")),
            app: app.map(str::to_owned),
            port,
        };
        let node_netns = self.naming.node_netns(cluster, node);
        network::create_pod(&PodLink {
            node_netns: &node_netns,
            pod_netns: &record.netns,
            veth: &record.veth,
            ip,
            gateway: n.pod_gateway(),
        })?;
        if let Err(source) = std::fs::create_dir_all(&record.cgroup) {
            let _ = netns::delete_by_name(&record.netns);
            return Err(LabError::Cgroup(CgroupError::Io {
                action: "create cgroup",
                path: record.cgroup.clone(),
                source,
            }));
        }
        self.state.pods.push(record.clone());
        ManifestDir::new(self.state.manifests_dir(cluster))
            .write_pod(&record, &n.ip.to_string())?;
        if let Some(port) = port {
            self.processes().register(&ProcessSpec {
                id: record.process_id(),
                component: Component::Workload,
                cluster: cluster.to_owned(),
                node: node.to_owned(),
                pod: Some(record.key()),
                netns: record.netns.clone(),
                cgroup: record.cgroup.clone(),
                program: self.state.helper.program.clone(),
                args: self.state.helper.args(
                    "echo-server",
                    &[
                        "--cluster".into(),
                        cluster.to_owned(),
                        "--node".into(),
                        node.to_owned(),
                        "--pod".into(),
                        record.key(),
                        "--port".into(),
                        port.to_string(),
                    ],
                ),
                env: BTreeMap::new(),
            })?;
        }
        Ok(record)
    }

    fn remove_pod(&mut self, pod: &PodRecord) -> Result<(), LabError> {
        let procs = self.processes();
        if procs.process_dir(&pod.process_id()).exists() {
            procs.unregister(&pod.process_id(), Duration::from_secs(5))?;
        }
        netns::delete_by_name(&pod.netns)?;
        cgroup::kill_tree(&pod.cgroup)?;
        cgroup::remove_dirs_bottom_up(&pod.cgroup)?;
        ManifestDir::new(self.state.manifests_dir(&pod.cluster)).remove_pod(pod)?;
        self.state.pods.retain(|p| {
            !(p.cluster == pod.cluster && p.namespace == pod.namespace && p.name == pod.name)
        });
        Ok(())
    }

    /// Waits until each pod's echo server answers from its node.
    fn wait_pods_answer(&self, pods: &[PodRecord], timeout: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + timeout;
        for pod in pods {
            let Some(port) = pod.port else { continue };
            let ns = NetNs::open(&self.naming.node_netns(&pod.cluster, &pod.node))?;
            let addr = SocketAddr::from((pod.ip, port));
            loop {
                let answered = ns.run(move || echo::ask_tcp(addr, Duration::from_millis(500)))?;
                if answered.is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(LabError::NotReady {
                        what: format!("echo server of pod {}/{}", pod.cluster, pod.key()),
                        secs: timeout.as_secs(),
                        log: self.processes().log_path(&pod.process_id()),
                    });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }

    /// A command that runs `program` inside a pod (its network namespace and cgroup).
    pub fn pod_command(&self, pod: &PodRecord, program: impl AsRef<std::ffi::OsStr>) -> Command {
        crate::supervisor::command_in(&pod.netns, &pod.cgroup, program)
    }

    /// A command that runs `program` on a node (its network namespace, in
    /// `<node cgroup>/exec`).
    pub fn node_command(
        &self,
        cluster: &str,
        node: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Result<Command, LabError> {
        let netns = self.node_netns(cluster, node)?;
        let cg = self.state.node_cgroup(cluster, node).join("exec");
        std::fs::create_dir_all(&cg).map_err(|source| CgroupError::Io {
            action: "create cgroup",
            path: cg.clone(),
            source,
        })?;
        Ok(crate::supervisor::command_in(&netns, &cg, program))
    }

    /// Everything about the lab, for `status`.
    pub fn status(&self) -> LabStatus {
        let s = &self.state;
        let procs = self.processes();
        let processes: Vec<ProcessRow> = procs
            .list()
            .into_iter()
            .map(|info| {
                let (state, pid, restarts, last_exit) = match &info.status {
                    Some(st) => (
                        match st.state {
                            RunState::Running => "running",
                            RunState::Restarting => "restarting",
                            RunState::Stopped => "stopped",
                            RunState::Failed => "failed",
                        },
                        st.pid,
                        st.restarts,
                        st.last_exit.clone(),
                    ),
                    None => ("pending", None, 0, None),
                };
                let state = if info.stop_requested && state == "running" {
                    "stopping"
                } else {
                    state
                };
                ProcessRow {
                    id: info.spec.id,
                    component: info.spec.component,
                    cluster: info.spec.cluster,
                    node: info.spec.node,
                    pod: info.spec.pod,
                    state: state.to_owned(),
                    pid,
                    restarts,
                    last_exit,
                    log: info.log,
                }
            })
            .collect();
        let clusters = s
            .clusters
            .iter()
            .map(|c| ClusterStatus {
                name: c.name.clone(),
                id: c.id,
                node_cidr: c.node_cidr.to_string(),
                pod_cidr: c.pod_cidr.to_string(),
                service_cidr: c.service_cidr.to_string(),
                etcd_endpoint: etcd_url(c),
                etcd_healthy: self.etcd_healthy(&c.name).unwrap_or(false),
                manifests_dir: s.manifests_dir(&c.name),
                nodes: c
                    .nodes
                    .iter()
                    .map(|n| NodeRow {
                        name: n.name.clone(),
                        ip: n.ip.to_string(),
                        pod_cidr: n.pod_cidr.to_string(),
                        netns: self.naming.node_netns(&c.name, &n.name),
                        cgroup: s.node_cgroup(&c.name, &n.name),
                    })
                    .collect(),
            })
            .collect();
        let mut not_available = Vec::new();
        if s.binaries.apiserver.is_none() {
            not_available.push(
                "apiserver: not started (lab up --etcd-only, or its binary was not found: `cargo build`, or give --apiserver-bin)"
                    .to_owned(),
            );
        }
        if s.binaries.agent.is_none() {
            not_available.push(
                "agent: not started, so no eBPF programs are attached and no tunnel runs (lab up --etcd-only, or its binary was not found: `cargo build`, or give --agent-bin)"
                    .to_owned(),
            );
        }
        LabStatus {
            name: s.name.clone(),
            state_dir: s.state_dir.clone(),
            supervisor_pid: procs.daemon_pid(),
            cgroup_dir: s.cgroup_dir.clone(),
            bpffs_dir: s.bpffs_dir.clone(),
            clusters,
            processes,
            pods: s.pods.clone(),
            services: s.services.clone(),
            not_available,
        }
    }
}

/// The node that runs the cluster's etcd and apiserver: the first one.
fn etcd_node(cluster: &ClusterPlan) -> &topology::NodePlan {
    &cluster.nodes[0]
}

/// `https://<etcd node ip>:2379`.
fn etcd_url(cluster: &ClusterPlan) -> String {
    format!("https://{}:{ETCD_CLIENT_PORT}", etcd_node(cluster).ip)
}

fn pod_ordinal(name: &str) -> (u64, String) {
    let n = name
        .rsplit_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(u64::MAX);
    (n, name.to_owned())
}

/// `GET /health` over plain HTTP/1.0; true when the body says `"health":"true"`.
fn http_health(addr: SocketAddr) -> bool {
    let attempt = || -> std::io::Result<String> {
        let timeout = Duration::from_millis(500);
        let mut conn = TcpStream::connect_timeout(&addr, timeout)?;
        conn.set_read_timeout(Some(timeout))?;
        conn.write_all(format!("GET /health HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())?;
        let mut body = String::new();
        conn.read_to_string(&mut body)?;
        Ok(body)
    };
    attempt()
        .map(|body| body.replace(' ', "").contains("\"health\":\"true\""))
        .unwrap_or(false)
}

/// `status` output.
#[derive(Debug, Clone, Serialize)]
pub struct LabStatus {
    pub name: String,
    pub state_dir: PathBuf,
    pub supervisor_pid: Option<u32>,
    pub cgroup_dir: PathBuf,
    pub bpffs_dir: Option<PathBuf>,
    pub clusters: Vec<ClusterStatus>,
    pub processes: Vec<ProcessRow>,
    pub pods: Vec<PodRecord>,
    pub services: Vec<ServiceRecord>,
    /// Components the lab does not run, and why.
    pub not_available: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub name: String,
    pub id: u16,
    pub node_cidr: String,
    pub pod_cidr: String,
    pub service_cidr: String,
    pub etcd_endpoint: String,
    pub etcd_healthy: bool,
    pub manifests_dir: PathBuf,
    pub nodes: Vec<NodeRow>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeRow {
    pub name: String,
    pub ip: String,
    pub pod_cidr: String,
    pub netns: String,
    pub cgroup: PathBuf,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProcessRow {
    pub id: String,
    pub component: Component,
    pub cluster: String,
    pub node: String,
    pub pod: Option<String>,
    pub state: String,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub last_exit: Option<String>,
    pub log: PathBuf,
}

/// What `down` removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DownReport {
    pub netns_removed: Vec<String>,
    /// Processes that ran in the lab's cgroup (stopped or killed).
    pub processes_killed: usize,
    pub cgroup_removed: Option<PathBuf>,
    pub bpffs_removed: Option<PathBuf>,
    pub state_dir_removed: Option<PathBuf>,
}

/// Removes everything lab `name` made: stops the supervisor and every process, deletes its
/// network namespaces (and with them every veth, bridge and route), its cgroups, its bpffs
/// directory and its state directory. Works from the names alone when the state directory is
/// gone or half-written (after a crash). Nothing to remove is not an error.
pub fn down(name: &str, state_dir: &Path) -> Result<DownReport, LabError> {
    teardown(name, state_dir, false)
}

fn teardown(name: &str, state_dir: &Path, keep_logs: bool) -> Result<DownReport, LabError> {
    host::require_root()?;
    let naming = Naming::new(name)?;
    let mut report = DownReport::default();
    let state = LabState::load(state_dir).ok();
    let _lock = if state_dir.exists() {
        Some(StateLock::acquire(state_dir)?)
    } else {
        None
    };

    let cgroup_dir = match &state {
        Some(s) => s.cgroup_dir.clone(),
        None => cgroup2_root()?.join(naming.cgroup()),
    };
    report.processes_killed = cgroup::pids_in_tree(&cgroup_dir).len();

    tracing::info!("stopping the supervisor and its processes");
    let procs = Processes::new(state_dir);
    procs.stop_daemon(Duration::from_secs(8));
    // Whatever is left (the supervisor was dead, or a process ignored SIGTERM) is killed.
    if cgroup_dir.exists() {
        cgroup::kill_tree(&cgroup_dir)?;
    }

    let names = NetNs::list_with_prefix(&naming.netns_prefix());
    tracing::info!("deleting {} network namespace(s)", names.len());
    for ns in names {
        netns::delete_by_name(&ns)?;
        report.netns_removed.push(ns);
    }

    if cgroup_dir.exists() {
        cgroup::remove_dirs_bottom_up(&cgroup_dir)?;
        report.cgroup_removed = Some(cgroup_dir.clone());
    }
    // The shared parent goes when the last lab is gone.
    if let Some(parent) = cgroup_dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }

    let bpffs_dir = state
        .as_ref()
        .and_then(|s| s.bpffs_dir.clone())
        .unwrap_or_else(|| Path::new(host::BPFFS).join("clustermesh-lab").join(name));
    if bpffs_dir.exists() {
        std::fs::remove_dir_all(&bpffs_dir).map_err(|source| StateError::Io {
            action: "remove",
            path: bpffs_dir.clone(),
            source,
        })?;
        report.bpffs_removed = Some(bpffs_dir.clone());
        if let Some(parent) = bpffs_dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }

    if state_dir.exists() {
        if keep_logs {
            let _ = std::fs::remove_file(LabState::path(state_dir));
        } else {
            std::fs::remove_dir_all(state_dir).map_err(|source| StateError::Io {
                action: "remove",
                path: state_dir.to_owned(),
                source,
            })?;
            report.state_dir_removed = Some(state_dir.to_owned());
        }
    }
    Ok(report)
}

/// Arguments of the hidden `supervise` command (the supervisor daemon, started by `up`).
#[derive(Debug, Clone, clap::Args)]
pub struct SuperviseArgs {
    /// The lab's state directory.
    #[arg(long)]
    pub state_dir: PathBuf,
}

/// Runs the supervisor daemon of the lab in `args.state_dir` until `down` stops it. It puts
/// itself into `<lab cgroup>/supervisor`.
pub fn supervise(args: &SuperviseArgs) -> Result<(), LabError> {
    let state = LabState::load(&args.state_dir)?;
    crate::supervisor::run_daemon(&args.state_dir, Some(&state.cgroup_dir.join("supervisor")))?;
    Ok(())
}

/// Names of every lab that has something on this machine: a cgroup under
/// `<cgroup v2 root>/clustermesh-lab/` or a network namespace named `cml-<name>-…`.
pub fn list_labs() -> Vec<String> {
    let mut names: Vec<String> = cgroup2_root()
        .ok()
        .and_then(|root| std::fs::read_dir(root.join("clustermesh-lab")).ok())
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    for ns in NetNs::list_with_prefix("cml-") {
        if let Some(name) = ns
            .strip_prefix("cml-")
            .and_then(|rest| rest.split('-').next())
        {
            names.push(name.to_owned());
        }
    }
    names.retain(|n| topology::check_lab_name(n).is_ok());
    names.sort();
    names.dedup();
    names
}

/// The agent's gRPC status socket of a lab node: `<state>/clusters/<c>/nodes/<n>/agent.sock`.
pub fn agent_socket(state_dir: &Path, cluster: &str, node: &str) -> PathBuf {
    state_dir
        .join("clusters")
        .join(cluster)
        .join("nodes")
        .join(node)
        .join("agent.sock")
}

/// How long a pod removed by `scale` keeps running after its endpoint was withdrawn.
pub const TERMINATION_GRACE: Duration = Duration::from_secs(2);

/// A lab that is taken down when dropped (also when a test panics): for tests that stand on
/// the lab. Derefs to [`Lab`].
#[derive(Debug)]
pub struct LabGuard {
    lab: Lab,
}

impl LabGuard {
    /// Brings the lab up; if that fails, whatever was built is removed before the error returns.
    pub fn up(config: &LabConfig, topology: &Topology) -> Result<LabGuard, LabError> {
        match Lab::up(config, topology) {
            Ok(lab) => Ok(LabGuard { lab }),
            Err(err) => {
                let _ = down(&config.name, &config.state_dir);
                Err(err)
            }
        }
    }
}

impl std::ops::Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl std::ops::DerefMut for LabGuard {
    fn deref_mut(&mut self) -> &mut Lab {
        &mut self.lab
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let state = self.lab.state();
        if let Err(err) = down(&state.name, &state.state_dir) {
            tracing::error!("taking down lab {} failed: {err}", state.name);
        }
    }
}
