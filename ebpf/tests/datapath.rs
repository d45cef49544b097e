//! End-to-end tests of the datapath on real eBPF, in network namespaces and cgroups they create
//! and remove. They need root; outside CI they skip without it, with CI=true they fail.
//!
//! Clients run as `datapath-probe` processes inside the test cgroup and namespace (the socket
//! programs only see processes in the cgroup); servers are threads of the test process whose
//! sockets live in the namespace. All traffic stays on the namespaces' loopback.

mod support;

use std::{
    collections::BTreeMap,
    io::Write,
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use clustermesh_ebpf::{
    AddressFamily, Datapath, DatapathConfig, DatapathError, Frontend, Protocol, Service,
    SessionAffinity,
};
use support::{Cgroup, NetNs, PinDir, probe, probe_output};

/// Field order is drop order: the datapath's descriptors close before its pins are removed.
struct Fixture {
    datapath: Datapath,
    pin: PinDir,
    cgroup: Cgroup,
    netns: NetNs,
}

impl Fixture {
    fn new() -> Option<Self> {
        if !support::can_run() {
            return None;
        }
        let netns = NetNs::new();
        let cgroup = Cgroup::new();
        let pin = PinDir::new();
        let mut datapath = Datapath::load(&pin.config()).expect("loading the datapath");
        datapath
            .attach_cgroup(&cgroup.path)
            .expect("attaching to the test cgroup");
        Some(Self {
            datapath,
            pin,
            cgroup,
            netns,
        })
    }

    fn client(&self, args: &[&str]) -> String {
        probe(&self.netns, Some(&self.cgroup), args)
    }
}

fn service(vip: &str, protocol: Protocol, backends: &[SocketAddr]) -> Service {
    Service {
        frontend: Frontend {
            addr: vip.parse().unwrap(),
            protocol,
        },
        backends: backends.to_vec(),
        affinity: SessionAffinity::None,
    }
}

/// Parses `tcp-connect` output into (peer, backend that answered) pairs.
fn connections(output: &str) -> Vec<(SocketAddr, SocketAddr)> {
    output
        .lines()
        .map(|line| {
            let (peer, reply) = line.split_once(' ').expect("two fields");
            (peer.parse().unwrap(), reply.parse().unwrap())
        })
        .collect()
}

fn count_by_backend(connections: &[(SocketAddr, SocketAddr)]) -> BTreeMap<SocketAddr, usize> {
    let mut counts = BTreeMap::new();
    for (_, backend) in connections {
        *counts.entry(*backend).or_default() += 1;
    }
    counts
}

/// TCP through a VIP: reaches a backend, splits evenly, follows a backend's removal at once,
/// shows the VIP to getpeername, leaves other destinations alone, and stops when deleted.
fn tcp_vip(vip: &str, backend_a: &str, backend_b: &str) {
    let Some(mut fx) = Fixture::new() else { return };
    let a = support::tcp_server(&fx.netns, backend_a);
    let b = support::tcp_server(&fx.netns, backend_b);
    let vip_addr: SocketAddr = vip.parse().unwrap();
    fx.datapath
        .upsert_service(&service(vip, Protocol::Tcp, &[a, b]))
        .unwrap();

    let all = connections(&fx.client(&["tcp-connect", vip, "2000"]));
    assert_eq!(all.len(), 2000);
    assert!(
        all.iter().all(|(peer, _)| *peer == vip_addr),
        "getpeername must return the VIP"
    );
    let counts = count_by_backend(&all);
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), {
        let mut both = vec![a, b];
        both.sort();
        both
    });
    for (backend, count) in &counts {
        assert!(
            (900..=1100).contains(count),
            "backend {backend} got {count} of 2000 connections, outside ±10% of 1000: {counts:?}"
        );
    }
    // The client has exited: every socket it translated was released and forgotten.
    assert_eq!(remembered_connected_sockets(&fx.pin), 0);

    // A dual-stack IPv6 socket dialing the IPv4-mapped VIP is balanced and answered the same.
    if let SocketAddr::V4(v4) = vip_addr {
        let mapped = SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port());
        let dual = connections(&fx.client(&["tcp-connect", &mapped.to_string(), "20"]));
        assert!(
            dual.iter()
                .all(|&(peer, backend)| peer == mapped && (backend == a || backend == b)),
            "{dual:?}"
        );
    }

    // Removing b: the very next connections all go to a.
    fx.datapath
        .upsert_service(&service(vip, Protocol::Tcp, &[a]))
        .unwrap();
    let after = connections(&fx.client(&["tcp-connect", vip, "200"]));
    assert_eq!(count_by_backend(&after), BTreeMap::from([(a, 200)]));

    // A destination that is not a service is not touched.
    let direct = connections(&fx.client(&["tcp-connect", &b.to_string(), "5"]));
    assert!(
        direct
            .iter()
            .all(|&(peer, backend)| peer == b && backend == b)
    );

    // Once deleted, the VIP is an ordinary (here: unroutable) address again.
    fx.datapath
        .delete_service(&Frontend {
            addr: vip_addr,
            protocol: Protocol::Tcp,
        })
        .unwrap();
    let output = probe_output(&fx.netns, Some(&fx.cgroup), &["tcp-connect", vip, "1"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unreachable"),
        "expected the deleted VIP to be unroutable in the test namespace, got: {stderr}"
    );
    assert!(fx.datapath.services().unwrap().is_empty());
}

#[test]
fn tcp_ipv4_vip_balances_follows_backend_removal_and_passes_others_through() {
    tcp_vip("10.96.0.10:80", "127.0.0.2:8080", "127.0.0.3:8080");
}

#[test]
fn tcp_ipv6_vip_balances_follows_backend_removal_and_passes_others_through() {
    tcp_vip("[fd00:96::10]:80", "[::1]:8081", "[::1]:8082");
}

/// UDP through a VIP: replies seem to come from the VIP, unconnected and connected.
fn udp_vip(vip: &str, backend_a: &str, backend_b: &str) {
    let Some(mut fx) = Fixture::new() else { return };
    let a = support::udp_server(&fx.netns, backend_a);
    let b = support::udp_server(&fx.netns, backend_b);
    fx.datapath
        .upsert_service(&service(vip, Protocol::Udp, &[a, b]))
        .unwrap();

    for _ in 0..5 {
        let line = fx.client(&["udp-sendto", vip]);
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields[0], vip,
            "sendto: the reply's source must be the VIP: {line}"
        );
        let backend: SocketAddr = fields[1].parse().unwrap();
        assert!(backend == a || backend == b);

        let line = fx.client(&["udp-connected", vip]);
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            fields[0], vip,
            "connected: the reply's source must be the VIP: {line}"
        );
        assert_eq!(
            fields[2], vip,
            "connected: getpeername must return the VIP: {line}"
        );
    }

    // A TCP service on the same address and port does not capture UDP, and vice versa.
    let tcp_only = support::tcp_server(&fx.netns, backend_a);
    fx.datapath
        .upsert_service(&service(vip, Protocol::Tcp, &[tcp_only]))
        .unwrap();
    let line = fx.client(&["udp-sendto", vip]);
    assert!(line.starts_with(vip));
}

#[test]
fn udp_ipv4_vip_replies_come_from_the_vip() {
    udp_vip("10.96.0.53:53", "127.0.0.2:5353", "127.0.0.3:5353");
}

#[test]
fn udp_ipv6_vip_replies_come_from_the_vip() {
    udp_vip("[fd00:96::53]:53", "[::1]:5354", "[::1]:5355");
}

/// Services with more backends than fit in the service entry keep them in slots; moving
/// between the two layouts and resizing never reaches a backend outside the current set.
#[test]
fn large_services_use_slots_and_follow_every_resize() {
    let Some(mut fx) = Fixture::new() else { return };
    let all: Vec<SocketAddr> = (2..=13)
        .map(|host| support::tcp_server(&fx.netns, &format!("127.0.0.{host}:8080")))
        .collect();
    let vip = "10.96.0.40:80";
    for size in [10, 9, 3, 12, 1, 11] {
        let backends = &all[..size];
        fx.datapath
            .upsert_service(&service(vip, Protocol::Tcp, backends))
            .unwrap();
        let attempts = (40 * size).to_string();
        let counts = count_by_backend(&connections(&fx.client(&["tcp-connect", vip, &attempts])));
        let mut expected: Vec<SocketAddr> = backends.to_vec();
        expected.sort();
        assert_eq!(
            counts.keys().copied().collect::<Vec<_>>(),
            expected,
            "with {size} backends every one, and only those, gets connections: {counts:?}"
        );
        assert_eq!(
            fx.datapath.services().unwrap()[0].backends,
            backends,
            "read back with {size} backends"
        );
    }
    // A fresh load (an agent restart) finds the same service and no stray slots to trip on.
    let reloaded = Datapath::load(&fx.pin.config()).unwrap();
    assert_eq!(reloaded.services().unwrap()[0].backends, &all[..11]);
}

#[test]
fn client_ip_affinity_keeps_a_client_on_one_backend_until_it_leaves() {
    let Some(mut fx) = Fixture::new() else { return };
    let a = support::tcp_server(&fx.netns, "127.0.0.2:8080");
    let b = support::tcp_server(&fx.netns, "127.0.0.3:8080");
    let vip = "10.96.0.20:80";
    let mut svc = service(vip, Protocol::Tcp, &[a, b]);
    svc.affinity = SessionAffinity::ClientIp {
        timeout: Duration::from_secs(60),
    };
    fx.datapath.upsert_service(&svc).unwrap();

    let first = count_by_backend(&connections(&fx.client(&["tcp-connect", vip, "100"])));
    assert_eq!(
        first.len(),
        1,
        "all connections of one client go to one backend: {first:?}"
    );
    let (&chosen, _) = first.iter().next().unwrap();

    // The chosen backend leaves: the client moves to the other one, and stays there when the
    // first one comes back.
    let other = if chosen == a { b } else { a };
    svc.backends = vec![other];
    fx.datapath.upsert_service(&svc).unwrap();
    let moved = count_by_backend(&connections(&fx.client(&["tcp-connect", vip, "10"])));
    assert_eq!(moved, BTreeMap::from([(other, 10)]));
    svc.backends = vec![a, b];
    fx.datapath.upsert_service(&svc).unwrap();
    let stayed = count_by_backend(&connections(&fx.client(&["tcp-connect", vip, "100"])));
    assert_eq!(stayed, BTreeMap::from([(other, 100)]));
    assert_eq!(fx.datapath.services().unwrap(), vec![svc]);
}

#[test]
fn sk_lookup_hands_mesh_vips_to_the_tunnel_listener() {
    let Some(mut fx) = Fixture::new() else { return };
    // The node routes the mesh ranges locally so that the sk_lookup program sees them.
    fx.netns.ip(&[
        "route",
        "add",
        "local",
        DatapathConfig::DEFAULT_MESH_VIP_RANGE_V4,
        "dev",
        "lo",
    ]);
    fx.netns.ip(&[
        "-6",
        "route",
        "add",
        "local",
        DatapathConfig::DEFAULT_MESH_VIP_RANGE_V6,
        "dev",
        "lo",
    ]);
    fx.datapath.attach_sk_lookup(&fx.netns.path()).unwrap();

    for (family, listen, mesh_vip) in [
        (AddressFamily::Ipv4, "127.0.0.1:15008", "100.64.3.4:443"),
        (
            AddressFamily::Ipv6,
            "[::1]:15008",
            "[fd00:6d65:7368::5]:443",
        ),
    ] {
        let listen: SocketAddr = listen.parse().unwrap();
        let listener = fx
            .netns
            .run(move || TcpListener::bind(listen).expect("binding the tunnel listener"));
        fx.datapath.set_tunnel_listener(family, &listener).unwrap();

        let accepted = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accepting on the tunnel listener");
            let local = stream.local_addr().unwrap();
            writeln!(stream, "{local}").unwrap();
            local
        });
        let reply = probe(&fx.netns, None, &["tcp-connect", mesh_vip, "1"]);
        let local = accepted.join().unwrap();
        assert_eq!(
            local,
            mesh_vip.parse::<SocketAddr>().unwrap(),
            "getsockname() on the accepted socket"
        );
        assert_eq!(reply.trim(), format!("{mesh_vip} {mesh_vip}"));
    }

    // Destinations outside the mesh ranges are looked up as usual: nothing listens there.
    let output = probe_output(&fx.netns, None, &["tcp-connect", "127.0.0.1:443", "1"]);
    assert!(
        !output.status.success(),
        "127.0.0.1:443 must not reach the tunnel listener"
    );
}

#[test]
fn agent_restart_does_not_fail_a_single_connection() {
    if !support::can_run() {
        return;
    }
    let pin = PinDir::new();
    let cgroup = Cgroup::new();
    let netns = NetNs::new();
    // More backends than fit in the service entry: each restart rewrites the service through
    // the slot banks, the path with the most steps to get wrong.
    let backends: Vec<String> = (2..=11)
        .map(|host| support::tcp_server(&netns, &format!("127.0.0.{host}:8080")).to_string())
        .collect();
    let backends: Vec<&str> = backends.iter().map(String::as_str).collect();
    let vip = "10.96.0.30:80";

    let (mut loader, found) = support::start_loader(&pin, &cgroup, vip, &backends);
    assert_eq!(found, 0);
    let mut client = support::ChildGuard(
        support::probe_command(&netns, Some(&cgroup), &["tcp-loop", vip, "3000"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut program = attached_program_id(&pin, "connect4");
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(400));
        loader.kill();
        // Nothing runs the datapath now; connections keep working from the pins alone.
        std::thread::sleep(Duration::from_millis(300));
        let (restarted, found) = support::start_loader(&pin, &cgroup, vip, &backends);
        assert_eq!(found, 1, "the restarted loader sees the pinned service");
        loader = restarted;
        // The restarted loader's own programs now run inside the pinned links (an upgrade
        // takes effect), not the ones the killed loader left behind.
        let restarted_program = attached_program_id(&pin, "connect4");
        assert_ne!(restarted_program, program);
        program = restarted_program;
    }
    let output = std::mem::replace(
        &mut client.0,
        std::process::Command::new("true").spawn().unwrap(),
    )
    .wait_with_output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "connections failed across restarts: {stdout} {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ok: u64 = stdout
        .trim()
        .strip_prefix("ok=")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected client output {stdout:?}"));
    assert!(ok > 100, "the client made only {ok} connections in 3 s");
    eprintln!("{ok} connections across 3 restarts, none failed");
}

/// How many sockets the `connected_sockets` map remembers a translation for.
fn remembered_connected_sockets(pin: &PinDir) -> usize {
    let map = aya::maps::MapData::from_pin(pin.path.join("maps/connected_sockets"))
        .expect("opening the pinned map");
    let map: aya::maps::HashMap<_, u64, [u8; 40]> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(map)).expect("a hash map");
    map.keys().count()
}

/// The id of the program running in the pinned link `links/<name>`.
fn attached_program_id(pin: &PinDir, name: &str) -> u32 {
    let link = aya::programs::links::PinnedLink::from_pin(pin.path.join("links").join(name))
        .expect("opening the pinned link");
    aya::programs::links::FdLink::from(link)
        .info()
        .expect("reading the link's info")
        .program_id()
}

#[test]
fn reloading_reuses_the_pinned_maps() {
    if !support::can_run() {
        return;
    }
    let pin = PinDir::new();
    let services = vec![
        service(
            "10.96.0.1:443",
            Protocol::Tcp,
            &["10.244.0.5:6443".parse().unwrap()],
        ),
        service(
            "[fd00:96::a]:53",
            Protocol::Udp,
            &[
                "[fd00:244::5]:53".parse().unwrap(),
                "[fd00:6d65:7368::9]:53".parse().unwrap(),
            ],
        ),
    ];
    {
        let mut datapath = Datapath::load(&pin.config()).unwrap();
        for svc in &services {
            datapath.upsert_service(svc).unwrap();
        }
    }
    let mut datapath = Datapath::load(&pin.config()).unwrap();
    let mut expected = services.clone();
    expected.sort_by_key(|svc| svc.frontend);
    assert_eq!(datapath.services().unwrap(), expected);

    // Backends of another address family than the VIP are refused, and nothing changes.
    let mixed = service(
        "10.96.0.1:443",
        Protocol::Tcp,
        &["[::1]:1".parse().unwrap()],
    );
    assert!(matches!(
        datapath.upsert_service(&mixed),
        Err(DatapathError::InvalidService { .. })
    ));
    assert_eq!(datapath.services().unwrap(), expected);
}

#[test]
fn a_pin_dir_outside_bpffs_is_an_actionable_error() {
    if !support::can_run() {
        return;
    }
    let dir = tempfile_dir();
    let error = Datapath::load(&DatapathConfig {
        pin_dir: dir.join("clustermesh"),
        ..Default::default()
    })
    .unwrap_err();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        matches!(error, DatapathError::BpfFsNotMounted { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("mount -t bpf bpffs /sys/fs/bpf"),
        "{error}"
    );
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("cmebpf-notbpffs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
