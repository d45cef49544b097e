//! DNS for global services end to end, on the lab: `dig` (Debian's dnsutils) in a pod of east
//! asks the agent on its node (`<node-ip>:53`) for clusterset names — A, AAAA, SRV, a headless
//! service and one of its pods in a given cluster, NXDOMAIN, NODATA, forwarding to the lab's
//! stand-in for kube-dns — then connects to what it got: a remote-only service at its
//! clusterset VIP reaches west, and a headless pod of west at its mesh VIP. Deleting the remote
//! service makes its name vanish within one propagation.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clustermesh_e2e::{Mesh, by_cluster, eventually};
use clustermesh_lab::DeploySpec;
use clustermesh_lab::lab::LAB_DNS_UPSTREAM;
use clustermesh_lab::manifests::ManifestDir;
use clustermesh_lab::netns::NetNs;
use clustermesh_lab::state::PodRecord;

const ZONE: &str = "svc.clusterset.local";

/// What dig printed: the status and the answer and authority sections (whitespace-normalized).
#[derive(Debug, Default, Clone)]
struct Dig {
    status: String,
    answer: Vec<String>,
    authority: Vec<String>,
}

impl Dig {
    /// The data of the answer records (the last field of each).
    fn data(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .answer
            .iter()
            .filter_map(|l| l.rsplit(' ').next().map(str::to_owned))
            .collect();
        v.sort();
        v
    }
}

fn dig(mesh: &Mesh, pod: &PodRecord, server: Ipv4Addr, args: &[&str]) -> Dig {
    let output = mesh
        .lab
        .pod_command(pod, "dig")
        .arg(format!("@{server}"))
        .args(["+tries=1", "+time=3"])
        .args(args)
        .output()
        .expect("running dig in the pod (is dnsutils installed?)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut d = Dig::default();
    let mut section = "";
    for line in text.lines() {
        if let Some(rest) = line.split("status: ").nth(1) {
            d.status = rest.split(',').next().unwrap_or_default().to_owned();
        }
        if line.starts_with(";; ANSWER SECTION") {
            section = "answer";
        } else if line.starts_with(";; AUTHORITY SECTION") {
            section = "authority";
        } else if line.starts_with(';') || line.is_empty() {
            if line.is_empty() {
                section = "";
            }
        } else {
            let norm = line.split_whitespace().collect::<Vec<_>>().join(" ");
            match section {
                "answer" => d.answer.push(norm),
                "authority" => d.authority.push(norm),
                _ => {}
            }
        }
    }
    if d.status.is_empty() {
        d.status = format!(
            "no answer: {} {}",
            text.trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    d
}

/// The lab's stand-in for kube-dns on one node: answers every A question with 192.0.2.53
/// (TEST-NET-1), from loopback port 5353 in the node's namespace. Stops when dropped.
struct Upstream {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Upstream {
    fn start(netns: &str) -> Upstream {
        let socket = NetNs::open(netns)
            .expect("the node's netns")
            .run(|| UdpSocket::bind(LAB_DNS_UPSTREAM))
            .expect("entering the node's netns")
            .expect("binding the upstream on loopback in the node's netns");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                if let Some(reply) = answer_a(&buf[..n], [192, 0, 2, 53]) {
                    let _ = socket.send_to(&reply, from);
                }
            }
        });
        Upstream {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A response to a one-question query with one A record (name compressed to the question).
fn answer_a(query: &[u8], ip: [u8; 4]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    // The question ends after its name (labels up to a zero byte) and type + class.
    let mut i = 12;
    while *query.get(i)? != 0 {
        i += 1 + usize::from(query[i]);
    }
    let end = i + 5;
    let question = query.get(12..end)?;
    let mut out = Vec::with_capacity(end + 16);
    out.extend_from_slice(&query[..2]); // ID
    out.extend_from_slice(&[0x81, 0x80]); // response, RD, RA, NOERROR
    out.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 0]); // 1 question, 1 answer
    out.extend_from_slice(question);
    out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4]);
    out.extend_from_slice(&ip);
    Some(out)
}

fn node_ip(mesh: &Mesh, pod: &PodRecord) -> Ipv4Addr {
    let state = mesh.lab.state();
    state
        .clusters
        .iter()
        .find(|c| c.name == pod.cluster)
        .and_then(|c| c.nodes.iter().find(|n| n.name == pod.node))
        .map(|n| n.ip)
        .expect("the pod's node")
}

/// A headless global Service `db` in west over `pods`, with hostnames `db-<i>`.
fn write_headless(mesh: &Mesh, pods: &[PodRecord], port: u16) {
    let mut endpoints = String::new();
    for (i, pod) in pods.iter().enumerate() {
        endpoints.push_str(&format!(
            "- addresses: [\"{}\"]\n  hostname: db-{i}\n  nodeName: {}\n  conditions:\n    ready: true\n",
            pod.ip, pod.node
        ));
    }
    let yaml = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: db\n  namespace: default\n  annotations:\n    clustermesh.io/global: \"true\"\nspec:\n  clusterIP: None\n  ports:\n  - name: tcp\n    port: {port}\n    protocol: TCP\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: db-abc\n  namespace: default\n  labels:\n    kubernetes.io/service-name: db\naddressType: IPv4\nports:\n- name: tcp\n  port: {port}\n  protocol: TCP\nendpoints:\n{endpoints}"
    );
    let dir = mesh.lab.state().manifests_dir("west");
    std::fs::write(dir.join("dns-test-db.yaml"), yaml).expect("writing the headless service");
}

#[test]
fn pods_resolve_global_services_by_clusterset_name() {
    let Some(mut mesh) = Mesh::up() else { return };
    assert!(
        Command::new("dig").arg("-v").output().is_ok(),
        "dig (dnsutils) is needed by this test"
    );
    // echo in both clusters; remote only in west; db headless in west.
    let echo_vip = mesh.deploy(&DeploySpec::echo("east", "echo", 1));
    mesh.deploy(&DeploySpec::echo("west", "echo", 1));
    let remote_pods = mesh
        .lab
        .deploy(&DeploySpec::echo("west", "remote", 2))
        .expect("deploying remote in west");
    let port = echo_vip.port();
    write_headless(&mesh, &remote_pods, port);

    let client = mesh.client_pod("east");
    let server = node_ip(&mesh, &client);
    let ask = |name: &str, qtype: &str| dig(&mesh, &client, server, &[name, qtype]);

    // A local global service: its cluster IP; no IPv6 address: NODATA with the SOA.
    let echo = format!("echo.default.{ZONE}");
    let d = eventually("echo to resolve", Duration::from_secs(30), || {
        let d = ask(&echo, "A");
        (d.status == "NOERROR" && !d.answer.is_empty())
            .then_some(d.clone())
            .ok_or(format!("{d:?}"))
    });
    assert_eq!(d.data(), [echo_vip.ip().to_string()]);
    assert!(d.answer[0].contains(" 5 IN A "), "TTL 5 s: {d:?}");
    let d = ask(&echo, "AAAA");
    assert_eq!((d.status.as_str(), d.answer.len()), ("NOERROR", 0));
    assert!(
        d.authority[0].contains("IN SOA"),
        "NODATA carries the SOA: {d:?}"
    );

    // SRV for a named port.
    let d = ask(&format!("_tcp._tcp.echo.default.{ZONE}"), "SRV");
    assert_eq!(
        d.answer,
        [format!(
            "_tcp._tcp.echo.default.{ZONE}. 5 IN SRV 0 100 {port} echo.default.{ZONE}."
        )]
    );

    // NXDOMAIN with the SOA.
    let d = ask(&format!("nope.default.{ZONE}"), "A");
    assert_eq!(d.status, "NXDOMAIN");
    assert!(d.authority[0].contains("IN SOA"), "{d:?}");

    // A remote-only service resolves to the clusterset VIP east's apiserver allocated, and a
    // connection to it reaches west.
    let remote = format!("remote.default.{ZONE}");
    let d = eventually("remote to resolve", Duration::from_secs(30), || {
        let d = ask(&remote, "A");
        (d.status == "NOERROR" && !d.answer.is_empty())
            .then_some(d.clone())
            .ok_or(format!("{d:?}"))
    });
    let vip: Ipv4Addr = d.data()[0].parse().expect("an IPv4 address");
    assert!(
        vip.octets()[..2] == [10, 255],
        "from the clusterset VIP range: {vip}"
    );
    let vip = SocketAddr::from((vip, port));
    mesh.wait_programmed("east", vip, &[("west", 2)]);
    let answers = mesh.ask(&client, vip, 20);
    assert_eq!(
        by_cluster(&answers).into_iter().collect::<Vec<_>>(),
        [("west".to_owned(), 20)]
    );

    // Headless: west's ready pods at their mesh VIPs, and one pod by cluster and hostname.
    let headless = format!("db.default.{ZONE}");
    let d = eventually(
        "db to resolve to both pods",
        Duration::from_secs(30),
        || {
            let d = ask(&headless, "A");
            (d.answer.len() == 2)
                .then_some(d.clone())
                .ok_or(format!("{d:?}"))
        },
    );
    assert!(
        d.data().iter().all(|ip| ip.starts_with("100.")),
        "remote pods are answered as mesh VIPs: {d:?}"
    );
    let d = ask(&format!("db-0.west.db.default.{ZONE}"), "A");
    assert_eq!(d.answer.len(), 1, "{d:?}");
    let pod_vip: Ipv4Addr = d.data()[0].parse().unwrap();
    let answers = mesh.ask(&client, SocketAddr::from((pod_vip, port)), 5);
    assert!(
        answers.iter().all(|a| a.cluster() == Some("west")
            && a.pod() == Some(&*format!("default/{}", remote_pods[0].name))),
        "db-0.west reaches that pod: {answers:?}"
    );
    let d = ask(&format!("_tcp._tcp.db.default.{ZONE}"), "SRV");
    assert_eq!(d.answer.len(), 2, "{d:?}");
    assert!(
        d.answer
            .iter()
            .any(|l| l.ends_with(&format!("db-1.west.db.default.{ZONE}.")))
    );

    // Forwarding: other names go to the node's upstream.
    let netns = mesh
        .lab
        .node_netns(&client.cluster, &client.node)
        .expect("the client's node");
    let upstream = Upstream::start(&netns);
    let d = ask("upstream.example.", "A");
    assert_eq!(
        (d.status.as_str(), d.data()),
        ("NOERROR", vec!["192.0.2.53".to_owned()])
    );
    drop(upstream);

    // The remote service goes: its name vanishes within one propagation.
    let west = ManifestDir::new(mesh.lab.state().manifests_dir("west"));
    let deleted = Instant::now();
    for kind in ["service", "endpointslice"] {
        std::fs::remove_file(west.file(kind, Some("default"), "remote")).expect("removing remote");
    }
    eventually("remote to vanish", Duration::from_secs(10), || {
        let d = ask(&remote, "A");
        (d.status == "NXDOMAIN")
            .then_some(())
            .ok_or(format!("{d:?}"))
    });
    eprintln!(
        "remote.default vanished from east's DNS {} ms after its Service was deleted in west",
        deleted.elapsed().as_millis()
    );
}
