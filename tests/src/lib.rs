//! End-to-end fixtures on the lab: real etcds, real apiservers, real agents with their eBPF
//! programs and tunnels, in network namespaces and cgroups that the lab makes and removes.
//!
//! A [`Mesh`] is one lab (default: clusters `east` and `west`, two nodes each, overlapping
//! pod CIDRs, connected to each other) whose agents are all ready. Clients run as
//! `mesh-client` processes inside lab pods, because the socket load balancer only sees
//! processes in a node's cgroup. Labs are brought up one at a time (a process-wide lock):
//! several meshes at once would share two cores and make timing assertions meaningless.
//!
//! The tests need root; outside CI they skip without it, with `CI=true` they fail.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use clustermesh_lab::netns::NetNs;
use clustermesh_lab::state::{ComponentBinaries, Helper, PodRecord};
use clustermesh_lab::topology::Topology;
use clustermesh_lab::{DeploySpec, LabConfig, LabGuard};

/// One lab at a time in this process.
static SERIAL: Mutex<()> = Mutex::new(());

/// The agent's status port inside each node's namespace.
const AGENT_STATUS: &str = "127.0.0.1:9964";

/// True when the test may run. Not root: with `CI=true` the test fails (CI must run it),
/// otherwise it says why it skips and returns false.
pub fn require_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "this end-to-end test needs root (network namespaces, cgroups, eBPF) and CI=true: it must not be skipped"
        );
    }
    eprintln!("skipped: this end-to-end test needs root (network namespaces, cgroups, eBPF)");
    false
}

/// Polls `check` until it returns `Ok`, or panics after `timeout` with what it waited for
/// and the last reason it was not there yet.
pub fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(value) => return value,
            Err(reason) if Instant::now() > deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last: {reason}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// The workspace's build directory (`target/debug`), found from this test binary
/// (`target/debug/deps/<test>`).
fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("a test binary lives in <target>/<profile>/deps")
        .to_owned()
}

fn built(name: &str) -> PathBuf {
    let path = build_dir().join(name);
    assert!(
        path.is_file(),
        "{} is not built; run the tests with `cargo test --workspace` (which builds every binary)",
        path.display()
    );
    path
}

/// A lab meshing its clusters, taken down when dropped (also when the test fails).
pub struct Mesh {
    pub lab: LabGuard,
    // Dropped after `lab`, so `down` still finds the state directory.
    _tmp: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

/// What one connection got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The echo server's line: `cluster=<c> node=<n> pod=<ns>/<name>`.
    Ok(String),
    Err(String),
}

impl Answer {
    /// The cluster that answered.
    pub fn cluster(&self) -> Option<&str> {
        match self {
            Answer::Ok(line) => field(line, "cluster"),
            Answer::Err(_) => None,
        }
    }

    /// The answer line, or the error.
    pub fn line(&self) -> &str {
        match self {
            Answer::Ok(line) | Answer::Err(line) => line,
        }
    }

    pub fn pod(&self) -> Option<&str> {
        match self {
            Answer::Ok(line) => field(line, "pod"),
            Answer::Err(_) => None,
        }
    }
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// Counts answers per cluster (`"error"` for failed connections).
pub fn by_cluster(answers: &[Answer]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for a in answers {
        let key = a.cluster().unwrap_or("error").to_owned();
        *counts.entry(key).or_default() += 1;
    }
    counts
}

impl Mesh {
    /// The default mesh, or `None` when the test must skip (not root, outside CI).
    pub fn up() -> Option<Mesh> {
        Self::up_with(Topology::default())
    }

    pub fn up_with(topology: Topology) -> Option<Mesh> {
        if !require_root() {
            return None;
        }
        let serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let name = format!("e{:05x}", rand::random::<u32>() & 0xf_ffff);
        let tmp = tempfile::tempdir().expect("a temporary directory");
        let mut config = LabConfig::new(
            &name,
            Helper {
                program: built("clustermesh-lab-helper"),
                prefix_args: vec![],
            },
        );
        config.state_dir = tmp.path().join(&name);
        config.binaries = ComponentBinaries {
            apiserver: Some(built("clustermesh-apiserver")),
            agent: Some(built("clustermesh-agent")),
        };
        let lab = LabGuard::up(&config, &topology).expect("the lab comes up");
        let mesh = Mesh {
            lab,
            _tmp: tmp,
            _serial: serial,
        };
        mesh.wait_agents_ready();
        Some(mesh)
    }

    /// Every (cluster, node) of the lab.
    pub fn nodes(&self) -> Vec<(String, String)> {
        self.lab
            .state()
            .clusters
            .iter()
            .flat_map(|c| c.nodes.iter().map(|n| (c.name.clone(), n.name.clone())))
            .collect()
    }

    /// The agent's `/status` on a node, as JSON.
    pub fn agent_status(&self, cluster: &str, node: &str) -> Result<serde_json::Value, String> {
        let netns = self
            .lab
            .node_netns(cluster, node)
            .map_err(|e| e.to_string())?;
        let body = NetNs::open(&netns)
            .map_err(|e| e.to_string())?
            .run(|| http_get(AGENT_STATUS, "/status"))
            .map_err(|e| e.to_string())??;
        serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))
    }

    /// Waits until every node's agent has programmed its first full sync.
    pub fn wait_agents_ready(&self) {
        for (cluster, node) in self.nodes() {
            eventually(
                &format!("the agent of {cluster}/{node} to be ready"),
                Duration::from_secs(60),
                || {
                    let status = self.agent_status(&cluster, &node)?;
                    if status["ready"] == true {
                        Ok(())
                    } else {
                        Err(format!("waiting for {}", status["waiting_for"]))
                    }
                },
            );
        }
    }

    /// The active backends every agent of `cluster` programmed for the TCP frontend `vip`,
    /// as `<cluster>/<ip:port>` ("local" for the own cluster), sorted; errors if the agents
    /// disagree.
    pub fn programmed(&self, cluster: &str, vip: SocketAddr) -> Result<Vec<String>, String> {
        let mut seen: Option<Vec<String>> = None;
        for (c, node) in self.nodes().into_iter().filter(|(c, _)| c == cluster) {
            let status = self.agent_status(&c, &node)?;
            let mut backends: Vec<String> = status["frontends"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|f| f["frontend"] == vip.to_string() && f["protocol"] == "TCP")
                .flat_map(|f| f["backends"].as_array().cloned().unwrap_or_default())
                .filter(|b| b["state"] == "active")
                .map(|b| {
                    format!(
                        "{}/{}",
                        b["cluster"].as_str().unwrap_or("?"),
                        b["addr"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            backends.sort();
            match &seen {
                Some(other) if *other != backends => {
                    return Err(format!(
                        "agents of {cluster} disagree: {other:?} vs {node}: {backends:?}"
                    ));
                }
                _ => seen = Some(backends),
            }
        }
        Ok(seen.unwrap_or_default())
    }

    /// Waits until every agent of `cluster` programs `vip` with active backends from exactly
    /// these clusters (`"local"` for the own one), `count` each.
    pub fn wait_programmed(&self, cluster: &str, vip: SocketAddr, want: &[(&str, usize)]) {
        let want: BTreeMap<String, usize> =
            want.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect();
        eventually(
            &format!("{cluster}'s agents to program {vip} with {want:?}"),
            Duration::from_secs(30),
            || {
                let backends = self.programmed(cluster, vip)?;
                let mut got: BTreeMap<String, usize> = BTreeMap::new();
                for b in &backends {
                    let c = b.split('/').next().unwrap_or_default().to_owned();
                    *got.entry(c).or_default() += 1;
                }
                if got == want {
                    Ok(())
                } else {
                    Err(format!("{backends:?}"))
                }
            },
        );
    }

    /// Deploys the echo workload and returns its Service's cluster IP and port.
    pub fn deploy(&mut self, spec: &DeploySpec) -> SocketAddr {
        self.lab.deploy(spec).expect("deploy");
        let svc = self
            .lab
            .state()
            .service(&spec.cluster, &spec.namespace, &spec.name)
            .expect("the deployed service")
            .clone();
        SocketAddr::from((svc.cluster_ip, svc.port))
    }

    /// A new empty pod to run clients in.
    pub fn client_pod(&mut self, cluster: &str) -> PodRecord {
        self.lab
            .create_pod(cluster, None, "default", None)
            .expect("a client pod")
    }

    /// `count` connections to `addr` from `pod`, one after another.
    pub fn ask(&self, pod: &PodRecord, addr: SocketAddr, count: u32) -> Vec<Answer> {
        let output = self
            .lab
            .pod_command(pod, built("mesh-client"))
            .args(["ask", &addr.to_string(), &count.to_string()])
            .output()
            .expect("running mesh-client");
        assert!(
            output.status.success(),
            "mesh-client failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| match line.strip_prefix("ok ") {
                Some(answer) => Answer::Ok(answer.to_owned()),
                None => Answer::Err(line.trim_start_matches("err ").to_owned()),
            })
            .collect()
    }

    /// Starts connecting to `addr` from `pod` back to back until [`ConnectLoop::stop`].
    pub fn connect_loop(&self, pod: &PodRecord, addr: SocketAddr) -> ConnectLoop {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let stop_file = dir.path().join("stop");
        // A file, not a pipe: thousands of lines a second would fill a pipe nobody reads
        // until the end, and the client would block.
        let output = dir.path().join("attempts");
        let child = self
            .lab
            .pod_command(pod, built("mesh-client"))
            .args(["loop", &addr.to_string(), "--stop-file"])
            .arg(&stop_file)
            .stdout(std::fs::File::create(&output).expect("the attempts file"))
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting mesh-client loop");
        ConnectLoop {
            child: Some(child),
            stop_file,
            output,
            _dir: dir,
        }
    }
}

/// A client connecting in a loop; killed if dropped without [`ConnectLoop::stop`].
pub struct ConnectLoop {
    child: Option<Child>,
    stop_file: PathBuf,
    output: PathBuf,
    _dir: tempfile::TempDir,
}

/// One connection of a loop.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub unix_millis: u128,
    pub answer: Answer,
}

impl ConnectLoop {
    /// Stops the loop and returns every attempt it made.
    pub fn stop(mut self) -> Vec<Attempt> {
        std::fs::write(&self.stop_file, b"").expect("writing the stop file");
        let mut child = self.child.take().expect("not stopped yet");
        child.wait().expect("the loop ends");
        let output = std::fs::read_to_string(&self.output).expect("the attempts file");
        output
            .lines()
            .filter_map(|line| {
                let (millis, rest) = line.split_once(' ')?;
                let answer = match rest.strip_prefix("ok ") {
                    Some(a) => Answer::Ok(a.to_owned()),
                    None => Answer::Err(rest.trim_start_matches("err ").to_owned()),
                };
                Some(Attempt {
                    unix_millis: millis.parse().ok()?,
                    answer,
                })
            })
            .collect()
    }
}

impl Drop for ConnectLoop {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Milliseconds since the Unix epoch, comparable with [`Attempt::unix_millis`].
pub fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// A minimal HTTP/1.1 GET (the agent's status endpoint), without a client library.
fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let mut conn = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    conn.read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP response: {response}"))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(head.lines().next().unwrap_or_default().to_owned());
    }
    // axum answers small bodies with a content-length, never chunked.
    Ok(body.to_owned())
}
