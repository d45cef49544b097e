//! The mesh end to end, on the lab: two clusters with overlapping pod CIDRs, one etcd and one
//! apiserver each, an agent per node with its eBPF programs and tunnel, clients in pods.
//! Each test brings up its own lab and takes it down when it ends, also when it fails.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clustermesh_e2e::{Answer, Mesh, by_cluster, eventually, unix_millis};
use clustermesh_lab::DeploySpec;
use clustermesh_lab::lab::Annotations;
use clustermesh_lab::mesh::ClusterPki;
use clustermesh_lab::state::Affinity;

fn echo(cluster: &str, replicas: u32) -> DeploySpec {
    DeploySpec::echo(cluster, "echo", replicas)
}

fn errors(answers: &[Answer]) -> Vec<&str> {
    answers
        .iter()
        .filter_map(|a| match a {
            Answer::Err(e) => Some(e.as_str()),
            Answer::Ok(_) => None,
        })
        .collect()
}

/// Deploys `echo` with `east` and `west` replicas and waits until both sides program all of
/// them. Returns the VIP (the same cluster IP in both clusters).
fn deploy_both(mesh: &mut Mesh, east: DeploySpec, west: DeploySpec) -> SocketAddr {
    let (east_n, west_n) = (east.replicas as usize, west.replicas as usize);
    let vip = mesh.deploy(&east);
    let west_vip = mesh.deploy(&west);
    assert_eq!(vip, west_vip, "both clusters allocate the first service IP");
    if east.shared && west.shared && east.affinity == Affinity::None {
        mesh.wait_programmed("east", vip, &[("local", east_n), ("west", west_n)]);
    }
    if east.shared && west.shared && west.affinity == Affinity::None {
        mesh.wait_programmed("west", vip, &[("local", west_n), ("east", east_n)]);
    }
    vip
}

#[test]
fn a_global_service_is_balanced_across_clusters_with_overlapping_pod_cidrs() {
    let Some(mut mesh) = Mesh::up() else { return };
    let vip = deploy_both(&mut mesh, echo("east", 2), echo("west", 2));

    // The pod CIDRs overlap: west's echo-0 has the IP of east's echo-0.
    let state = mesh.lab.state();
    let ip = |cluster: &str| state.pod(cluster, "default", "echo-0").unwrap().ip;
    assert_eq!(
        ip("east"),
        ip("west"),
        "the lab gives both echo-0 the same IP"
    );

    let client = mesh.client_pod("east");
    let answers = mesh.ask(&client, vip, 400);
    assert_eq!(errors(&answers), Vec::<&str>::new());
    let counts = by_cluster(&answers);
    let west = counts.get("west").copied().unwrap_or(0);
    // Two backends of four are in west: 50% ± 15%.
    assert!(
        (140..=260).contains(&west),
        "west answered {west} of 400 (expected 200 ± 60): {counts:?}"
    );
    // The west pod with east's echo-0 IP answered: reached through the tunnel, not locally.
    assert!(
        answers
            .iter()
            .any(|a| a.cluster() == Some("west") && a.pod() == Some("default/echo-0")),
        "west's echo-0 (same IP as east's echo-0) must answer through the tunnel"
    );

    // And the other way round.
    let client = mesh.client_pod("west");
    let answers = mesh.ask(&client, vip, 100);
    assert_eq!(errors(&answers), Vec::<&str>::new());
    assert_eq!(
        by_cluster(&answers).keys().collect::<Vec<_>>(),
        ["east", "west"]
    );
}

#[test]
fn affinity_local_fails_over_to_the_peer_without_a_failed_connection() {
    let Some(mut mesh) = Mesh::up() else { return };
    let mut east = echo("east", 2);
    east.affinity = Affinity::Local;
    let vip = deploy_both(&mut mesh, east, echo("west", 2));
    mesh.wait_programmed("east", vip, &[("local", 2)]);
    let client = mesh.client_pod("east");
    let answers = mesh.ask(&client, vip, 50);
    assert_eq!(
        by_cluster(&answers).into_iter().collect::<Vec<_>>(),
        [("east".to_owned(), 50)]
    );

    // The last local replicas go: their endpoints are withdrawn, then they stop.
    let traffic = mesh.connect_loop(&client, vip);
    std::thread::sleep(Duration::from_millis(500));
    let emptied_at = unix_millis();
    mesh.lab
        .scale("east", "default", "echo", 0)
        .expect("scaling east's echo to 0");
    mesh.wait_programmed("east", vip, &[("west", 2)]);
    std::thread::sleep(Duration::from_millis(500));
    let attempts = traffic.stop();

    let failed: Vec<_> = attempts
        .iter()
        .filter(|a| matches!(a.answer, Answer::Err(_)))
        .collect();
    assert!(
        failed.is_empty(),
        "connections failed during failover: {failed:?}"
    );
    let first_remote = attempts
        .iter()
        .find(|a| a.unix_millis >= emptied_at && a.answer.cluster() == Some("west"))
        .expect("west answers after the failover");
    let failover = first_remote.unix_millis - emptied_at;
    eprintln!(
        "failover: {failover} ms from withdrawing the last local endpoints to the first remote answer ({} connections, none failed)",
        attempts.len()
    );
    assert!(
        failover <= 200,
        "new connections must reach the peer within 200 ms; took {failover} ms"
    );

    // Local replicas back: traffic returns home.
    mesh.lab.scale("east", "default", "echo", 1).unwrap();
    mesh.wait_programmed("east", vip, &[("local", 1)]);
    let answers = mesh.ask(&client, vip, 20);
    assert_eq!(by_cluster(&answers).keys().collect::<Vec<_>>(), ["east"]);
}

#[test]
fn affinity_remote_prefers_the_peer_and_unshared_backends_stay_home() {
    let Some(mut mesh) = Mesh::up() else { return };
    // east: affinity remote, shared. west: shared=false.
    let mut east = echo("east", 2);
    east.affinity = Affinity::Remote;
    let mut west = echo("west", 2);
    west.shared = false;
    let vip = deploy_both(&mut mesh, east, west);

    // West shares nothing, so east's "remote" preference finds no remote backend and uses
    // its own; west uses its own and east's (east shares).
    mesh.wait_programmed("east", vip, &[("local", 2)]);
    mesh.wait_programmed("west", vip, &[("local", 2), ("east", 2)]);
    let east_client = mesh.client_pod("east");
    let answers = mesh.ask(&east_client, vip, 40);
    assert_eq!(by_cluster(&answers).keys().collect::<Vec<_>>(), ["east"]);
    let west_client = mesh.client_pod("west");
    let answers = mesh.ask(&west_client, vip, 100);
    assert_eq!(errors(&answers), Vec::<&str>::new());
    assert_eq!(
        by_cluster(&answers).keys().collect::<Vec<_>>(),
        ["east", "west"]
    );

    // West starts sharing: east's affinity sends everything there.
    mesh.lab
        .annotate(
            "west",
            "default",
            "echo",
            Annotations {
                shared: Some(true),
                ..Annotations::default()
            },
        )
        .expect("west starts sharing");
    mesh.wait_programmed("east", vip, &[("west", 2)]);
    let answers = mesh.ask(&east_client, vip, 40);
    assert_eq!(
        by_cluster(&answers).into_iter().collect::<Vec<_>>(),
        [("west".to_owned(), 40)]
    );
}

#[test]
fn a_dead_peer_etcd_keeps_its_backends_and_a_disconnect_removes_them() {
    let Some(mut mesh) = Mesh::up() else { return };
    let vip = deploy_both(&mut mesh, echo("east", 1), echo("west", 2));
    let client = mesh.client_pod("east");

    // West's etcd dies: east keeps west's last good backends, and they keep answering (the
    // tunnel goes node to node, not through etcd).
    mesh.lab
        .processes()
        .stop("west.etcd")
        .expect("stopping west's etcd");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        mesh.programmed("east", vip)
            .unwrap()
            .iter()
            .filter(|b| b.starts_with("west/"))
            .count(),
        2
    );
    let answers = mesh.ask(&client, vip, 60);
    assert_eq!(errors(&answers), Vec::<&str>::new());
    assert!(by_cluster(&answers).contains_key("west"));

    // West changes while its etcd is down; once it is back, east converges on exactly what
    // west publishes.
    mesh.lab
        .scale("west", "default", "echo", 1)
        .expect("scaling west");
    mesh.lab
        .processes()
        .start("west.etcd")
        .expect("starting west's etcd");
    mesh.wait_programmed("east", vip, &[("local", 1), ("west", 1)]);
    let west_pods: BTreeSet<String> = mesh
        .lab
        .deployment_pods("west", "default", "echo")
        .iter()
        .map(|p| format!("west/{}:{}", p.ip, p.port.unwrap()))
        .collect();
    let programmed: BTreeSet<String> = mesh
        .programmed("east", vip)
        .unwrap()
        .into_iter()
        .filter(|b| b.starts_with("west/"))
        .collect();
    assert_eq!(programmed, west_pods);

    // Disconnected: west's backends leave east's service.
    assert!(mesh.lab.disconnect("east", "west").unwrap());
    mesh.wait_programmed("east", vip, &[("local", 1)]);
    let answers = mesh.ask(&client, vip, 30);
    assert_eq!(
        by_cluster(&answers).into_iter().collect::<Vec<_>>(),
        [("east".to_owned(), 30)]
    );
}

/// The service's active backends are local (affinity local; west's are standby): while an
/// agent restarts its pinned programs and maps keep serving. Remote backends are another
/// matter: the tunnel lives in the agent, so connections to them fail while it restarts.
#[test]
fn agent_and_apiserver_restarts_fail_no_connection() {
    let Some(mut mesh) = Mesh::up() else { return };
    let mut east = echo("east", 2);
    east.affinity = Affinity::Local;
    let vip = deploy_both(&mut mesh, east, echo("west", 2));
    mesh.wait_programmed("east", vip, &[("local", 2)]);
    let client = mesh.client_pod("east");
    let traffic = mesh.connect_loop(&client, vip);
    std::thread::sleep(Duration::from_millis(500));

    let procs = mesh.lab.processes();
    for id in ["east.agent.east-1", "east.agent.east-2"] {
        procs.kill(id).expect("killing an agent");
    }
    std::thread::sleep(Duration::from_millis(300));
    mesh.wait_agents_ready();
    procs.kill("east.apiserver").expect("killing the apiserver");
    std::thread::sleep(Duration::from_secs(3));
    mesh.wait_programmed("east", vip, &[("local", 2)]);
    let attempts = traffic.stop();

    let failed: Vec<_> = attempts
        .iter()
        .filter(|a| matches!(a.answer, Answer::Err(_)))
        .collect();
    eprintln!("{} connections across the restarts", attempts.len());
    assert!(attempts.len() > 100, "the loop ran: {}", attempts.len());
    assert!(
        failed.is_empty(),
        "connections failed across restarts: {failed:?}"
    );
}

#[test]
fn a_dead_node_leaves_every_view() {
    let Some(mut mesh) = Mesh::up() else { return };
    let vip = deploy_both(&mut mesh, echo("east", 1), echo("west", 2));
    // The node dies: its agent and its pods stop. Its agent's liveness record expires with
    // the agent's lease, and east stops sending to the backend there.
    let stopped = mesh
        .lab
        .stop_node("west", "west-2")
        .expect("stopping west-2");
    assert!(
        stopped.iter().any(|id| id == "west.agent.west-2"),
        "{stopped:?}"
    );
    let started = Instant::now();
    mesh.wait_programmed("east", vip, &[("local", 1), ("west", 1)]);
    eprintln!(
        "west-2 left east's view {:?} after it died",
        started.elapsed()
    );
    let client = mesh.client_pod("east");
    let answers = mesh.ask(&client, vip, 60);
    assert_eq!(errors(&answers), Vec::<&str>::new());
    assert!(
        answers.iter().all(|a| !a.line().contains("node=west-2")),
        "nothing answers from the dead node"
    );
}

#[test]
fn the_tunnel_refuses_strangers_and_targets_that_are_not_shared_backends() {
    let Some(mut mesh) = Mesh::up() else { return };
    let vip = deploy_both(&mut mesh, echo("east", 1), echo("west", 1));
    let _ = vip;
    let state = mesh.lab.state().clone();
    let east_1 = state.node("east", "east-1").unwrap().clone();
    let west_1 = state.node("west", "west-1").unwrap().clone();
    let east_etcd = SocketAddr::from((east_1.ip, 2379));
    let east_echo = state.pod("east", "default", "echo-0").unwrap().clone();
    let east_echo = SocketAddr::from((east_echo.ip, east_echo.port.unwrap()));
    let tunnel = SocketAddr::from((east_1.ip, 4244));
    let client = mesh.client_pod("east");
    let east_pki = ClusterPki::new(&state.state_dir, "east");
    let west_pki = ClusterPki::new(&state.state_dir, "west");

    let tunnel_connect = |pki: &ClusterPki, cluster: &str, node: &str, target: SocketAddr| {
        let output = mesh
            .lab
            .pod_command(&client, env!("CARGO_BIN_EXE_mesh-client"))
            .args(["tunnel-connect", "--peer", &tunnel.to_string()])
            .args(["--target", &target.to_string()])
            .arg("--cert")
            .arg(pki.node_cert(node))
            .arg("--key")
            .arg(pki.node_key(node))
            .arg("--ca")
            .arg(pki.ca())
            .arg("--peer-ca")
            .arg(east_pki.ca())
            .args([
                "--peer-cluster",
                "east",
                "--trust-domain",
                "clustermesh.local",
            ])
            .args(["--cluster", cluster, "--node", node])
            .output()
            .expect("running mesh-client tunnel-connect");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };

    // A west node's real credentials (a compromised node, say) may reach a shared backend...
    let allowed = tunnel_connect(&west_pki, "west", &west_1.name, east_echo);
    assert_eq!(
        allowed, "status 200 -",
        "a shared backend is reachable: {allowed}"
    );
    // ...but nothing else: not east's etcd, not an arbitrary address.
    for target in [east_etcd, SocketAddr::from(([10, 96, 0, 1], 443))] {
        let refused = tunnel_connect(&west_pki, "west", &west_1.name, target);
        assert_eq!(
            refused, "status 403 not-shared-backend",
            "{target} must be refused"
        );
    }

    // A certificate from another CA that claims to be a west node fails the handshake.
    let impostor_dir = tempfile::tempdir().unwrap();
    let impostor = ClusterPki::new(impostor_dir.path(), "west");
    impostor
        .issue("west", std::slice::from_ref(&west_1.name))
        .unwrap();
    let refused = tunnel_connect(&impostor, "west", &west_1.name, east_echo);
    assert!(
        refused.starts_with("handshake-error"),
        "an unknown CA must fail the handshake: {refused}"
    );

    // Disconnected, west's real nodes are strangers too.
    mesh.lab.disconnect("east", "west").unwrap();
    eventually(
        "east's tunnel to stop trusting west",
        Duration::from_secs(15),
        || {
            let answer = tunnel_connect(&west_pki, "west", &west_1.name, east_echo);
            if answer.starts_with("handshake-error") {
                Ok(())
            } else {
                Err(answer)
            }
        },
    );
}

#[test]
fn a_peer_reads_the_other_clusters_etcd_with_read_only_credentials() {
    let Some(mesh) = Mesh::up() else { return };
    let state = mesh.lab.state().clone();
    let east_etcd = mesh.lab.etcd_endpoint("east").unwrap();
    // What west's apiserver mirrors east with: east's CA and a `remote` client certificate
    // issued by east's CA, from west's peers directory.
    let cert = clustermesh_lab::mesh::peer_client_cert(&state.state_dir, "west", "east");
    let key = clustermesh_lab::mesh::peer_client_key(&state.state_dir, "west", "east");
    let ca = ClusterPki::new(&state.state_dir, "east").ca();
    let etcdctl = |args: &[&str]| {
        let out = mesh
            .lab
            .node_command("west", "west-1", "etcdctl")
            .unwrap()
            .env("ETCDCTL_API", "3")
            .args(["--dial-timeout=2s", "--command-timeout=4s"])
            .arg(format!("--endpoints={east_etcd}"))
            .arg(format!("--cacert={}", ca.display()))
            .arg(format!("--cert={}", cert.display()))
            .arg(format!("--key={}", key.display()))
            .args(args)
            .output()
            .expect("running etcdctl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };

    // The published state is readable: east's node records are there.
    let (ok, out) = etcdctl(&["get", "--prefix", "--keys-only", "clustermesh/state/"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("clustermesh/state/nodes/v1/east/east-1"),
        "{out}"
    );
    // Nothing else: not east's local-only state, not its own mirror of others, and no writes.
    for prefix in ["clustermesh/local/", "clustermesh/cache/"] {
        let (ok, out) = etcdctl(&["get", "--prefix", "--keys-only", prefix]);
        assert!(
            !ok && out.contains("permission denied"),
            "{prefix} readable by a peer: {out}"
        );
    }
    let (ok, out) = etcdctl(&["put", "clustermesh/state/services/v1/east/x/y", "{}"]);
    assert!(
        !ok && out.contains("permission denied"),
        "a peer could write: {out}"
    );
}
