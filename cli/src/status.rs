//! `clustermesh status`: per cluster, is the apiserver ready and etcd healthy, and per peer:
//! connected, synced, object counts, last error, and how many nodes see it. A table a tired
//! on-call engineer reads at a glance (the verdict first, then only what is wrong, each with
//! what to do), or JSON; `--wait` shows progress until healthy; the exit code is 0 only when
//! every cluster is healthy.

use std::collections::BTreeMap;
use std::io::{IsTerminal as _, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use clustermesh_api::apiserver::apiserver_status_client::ApiserverStatusClient;
use clustermesh_api::apiserver::{ApiserverStatusReply, GetStatusRequest};
use clustermesh_lab::Lab;
use clustermesh_lab::netns::NetNs;
use clustermesh_lab::supervisor::{Component, RunState};
use serde::Serialize;
use serde_json::Value;

use crate::kube_target::KubeTarget;
use crate::manifests::{self, DEFAULT_NAMESPACE};
use crate::target::{ContextName, TargetOptions};

/// The apiserver's gRPC status port and the agent's HTTP status port (their defaults).
pub const APISERVER_STATUS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9963);
pub const AGENT_STATUS: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    manifests::AGENT_STATUS_PORT,
);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub targets: crate::target::TargetOptions,
    /// The cluster(s): kubeconfig contexts or lab:<cluster>; repeat for several [default:
    /// the current context].
    #[arg(long)]
    pub context: Vec<String>,
    /// Wait until every cluster is healthy (or --wait-duration passes), showing progress.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub wait_duration: Duration,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Namespace the mesh runs in (Kubernetes contexts).
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
}

/// One peer as this cluster sees it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PeerReport {
    pub name: String,
    /// Connected to the peer's etcd (the apiserver's view).
    pub connected: bool,
    /// Every kind mirrored completely.
    pub synced: bool,
    /// Objects mirrored, per kind.
    pub mirrored: BTreeMap<String, u64>,
    /// Values refused by validation, per reason.
    pub rejected: BTreeMap<String, u64>,
    pub last_error: String,
    /// Seconds since the last change copied from the peer.
    pub last_change_secs_ago: Option<u64>,
    /// Backends of the peer's pods programmed on a node (the most any node has).
    pub backends: u64,
    /// Nodes whose agent sees the peer's mirror complete.
    pub nodes_synced: usize,
    pub nodes_total: usize,
}

/// One node's agent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeReport {
    pub node: String,
    /// The agent answered its status endpoint.
    pub reachable: bool,
    pub ready: bool,
    pub waiting_for: String,
    /// Stopped on purpose (lab: `disable`).
    pub stopped: bool,
    pub last_error: String,
    /// Peer → synced, as this node sees it.
    pub peers: BTreeMap<String, bool>,
    pub rejected: BTreeMap<String, u64>,
    /// Programmed backends by cluster (`local` for this one).
    pub backends: BTreeMap<String, u64>,
    /// The agent's full status (JSON), for troubleshoot.
    #[serde(skip)]
    pub raw: Value,
}

/// One finding: what is wrong and what to do.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub what: String,
    pub fix: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterReport {
    pub context: String,
    pub cluster: String,
    pub cluster_id: u32,
    pub healthy: bool,
    pub apiserver_ready: bool,
    /// Stopped on purpose (lab: `disable`).
    pub apiserver_stopped: bool,
    /// How the apiserver was judged (gRPC status, or Deployment readiness).
    pub apiserver: String,
    pub etcd_healthy: bool,
    pub etcd: String,
    /// Objects published, per kind.
    pub published: BTreeMap<String, u64>,
    pub nodes: Vec<NodeReport>,
    pub peers: Vec<PeerReport>,
    pub problems: Vec<Problem>,
}

impl ClusterReport {
    fn problem(&mut self, what: impl Into<String>, fix: impl Into<String>) {
        self.problems.push(Problem {
            what: what.into(),
            fix: fix.into(),
        });
    }

    /// Fills the per-peer node counts and the problems, and decides `healthy`.
    fn evaluate(&mut self, apiserver_logs: &str, agent_logs: &str) {
        let nodes = self.nodes.clone();
        for peer in &mut self.peers {
            peer.nodes_total = nodes.len();
            peer.backends = nodes
                .iter()
                .filter_map(|n| n.backends.get(&peer.name).copied())
                .max()
                .unwrap_or(0);
            peer.nodes_synced = nodes
                .iter()
                .filter(|n| n.peers.get(&peer.name).copied().unwrap_or(false))
                .count();
        }
        if !self.etcd_healthy {
            let etcd = self.etcd.clone();
            self.problem(
                format!("etcd is not healthy ({etcd})"),
                "check the etcd container/process and its log; nothing works without it",
            );
        }
        if self.apiserver_stopped {
            self.problem(
                "the apiserver is stopped",
                format!("start it: `clustermesh enable --context {}`", self.context),
            );
        } else if !self.apiserver_ready {
            let detail = self.apiserver.clone();
            self.problem(
                format!("the apiserver is not ready ({detail})"),
                format!("read its log ({apiserver_logs})"),
            );
        }
        for node in &nodes {
            if node.stopped {
                self.problem(
                    format!("node {}: the agent is stopped", node.node),
                    format!("start it: `clustermesh enable --context {}`", self.context),
                );
            } else if !node.reachable {
                self.problem(
                    format!("node {}: the agent does not answer", node.node),
                    format!("is it running? read its log ({agent_logs})"),
                );
            } else if !node.ready && node.waiting_for.is_empty() && !node.last_error.is_empty() {
                self.problem(
                    format!(
                        "node {}: the agent is not ready ({})",
                        node.node, node.last_error
                    ),
                    format!("read its log ({agent_logs})"),
                );
            } else if !node.ready {
                let waiting = if node.waiting_for.is_empty() {
                    "its first sync".to_string()
                } else {
                    node.waiting_for.clone()
                };
                self.problem(
                    format!("node {}: the agent is not ready, waiting for {waiting}", node.node),
                    "wait a few seconds; if it stays, check that the local etcd is reachable from the node",
                );
            } else if !node.last_error.is_empty() {
                self.problem(
                    format!("node {}: agent error: {}", node.node, node.last_error),
                    format!("read the agent's log ({agent_logs})"),
                );
            }
        }
        let peers = self.peers.clone();
        for peer in &peers {
            if !peer.connected {
                self.problem(
                    format!(
                        "peer {}: not connected{}",
                        peer.name,
                        if peer.last_error.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", peer.last_error)
                        }
                    ),
                    "is the peer's etcd reachable from here (load balancer, firewall)? `clustermesh troubleshoot` checks certificates and reachability",
                );
            } else if !peer.synced {
                self.problem(
                    format!("peer {}: connected but not synced yet", peer.name),
                    "wait; a large peer takes a while to mirror",
                );
            } else if peer.nodes_total > 0 && peer.nodes_synced < peer.nodes_total {
                self.problem(
                    format!(
                        "peer {}: seen by only {} of {} nodes",
                        peer.name, peer.nodes_synced, peer.nodes_total
                    ),
                    "the other nodes' agents have not read the mirror yet; see the nodes above",
                );
            }
            let rejected: u64 = peer.rejected.values().sum();
            if rejected > 0 {
                self.problem(
                    format!("peer {}: {rejected} value(s) refused by validation", peer.name),
                    "the peer publishes values this cluster does not accept (version skew?); `clustermesh troubleshoot` lists the reasons",
                );
            }
        }
        self.healthy = self.problems.is_empty();
    }
}

/// The apiserver's status over gRPC from inside a network namespace.
fn apiserver_status_in(netns: &str) -> Result<ApiserverStatusReply, String> {
    let ns = NetNs::open(netns).map_err(|e| e.to_string())?;
    ns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let call = async {
                let mut client =
                    ApiserverStatusClient::connect(format!("http://{APISERVER_STATUS}"))
                        .await
                        .map_err(|e| crate::kube_target::error_chain(&e))?;
                client
                    .get_status(GetStatusRequest {})
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|e| e.message().to_string())
            };
            tokio::time::timeout(Duration::from_secs(3), call)
                .await
                .unwrap_or_else(|_| Err("no answer within 3 s".into()))
        })
    })
    .map_err(|e| e.to_string())?
}

/// `GET /status` of an agent (HTTP/1.0, JSON) from inside a network namespace.
fn agent_status_in(netns: &str) -> Result<Value, String> {
    let ns = NetNs::open(netns).map_err(|e| e.to_string())?;
    ns.run(|| http_get_json(AGENT_STATUS, "/status"))
        .map_err(|e| e.to_string())?
}

pub fn http_get_json(addr: SocketAddr, path: &str) -> Result<Value, String> {
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("a response without a body")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(head.lines().next().unwrap_or_default().to_string());
    }
    serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))
}

fn counts(map: &Value) -> BTreeMap<String, u64> {
    serde_json::from_value(map.clone()).unwrap_or_default()
}

/// Everything `status` shows for a lab cluster.
pub fn collect_lab(lab: &Lab, cluster: &str) -> Result<ClusterReport> {
    let plan = lab.cluster(cluster)?;
    let mut report = ClusterReport {
        context: format!("lab:{cluster}"),
        cluster: cluster.to_string(),
        cluster_id: u32::from(plan.id),
        ..Default::default()
    };
    report.etcd_healthy = lab.etcd_healthy(cluster)?;
    report.etcd = if report.etcd_healthy {
        format!("healthy ({})", lab.etcd_endpoint(cluster)?)
    } else {
        format!("no healthy answer at {}", lab.etcd_endpoint(cluster)?)
    };
    let procs = lab.processes();
    let processes: Vec<_> = procs
        .list()
        .into_iter()
        .filter(|p| p.spec.cluster == cluster)
        .collect();
    let stopped = |p: &clustermesh_lab::supervisor::ProcessInfo| {
        p.stop_requested || p.status.as_ref().map(|s| s.state) == Some(RunState::Stopped)
    };
    let apiserver = processes
        .iter()
        .find(|p| matches!(p.spec.component, Component::Apiserver));
    let mut apiserver_log = String::from("no apiserver process in this lab");
    match apiserver {
        None => report.apiserver = "not running in this lab (built with --etcd-only?)".into(),
        Some(p) if stopped(p) => {
            apiserver_log = p.log.display().to_string();
            report.apiserver_stopped = true;
            report.apiserver = "stopped".into();
        }
        Some(p) => {
            apiserver_log = p.log.display().to_string();
            match apiserver_status_in(&p.spec.netns) {
                Ok(reply) => {
                    report.apiserver_ready = reply.ready;
                    report.apiserver = if reply.ready {
                        "ready".into()
                    } else if reply.last_error.is_empty() {
                        "running, first sync not complete".into()
                    } else {
                        format!("not ready: {}", reply.last_error)
                    };
                    report.published = reply.published.into_iter().collect();
                    for problem in reply.problems.iter().take(5) {
                        report.problem(
                            format!("apiserver: {problem}"),
                            "fix the Kubernetes object it names (annotations, addresses)",
                        );
                    }
                    for peer in reply.peers {
                        let since = (peer.last_event_unix_millis > 0).then(|| {
                            let now = clustermesh_store_now_millis();
                            now.saturating_sub(peer.last_event_unix_millis) / 1000
                        });
                        report.peers.push(PeerReport {
                            name: peer.name,
                            connected: peer.connected,
                            synced: peer.synced,
                            mirrored: peer.mirrored.into_iter().collect(),
                            rejected: peer.rejected.into_iter().collect(),
                            last_error: peer.last_error,
                            last_change_secs_ago: since,
                            ..Default::default()
                        });
                    }
                }
                Err(e) => {
                    report.apiserver = format!("status API at {APISERVER_STATUS} unreachable: {e}")
                }
            }
        }
    }
    // A peer just connected may not be in the apiserver's answer yet: it is still not healthy.
    if !report.apiserver_stopped {
        for peer in lab.peers_of(cluster)? {
            if !report.peers.iter().any(|p| p.name == peer) {
                report.peers.push(PeerReport {
                    name: peer,
                    last_error: "configured, but the apiserver does not mirror it yet".into(),
                    ..Default::default()
                });
            }
        }
    }
    let mut agent_logs = Vec::new();
    for node in &plan.nodes {
        let process = processes
            .iter()
            .find(|p| matches!(p.spec.component, Component::Agent) && p.spec.node == node.name);
        let mut row = NodeReport {
            node: node.name.clone(),
            ..Default::default()
        };
        if let Some(p) = process {
            agent_logs.push(p.log.display().to_string());
            if stopped(p) {
                row.stopped = true;
            } else {
                match agent_status_in(&p.spec.netns) {
                    Ok(status) => fill_node(&mut row, status),
                    Err(e) => row.last_error = e,
                }
            }
        }
        report.nodes.push(row);
    }
    let agent_logs = agent_logs.first().map_or_else(
        || "no agent process in this lab".to_string(),
        |first| {
            std::path::Path::new(first)
                .parent()
                .and_then(|d| d.parent())
                .map(|d| format!("{}/{cluster}.agent.*/", d.display()))
                .unwrap_or_else(|| first.clone())
        },
    );
    report.evaluate(&apiserver_log, &agent_logs);
    Ok(report)
}

fn clustermesh_store_now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A node row from the agent's `/status` JSON.
pub fn fill_node(row: &mut NodeReport, status: Value) {
    row.reachable = true;
    row.ready = status["ready"].as_bool().unwrap_or(false);
    row.waiting_for = status["waiting_for"].as_str().unwrap_or_default().into();
    row.last_error = status["last_error"].as_str().unwrap_or_default().into();
    row.rejected = counts(&status["rejected"]);
    if let Some(peers) = status["peers"].as_object() {
        for (name, peer) in peers {
            let synced = peer["connected"].as_bool().unwrap_or(false)
                && peer["synced"].as_bool().unwrap_or(false);
            row.peers.insert(name.clone(), synced);
        }
    }
    for frontend in status["frontends"].as_array().into_iter().flatten() {
        for backend in frontend["backends"].as_array().into_iter().flatten() {
            let cluster = backend["cluster"].as_str().unwrap_or("local").to_string();
            *row.backends.entry(cluster).or_default() += 1;
        }
    }
    row.raw = status;
}

/// What `status` can see of a Kubernetes cluster without reaching into its pods: the
/// readiness of the apiserver pod's two containers (etcd, apiserver) and of every agent pod
/// (per node, with why it waits), and the configured peers. (The apiserver's and agents' own
/// status APIs listen on loopback in their pods; reading them needs a port forward, which
/// this CLI does not do yet.)
pub async fn collect_kube(target: &KubeTarget, namespace: &str) -> Result<ClusterReport> {
    let cluster = crate::connect::KubeCluster::read(target.clone(), namespace).await;
    let (name, id, peers) = match &cluster {
        Ok(c) => (
            c.name().to_string(),
            u32::from(c.settings.cluster_id),
            c.configured_peers(),
        ),
        Err(e) => {
            // Not enabled (or not reachable by peers yet): still show what is there.
            let config = target
                .get("v1", "ConfigMap", namespace, manifests::CONFIG_MAP)
                .await?;
            let Some(config) = config else {
                bail!("{e}");
            };
            (
                config["data"]["cluster-name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                config["data"]["cluster-id"]
                    .as_str()
                    .and_then(|i| i.parse().ok())
                    .unwrap_or_default(),
                BTreeMap::new(),
            )
        }
    };
    let mut report = ClusterReport {
        context: target.context.clone(),
        cluster: name,
        cluster_id: id,
        ..Default::default()
    };
    // The pods say more than the Deployment and DaemonSet: which container is not ready,
    // why it waits, on which node.
    let pods = target.list("v1", "Pod", namespace).await?;
    let of = |app: &str| -> Vec<&Value> {
        pods.iter()
            .filter(|p| p["metadata"]["labels"]["app.kubernetes.io/name"] == app)
            .collect()
    };
    let apiserver_pods = of(manifests::APISERVER);
    let container = |pod: &Value, name: &str| -> (bool, String) {
        let status = pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == name)
            .cloned()
            .unwrap_or(Value::Null);
        let ready = status["ready"].as_bool().unwrap_or(false);
        let detail = if ready {
            "ready".to_string()
        } else if let Some(reason) = status["state"]["waiting"]["reason"].as_str() {
            let message = status["state"]["waiting"]["message"].as_str().unwrap_or("");
            format!("waiting: {reason} {message}").trim().to_string()
        } else if status.is_null() {
            format!(
                "no status yet (pod phase {})",
                pod["status"]["phase"].as_str().unwrap_or("unknown")
            )
        } else {
            "running, not ready".to_string()
        };
        let restarts = status["restartCount"].as_u64().unwrap_or(0);
        if restarts > 0 {
            (ready, format!("{detail}, {restarts} restart(s)"))
        } else {
            (ready, detail)
        }
    };
    match apiserver_pods.first() {
        None => {
            report.apiserver = format!(
                "no pod of Deployment {namespace}/{} (kubectl -n {namespace} describe deployment {})",
                manifests::APISERVER,
                manifests::APISERVER
            );
            report.etcd = "no pod".into();
        }
        Some(pod) => {
            let name = pod["metadata"]["name"].as_str().unwrap_or_default();
            let (apiserver_ready, apiserver) = container(pod, "apiserver");
            let (etcd_ready, etcd) = container(pod, "etcd");
            report.apiserver_ready = apiserver_ready;
            report.apiserver = format!("pod {name}: {apiserver}");
            report.etcd_healthy = etcd_ready;
            report.etcd = format!("pod {name}: {etcd}");
        }
    }
    let daemonset = target
        .get("apps/v1", "DaemonSet", namespace, manifests::AGENT)
        .await?
        .unwrap_or(Value::Null);
    let desired = daemonset["status"]["desiredNumberScheduled"]
        .as_u64()
        .unwrap_or(0);
    let agent_pods = of(manifests::AGENT);
    for pod in &agent_pods {
        let (ready, detail) = container(pod, "agent");
        report.nodes.push(NodeReport {
            node: pod["spec"]["nodeName"]
                .as_str()
                .or(pod["metadata"]["name"].as_str())
                .unwrap_or_default()
                .to_string(),
            reachable: true,
            ready,
            last_error: if ready { String::new() } else { detail },
            ..Default::default()
        });
    }
    report.nodes.sort_by(|a, b| a.node.cmp(&b.node));
    if agent_pods.is_empty() {
        report.problem(
            format!("DaemonSet {namespace}/{} runs no pod", manifests::AGENT),
            format!(
                "check its node selector, priority class and image (`kubectl -n {namespace} describe daemonset {}`)",
                manifests::AGENT
            ),
        );
    } else if (agent_pods.len() as u64) < desired {
        report.problem(
            format!("only {} of {desired} agent pods exist", agent_pods.len()),
            format!(
                "`kubectl -n {namespace} describe daemonset {}` says why",
                manifests::AGENT
            ),
        );
    }
    let ready_agents = report.nodes.iter().filter(|n| n.ready).count();
    for (peer, _) in peers {
        // Configured; whether it is connected needs the apiserver's status API.
        report.peers.push(PeerReport {
            name: peer,
            connected: report.apiserver_ready,
            synced: report.apiserver_ready,
            last_error: "connection state needs the apiserver's status API (port-forward 9963), not read yet".into(),
            ..Default::default()
        });
    }
    report.evaluate(
        &format!(
            "kubectl -n {namespace} logs deploy/{} -c apiserver",
            manifests::APISERVER
        ),
        &format!("kubectl -n {namespace} logs ds/{}", manifests::AGENT),
    );
    // Without per-node status every ready agent counts as seeing every peer.
    for peer in &mut report.peers {
        peer.nodes_synced = ready_agents;
    }
    Ok(report)
}

async fn collect(options: &TargetOptions, args: &StatusArgs) -> Result<Vec<ClusterReport>> {
    let contexts: Vec<Option<&str>> = if args.context.is_empty() {
        vec![None]
    } else {
        args.context.iter().map(|c| Some(c.as_str())).collect()
    };
    let mut reports = Vec::new();
    for context in contexts {
        match ContextName::parse(context) {
            ContextName::Lab(cluster) => {
                let options = options.clone();
                let report = tokio::task::spawn_blocking(move || {
                    let lab = options.open_lab()?;
                    let cluster = options.lab_cluster(&lab, &cluster)?.to_string();
                    collect_lab(&lab, &cluster)
                })
                .await??;
                reports.push(report);
            }
            ContextName::Kube(context) => {
                let target = options.kube(context.as_deref()).await?;
                reports.push(collect_kube(&target, &args.namespace).await?);
            }
        }
    }
    Ok(reports)
}

fn join_counts(counts: &BTreeMap<String, u64>) -> String {
    counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table: one verdict line per cluster, then its parts, then its problems with fixes.
pub fn render_table(reports: &[ClusterReport]) -> String {
    let mut out = String::new();
    for r in reports {
        let verdict = if r.healthy {
            "HEALTHY".to_string()
        } else {
            format!(
                "NOT HEALTHY ({} problem{})",
                r.problems.len(),
                if r.problems.len() == 1 { "" } else { "s" }
            )
        };
        out.push_str(&format!(
            "{} (ID {}, {}): {verdict}\n",
            r.cluster, r.cluster_id, r.context
        ));
        let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
        out.push_str(&format!(
            "  {} apiserver  {}{}\n",
            mark(r.apiserver_ready),
            r.apiserver,
            if r.published.is_empty() {
                String::new()
            } else {
                format!("; published: {}", join_counts(&r.published))
            }
        ));
        out.push_str(&format!(
            "  {} etcd       {}\n",
            mark(r.etcd_healthy),
            r.etcd
        ));
        let ready = r.nodes.iter().filter(|n| n.ready).count();
        let not_ready: Vec<&str> = r
            .nodes
            .iter()
            .filter(|n| !n.ready)
            .map(|n| n.node.as_str())
            .collect();
        out.push_str(&format!(
            "  {} agents     {ready}/{} nodes ready{}\n",
            mark(ready == r.nodes.len() && !r.nodes.is_empty()),
            r.nodes.len(),
            if not_ready.is_empty() {
                String::new()
            } else {
                format!(" (not ready: {})", not_ready.join(", "))
            }
        ));
        if r.peers.is_empty() {
            out.push_str("       peers      none connected\n");
        }
        for p in &r.peers {
            let ok = p.connected && p.synced && p.nodes_synced == p.nodes_total;
            let state = match (p.connected, p.synced) {
                (false, _) => "NOT CONNECTED",
                (true, false) => "connected, syncing",
                (true, true) => "connected, synced",
            };
            let mut line = format!(
                "  {} peer {}  {state}; seen by {}/{} nodes; {} backend{} programmed",
                mark(ok),
                p.name,
                p.nodes_synced,
                p.nodes_total,
                p.backends,
                if p.backends == 1 { "" } else { "s" }
            );
            if !p.mirrored.is_empty() {
                line.push_str(&format!("; mirrored: {}", join_counts(&p.mirrored)));
            }
            if let Some(secs) = p.last_change_secs_ago {
                line.push_str(&format!("; last change {secs}s ago"));
            }
            if !p.last_error.is_empty() {
                line.push_str(&format!("; last error: {}", p.last_error));
            }
            out.push_str(&line);
            out.push('\n');
        }
        for problem in &r.problems {
            out.push_str(&format!(
                "  -> {}\n     fix: {}\n",
                problem.what, problem.fix
            ));
        }
    }
    out
}

/// The one-line summary `--wait` shows while it waits.
fn progress_line(reports: &[ClusterReport], elapsed: Duration, limit: Duration) -> String {
    let parts: Vec<String> = reports
        .iter()
        .map(|r| {
            if r.healthy {
                format!("{}: healthy", r.cluster)
            } else {
                format!(
                    "{}: {}",
                    r.cluster,
                    r.problems
                        .first()
                        .map(|p| p.what.as_str())
                        .unwrap_or("not healthy")
                )
            }
        })
        .collect();
    format!(
        "[{:>3}s/{}s] {}",
        elapsed.as_secs(),
        limit.as_secs(),
        parts.join(" | ")
    )
}

pub async fn status(options: &TargetOptions, args: &StatusArgs) -> Result<ExitCode> {
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut last_print = None::<Instant>;
    let reports = loop {
        let reports = collect(options, args).await?;
        let healthy = reports.iter().all(|r| r.healthy);
        if !args.wait || healthy || started.elapsed() >= args.wait_duration {
            if args.wait && tty {
                eprint!("\r\x1b[2K");
            }
            break reports;
        }
        let line = progress_line(&reports, started.elapsed(), args.wait_duration);
        if tty {
            let width = 160;
            let line: String = line.chars().take(width).collect();
            eprint!("\r\x1b[2K{line}");
        } else if last_print.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            eprintln!("{line}");
            last_print = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let healthy = reports.iter().all(|r| r.healthy);
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&reports)?),
        Output::Table => {
            print!("{}", render_table(&reports));
            if args.wait && !healthy {
                println!(
                    "still not healthy after {}; the problems above say what to do",
                    humantime::format_duration(args.wait_duration)
                );
            }
        }
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy_report() -> ClusterReport {
        let mut node = NodeReport {
            node: "n1".into(),
            ..Default::default()
        };
        fill_node(
            &mut node,
            serde_json::json!({"ready": true, "peers": {"west": {"connected": true, "synced": true}}}),
        );
        ClusterReport {
            context: "lab:east".into(),
            cluster: "east".into(),
            cluster_id: 1,
            apiserver_ready: true,
            apiserver: "ready".into(),
            etcd_healthy: true,
            etcd: "healthy".into(),
            nodes: vec![node],
            peers: vec![PeerReport {
                name: "west".into(),
                connected: true,
                synced: true,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn healthy_when_everything_is_and_says_what_is_not() {
        let mut r = healthy_report();
        r.evaluate("a.log", "b.log");
        assert!(r.healthy, "{:?}", r.problems);
        let table = render_table(&[r]);
        assert!(
            table.starts_with("east (ID 1, lab:east): HEALTHY\n"),
            "{table}"
        );
        assert!(table.contains("seen by 1/1 nodes"), "{table}");

        let mut r = healthy_report();
        r.peers[0].connected = false;
        r.peers[0].last_error = "connection refused".into();
        r.nodes[0].peers.insert("west".into(), false);
        r.evaluate("a.log", "b.log");
        assert!(!r.healthy);
        let table = render_table(&[r]);
        assert!(table.contains("NOT HEALTHY (1 problem)"), "{table}");
        assert!(
            table.contains("peer west: not connected (connection refused)"),
            "{table}"
        );
        assert!(table.contains("fix: "), "{table}");
    }
}
