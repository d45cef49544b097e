//! A whole lab on this machine: topology, reachability, etcd, supervision, teardown.
//! Root only (with CI=true a missing root fails instead of skipping). Traffic goes only to
//! addresses inside the namespaces these tests create.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use clustermesh_lab::DeploySpec;
use clustermesh_lab::echo::{Identity, ask_tcp, ask_udp};
use clustermesh_lab::netns::NetNs;
use common::{TestLab, eventually, require_root};

const T: Duration = Duration::from_secs(2);

/// Asks an echo server at `addr` from inside network namespace `netns`.
fn ask_from(netns: &str, addr: SocketAddr) -> std::io::Result<String> {
    NetNs::open(netns)
        .unwrap()
        .run(move || ask_tcp(addr, T))
        .unwrap()
}

#[test]
fn two_clusters_come_up_with_overlapping_pod_cidrs_and_healthy_etcd() {
    if !require_root() {
        return;
    }
    let t = TestLab::up(None);
    let status = t.lab.status();
    assert_eq!(status.clusters.len(), 2);
    let (east, west) = (&status.clusters[0], &status.clusters[1]);
    assert_eq!((east.name.as_str(), west.name.as_str()), ("east", "west"));
    assert_eq!(
        east.pod_cidr, west.pod_cidr,
        "the default pod CIDRs overlap"
    );
    assert_eq!(east.nodes[0].pod_cidr, west.nodes[0].pod_cidr);
    assert_ne!(east.node_cidr, west.node_cidr);

    // Namespaces, cgroups and manifests of every node exist.
    let prefix = t.lab.naming().netns_prefix();
    let namespaces = NetNs::list_with_prefix(&prefix);
    assert_eq!(namespaces.len(), 5, "wan + 4 nodes: {namespaces:?}");
    for c in &status.clusters {
        for n in &c.nodes {
            assert!(NetNs::exists(&n.netns), "{}", n.netns);
            assert!(
                n.cgroup.join("cgroup.procs").exists(),
                "{}",
                n.cgroup.display()
            );
            let node_yaml = c.manifests_dir.join(format!("node-{}.yaml", n.name));
            let node: k8s_openapi::api::core::v1::Node =
                serde_yaml_ng::from_str(&std::fs::read_to_string(&node_yaml).unwrap()).unwrap();
            assert_eq!(
                node.spec.unwrap().pod_cidr.as_deref(),
                Some(n.pod_cidr.as_str())
            );
        }
    }
    // The node's pod CIDR is really configured: its pods' gateway is on the node's lo.
    let lo = NetNs::open(&east.nodes[1].netns)
        .unwrap()
        .ip(&["-o", "addr", "show", "dev", "lo"])
        .unwrap();
    assert!(lo.contains("10.244.1.1/32"), "{lo}");

    // Each cluster's etcd answers, through etcdctl from a node of the cluster, over mTLS with
    // a client certificate from the cluster's CA.
    for c in &status.clusters {
        assert!(c.etcd_healthy, "etcd of {} is not healthy", c.name);
        assert!(
            c.etcd_endpoint.starts_with("https://"),
            "{}",
            c.etcd_endpoint
        );
        let config = t.lab.etcd_config(&c.name).unwrap();
        assert_eq!(config.endpoints, std::slice::from_ref(&c.etcd_endpoint));
        let tls = config.tls.unwrap();
        let etcdctl = |args: &[String]| {
            t.lab
                .node_command(&c.name, &c.nodes[1].name, "etcdctl")
                .unwrap()
                .env("ETCDCTL_API", "3")
                .args(["--dial-timeout=2s", "--command-timeout=4s"])
                .args(args)
                .output()
                .unwrap()
        };
        let put = |endpoint: &str| -> Vec<String> {
            vec![
                "--endpoints".into(),
                endpoint.into(),
                "put".into(),
                "lab-test".into(),
                c.name.clone(),
            ]
        };
        let cacert = format!("--cacert={}", tls.ca.display());
        let mut with_cert = vec![
            cacert.clone(),
            format!("--cert={}", tls.cert.display()),
            format!("--key={}", tls.key.display()),
        ];
        with_cert.extend(put(&c.etcd_endpoint));
        let out = etcdctl(&with_cert);
        assert!(
            out.status.success(),
            "etcdctl put: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        // A client without a certificate is refused: over TLS (trusting the CA)...
        let mut no_cert = vec![cacert];
        no_cert.extend(put(&c.etcd_endpoint));
        let out = etcdctl(&no_cert);
        assert!(
            !out.status.success(),
            "etcd of {} accepted a TLS client without a certificate",
            c.name
        );
        // ...and in plain HTTP.
        let plain = c.etcd_endpoint.replace("https://", "http://");
        let out = etcdctl(&put(&plain));
        assert!(
            !out.status.success(),
            "etcd of {} accepted a plain HTTP client",
            c.name
        );
    }

    // The components that are not built yet are reported as such, not pretended.
    assert!(
        status
            .not_available
            .iter()
            .any(|s| s.starts_with("apiserver"))
    );
    assert!(status.not_available.iter().any(|s| s.starts_with("agent")));
    let ids: Vec<_> = status.processes.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, ["east.etcd", "west.etcd"]);
    assert!(status.supervisor_pid.is_some());
}

#[test]
fn pods_reach_each_other_inside_a_cluster_across_nodes() {
    if !require_root() {
        return;
    }
    let mut t = TestLab::up(None);
    let pods = t.lab.deploy(&DeploySpec::echo("east", "echo", 2)).unwrap();
    assert_eq!(pods.len(), 2);
    assert_ne!(
        pods[0].node, pods[1].node,
        "replicas are spread over the nodes"
    );
    let client = t
        .lab
        .create_pod("east", Some("east-1"), "default", None)
        .unwrap();

    for pod in &pods {
        let addr = SocketAddr::from((pod.ip, pod.port.unwrap()));
        let answer = ask_from(&client.netns, addr)
            .unwrap_or_else(|e| panic!("client on east-1 → {} on {}: {e}", pod.ip, pod.node));
        let id = Identity::parse(&answer).unwrap();
        assert_eq!(id.cluster, "east");
        assert_eq!(id.node, pod.node);
        assert_eq!(id.pod, format!("default/{}", pod.name));
        let udp = NetNs::open(&client.netns)
            .unwrap()
            .run(move || ask_udp(addr, T))
            .unwrap()
            .unwrap();
        assert_eq!(udp, answer);
    }

    // `exec` runs a command inside the client pod: it sees its own address.
    let out = t
        .lab
        .pod_command(&client, "ip")
        .args(["-o", "-4", "addr"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{}/32", client.ip)));

    // The manifests name the pods and the service with the annotations.
    let dir = t.lab.manifests_dir("east").unwrap();
    let slice: k8s_openapi::api::discovery::v1::EndpointSlice = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dir.join("endpointslice-default-echo.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(slice.endpoints.unwrap().len(), 2);
    let svc: k8s_openapi::api::core::v1::Service = serde_yaml_ng::from_str(
        &std::fs::read_to_string(dir.join("service-default-echo.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        svc.metadata.annotations.unwrap()["clustermesh.io/global"],
        "true"
    );
    assert!(dir.join("pod-default-echo-0.yaml").exists());
    assert!(dir.join("pod-default-client-0.yaml").exists());
}

#[test]
fn pod_ips_are_not_routed_across_clusters_but_node_ips_are() {
    if !require_root() {
        return;
    }
    let mut t = TestLab::up(None);
    // east: echo-0 on east-1 = 10.244.0.2; the client on east-2 = 10.244.1.2.
    let east_echo = t.lab.deploy(&DeploySpec::echo("east", "echo", 1)).unwrap();
    let client = t
        .lab
        .create_pod("east", Some("east-2"), "default", None)
        .unwrap();
    // west: echo-0 10.244.0.2 (same IP as east's), echo-1 10.244.1.2, echo-2 10.244.0.3.
    let west_echo = t.lab.deploy(&DeploySpec::echo("west", "echo", 3)).unwrap();
    assert_eq!(
        east_echo[0].ip, west_echo[0].ip,
        "pod IPs overlap between the clusters"
    );
    let only_in_west = west_echo.iter().find(|p| p.ip.octets()[3] == 3).unwrap();
    let addr = SocketAddr::from((only_in_west.ip, 8080));

    // Inside west, the pod answers (from west's node, where it is routed).
    let west_node = t.lab.node_netns("west", "west-2").unwrap();
    let answer = ask_from(&west_node, addr).expect("west's own node reaches west's pod");
    assert!(answer.starts_with("cluster=west"), "{answer}");

    // From east, west's pod IP is not routed: the connection fails.
    let err =
        ask_from(&client.netns, addr).expect_err("west's pod IP must not be reachable from east");
    eprintln!("east → west pod {addr}: {err} (expected)");

    // The overlapping IP from east reaches east's own pod, never west's.
    let shared = SocketAddr::from((east_echo[0].ip, 8080));
    let answer = ask_from(&client.netns, shared).unwrap();
    assert!(answer.starts_with("cluster=east"), "{answer}");

    // Node IPs are routed across clusters: east-2 reaches west's etcd on west-1's node IP.
    let west_etcd: SocketAddr = t
        .lab
        .etcd_endpoint("west")
        .unwrap()
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let east_node = t.lab.node_netns("east", "east-2").unwrap();
    NetNs::open(&east_node)
        .unwrap()
        .run(move || TcpStream::connect_timeout(&west_etcd, T))
        .unwrap()
        .expect("east-2 must reach west-1's node IP across the WAN");
}

#[test]
fn supervised_processes_are_restarted_after_sigkill_and_stay_stopped_when_told() {
    if !require_root() {
        return;
    }
    let mut t = TestLab::up(None);
    let procs = t.lab.processes();

    // etcd: SIGKILL → a new pid, healthy again.
    let old = procs.wait_running("east.etcd", None, T).unwrap();
    assert_eq!(procs.kill("east.etcd").unwrap(), Some(old));
    let new = procs
        .wait_running("east.etcd", Some(old), Duration::from_secs(10))
        .expect("etcd restarted with a new pid");
    assert_ne!(old, new);
    eventually(
        "east's etcd healthy after its restart",
        Duration::from_secs(20),
        || t.lab.etcd_healthy("east").unwrap().then_some(()),
    );
    assert!(procs.status("east.etcd").unwrap().restarts >= 1);
    // The new etcd runs in its cgroup under the node.
    let cg = t.lab.node_cgroup("east", "east-1").unwrap().join("etcd");
    assert!(
        std::fs::read_to_string(cg.join("cgroup.procs"))
            .unwrap()
            .contains(&new.to_string())
    );

    // An echo server: SIGKILL → answers again; stop → stays down; start → answers again.
    let pod = t
        .lab
        .deploy(&DeploySpec::echo("west", "echo", 1))
        .unwrap()
        .remove(0);
    let id = pod.process_id();
    let node_ns = t.lab.node_netns("west", &pod.node).unwrap();
    let addr = SocketAddr::from((pod.ip, 8080));
    let old = procs.wait_running(&id, None, T).unwrap();
    procs.kill(&id).unwrap();
    procs
        .wait_running(&id, Some(old), Duration::from_secs(10))
        .expect("echo restarted");
    eventually(
        "echo to answer after its restart",
        Duration::from_secs(10),
        || ask_from(&node_ns, addr).ok(),
    );

    procs.stop(&id).unwrap();
    eventually("echo to stop", Duration::from_secs(10), || {
        ask_from(&node_ns, addr).is_err().then_some(())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        ask_from(&node_ns, addr).is_err(),
        "a stopped process must not be restarted"
    );
    procs.start(&id).unwrap();
    eventually(
        "echo to answer after start",
        Duration::from_secs(10),
        || ask_from(&node_ns, addr).ok(),
    );
}

#[test]
fn scale_adds_and_removes_pods_and_rewrites_the_endpoint_slice() {
    if !require_root() {
        return;
    }
    let mut t = TestLab::up(None);
    t.lab.deploy(&DeploySpec::echo("east", "web", 1)).unwrap();
    let added = t.lab.scale("east", "default", "web", 3).unwrap();
    assert_eq!(added.len(), 2);
    let slice_path = t
        .lab
        .manifests_dir("east")
        .unwrap()
        .join("endpointslice-default-web.yaml");
    let endpoints = |p: &std::path::Path| {
        let s: k8s_openapi::api::discovery::v1::EndpointSlice =
            serde_yaml_ng::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        s.endpoints.unwrap_or_default().len()
    };
    assert_eq!(endpoints(&slice_path), 3);

    let removed: Vec<_> = t.lab.deployment_pods("east", "default", "web")[1..]
        .iter()
        .map(|p| (*p).clone())
        .collect();
    t.lab.scale("east", "default", "web", 1).unwrap();
    assert_eq!(endpoints(&slice_path), 1);
    for pod in removed {
        assert!(!NetNs::exists(&pod.netns), "{} must be gone", pod.netns);
        assert!(
            !pod.cgroup.exists(),
            "{} must be gone",
            pod.cgroup.display()
        );
        assert!(t.lab.processes().status(&pod.process_id()).is_none());
    }
    assert!(t.lab.scale("east", "default", "nope", 1).is_err());
    assert!(
        t.lab.deploy(&DeploySpec::echo("east", "web", 1)).is_err(),
        "deploying twice fails"
    );
    assert!(t.lab.deploy(&DeploySpec::echo("north", "web", 1)).is_err());
}

#[test]
fn a_stopped_node_stops_its_processes_and_comes_back() {
    if !require_root() {
        return;
    }
    let mut t = TestLab::up(None);
    let pods = t.lab.deploy(&DeploySpec::echo("east", "echo", 2)).unwrap();
    let (on_1, on_2) = if pods[0].node == "east-1" {
        (&pods[0], &pods[1])
    } else {
        (&pods[1], &pods[0])
    };
    let client = t
        .lab
        .create_pod("east", Some("east-2"), "default", None)
        .unwrap();
    let ask = |p: &clustermesh_lab::state::PodRecord| {
        ask_from(&client.netns, SocketAddr::from((p.ip, 8080)))
    };

    let stopped = t.lab.stop_node("east", "east-1").unwrap();
    assert!(stopped.contains(&"east.etcd".to_owned()), "{stopped:?}");
    assert!(stopped.contains(&on_1.process_id()), "{stopped:?}");
    assert!(!stopped.contains(&on_2.process_id()), "{stopped:?}");
    assert!(ask(on_1).is_err(), "east-1's pod must be down");
    assert!(ask(on_2).is_ok(), "east-2's pod must still answer");
    assert!(!t.lab.etcd_healthy("east").unwrap());

    let started = t.lab.start_node("east", "east-1").unwrap();
    assert_eq!(started.len(), stopped.len());
    eventually(
        "east-1's pod to answer again",
        Duration::from_secs(10),
        || ask(on_1).ok(),
    );
    eventually(
        "east's etcd to be healthy again",
        Duration::from_secs(20),
        || t.lab.etcd_healthy("east").unwrap().then_some(()),
    );
}
