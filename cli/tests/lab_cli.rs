//! `clustermesh lab …` end to end through the binary, as a user types it. Root only; with
//! CI=true a missing root fails instead of skipping. Traffic stays inside the lab's namespaces.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_clustermesh");

fn require_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("this test needs root and CI=true: it must not be skipped");
    }
    eprintln!("skipped: needs root");
    false
}

fn lab(name: &str, state: &Path, args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .arg("lab")
        .args(args)
        .env("CLUSTERMESH_LAB", name)
        .env("CLUSTERMESH_LAB_STATE_DIR", state)
        .output()
        .unwrap();
    eprintln!(
        "$ clustermesh lab {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `clustermesh lab down` on drop, so a failing test leaves nothing behind.
struct Down<'a>(&'a str, &'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        lab(self.0, self.1, &["down"]);
    }
}

#[test]
fn a_lab_session_through_the_cli() {
    if !require_root() {
        return;
    }
    let name = format!("c{:05x}", rand::random::<u32>() & 0xf_ffff);
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("lab");
    let _down = Down(&name, &state);

    let topo = tmp.path().join("topology.yaml");
    std::fs::write(
        &topo,
        "clusters:\n- name: alpha\n  nodes: 1\n- name: beta\n  nodes: 2\n",
    )
    .unwrap();
    let out = lab(
        &name,
        &state,
        &["up", "--etcd-only", "--topology", topo.to_str().unwrap()],
    );
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("NOT RUNNING IN THIS LAB"));

    let out = lab(
        &name,
        &state,
        &[
            "deploy",
            "--cluster",
            "beta",
            "--replicas",
            "2",
            "--affinity",
            "remote",
        ],
    );
    assert!(out.status.success());

    // A new pod in beta asks the echo pod on the other node.
    let out = lab(
        &name,
        &state,
        &[
            "exec",
            "--cluster",
            "beta",
            "--node",
            "beta-1",
            "--rm",
            "--",
            "bash",
            "-c",
            "exec 3<>/dev/tcp/10.244.1.2/8080 && cat <&3",
        ],
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "cluster=beta node=beta-2 pod=default/echo-1"
    );
    // The exit code of the command is passed on.
    let out = lab(
        &name,
        &state,
        &[
            "exec",
            "--cluster",
            "alpha",
            "--host",
            "--",
            "sh",
            "-c",
            "exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3));

    let out = lab(&name, &state, &["kill", "alpha.etcd"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("runs again as pid"));

    let out = lab(&name, &state, &["logs", "alpha.etcd", "--tail", "5"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5);

    // The "node dies" drill: beta-2's pod stops, and comes back with `start --node`.
    let out = lab(&name, &state, &["stop", "--node", "beta/beta-2"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("beta.pod.default.echo-1"));
    let out = lab(&name, &state, &["start", "--node", "beta/beta-2"]);
    assert!(out.status.success());
    let out = lab(&name, &state, &["stop", "--node", "beta-2"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("CLUSTER/NODE"));

    let out = lab(&name, &state, &["status", "-o", "json"]);
    assert!(out.status.success());
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["clusters"].as_array().unwrap().len(), 2);
    assert_eq!(status["services"][0]["affinity"], "remote");
    let etcd = status["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "alpha.etcd")
        .unwrap();
    assert_eq!(etcd["state"], "running");
    assert!(etcd["restarts"].as_u64().unwrap() >= 1);

    // Bad input names the flag or the thing that is wrong.
    let out = lab(
        &name,
        &state,
        &["scale", "--cluster", "beta", "--replicas", "many"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--replicas"));
    let out = lab(&name, &state, &["deploy", "--cluster", "gamma"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no cluster \"gamma\""));
    let out = lab(&name, &state, &["kill", "beta.agent.beta-1"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("started without the apiserver"));

    let out = lab(&name, &state, &["down"]);
    assert!(out.status.success());
    assert!(!state.exists());
    assert!(clustermesh_lab::netns::NetNs::list_with_prefix(&format!("cml-{name}-")).is_empty());
}
