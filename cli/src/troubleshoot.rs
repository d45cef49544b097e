//! `clustermesh troubleshoot`: goes further than `status`. Certificate expiry dates, clock
//! skew between clusters (from each cluster's heartbeat), tunnel reachability node to node,
//! per-node sync state, the most frequent validation errors; every finding says what to do.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Result;
use clap::Args;
use clustermesh_lab::Lab;
use clustermesh_lab::netns::NetNs;
use clustermesh_model::{ClusterId, ClusterName, ExpectedCluster, KeySchema};
use serde::Serialize;

use crate::kube_target::KubeTarget;
use crate::manifests::{self, DEFAULT_NAMESPACE, TUNNEL_PORT};
use crate::pki::CertInfo;
use crate::status::{ClusterReport, Output};
use crate::target::{ContextName, TargetOptions};

/// Certificates that expire sooner than this are a warning.
const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);
/// More clock difference than this is a warning (certificates, lease and heartbeat ages).
const SKEW_WARNING: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub struct TroubleshootArgs {
    #[command(flatten)]
    pub targets: TargetOptions,
    /// The cluster(s): kubeconfig contexts or lab:<cluster>; repeat for several (clock skew
    /// and tunnel reachability are checked between them) [default: the current context].
    #[arg(long)]
    pub context: Vec<String>,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Namespace the mesh runs in (Kubernetes contexts).
    #[arg(long, default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Ok,
    Warning,
    Error,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// certificates, clock, tunnel, sync, validation, status
    pub check: &'static str,
    pub cluster: String,
    pub what: String,
    /// Empty when nothing is to be done.
    pub fix: String,
}

fn finding(
    severity: Severity,
    check: &'static str,
    cluster: &str,
    what: impl Into<String>,
    fix: impl Into<String>,
) -> Finding {
    Finding {
        severity,
        check,
        cluster: cluster.to_string(),
        what: what.into(),
        fix: fix.into(),
    }
}

fn date(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// One certificate's expiry as a finding.
pub fn certificate_finding(cluster: &str, what: &str, pem: &str, renew: &str) -> Finding {
    let now = SystemTime::now();
    match CertInfo::parse(pem, what) {
        Err(e) => finding(
            Severity::Error,
            "certificates",
            cluster,
            e.to_string(),
            renew,
        ),
        Ok(info) if info.not_after <= now => finding(
            Severity::Error,
            "certificates",
            cluster,
            format!(
                "{what} (CN {}) EXPIRED on {}",
                info.common_name,
                date(info.not_after)
            ),
            renew,
        ),
        Ok(info) if info.not_before > now => finding(
            Severity::Error,
            "certificates",
            cluster,
            format!(
                "{what} (CN {}) is not valid before {}: this machine's clock, or the issuer's, is wrong",
                info.common_name,
                date(info.not_before)
            ),
            "fix the clock (NTP) on the machine whose time is off",
        ),
        Ok(info) if info.remaining(now) < EXPIRY_WARNING => finding(
            Severity::Warning,
            "certificates",
            cluster,
            format!(
                "{what} (CN {}) expires on {} (in {} days)",
                info.common_name,
                date(info.not_after),
                info.remaining(now).as_secs() / 86400
            ),
            renew,
        ),
        Ok(info) => finding(
            Severity::Ok,
            "certificates",
            cluster,
            format!(
                "{what} (CN {}) valid until {}",
                info.common_name,
                date(info.not_after)
            ),
            "",
        ),
    }
}

/// Agents' per-node sync state and the most frequent validation errors, from a status report.
fn from_status(report: &ClusterReport, findings: &mut Vec<Finding>) {
    let c = &report.cluster;
    for problem in &report.problems {
        findings.push(finding(
            Severity::Error,
            "status",
            c,
            &problem.what,
            &problem.fix,
        ));
    }
    for node in &report.nodes {
        let unsynced: Vec<&str> = node
            .peers
            .iter()
            .filter(|(_, synced)| !**synced)
            .map(|(p, _)| p.as_str())
            .collect();
        let errors: Vec<String> = node.raw["last_pass"]["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str().map(str::to_string))
            .collect();
        let (severity, what) = if !node.reachable {
            (
                Severity::Error,
                format!("node {}: no status from the agent", node.node),
            )
        } else if !node.ready || !unsynced.is_empty() {
            (
                Severity::Warning,
                format!(
                    "node {}: ready {}, peers not synced: {}",
                    node.node,
                    node.ready,
                    if unsynced.is_empty() {
                        "none".to_string()
                    } else {
                        unsynced.join(", ")
                    }
                ),
            )
        } else {
            (
                Severity::Ok,
                format!(
                    "node {}: ready, {} peer(s) synced, {} programming pass(es)",
                    node.node,
                    node.peers.len(),
                    node.raw["passes"].as_u64().unwrap_or(0)
                ),
            )
        };
        let fix = if severity == Severity::Ok {
            ""
        } else {
            "check the agent's log on that node; it syncs from the local etcd only"
        };
        findings.push(finding(severity, "sync", c, what, fix));
        if !errors.is_empty() {
            findings.push(finding(
                Severity::Error,
                "sync",
                c,
                format!(
                    "node {}: the last programming pass failed: {}",
                    node.node,
                    errors.join("; ")
                ),
                "read the agent's log; eBPF programming errors usually mean a missing capability or bpffs mount",
            ));
        }
    }
    // Validation errors: what the apiserver refused from each peer, and what agents refused.
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for peer in &report.peers {
        for (reason, count) in &peer.rejected {
            *reasons
                .entry(format!("from {}: {reason}", peer.name))
                .or_default() += count;
        }
    }
    for node in &report.nodes {
        for (reason, count) in &node.rejected {
            *reasons
                .entry(format!("read by agent {}: {reason}", node.node))
                .or_default() += count;
        }
    }
    let mut top: Vec<(String, u64)> = reasons.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    if top.is_empty() {
        findings.push(finding(
            Severity::Ok,
            "validation",
            c,
            "no value refused by validation",
            "",
        ));
    }
    for (reason, count) in top.into_iter().take(5) {
        findings.push(finding(
            Severity::Warning,
            "validation",
            c,
            format!("{count} value(s) refused, {reason}"),
            "the writer publishes values this cluster does not accept: check that both run the same clustermesh version and that cluster names and IDs match what `connect` configured",
        ));
    }
}

/// The age of a cluster's heartbeat by this machine's clock (negative: written in our future),
/// read from inside the lab namespace that reaches its etcd.
fn lab_heartbeat_age(lab: &Lab, cluster: &str) -> Result<i64, String> {
    let plan = lab.cluster(cluster).map_err(|e| e.to_string())?;
    let netns = lab
        .node_netns(cluster, &plan.nodes[0].name)
        .map_err(|e| e.to_string())?;
    let mut config = lab.etcd_config(cluster).map_err(|e| e.to_string())?;
    config.connect_timeout = Duration::from_secs(3);
    let expected = ExpectedCluster {
        name: ClusterName::new(cluster).map_err(|e| e.to_string())?,
        id: ClusterId::new(u32::from(plan.id), Default::default()).map_err(|e| e.to_string())?,
        mesh: Default::default(),
    };
    let ns = NetNs::open(&netns).map_err(|e| e.to_string())?;
    ns.run(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let mut client = clustermesh_store::connect(&config)
                .await
                .map_err(|e| e.to_string())?;
            let key = KeySchema::default().heartbeat();
            match clustermesh_store::read_heartbeat(&mut client, &key, &expected).await {
                Ok(Some(heartbeat)) => Ok(heartbeat.age_millis),
                Ok(None) => Err(format!("no heartbeat at {key} yet")),
                Err(e) => Err(e.to_string()),
            }
        })
    })
    .map_err(|e| e.to_string())?
}

/// Clock findings from heartbeat ages (lab) or API server clocks (Kubernetes), in millis
/// relative to this machine: positive = behind us.
fn clock_findings(offsets: &[(String, Result<i64, String>)], interval_ms: i64) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut known = Vec::new();
    for (cluster, offset) in offsets {
        match offset {
            Err(e) => findings.push(finding(
                Severity::Warning,
                "clock",
                cluster,
                format!("cannot measure its clock: {e}"),
                "is the apiserver running (it writes the heartbeat)?",
            )),
            Ok(ms) => known.push((cluster.clone(), *ms)),
        }
    }
    for (cluster, ms) in &known {
        if *ms > interval_ms + 10_000 {
            findings.push(finding(
                Severity::Warning,
                "clock",
                cluster,
                format!(
                    "its heartbeat is {}s old (written every {}s): the apiserver is not writing, or its clock is behind",
                    ms / 1000,
                    interval_ms / 1000
                ),
                "check the apiserver's log, then the node's clock (NTP)",
            ));
        }
    }
    for (i, (a, ma)) in known.iter().enumerate() {
        for (b, mb) in &known[i + 1..] {
            // A heartbeat's age includes up to one interval of waiting; only the difference
            // beyond that is skew.
            let diff = (ma - mb).unsigned_abs();
            let skew = diff.saturating_sub(interval_ms.unsigned_abs());
            let (severity, fix) = if Duration::from_millis(skew) > SKEW_WARNING {
                (
                    Severity::Warning,
                    "sync the clocks (NTP/chrony) of both clusters' nodes: skew breaks certificate validity and confuses heartbeat and lease ages",
                )
            } else {
                (Severity::Ok, "")
            };
            findings.push(finding(
                severity,
                "clock",
                &format!("{a}/{b}"),
                format!(
                    "clock difference between {a} and {b}: at most {:.1}s (heartbeats differ by {:.1}s, written every {}s)",
                    skew as f64 / 1000.0,
                    diff as f64 / 1000.0,
                    interval_ms / 1000
                ),
                fix,
            ));
        }
    }
    findings
}

/// TCP connect from every node of `from` to every node of `to` on the tunnel port.
fn lab_tunnel_findings(lab: &Lab, from: &str, to: &str) -> Vec<Finding> {
    let mut findings = Vec::new();
    let (Ok(src), Ok(dst)) = (lab.cluster(from), lab.cluster(to)) else {
        return findings;
    };
    for a in &src.nodes {
        let Ok(netns) = lab.node_netns(from, &a.name) else {
            continue;
        };
        for b in &dst.nodes {
            let addr = SocketAddr::from((b.ip, TUNNEL_PORT));
            let result = NetNs::open(&netns)
                .map_err(|e| e.to_string())
                .and_then(|ns| {
                    ns.run(move || {
                        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    })
                    .map_err(|e| e.to_string())?
                });
            findings.push(match result {
                Ok(()) => finding(
                    Severity::Ok,
                    "tunnel",
                    from,
                    format!("{from}/{} reaches {to}/{} at {addr}", a.name, b.name),
                    "",
                ),
                Err(e) => finding(
                    Severity::Error,
                    "tunnel",
                    from,
                    format!("{from}/{} cannot reach the tunnel of {to}/{} at {addr}: {e}", a.name, b.name),
                    format!(
                        "is the agent on {to}/{} running, and is TCP {TUNNEL_PORT} open between the clusters' nodes (firewall, security groups)?",
                        b.name
                    ),
                ),
            });
        }
    }
    findings
}

fn lab_findings(lab: &Lab, clusters: &[String]) -> Result<Vec<Finding>> {
    let mut findings = Vec::new();
    let dir = &lab.state().state_dir;
    for cluster in clusters {
        let renew = "the lab issues its certificates at `lab up`: run `clustermesh lab down` and `lab up` again";
        use clustermesh_lab::mesh;
        let pki = mesh::ClusterPki::new(dir, cluster);
        let mut files = vec![
            ("cluster CA".to_string(), pki.ca()),
            (
                "etcd server certificate".to_string(),
                pki.etcd_server_cert(),
            ),
            (
                "etcd client certificate of the apiserver".to_string(),
                pki.etcd_client_cert(mesh::APISERVER_USER),
            ),
        ];
        for node in &lab.cluster(cluster)?.nodes {
            files.push((
                format!("tunnel certificate of node {}", node.name),
                pki.node_cert(&node.name),
            ));
            files.push((
                format!("etcd client certificate of the agent on {}", node.name),
                pki.etcd_client_cert(&mesh::agent_user(&node.name)),
            ));
        }
        for peer in lab.peers_of(cluster)? {
            files.push((
                format!("etcd client certificate for reading {peer}"),
                mesh::peer_client_cert(dir, cluster, &peer),
            ));
        }
        for (what, path) in files {
            match std::fs::read_to_string(&path) {
                Ok(pem) => findings.push(certificate_finding(cluster, &what, &pem, renew)),
                Err(e) => findings.push(finding(
                    Severity::Error,
                    "certificates",
                    cluster,
                    format!("cannot read {what} at {}: {e}", path.display()),
                    renew,
                )),
            }
        }
        let report = crate::status::collect_lab(lab, cluster)?;
        from_status(&report, &mut findings);
    }
    // Clocks: every cluster of the lab shares this machine's clock, so this mostly checks
    // that heartbeats are fresh; on real clusters the same numbers show skew.
    let offsets: Vec<(String, Result<i64, String>)> = clusters
        .iter()
        .map(|c| (c.clone(), lab_heartbeat_age(lab, c)))
        .collect();
    findings.extend(clock_findings(&offsets, 10_000));
    for from in clusters {
        for to in lab.peers_of(from)? {
            findings.extend(lab_tunnel_findings(lab, from, &to));
        }
    }
    Ok(findings)
}

/// The API server's clock against ours, from its `Date` header (seconds resolution).
async fn kube_clock_offset(target: &KubeTarget) -> Result<i64, String> {
    let date = target.server_date().await.map_err(|e| e.to_string())?;
    let now = SystemTime::now();
    Ok(match now.duration_since(date) {
        Ok(behind) => behind.as_millis() as i64,
        Err(ahead) => -(ahead.duration().as_millis() as i64),
    })
}

async fn kube_findings(target: &KubeTarget, namespace: &str) -> Result<Vec<Finding>> {
    let mut findings = Vec::new();
    let report = crate::status::collect_kube(target, namespace).await?;
    let c = report.cluster.clone();
    let renew = format!(
        "run `clustermesh enable --context {}`: it re-issues certificates within a tenth of their validity of expiry",
        target.context
    );
    let secrets = [
        (manifests::CA_KEY_SECRET, vec!["ca.crt"]),
        (manifests::ETCD_SERVER_SECRET, vec!["tls.crt"]),
        (manifests::APISERVER_SECRET, vec!["tls.crt"]),
    ];
    for (secret, keys) in secrets {
        let data = target
            .secret_data(namespace, secret)
            .await?
            .unwrap_or_default();
        for key in keys {
            if let Some(pem) = data.get(key) {
                findings.push(certificate_finding(
                    &c,
                    &format!("{secret}/{key}"),
                    pem,
                    &renew,
                ));
            }
        }
    }
    let agents = target
        .secret_data(namespace, manifests::AGENT_SECRET)
        .await?
        .unwrap_or_default();
    for (key, pem) in agents
        .iter()
        .filter(|(k, _)| k.ends_with(".crt") && *k != "ca.crt")
    {
        findings.push(certificate_finding(
            &c,
            &format!("{}/{key}", manifests::AGENT_SECRET),
            pem,
            &renew,
        ));
    }
    let peers = target
        .secret_data(namespace, manifests::PEERS_SECRET)
        .await?
        .unwrap_or_default();
    for (key, pem) in peers.iter().filter(|(k, _)| k.ends_with(".crt")) {
        findings.push(certificate_finding(
            &c,
            &format!("{}/{key}", manifests::PEERS_SECRET),
            pem,
            &format!(
                "run `clustermesh connect` again between {} and that peer: it issues a new client certificate",
                target.context
            ),
        ));
    }
    from_status(&report, &mut findings);
    findings.push(finding(
        Severity::Warning,
        "tunnel",
        &c,
        "tunnel reachability node to node is not checked for Kubernetes clusters (it needs a pod on each node)",
        format!("check that TCP {TUNNEL_PORT} is open between the clusters' nodes"),
    ));
    Ok(findings)
}

pub fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    let errors = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .count();
    let warnings = findings
        .iter()
        .filter(|f| f.severity == Severity::Warning)
        .count();
    out.push_str(&format!(
        "{errors} error(s), {warnings} warning(s), {} check(s) fine\n",
        findings.len() - errors - warnings
    ));
    let mut sorted: Vec<&Finding> = findings.iter().collect();
    sorted.sort_by_key(|f| std::cmp::Reverse(f.severity));
    for f in sorted {
        let mark = match f.severity {
            Severity::Ok => "ok  ",
            Severity::Warning => "WARN",
            Severity::Error => "FAIL",
        };
        out.push_str(&format!("{mark} [{}] {}: {}\n", f.check, f.cluster, f.what));
        if !f.fix.is_empty() {
            out.push_str(&format!("       fix: {}\n", f.fix));
        }
    }
    out
}

pub async fn troubleshoot(options: &TargetOptions, args: &TroubleshootArgs) -> Result<ExitCode> {
    let contexts: Vec<ContextName> = if args.context.is_empty() {
        vec![ContextName::Kube(None)]
    } else {
        args.context
            .iter()
            .map(|c| ContextName::parse(Some(c)))
            .collect()
    };
    let labs: Vec<String> = contexts
        .iter()
        .filter_map(|c| match c {
            ContextName::Lab(c) => Some(c.clone()),
            ContextName::Kube(_) => None,
        })
        .collect();
    let mut findings = Vec::new();
    if !labs.is_empty() {
        let options = options.clone();
        findings.extend(
            tokio::task::spawn_blocking(move || -> Result<Vec<Finding>> {
                let lab = options.open_lab()?;
                let mut clusters = Vec::new();
                for c in &labs {
                    clusters.push(options.lab_cluster(&lab, c)?.to_string());
                }
                lab_findings(&lab, &clusters)
            })
            .await??,
        );
    }
    let mut offsets = Vec::new();
    for context in &contexts {
        if let ContextName::Kube(context) = context {
            let target = options.kube(context.as_deref()).await?;
            findings.extend(kube_findings(&target, &args.namespace).await?);
            offsets.push((target.context.clone(), kube_clock_offset(&target).await));
        }
    }
    if !offsets.is_empty() {
        // API server clocks are read directly: no heartbeat interval to allow for.
        for (cluster, offset) in &offsets {
            if let Ok(ms) = offset
                && Duration::from_millis(ms.unsigned_abs()) > SKEW_WARNING
            {
                findings.push(finding(
                    Severity::Warning,
                    "clock",
                    cluster,
                    format!(
                        "its API server's clock is {:.0}s {} this machine's",
                        ms.unsigned_abs() as f64 / 1000.0,
                        if *ms > 0 { "behind" } else { "ahead of" }
                    ),
                    "sync the clocks (NTP/chrony) of the cluster's nodes and of this machine",
                ));
            }
        }
        findings.extend(clock_findings(&offsets, 1000));
    }
    let failed = findings.iter().any(|f| f.severity == Severity::Error);
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&findings)?),
        Output::Table => print!("{}", render(&findings)),
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// For tests and the lab: certificate findings of a PEM file.
#[cfg(test)]
fn file_finding(cluster: &str, path: &std::path::Path) -> Finding {
    let pem = std::fs::read_to_string(path).unwrap();
    certificate_finding(cluster, "test", &pem, "renew")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_skew_beyond_the_heartbeat_interval_is_a_warning() {
        let offsets = vec![
            ("east".to_string(), Ok(3_000)),
            ("west".to_string(), Ok(-9_000)),
        ];
        let findings = clock_findings(&offsets, 10_000);
        let pair = findings.iter().find(|f| f.cluster == "east/west").unwrap();
        assert_eq!(pair.severity, Severity::Ok, "{pair:?}");
        let offsets = vec![
            ("east".to_string(), Ok(3_000)),
            ("west".to_string(), Ok(-19_000)),
        ];
        let findings = clock_findings(&offsets, 10_000);
        let pair = findings.iter().find(|f| f.cluster == "east/west").unwrap();
        assert_eq!(pair.severity, Severity::Warning, "{pair:?}");
        assert!(pair.what.contains("at most 12.0s"), "{pair:?}");
    }

    #[test]
    fn certificates_near_or_past_expiry_are_findings() {
        let ca = crate::pki::Ca::generate("east").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, &ca.pem.cert).unwrap();
        let f = file_finding("east", &path);
        assert_eq!(f.severity, Severity::Ok);
        assert!(f.what.contains("valid until"), "{f:?}");
    }
}
