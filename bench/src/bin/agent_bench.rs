//! Agent benchmark: one node agent of a local cluster connected to simulated peers, with
//! thousands of global services; how fast a peer's change reaches this node's eBPF map, and
//! what the agent costs in memory.
//!
//! Reports, in one run:
//! - initial sync: agent start → every service in the eBPF map with all its backends (and
//!   → `/readyz`), against the baseline of listing the same keys with one watch reader;
//! - propagation lag: a `put` of a peer's service into the local etcd's `cache/` (what the local
//!   apiserver's mirror writes) → the changed entry in the pinned `services` map, median/p99,
//!   once one change at a time and once under churn (`--churn-rate` updates/s for
//!   `--churn-secs`), each against the baseline of a plain etcd watch on the same puts (put →
//!   event, what any watcher pays);
//! - the agent's RSS (VmRSS now, VmHWM peak) after the initial sync and after the churn, and
//!   its CPU time during the churn.
//!
//! The agent is the real `clustermesh-agent` binary as a child process (build it first:
//! `cargo build --release -p clustermesh-node-agent -p clustermesh-bench`), so its RSS is its
//! own. It needs root: it gets a network namespace `cmab-<pid>` (sk_lookup, mesh-VIP routes),
//! a cgroup `cmab-<pid>` under the cgroup v2 root and the pin directory
//! `/sys/fs/bpf/cmab-<pid>`, all removed at the end and on failure. It runs with tunnel
//! credentials (a CA and a node certificate made for the run), because with the tunnel
//! disabled remote backends are not programmed at all.
//!
//! The peers are simulated by writing their mirror straight into the local etcd: services,
//! agent records (a remote backend counts only on a node whose agent is alive) and the
//! `cache/synced/<peer>/<kind>` markers. Backend `g` of the `--backends` belongs to service
//! `g % services` and to cluster `(service + g / services) % (peers + 1)`, cluster 0 being the
//! local one; every update replaces one remote backend of one service by a new pod IP (a pod
//! replaced in a peer cluster), round robin over services and their peers' backends.
//!
//! The map is read through its pin, one `bpf_map_lookup_elem` per watched frontend: a change
//! counts as visible when the frontend's service entry differs from what it held before the
//! put (each update gives the backend a new mesh VIP; a service with more than 8 backends
//! also switches slot banks). The key and value sizes are checked against the pinned map, and
//! after the run the whole map is read back with `clustermesh_ebpf::Datapath::services` and
//! compared with what was written. Results: stdout and `bench-results/agent.json`.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use aya::maps::{Map, MapData};
use clap::Parser;
use clustermesh_ebpf::{Datapath, DatapathConfig};
use clustermesh_lab::cgroup::Cgroup;
use clustermesh_lab::mesh::ClusterPki;
use clustermesh_lab::netns::NetNs;
use clustermesh_model::{
    Affinity, Agent, Backend, ClusterId, ClusterName, Frontend, GlobalService, KeySchema, Kind,
    L4Port, Marker, MaxConnectedClusters, ObjectName, Ports, Protocol,
};
use clustermesh_store::{Client, EtcdConfig, WatchEvent, WatchReader, connect};
use clustermesh_testkit::EtcdServer;
use etcd_client::{Txn, TxnOp};

/// Issue 5's targets.
const TARGET_P99: Duration = Duration::from_millis(50);
const TARGET_RSS_MB: f64 = 120.0;
/// How long one change may take to show before it counts as lost.
const PROBE_DEADLINE: Duration = Duration::from_secs(10);
const LOCAL_NODE: &str = "node-0";
const NAMESPACE: &str = "bench";

#[derive(Parser, Debug)]
#[command(
    about = "Measure the node agent's propagation lag (peer put -> eBPF map entry), initial sync and memory with simulated peers"
)]
struct Args {
    /// Global services (every one has a local Service: its frontend).
    #[arg(long, default_value_t = 2_000)]
    services: usize,
    /// Backends in total, over the local cluster and the peers.
    #[arg(long, default_value_t = 20_000)]
    backends: usize,
    /// Simulated peer clusters.
    #[arg(long, default_value_t = 5)]
    peers: usize,
    /// Nodes (live agents) per peer; remote backends are spread over them.
    #[arg(long, default_value_t = 20)]
    nodes_per_peer: usize,
    /// Lag samples taken one change at a time.
    #[arg(long, default_value_t = 200)]
    lag_samples: usize,
    /// Updates per second during the churn.
    #[arg(long, default_value_t = 100)]
    churn_rate: u32,
    /// How long the churn lasts, in seconds (0: no churn).
    #[arg(long, default_value_t = 30)]
    churn_secs: u64,
    /// The agent binary (default: `clustermesh-agent` next to this program).
    #[arg(long)]
    agent_bin: Option<PathBuf>,
    #[arg(long, default_value = "bench-results/agent.json")]
    out: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---------------------------------------------------------------------------------------------
// The simulated mesh.

fn http(port: u16) -> Ports {
    Ports::from([(
        "http".to_owned(),
        L4Port {
            protocol: Protocol::Tcp,
            port,
        },
    )])
}

/// Service `s`'s frontend (its local ClusterIP), port 80/TCP.
fn frontend(s: usize) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(0x0a60_0001 + s as u32), 80)
}

/// The pod IP of backend `g` (10.128.0.0 + g) and of the n-th replacement pod (10.200.0.0 + n).
fn backend_ip(g: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a80_0000 + g as u32))
}

fn replacement_ip(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0ac8_0000 + n as u32))
}

struct Cluster {
    name: ClusterName,
    id: ClusterId,
    /// Service `s` as this cluster publishes it; `None` where a peer has no backend of it.
    services: Vec<Option<GlobalService>>,
}

struct Mesh {
    schema: KeySchema,
    /// `[0]` is the local cluster.
    clusters: Vec<Cluster>,
    nodes_per_peer: usize,
    /// Per service: its remote backends as (cluster index, backend IP).
    remote: Vec<Vec<(usize, IpAddr)>>,
    updates: usize,
}

/// One update of a peer's service, as the mirror would write it.
struct Update {
    service: usize,
    key: String,
    value: Vec<u8>,
}

impl Mesh {
    fn build(args: &Args) -> anyhow::Result<Mesh> {
        ensure!(
            (1..=60_000).contains(&args.services),
            "--services must be 1..=60000"
        );
        ensure!(
            args.backends <= 4_000_000,
            "--backends must be at most 4000000"
        );
        ensure!((1..=200).contains(&args.peers), "--peers must be 1..=200");
        ensure!(
            (1..=250).contains(&args.nodes_per_peer),
            "--nodes-per-peer must be 1..=250"
        );
        let mesh = MaxConnectedClusters::Max255;
        let count = args.peers + 1;
        let mut clusters = Vec::with_capacity(count);
        for c in 0..count {
            let name = if c == 0 {
                "local".to_owned()
            } else {
                format!("peer-{c}")
            };
            clusters.push(Cluster {
                name: ClusterName::new(&name)?,
                id: ClusterId::new(c as u32 + 1, mesh)?,
                services: vec![None; args.services],
            });
        }
        let mut remote = vec![Vec::new(); args.services];
        let mut backends: Vec<Vec<Vec<Backend>>> = vec![vec![Vec::new(); args.services]; count];
        for g in 0..args.backends {
            let s = g % args.services;
            let c = (s + g / args.services) % count;
            let node = if c == 0 {
                LOCAL_NODE.to_owned()
            } else {
                format!("node-{}", g % args.nodes_per_peer)
            };
            backends[c][s].push(Backend {
                ip: backend_ip(g),
                ports: http(8080),
                node: Some(node),
                zone: None,
                hostname: None,
                ready: true,
            });
            if c != 0 {
                remote[s].push((c, backend_ip(g)));
            }
        }
        for (c, cluster) in clusters.iter_mut().enumerate() {
            for (s, backends) in std::mem::take(&mut backends[c]).into_iter().enumerate() {
                if c != 0 && backends.is_empty() {
                    continue;
                }
                cluster.services[s] = Some(GlobalService {
                    cluster: cluster.name.clone(),
                    cluster_id: cluster.id,
                    namespace: NAMESPACE.to_owned(),
                    name: format!("svc-{s}"),
                    frontends: vec![Frontend {
                        ip: IpAddr::V4(*frontend(s).ip()),
                        ports: http(80),
                    }],
                    backends,
                    shared: true,
                    affinity: Affinity::None,
                    include_external: false,
                    modified_unix_millis: None,
                    headless: false,
                    labels: BTreeMap::new(),
                    selector: BTreeMap::new(),
                });
            }
        }
        Ok(Mesh {
            schema: KeySchema::new(clustermesh_model::keys::DEFAULT_ROOT)?,
            clusters,
            nodes_per_peer: args.nodes_per_peer,
            remote,
            updates: 0,
        })
    }

    fn local(&self) -> &Cluster {
        &self.clusters[0]
    }

    fn service_object(s: usize) -> ObjectName {
        ObjectName::Service {
            namespace: NAMESPACE.to_owned(),
            name: format!("svc-{s}"),
        }
    }

    /// Every backend of service `s`, over all clusters: what its map entry must hold.
    fn backend_count(&self, s: usize) -> usize {
        self.clusters
            .iter()
            .filter_map(|c| c.services[s].as_ref())
            .map(|svc| svc.backends.len())
            .sum()
    }

    fn local_backends(&self) -> usize {
        (0..self.remote.len())
            .map(|s| self.backend_count(s) - self.remote[s].len())
            .sum()
    }

    fn remote_backends(&self) -> usize {
        self.remote.iter().map(Vec::len).sum()
    }

    /// Everything the local apiserver would have written: the local services and their synced
    /// marker, and every peer's mirror with its markers.
    fn initial_keys(&self) -> Vec<(String, Vec<u8>)> {
        let mut keys = Vec::new();
        let local = self.local();
        for (s, svc) in local.services.iter().enumerate() {
            if let Some(svc) = svc {
                keys.push((
                    self.schema.state(&local.name, &Self::service_object(s)),
                    svc.to_json(),
                ));
            }
        }
        for (c, peer) in self.clusters.iter().enumerate().skip(1) {
            for n in 0..self.nodes_per_peer {
                let agent = Agent {
                    cluster: peer.name.clone(),
                    cluster_id: peer.id,
                    node: format!("node-{n}"),
                    tunnel_address: SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::new(192, 168, c as u8, n as u8 + 1)),
                        4244,
                    ),
                    cert_fingerprint: format!("sha256:{}", "0".repeat(64)),
                    boot_id: format!("bench-{c}-{n}"),
                };
                keys.push((
                    self.schema
                        .cache(&peer.name, &ObjectName::Agent(agent.node.clone())),
                    agent.to_json(),
                ));
            }
            for (s, svc) in peer.services.iter().enumerate() {
                if let Some(svc) = svc {
                    keys.push((
                        self.schema.cache(&peer.name, &Self::service_object(s)),
                        svc.to_json(),
                    ));
                }
            }
        }
        // Markers last, as the apiserver writes them after the data.
        for (c, cluster) in self.clusters.iter().enumerate() {
            let marker = Marker {
                cluster: cluster.name.clone(),
                cluster_id: cluster.id,
                unix_millis: now_millis(),
            }
            .to_json();
            if c == 0 {
                keys.push((self.schema.synced(&cluster.name, Kind::Services), marker));
            } else {
                for kind in [Kind::Services, Kind::Agents] {
                    keys.push((
                        self.schema.cache_synced(&cluster.name, kind),
                        marker.clone(),
                    ));
                }
            }
        }
        keys
    }

    /// The next update: service `u % services`, whose backends are taken in turn; one remote
    /// backend gets a new pod IP, and the peer's whole service is rewritten.
    fn next_update(&mut self) -> Update {
        let u = self.updates;
        self.updates += 1;
        let services = self.remote.len();
        // Skip services without remote backends (only possible with few backends).
        let mut s = u % services;
        while self.remote[s].is_empty() {
            s = (s + 1) % services;
        }
        let slot = (u / services) % self.remote[s].len();
        let (c, old_ip) = self.remote[s][slot];
        let new_ip = replacement_ip(u);
        self.remote[s][slot] = (c, new_ip);
        let cluster = &mut self.clusters[c];
        let svc = cluster.services[s]
            .as_mut()
            .expect("a peer with a backend publishes the service");
        let backend = svc
            .backends
            .iter_mut()
            .find(|b| b.ip == old_ip)
            .expect("the backend is in its service");
        backend.ip = new_ip;
        svc.backends.sort_by_key(|b| b.ip);
        // As the publishing apiserver stamps a change: the agent's propagation-lag metric.
        svc.modified_unix_millis = Some(clustermesh_store::unix_millis_now());
        Update {
            service: s,
            key: self.schema.cache(&cluster.name, &Self::service_object(s)),
            value: svc.to_json(),
        }
    }
}

/// Puts `keys` in transactions of 128 (etcd's default `--max-txn-ops`).
async fn put_all(client: &Client, keys: Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
    let mut client = client.clone();
    for chunk in keys.chunks(128) {
        let ops: Vec<TxnOp> = chunk
            .iter()
            .map(|(k, v)| TxnOp::put(k.as_str(), v.clone(), None))
            .collect();
        client
            .txn(Txn::new().and_then(ops))
            .await
            .context("writing the simulated mesh into etcd")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The node: namespace, cgroup, pins and the agent process, removed on drop.

struct AgentProcess {
    child: Child,
    status_port: u16,
    log: PathBuf,
}

impl AgentProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM (the agent's clean stop: pins stay), SIGKILL after 10 s.
    fn stop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn ready(&self) -> bool {
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.status_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n");
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
    }

    /// (VmRSS, VmHWM) in MiB.
    fn rss_mib(&self) -> (f64, f64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// User + system CPU time so far.
    fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which may hold spaces): state is field 3, utime 14.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = [11, 12]
            .iter()
            .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
            .sum();
        let per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100) as u64;
        Duration::from_secs_f64(ticks as f64 / per_sec as f64)
    }

    /// The agent's own account of its work so far: programming passes, the summed wall time
    /// of their map programming (`programming_pass_duration_seconds`), and its CPU time.
    fn work(&self) -> Work {
        let mut text = String::new();
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.status_port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
            let _ = s.read_to_string(&mut text);
        }
        let metric = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Work {
            passes: metric("clustermesh_agent_programming_passes_total"),
            programming_secs: metric("clustermesh_agent_programming_pass_duration_seconds_sum"),
            lag_secs: metric("clustermesh_agent_propagation_lag_seconds_sum"),
            lag_count: metric("clustermesh_agent_propagation_lag_seconds_count"),
            cpu: self.cpu_time(),
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

#[derive(Clone, Copy)]
struct Work {
    passes: f64,
    programming_secs: f64,
    /// The agent's propagation-lag histogram: sum and count.
    lag_secs: f64,
    lag_count: f64,
    cpu: Duration,
}

/// What the agent did between two [`Work`] readings.
struct WorkDone {
    passes: f64,
    /// Mean wall time of the map programming part of a pass.
    programming_ms: f64,
    /// Mean CPU time of the whole agent per pass (merge, programming, status, watches, tunnel).
    cpu_ms_per_pass: f64,
    cpu_s: f64,
    /// Mean propagation lag by the agent's own metric (stamp in the value → pass done).
    reported_lag_ms: f64,
}

impl WorkDone {
    fn between(a: Work, b: Work) -> WorkDone {
        let passes = b.passes - a.passes;
        let cpu_s = b.cpu.saturating_sub(a.cpu).as_secs_f64();
        WorkDone {
            passes,
            programming_ms: 1000.0 * (b.programming_secs - a.programming_secs) / passes.max(1.0),
            cpu_ms_per_pass: 1000.0 * cpu_s / passes.max(1.0),
            cpu_s,
            reported_lag_ms: 1000.0 * (b.lag_secs - a.lag_secs)
                / (b.lag_count - a.lag_count).max(1.0),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "passes": self.passes,
            "programming_ms_per_pass": self.programming_ms,
            "agent_cpu_ms_per_pass": self.cpu_ms_per_pass,
            "agent_cpu_s": self.cpu_s,
            "agent_reported_mean_lag_ms": self.reported_lag_ms,
        })
    }
}

/// The 1-minute load average: other work on the machine competes with the agent.
fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

struct Node {
    agent: Option<AgentProcess>,
    pin_dir: PathBuf,
    cgroup: Option<Cgroup>,
    netns: Option<NetNs>,
}

impl Node {
    fn create() -> anyhow::Result<Node> {
        let name = format!("cmab-{}", std::process::id());
        let netns = NetNs::create(&name).with_context(|| format!("creating netns {name}"))?;
        let mut node = Node {
            agent: None,
            pin_dir: PathBuf::from("/sys/fs/bpf").join(&name),
            cgroup: None,
            netns: Some(netns),
        };
        node.cgroup =
            Some(Cgroup::create(&name).with_context(|| format!("creating cgroup {name}"))?);
        Ok(node)
    }

    fn agent(&mut self) -> &mut AgentProcess {
        self.agent.as_mut().expect("the agent was started")
    }

    fn fail(&self, what: impl std::fmt::Display) -> anyhow::Error {
        let tail = self
            .agent
            .as_ref()
            .map(AgentProcess::log_tail)
            .unwrap_or_default();
        anyhow::anyhow!("{what}\n--- last lines of the agent's log ---\n{tail}")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.stop();
        }
        if let Err(e) = Datapath::remove_pinned(&self.pin_dir) {
            eprintln!("agent-bench: removing {}: {e}", self.pin_dir.display());
        }
        if let Some(cgroup) = self.cgroup.take()
            && let Err(e) = cgroup.remove()
        {
            eprintln!("agent-bench: removing the cgroup: {e}");
        }
        drop(self.netns.take());
    }
}

// ---------------------------------------------------------------------------------------------
// Reading the pinned services map.

/// `struct service_key` and `struct service_value` of `ebpf/src/bpf/datapath.h`: an address
/// (16 bytes, IPv4 mapped into IPv6), the port in network order, the IP protocol, a pad byte;
/// the value starts with the backend count (u16, host order). Opening the map checks both sizes.
const SERVICE_KEY_SIZE: usize = 20;
const SERVICE_VALUE_SIZE: usize = 168;
type ServiceKeyBytes = [u8; SERVICE_KEY_SIZE];
type ServiceValueBytes = [u8; SERVICE_VALUE_SIZE];

fn service_key(frontend: SocketAddrV4) -> ServiceKeyBytes {
    let mut key = [0u8; SERVICE_KEY_SIZE];
    key[..16].copy_from_slice(&frontend.ip().to_ipv6_mapped().octets());
    key[16..18].copy_from_slice(&frontend.port().to_be_bytes());
    key[18] = 6; // IPPROTO_TCP
    key
}

fn backend_count(value: &ServiceValueBytes) -> usize {
    usize::from(u16::from_ne_bytes([value[0], value[1]]))
}

struct ServiceMap(aya::maps::HashMap<MapData, ServiceKeyBytes, ServiceValueBytes>);

impl ServiceMap {
    fn path(pin_dir: &Path) -> PathBuf {
        pin_dir.join("maps").join("services")
    }

    fn open(pin_dir: &Path) -> anyhow::Result<ServiceMap> {
        let path = Self::path(pin_dir);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening the pinned map {}", path.display()))?;
        let map = aya::maps::HashMap::try_from(Map::from_map_data(data)?).with_context(|| {
            format!(
                "{}: not the service map layout this benchmark reads",
                path.display()
            )
        })?;
        Ok(ServiceMap(map))
    }

    fn get(&self, key: &ServiceKeyBytes) -> Option<ServiceValueBytes> {
        self.0.get(key, 0).ok()
    }
}

// ---------------------------------------------------------------------------------------------
// Probes: one update each, timed to the watch event (baseline) and to the map entry (agent).

struct MapProbe {
    id: usize,
    key: ServiceKeyBytes,
    before: ServiceValueBytes,
    put_at: Instant,
}

/// A put waiting for its watch event: (probe id, value written, put time).
type WatchProbe = (usize, Vec<u8>, Instant);

#[derive(Default)]
struct Probes {
    map_pending: Mutex<Vec<MapProbe>>,
    /// By etcd key.
    watch_pending: Mutex<HashMap<String, WatchProbe>>,
    map_done: Mutex<HashMap<usize, Duration>>,
    watch_done: Mutex<HashMap<usize, Duration>>,
    stop: AtomicBool,
}

impl Probes {
    /// Polls the map for every pending probe until stopped: a lookup per pending frontend
    /// every 100 µs, a sleep of 1 ms while none is pending.
    fn poll_map(self: Arc<Self>, map: ServiceMap) {
        while !self.stop.load(Ordering::Relaxed) {
            let idle = {
                let mut pending = self.map_pending.lock().expect("not poisoned");
                pending.retain(|p| match map.get(&p.key) {
                    Some(now) if now != p.before => {
                        let lag = p.put_at.elapsed();
                        self.map_done
                            .lock()
                            .expect("not poisoned")
                            .insert(p.id, lag);
                        false
                    }
                    _ => true,
                });
                pending.is_empty()
            };
            std::thread::sleep(if idle {
                Duration::from_millis(1)
            } else {
                Duration::from_micros(100)
            });
        }
    }

    async fn follow_watch(self: Arc<Self>, mut events: tokio::sync::mpsc::Receiver<WatchEvent>) {
        while let Some(event) = events.recv().await {
            let WatchEvent::Upsert(entry) = event else {
                continue;
            };
            let seen = Instant::now();
            let mut pending = self.watch_pending.lock().expect("not poisoned");
            if let Some((id, value, put_at)) = pending.get(&entry.key)
                && *value == entry.value
            {
                let (id, put_at) = (*id, *put_at);
                pending.remove(&entry.key);
                self.watch_done
                    .lock()
                    .expect("not poisoned")
                    .insert(id, seen - put_at);
            }
        }
    }

    fn finished(&self, id: usize) -> bool {
        self.map_done
            .lock()
            .expect("not poisoned")
            .contains_key(&id)
            && self
                .watch_done
                .lock()
                .expect("not poisoned")
                .contains_key(&id)
    }

    fn pending(&self) -> usize {
        self.map_pending.lock().expect("not poisoned").len()
            + self.watch_pending.lock().expect("not poisoned").len()
    }

    /// The sorted lags of probes `ids`, and how many did not arrive.
    fn lags(&self, ids: std::ops::Range<usize>) -> (Lags, Lags) {
        let pick = |done: &Mutex<HashMap<usize, Duration>>| {
            let done = done.lock().expect("not poisoned");
            let mut lags: Vec<Duration> = ids
                .clone()
                .filter_map(|id| done.get(&id).copied())
                .collect();
            lags.sort();
            Lags {
                missing: ids.len() - lags.len(),
                sorted: lags,
            }
        };
        (pick(&self.watch_done), pick(&self.map_done))
    }
}

struct Lags {
    sorted: Vec<Duration>,
    missing: usize,
}

impl Lags {
    fn median(&self) -> Duration {
        percentile(&self.sorted, 0.5)
    }
    fn p99(&self) -> Duration {
        percentile(&self.sorted, 0.99)
    }
    fn max(&self) -> Duration {
        self.sorted.last().copied().unwrap_or_default()
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "median": ms(self.median()),
            "p99": ms(self.p99()),
            "max": ms(self.max()),
            "samples": self.sorted.len(),
            "missing": self.missing,
        })
    }
}

struct Prober {
    client: Client,
    map: ServiceMap,
    probes: Arc<Probes>,
    next_id: usize,
}

impl Prober {
    /// Writes the next update and registers it with both observers; returns its id.
    async fn probe(&mut self, mesh: &mut Mesh) -> anyhow::Result<usize> {
        let update = mesh.next_update();
        let key = service_key(frontend(update.service));
        let before = self.map.get(&key).with_context(|| {
            format!(
                "service {} ({}) is not in the map",
                update.service,
                frontend(update.service)
            )
        })?;
        let id = self.next_id;
        self.next_id += 1;
        let put_at = Instant::now();
        self.probes
            .watch_pending
            .lock()
            .expect("not poisoned")
            .insert(update.key.clone(), (id, update.value.clone(), put_at));
        self.probes
            .map_pending
            .lock()
            .expect("not poisoned")
            .push(MapProbe {
                id,
                key,
                before,
                put_at,
            });
        self.client
            .put(update.key, update.value, None)
            .await
            .context("writing an update")?;
        Ok(id)
    }

    /// Waits until nothing is pending, or gives up after the probe deadline.
    async fn drain(&self) {
        let deadline = Instant::now() + PROBE_DEADLINE;
        while self.probes.pending() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        self.probes
            .map_pending
            .lock()
            .expect("not poisoned")
            .clear();
        self.probes
            .watch_pending
            .lock()
            .expect("not poisoned")
            .clear();
    }
}

// ---------------------------------------------------------------------------------------------

/// Time until a watch reader on each of the agent's prefixes has its first full list.
async fn list_baseline(client: &Client, mesh: &Mesh) -> anyhow::Result<Duration> {
    let local = &mesh.local().name;
    let prefixes = [
        mesh.schema.state_prefix(Kind::Services, local),
        mesh.schema.synced(local, Kind::Services),
        mesh.schema.cache_root(),
    ];
    let started = Instant::now();
    let mut readers = Vec::new();
    let mut waits = Vec::new();
    for prefix in prefixes {
        let (reader, mut events) = WatchReader::spawn(client.clone(), prefix, 4096);
        readers.push(reader);
        waits.push(tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if event == WatchEvent::InitDone {
                    return true;
                }
            }
            false
        }));
    }
    for wait in waits {
        ensure!(wait.await?, "a watch reader stopped before its first list");
    }
    Ok(started.elapsed())
}

struct InitialSync {
    ready: Duration,
    map_complete: Duration,
}

async fn start_agent(
    node: &mut Node,
    args: &Args,
    mesh: &Mesh,
    etcd: &str,
    work: &Path,
) -> anyhow::Result<InitialSync> {
    let bin = match &args.agent_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("clustermesh-agent"),
    };
    let local = mesh.local();
    let pki = ClusterPki::new(work, local.name.as_str());
    pki.issue(local.name.as_str(), &[LOCAL_NODE.to_owned()])
        .context("issuing the node's tunnel certificate")?;
    let status_port = free_port();
    let log = work.join("agent.log");
    let netns = node.netns.as_ref().expect("created").path();
    let cgroup = node.cgroup.as_ref().expect("created").path().to_owned();
    let mut cmd = Command::new(&bin);
    cmd.arg(format!("--cluster-name={}", local.name))
        .arg(format!("--cluster-id={}", local.id.get()))
        .arg(format!("--etcd-endpoints={etcd}"))
        .arg(format!("--node-name={LOCAL_NODE}"))
        .arg("--node-ip=127.0.0.1")
        .arg(format!("--cgroup={}", cgroup.display()))
        .arg(format!("--bpffs-dir={}", node.pin_dir.display()))
        .arg(format!("--netns={}", netns.display()))
        .arg(format!("--tunnel-address=127.0.0.1:{}", free_port()))
        .arg(format!("--tunnel-outbound-port={}", free_port()))
        .arg(format!(
            "--tunnel-cert={}",
            pki.node_cert(LOCAL_NODE).display()
        ))
        .arg(format!(
            "--tunnel-key={}",
            pki.node_key(LOCAL_NODE).display()
        ))
        .arg(format!("--tunnel-ca={}", pki.ca().display()))
        .arg(format!("--status-addr=127.0.0.1:{status_port}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?);
    let started = Instant::now();
    let child = cmd.spawn().with_context(|| {
        format!(
            "starting {} (build it: cargo build --release -p clustermesh-node-agent)",
            bin.display()
        )
    })?;
    node.agent = Some(AgentProcess {
        child,
        status_port,
        log,
    });

    // Every frontend until its entry holds all its backends; /readyz alongside.
    let mut waiting: Vec<(ServiceKeyBytes, usize)> = (0..args.services)
        .map(|s| (service_key(frontend(s)), mesh.backend_count(s)))
        .collect();
    let mut map = None;
    let mut ready = None;
    let mut map_complete = None;
    while ready.is_none() || map_complete.is_none() {
        if let Some(status) = node.agent().exited() {
            return Err(node.fail(format!(
                "the agent exited during its initial sync: {status}"
            )));
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(node.fail(format!(
                "initial sync not done after 10 minutes ({} services incomplete, ready: {})",
                waiting.len(),
                ready.is_some()
            )));
        }
        if map.is_none() && ServiceMap::path(&node.pin_dir).exists() {
            map = Some(ServiceMap::open(&node.pin_dir)?);
        }
        if let Some(map) = &map
            && map_complete.is_none()
        {
            waiting.retain(|(key, want)| map.get(key).is_none_or(|v| backend_count(&v) != *want));
            if waiting.is_empty() {
                map_complete = Some(started.elapsed());
            }
        }
        if ready.is_none() && node.agent().ready() {
            ready = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(InitialSync {
        ready: ready.expect("loop ends when set"),
        map_complete: map_complete.expect("loop ends when set"),
    })
}

/// Reads the whole map back through the ebpf crate once the agent is stopped, and compares it
/// with the mesh as last written: every frontend, its local backends exactly, its remote ones
/// as that many mesh VIPs. Returns (services, backends) found.
fn verify_map(pin_dir: &Path, mesh: &Mesh) -> anyhow::Result<(usize, usize)> {
    let datapath = Datapath::load(&DatapathConfig {
        pin_dir: pin_dir.to_owned(),
        ..DatapathConfig::default()
    })
    .context("opening the pinned datapath to verify it")?;
    let mesh_range: ipnet::IpNet = DatapathConfig::DEFAULT_MESH_VIP_RANGE_V4.parse()?;
    let services = datapath.services()?;
    ensure!(
        services.len() == mesh.remote.len(),
        "the map holds {} services, {} were written",
        services.len(),
        mesh.remote.len()
    );
    let by_frontend: HashMap<SocketAddr, &clustermesh_ebpf::Service> =
        services.iter().map(|s| (s.frontend.addr, s)).collect();
    let mut backends = 0;
    for s in 0..mesh.remote.len() {
        let programmed = by_frontend
            .get(&SocketAddr::V4(frontend(s)))
            .with_context(|| format!("service {s} ({}) is not in the map", frontend(s)))?;
        let mut local: Vec<SocketAddr> = mesh.local().services[s]
            .iter()
            .flat_map(|svc| &svc.backends)
            .map(|b| SocketAddr::new(b.ip, 8080))
            .collect();
        local.sort();
        let (mut found_local, found_remote): (Vec<SocketAddr>, Vec<SocketAddr>) = programmed
            .backends
            .iter()
            .partition(|b| !mesh_range.contains(&b.ip()));
        found_local.sort();
        ensure!(
            found_local == local,
            "service {s}: local backends {found_local:?}, expected {local:?}"
        );
        ensure!(
            found_remote.len() == mesh.remote[s].len(),
            "service {s}: {} remote backends (mesh VIPs), expected {}",
            found_remote.len(),
            mesh.remote[s].len()
        );
        backends += programmed.backends.len();
    }
    Ok((services.len(), backends))
}

async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "agent-bench needs root (eBPF, network namespaces, cgroups)"
    );
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let mut mesh = Mesh::build(&args)?;
    let work = tempfile::tempdir()?;
    let (local_backends, remote_backends) = (mesh.local_backends(), mesh.remote_backends());

    eprintln!("starting etcd ...");
    let etcd = EtcdServer::start();
    let client = connect(&EtcdConfig::plain(etcd.endpoint())).await?;
    eprintln!(
        "writing the mesh: {} services, {local_backends} local + {remote_backends} remote backends, {} peers x {} nodes ...",
        args.services, args.peers, args.nodes_per_peer
    );
    put_all(&client, mesh.initial_keys()).await?;
    let list_time = list_baseline(&client, &mesh).await?;

    eprintln!("starting the agent ...");
    let mut node = Node::create()?;
    let initial = start_agent(&mut node, &args, &mesh, &etcd.endpoint(), work.path()).await?;
    // Let the first pass's garbage settle before reading RSS.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_initial = node.agent().rss_mib();
    eprintln!(
        "initial sync: map complete after {:.2} s, ready after {:.2} s; RSS {:.1} MiB",
        initial.map_complete.as_secs_f64(),
        initial.ready.as_secs_f64(),
        rss_initial.0
    );

    // The two observers: a plain watch on the peers' mirrored services, and the map poller.
    let probes = Arc::new(Probes::default());
    let (_reader, mut events) = WatchReader::spawn(
        client.clone(),
        mesh.schema.cache_kind_prefix(Kind::Services),
        4096,
    );
    loop {
        match events.recv().await {
            Some(WatchEvent::InitDone) => break,
            Some(_) => {}
            None => bail!("the baseline watch reader stopped"),
        }
    }
    tokio::spawn(probes.clone().follow_watch(events));
    let poller = {
        let probes = probes.clone();
        let map = ServiceMap::open(&node.pin_dir)?;
        std::thread::spawn(move || probes.poll_map(map))
    };
    let mut prober = Prober {
        client: client.clone(),
        map: ServiceMap::open(&node.pin_dir)?,
        probes: probes.clone(),
        next_id: 0,
    };

    let load_before = load_average();
    let work_start = node.agent().work();
    eprintln!("one change at a time: {} samples ...", args.lag_samples);
    for _ in 0..args.lag_samples {
        let id = prober.probe(&mut mesh).await?;
        let deadline = Instant::now() + PROBE_DEADLINE;
        while !probes.finished(id) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if node.agent().exited().is_some() {
            return Err(node.fail("the agent exited"));
        }
        // Unsynchronised with the agent's coalescing window and its 500 ms tick.
        tokio::time::sleep(Duration::from_millis(10 + (id % 7) as u64)).await;
    }
    prober.drain().await;
    let quiet = probes.lags(0..prober.next_id);
    let work_quiet = node.agent().work();

    let churn_total = args.churn_rate as usize * args.churn_secs as usize;
    let churn_from = prober.next_id;
    let mut churn_elapsed = Duration::ZERO;
    // VmRSS (MiB) after the quiet phase and after every second of churn: a leak keeps rising.
    let mut rss_trend = vec![node.agent().rss_mib().0];
    if churn_total > 0 {
        eprintln!(
            "churn: {} updates/s for {} s ...",
            args.churn_rate, args.churn_secs
        );
        let mut tick = tokio::time::interval(Duration::from_secs(1) / args.churn_rate.max(1));
        let started = Instant::now();
        for n in 1..=churn_total {
            tick.tick().await;
            prober.probe(&mut mesh).await?;
            if n % args.churn_rate as usize == 0 {
                rss_trend.push(node.agent().rss_mib().0);
            }
        }
        churn_elapsed = started.elapsed();
        prober.drain().await;
    }
    let work_churn = node.agent().work();
    let load_after = load_average();
    let churn = probes.lags(churn_from..prober.next_id);
    let rss_churn = node.agent().rss_mib();
    if node.agent().exited().is_some() {
        return Err(node.fail("the agent exited during the churn"));
    }
    probes.stop.store(true, Ordering::Relaxed);
    let _ = poller.join();

    eprintln!("stopping the agent and verifying the map ...");
    node.agent().stop();
    let (verified_services, verified_backends) = verify_map(&node.pin_dir, &mesh)?;
    drop(node);

    // The table.
    let rate = if churn_elapsed.is_zero() {
        0.0
    } else {
        churn_total as f64 / churn_elapsed.as_secs_f64()
    };
    let row = |label: &str, lags: &Lags| {
        println!(
            "  {:<44} {:>9.2} ms {:>9.2} ms {:>9.2} ms {:>8} {:>8}",
            label,
            ms(lags.median()),
            ms(lags.p99()),
            ms(lags.max()),
            lags.sorted.len(),
            lags.missing
        );
    };
    let yes = |ok: bool| if ok { "met" } else { "NOT met" };
    println!();
    println!(
        "agent benchmark ({profile} build): 1 local + {} peers, {} global services, {} backends ({local_backends} local, {remote_backends} remote on {} peer nodes)",
        args.peers,
        args.services,
        args.backends,
        args.peers * args.nodes_per_peer
    );
    println!();
    println!("initial sync (all data in etcd before the agent starts)");
    println!(
        "  {:<62} {:>9.3} s",
        "baseline: list every key the agent reads (3 watch readers)",
        list_time.as_secs_f64()
    );
    println!(
        "  {:<62} {:>9.3} s",
        "agent start -> /readyz",
        initial.ready.as_secs_f64()
    );
    println!(
        "  {:<62} {:>9.3} s",
        format!(
            "agent start -> all {} services complete in the eBPF map",
            args.services
        ),
        initial.map_complete.as_secs_f64()
    );
    println!();
    println!(
        "{:<46} {:>12} {:>12} {:>12} {:>8} {:>8}",
        "lag: peer service put into cache/ ->", "median", "p99", "max", "samples", "missing"
    );
    println!("one change at a time");
    row("baseline: etcd watch event (same puts)", &quiet.0);
    row("agent: entry changed in the eBPF map", &quiet.1);
    if churn_total > 0 {
        println!(
            "churn: {} updates/s for {} s (achieved {rate:.1}/s)",
            args.churn_rate, args.churn_secs
        );
        row("baseline: etcd watch event (same puts)", &churn.0);
        row("agent: entry changed in the eBPF map", &churn.1);
    }
    let quiet_work = WorkDone::between(work_start, work_quiet);
    let churn_work = WorkDone::between(work_quiet, work_churn);
    println!();
    println!(
        "{:<46} {:>8} {:>16} {:>16} {:>16} {:>12}",
        "agent work (its metrics and /proc)",
        "passes",
        "CPU per pass",
        "map programming",
        "its mean lag",
        "CPU"
    );
    let work_row = |label: &str, w: &WorkDone, secs: f64| {
        println!(
            "  {:<44} {:>8} {:>13.1} ms {:>13.1} ms {:>13.1} ms {:>7.1} s{}",
            label,
            w.passes,
            w.cpu_ms_per_pass,
            w.programming_ms,
            w.reported_lag_ms,
            w.cpu_s,
            if secs > 0.0 {
                format!(" ({:.0}% of a core)", 100.0 * w.cpu_s / secs)
            } else {
                String::new()
            }
        );
    };
    work_row("one change at a time", &quiet_work, 0.0);
    if churn_total > 0 {
        work_row("churn", &churn_work, churn_elapsed.as_secs_f64());
    }
    println!(
        "  machine: {} cores, 1-min load average {load_before:.1} before, {load_after:.1} after",
        std::thread::available_parallelism().map_or(0, usize::from)
    );
    println!();
    println!(
        "{:<46} {:>11} {:>13}",
        "agent memory", "VmRSS", "peak (VmHWM)"
    );
    println!(
        "  {:<44} {:>7.1} MiB {:>9.1} MiB",
        "after the initial sync", rss_initial.0, rss_initial.1
    );
    println!(
        "  {:<44} {:>7.1} MiB {:>9.1} MiB",
        "after the churn", rss_churn.0, rss_churn.1
    );
    println!(
        "  VmRSS after the one-at-a-time phase, then each second of churn (MiB): {}",
        rss_trend
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!();
    let target_rss_mib = TARGET_RSS_MB * 1e6 / (1024.0 * 1024.0);
    let lag_ok = |l: &Lags| l.missing == 0 && l.p99() <= TARGET_P99;
    let quiet_ok = lag_ok(&quiet.1);
    let churn_ok = churn_total == 0 || lag_ok(&churn.1);
    let rss_ok = rss_churn.1.max(rss_initial.1) <= target_rss_mib;
    println!(
        "targets: lag p99 <= {} ms with nothing missing: one at a time {}, churn {}; peak RSS <= {TARGET_RSS_MB} MB ({target_rss_mib:.1} MiB): {}",
        TARGET_P99.as_millis(),
        yes(quiet_ok),
        if churn_total == 0 {
            "not run"
        } else {
            yes(churn_ok)
        },
        yes(rss_ok)
    );
    println!(
        "map read back after the run (clustermesh_ebpf::Datapath::services): {verified_services} services, {verified_backends} backends, as written"
    );

    let result = serde_json::json!({
        "profile": profile,
        "peers": args.peers,
        "services": args.services,
        "backends": args.backends,
        "local_backends": local_backends,
        "remote_backends": remote_backends,
        "nodes_per_peer": args.nodes_per_peer,
        "initial_sync_s": {
            "baseline_list": list_time.as_secs_f64(),
            "agent_ready": initial.ready.as_secs_f64(),
            "agent_map_complete": initial.map_complete.as_secs_f64(),
        },
        "lag_ms_one_at_a_time": {"baseline_watch": quiet.0.json(), "agent_map": quiet.1.json()},
        "churn": {
            "rate_per_s": args.churn_rate,
            "secs": args.churn_secs,
            "achieved_rate_per_s": rate,
            "lag_ms": {"baseline_watch": churn.0.json(), "agent_map": churn.1.json()},
            "agent_work": churn_work.json(),
        },
        "agent_work_one_at_a_time": quiet_work.json(),
        "machine": {
            "cores": std::thread::available_parallelism().map_or(0, usize::from),
            "load_average_before": load_before,
            "load_average_after": load_after,
        },
        "rss_mib": {
            "after_initial_sync": {"rss": rss_initial.0, "peak": rss_initial.1},
            "after_churn": {"rss": rss_churn.0, "peak": rss_churn.1},
            "trend_during_churn": rss_trend,
        },
        "targets": {
            "lag_p99_ms": ms(TARGET_P99),
            "rss_mb": TARGET_RSS_MB,
            "lag_one_at_a_time_met": quiet_ok,
            "lag_churn_met": churn_ok,
            "rss_met": rss_ok,
        },
        "map_verified": {"services": verified_services, "backends": verified_backends},
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&result)?)?;
    println!("\nresults written to {}", args.out.display());
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // On Ctrl-C the run is dropped: its guards stop the agent and remove what it created.
    tokio::select! {
        result = run(args) => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted; cleaned up"),
    }
}
