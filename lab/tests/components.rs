//! The places later components plug into: apiserver and agent process specs, and `up`
//! cleaning up after itself when it fails. Root only.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use clustermesh_lab::netns::NetNs;
use clustermesh_lab::state::ComponentBinaries;
use clustermesh_lab::topology::{ClusterSpec, Topology};
use clustermesh_lab::{Lab, LabError};
use common::{TestLab, eventually, require_root, test_config, unique};

#[test]
fn up_that_fails_removes_what_it_built() {
    if !require_root() {
        return;
    }
    let name = unique("f");
    let tmp = tempfile::tempdir().unwrap();
    let state_dir = tmp.path().join(&name);
    let mut config = test_config(&name, &state_dir);
    // An "etcd" that exits at once never becomes healthy.
    config.etcd_bin = "/bin/false".into();
    config.ready_timeout = Duration::from_secs(2);
    let topology = Topology {
        clusters: vec![ClusterSpec::new("solo", 1)],
        connect: true,
    };
    let result = Lab::up(&config, &topology);
    let guard_down = || clustermesh_lab::down(&name, &state_dir);
    match result {
        Err(LabError::NotReady { what, log, .. }) => {
            assert!(what.contains("etcd of cluster solo"), "{what}");
            assert!(
                log.exists(),
                "the log {} is kept for the operator",
                log.display()
            );
        }
        other => {
            let _ = guard_down();
            panic!("expected NotReady, got {other:?}");
        }
    }
    assert_eq!(
        NetNs::list_with_prefix(&format!("cml-{name}-")),
        Vec::<String>::new()
    );
    let cgroup = clustermesh_lab::cgroup::cgroup2_root()
        .unwrap()
        .join("clustermesh-lab")
        .join(&name);
    assert!(!cgroup.exists(), "{} is left", cgroup.display());
    assert!(!state_dir.join("lab.json").exists());
    guard_down().unwrap();
}

#[test]
fn apiserver_and_agents_run_on_their_nodes_with_the_lab_environment() {
    if !require_root() {
        return;
    }
    // A stand-in binary: records its environment and network namespace, then stays up.
    let tmp = tempfile::tempdir().unwrap();
    let script = tmp.path().join("component.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n\
         out=\"$CLUSTERMESH_LAB_STATE_DIR/seen-$(basename \"$0\")-$CLUSTERMESH_CLUSTER_NAME-$CLUSTERMESH_NODE_NAME\"\n\
         { env; echo netns=$(ip netns identify $$); } > \"$out.tmp\" && mv \"$out.tmp\" \"$out\"\n\
         exec sleep 600\n",
    )
    .unwrap();
    let agent = tmp.path().join("agent");
    let apiserver = tmp.path().join("apiserver");
    for link in [&agent, &apiserver] {
        std::fs::copy(&script, link).unwrap();
        std::process::Command::new("chmod")
            .arg("+x")
            .arg(link)
            .status()
            .unwrap();
    }
    let t = TestLab::up_with(None, |config| {
        config.binaries = ComponentBinaries {
            apiserver: Some(apiserver.clone()),
            agent: Some(agent.clone()),
        };
    });
    let status = t.lab.status();
    assert!(
        status.not_available.is_empty(),
        "{:?}",
        status.not_available
    );

    let seen = |kind: &str, cluster: &str, node: &str| -> String {
        let path: PathBuf = t.state_dir().join(format!("seen-{kind}-{cluster}-{node}"));
        eventually(
            &format!("{kind} on {cluster}/{node} to start"),
            Duration::from_secs(10),
            || std::fs::read_to_string(&path).ok(),
        )
    };
    for c in &status.clusters {
        for n in &c.nodes {
            let env = seen("agent", &c.name, &n.name);
            assert!(env.contains(&format!("netns={}", n.netns)), "{env}");
            assert!(env.contains(&format!("CLUSTERMESH_ETCD_ENDPOINTS={}", c.etcd_endpoint)));
            // The agent's etcd client certificate is its own: CN agent-<node>, its etcd user.
            let pki = clustermesh_lab::mesh::ClusterPki::new(t.state_dir(), &c.name);
            assert!(
                env.contains(&format!(
                    "CLUSTERMESH_ETCD_CERT={}",
                    pki.etcd_client_cert(&format!("agent-{}", n.name)).display()
                )),
                "{env}"
            );
            assert!(env.contains(&format!("CLUSTERMESH_ETCD_CA={}", pki.ca().display())));
            assert!(env.contains(&format!("CLUSTERMESH_NODE_IP={}", n.ip)));
            assert!(env.contains(&format!(
                "CLUSTERMESH_MANIFESTS_DIR={}",
                c.manifests_dir.display()
            )));
            assert!(env.contains(&format!("CLUSTERMESH_NODE_CGROUP={}", n.cgroup.display())));
            // The agent runs in the node's cgroup subtree.
            let agent_row = status
                .processes
                .iter()
                .find(|p| p.id == format!("{}.agent.{}", c.name, n.name))
                .unwrap();
            let pid = agent_row.pid.unwrap();
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
            assert!(
                cg.contains(&format!(
                    "/clustermesh-lab/{}/{}/{}/agent",
                    t.name, c.name, n.name
                )),
                "{cg}"
            );
        }
        let env = seen("apiserver", &c.name, &c.nodes[0].name);
        assert!(env.contains(&format!("CLUSTERMESH_CLUSTER_NAME={}", c.name)));
        assert!(env.contains(&format!("CLUSTERMESH_CLUSTER_ID={}", c.id)));
    }
    let ids: Vec<_> = status.processes.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(
        ids.iter().filter(|id| id.contains(".agent.")).count(),
        4,
        "{ids:?}"
    );
    assert_eq!(
        ids.iter().filter(|id| id.ends_with(".apiserver")).count(),
        2,
        "{ids:?}"
    );
}
