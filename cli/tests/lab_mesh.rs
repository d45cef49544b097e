//! The mesh commands against a lab, through the binary as a user types them: enable both
//! clusters, connect, `status --wait` reaches healthy, a global service answers from both
//! clusters, disconnect removes the peer's backends, disable stops what enable started; every
//! command twice is harmless. Root only; with CI=true a missing root or missing binaries fail
//! instead of skipping.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_clustermesh");

/// Skips (outside CI) or fails (in CI) when the test cannot run.
fn cannot_run(why: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("this test cannot run ({why}) and CI=true: it must not be skipped");
    }
    eprintln!("skipped: {why}");
    true
}

/// The apiserver and agent binaries: $CLUSTERMESH_{APISERVER,AGENT}_BIN, else next to the
/// clustermesh binary (a workspace build puts them there).
fn component(name: &str, env: &str) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(env) {
        return Some(PathBuf::from(path));
    }
    let path = Path::new(BIN).parent()?.join(name);
    path.is_file().then_some(path)
}

struct Lab {
    name: String,
    state: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Lab {
    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new(BIN)
            .args(args)
            .env("CLUSTERMESH_LAB", &self.name)
            .env("CLUSTERMESH_LAB_STATE_DIR", &self.state)
            .output()
            .unwrap();
        eprintln!(
            "$ clustermesh {} -> {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "clustermesh {} failed",
            args.join(" ")
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "clustermesh {} succeeded",
            args.join(" ")
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(err.trim().lines().count(), 1, "not one sentence: {err}");
        err
    }

    /// Which clusters answer the echo service from a new pod in east, over `tries` connects.
    fn answers(&self, tries: usize) -> Vec<String> {
        (0..tries)
            .map(|_| {
                let out = self.run(&[
                    "lab",
                    "exec",
                    "--cluster",
                    "east",
                    "--rm",
                    "--",
                    "bash",
                    "-c",
                    "exec 3<>/dev/tcp/10.96.0.10/8080; echo hi >&3; timeout 2 head -1 <&3",
                ]);
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("cluster=").map(str::to_string))
                    .unwrap_or_else(|| "error".into())
            })
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.run(&["lab", "down"]);
    }
}

fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn enable_connect_status_disconnect_disable_in_the_lab() {
    if !nix::unistd::Uid::effective().is_root() && cannot_run("needs root") {
        return;
    }
    let (Some(apiserver), Some(agent)) = (
        component("clustermesh-apiserver", "CLUSTERMESH_APISERVER_BIN"),
        component("clustermesh-agent", "CLUSTERMESH_AGENT_BIN"),
    ) else {
        if cannot_run("the clustermesh-apiserver and clustermesh-agent binaries are not built") {
            return;
        }
        unreachable!()
    };
    let tmp = tempfile::tempdir().unwrap();
    let lab = Lab {
        name: format!("m{:05x}", rand::random::<u32>() & 0xf_ffff),
        state: tmp.path().join("lab"),
        _tmp: tmp,
    };
    let topology = lab._tmp.path().join("topology.yaml");
    std::fs::write(
        &topology,
        "clusters:\n- name: east\n  nodes: 1\n- name: west\n  nodes: 1\n",
    )
    .unwrap();
    lab.ok(&[
        "lab",
        "up",
        "--topology",
        topology.to_str().unwrap(),
        "--apiserver-bin",
        apiserver.to_str().unwrap(),
        "--agent-bin",
        agent.to_str().unwrap(),
    ]);
    // `lab up` meshes its clusters; start from two unconnected ones.
    lab.ok(&[
        "disconnect",
        "--context",
        "lab:east",
        "--destination-context",
        "lab:west",
    ]);

    // Bad input: one sentence each.
    let e = lab.fails(&["status", "--context", "lab:nope"]);
    assert!(e.contains("has no cluster \"nope\""), "{e}");
    let e = lab.fails(&[
        "connect",
        "--context",
        "lab:east",
        "--destination-context",
        "lab:east",
    ]);
    assert!(e.contains("given twice"), "{e}");
    let e = lab.fails(&[
        "connect",
        "--context",
        "lab:east",
        "--destination-context",
        "west-k8s",
    ]);
    assert!(
        e.contains("cannot be connected to a Kubernetes cluster"),
        "{e}"
    );

    for cluster in ["lab:east", "lab:west"] {
        lab.ok(&["enable", "--context", cluster]);
        let out = lab.ok(&["enable", "--context", cluster]);
        assert!(out.contains("nothing changed"), "{out}");
    }
    lab.ok(&[
        "connect",
        "--context",
        "lab:east",
        "--destination-context",
        "lab:west",
    ]);
    let out = lab.ok(&[
        "connect",
        "--context",
        "lab:east",
        "--destination-context",
        "lab:west",
    ]);
    assert!(out.contains("nothing changed"), "{out}");
    let out = lab.ok(&[
        "status",
        "--context",
        "lab:east",
        "--context",
        "lab:west",
        "--wait",
        "--wait-duration",
        "90s",
    ]);
    assert!(out.contains("east (ID 1, lab:east): HEALTHY"), "{out}");
    assert!(
        out.contains("peer west  connected, synced; seen by 1/1 nodes"),
        "{out}"
    );

    let out = lab.ok(&[
        "troubleshoot",
        "--context",
        "lab:east",
        "--context",
        "lab:west",
    ]);
    assert!(out.starts_with("0 error(s)"), "{out}");
    assert!(
        out.contains("[tunnel] east: east/east-1 reaches west/west-1"),
        "{out}"
    );
    assert!(out.contains("[clock] east/west"), "{out}");

    // A global service with pods in both clusters answers from both.
    lab.ok(&[
        "lab",
        "deploy",
        "--cluster",
        "east",
        "--app",
        "echo",
        "--replicas",
        "1",
        "--global",
        "true",
    ]);
    lab.ok(&[
        "lab",
        "deploy",
        "--cluster",
        "west",
        "--app",
        "echo",
        "--replicas",
        "2",
        "--global",
        "true",
    ]);
    eventually(
        "west's backends to answer in east",
        Duration::from_secs(60),
        || lab.answers(6).iter().any(|c| c == "west"),
    );
    // An agent refreshes its per-frontend status at most once a second.
    eventually(
        "status to count west's backends programmed in east",
        Duration::from_secs(10),
        || {
            let json = lab.ok(&["status", "--context", "lab:east", "-o", "json"]);
            let report: serde_json::Value = serde_json::from_str(&json).unwrap();
            report[0]["peers"][0]["backends"].as_u64().unwrap_or(0) >= 2
        },
    );

    // Disable refuses while connected.
    let e = lab.fails(&["disable", "--context", "lab:east"]);
    assert!(e.contains("still connected to west"), "{e}");

    // Disconnect: west's backends go away; twice is harmless.
    lab.ok(&[
        "disconnect",
        "--context",
        "lab:east",
        "--destination-context",
        "lab:west",
    ]);
    let out = lab.ok(&[
        "disconnect",
        "--context",
        "lab:east",
        "--destination-context",
        "lab:west",
    ]);
    assert!(out.contains("nothing changed"), "{out}");
    eventually(
        "east's agent to drop west's backends",
        Duration::from_secs(30),
        || {
            // Not healthy while it settles: the exit code says so, the JSON is still printed.
            let out = lab.run(&["status", "--context", "lab:east", "-o", "json"]);
            let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            report[0]["nodes"][0]["backends"].get("west").is_none()
        },
    );
    assert!(lab.answers(6).iter().all(|c| c == "east"));

    // Disable stops what enable started; twice is harmless; status says what to do.
    lab.ok(&["disable", "--context", "lab:east"]);
    let out = lab.ok(&["disable", "--context", "lab:east"]);
    assert!(out.contains("nothing changed"), "{out}");
    let out = lab.run(&["status", "--context", "lab:east"]);
    assert!(!out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("NOT HEALTHY"), "{table}");
    assert!(
        table.contains("fix: start it: `clustermesh enable --context lab:east`"),
        "{table}"
    );
}
