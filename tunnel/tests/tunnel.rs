//! The tunnel end to end on loopback: two (or more) `Tunnel`s in one process with real
//! certificates, a backend behind the receiving one, clients connecting to the sender's
//! outbound listener as the sk_lookup program would hand them over.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clustermesh_tunnel::metrics::{HandshakeRefusal, InboundRefusal, OutboundRefusal, Side};
use clustermesh_tunnel::testing::ClusterCa;
use clustermesh_tunnel::{
    AllowAll, AuthorizationView, CredentialPaths, Metrics, RemoteTarget, RoutingTable, Tunnel,
    TunnelConfig, TunnelInputs,
};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const TRUST_DOMAIN: &str = "mesh.test";

/// A loopback listener with the largest accept queue the kernel allows by default: tokio's
/// `bind` asks for 1,024, which thousands of simultaneous connects overflow.
fn listen(addr: &str) -> TcpListener {
    let addr: SocketAddr = addr.parse().unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(4096).unwrap()
}

/// Waits for `condition`, failing with `what` after 10 s.
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Node {
    tunnel: Tunnel,
    inbound: SocketAddr,
    outbound: SocketAddr,
    routes: watch::Sender<RoutingTable>,
    authz: watch::Sender<AuthorizationView>,
    metrics: Arc<Metrics>,
    credentials: CredentialPaths,
}

impl Node {
    async fn start(ca: &ClusterCa, node: &str, credentials: CredentialPaths) -> Self {
        Self::start_on(ca, node, credentials, "127.0.0.1:0").await
    }

    async fn start_on(
        ca: &ClusterCa,
        node: &str,
        credentials: CredentialPaths,
        inbound: &str,
    ) -> Self {
        let mut config = TunnelConfig::new(TRUST_DOMAIN, &ca.cluster, node, credentials.clone());
        config.cert_reload_interval_ms = 50;
        config.dial_backoff_min_ms = 50;
        config.dial_backoff_max_ms = 200;
        let inbound = listen(inbound);
        let outbound = listen("127.0.0.1:0");
        let (inbound_addr, outbound_addr) = (
            inbound.local_addr().unwrap(),
            outbound.local_addr().unwrap(),
        );
        let (routes, routes_rx) = watch::channel(RoutingTable::new());
        let (authz, authz_rx) = watch::channel(AuthorizationView::default());
        let metrics = Arc::new(Metrics::new(&mut Registry::default()));
        let tunnel = Tunnel::start(
            config,
            TunnelInputs {
                routes: routes_rx,
                authz: authz_rx,
                policy: Arc::new(AllowAll),
            },
            metrics.clone(),
            inbound,
            outbound,
        )
        .expect("tunnel starts");
        Self {
            tunnel,
            inbound: inbound_addr,
            outbound: outbound_addr,
            routes,
            authz,
            metrics,
            credentials,
        }
    }

    fn connect_cluster(&self, ca: &ClusterCa) {
        self.authz.send_modify(|view| {
            view.connected.insert(ca.cluster.clone(), ca.bundle());
        });
    }

    fn disconnect_cluster(&self, cluster: &str) {
        self.authz.send_modify(|view| {
            view.connected.remove(cluster);
        });
    }

    fn share(&self, backend: SocketAddr) {
        self.authz.send_modify(|view| {
            view.shared_backends.insert(backend);
        });
    }

    /// Routes this node's outbound listener address (the "VIP" on loopback) to `backend`
    /// behind `peer`.
    fn route_to(&self, peer: &Node, peer_cluster: &str, peer_node: &str, backend: SocketAddr) {
        let target = RemoteTarget {
            cluster: peer_cluster.to_owned(),
            node: peer_node.to_owned(),
            tunnel: peer.inbound,
            backend_ip: backend.ip(),
            backend_port: Some(backend.port()),
        };
        self.routes.send_modify(|table| {
            table.insert(self.outbound.ip(), Some(self.outbound.port()), target);
        });
    }
}

/// Echoes each connection until the client half-closes, then half-closes back.
async fn echo_backend() -> SocketAddr {
    let listener = listen("127.0.0.1:0");
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut read, mut write) = tcp.split();
                if tokio::io::copy(&mut read, &mut write).await.is_ok() {
                    let _ = write.shutdown().await;
                }
            });
        }
    });
    addr
}

/// The sending cluster `east` with node `a`, the receiving cluster `west` with node `b` and
/// an echo backend that `west` shares; `a` routes its VIP to it.
struct Mesh {
    _dir: tempfile::TempDir,
    east: ClusterCa,
    west: ClusterCa,
    a: Node,
    b: Node,
    backend: SocketAddr,
}

impl Mesh {
    async fn new() -> Self {
        Self::with_backend(echo_backend().await).await
    }

    async fn with_backend(backend: SocketAddr) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let east = ClusterCa::new(TRUST_DOMAIN, "east", dir.path());
        let west = ClusterCa::new(TRUST_DOMAIN, "west", dir.path());
        let a = Node::start(&east, "a", east.node("a")).await;
        let b = Node::start(&west, "b", west.node("b")).await;
        a.connect_cluster(&west);
        b.connect_cluster(&east);
        b.share(backend);
        a.route_to(&b, "west", "b", backend);
        Self {
            _dir: dir,
            east,
            west,
            a,
            b,
            backend,
        }
    }
}

/// Sends `message`, half-closes, and reads everything until the other side closes.
async fn exchange(addr: SocketAddr, message: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(message).await?;
    tcp.shutdown().await?;
    let mut reply = Vec::new();
    tcp.read_to_end(&mut reply).await?;
    Ok(reply)
}

#[tokio::test]
async fn bytes_pass_both_ways_with_half_close() {
    let mesh = Mesh::new().await;
    let reply = exchange(mesh.a.outbound, b"hello over the mesh")
        .await
        .unwrap();
    assert_eq!(reply, b"hello over the mesh");
    assert_eq!(mesh.b.metrics.streams_opened(Side::Inbound), 1);
    assert_eq!(mesh.a.metrics.streams_opened(Side::Outbound), 1);
}

#[tokio::test]
async fn half_close_lets_the_client_read_the_reply() {
    // A backend that answers only after the client has finished sending.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        tcp.read_to_end(&mut request).await.unwrap();
        let reply = format!("received {} bytes", request.len());
        tcp.write_all(reply.as_bytes()).await.unwrap();
    });
    let mesh = Mesh::with_backend(backend).await;
    let reply = exchange(mesh.a.outbound, &[7u8; 100_000]).await.unwrap();
    assert_eq!(String::from_utf8(reply).unwrap(), "received 100000 bytes");
}

/// A block of a prime length, repeated: a lost, repeated or reordered chunk shows as a
/// mismatch at the next offset.
const BLOCK: usize = 1_048_573;

fn pattern() -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    (0..BLOCK)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[tokio::test]
async fn one_gib_arrives_intact() {
    const TOTAL: u64 = 1 << 30;
    let block = Arc::new(pattern());
    // The backend checks every byte against the pattern and, at end of stream, reports.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let expected = block.clone();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut offset = 0usize;
        let mut mismatch = None;
        loop {
            let n = tcp.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            let mut done = 0;
            while done < n {
                let at = (offset + done) % BLOCK;
                let len = (n - done).min(BLOCK - at);
                if mismatch.is_none() && buf[done..done + len] != expected[at..at + len] {
                    mismatch = Some(offset + done);
                }
                done += len;
            }
            offset += n;
        }
        let report = format!("{offset} {mismatch:?}");
        tcp.write_all(report.as_bytes()).await.unwrap();
    });
    let mesh = Mesh::with_backend(backend).await;
    let started = Instant::now();
    let mut tcp = TcpStream::connect(mesh.a.outbound).await.unwrap();
    let mut sent = 0u64;
    while sent < TOTAL {
        let at = (sent % BLOCK as u64) as usize;
        let len = ((TOTAL - sent) as usize).min(BLOCK - at);
        tcp.write_all(&block[at..at + len]).await.unwrap();
        sent += len as u64;
    }
    tcp.shutdown().await.unwrap();
    let mut report = String::new();
    tcp.read_to_string(&mut report).await.unwrap();
    assert_eq!(
        report,
        format!("{TOTAL} None"),
        "bytes counted and first mismatch"
    );
    eprintln!("1 GiB through the tunnel in {:?}", started.elapsed());
}

#[tokio::test]
async fn ten_thousand_small_streams() {
    // Each stream holds four descriptors in this process (client, outbound accept, backend
    // dial, backend accept); with RLIMIT_NOFILE at 20,000 on CI, at most 4,000 are in flight.
    const STREAMS: usize = 10_000;
    const IN_FLIGHT: usize = 4_000;
    let mesh = Mesh::new().await;
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..STREAMS {
        let permit = slots.clone().acquire_owned().await.unwrap();
        let addr = mesh.a.outbound;
        tasks.spawn(async move {
            let message = format!("stream {i} says hello {}", "x".repeat(i % 200));
            let reply = exchange(addr, message.as_bytes()).await;
            drop(permit);
            (message, reply)
        });
    }
    let mut done = 0;
    while let Some(result) = tasks.join_next().await {
        let (message, reply) = result.unwrap();
        let reply = reply.unwrap_or_else(|e| {
            panic!(
                "{e} after {done}: a {:?} b {:?}",
                mesh.a.metrics, mesh.b.metrics
            )
        });
        assert_eq!(reply, message.as_bytes());
        done += 1;
    }
    assert_eq!(done, STREAMS);
    let elapsed = started.elapsed();
    eprintln!("{STREAMS} streams in {elapsed:?}");
    assert!(
        elapsed < Duration::from_secs(60),
        "10k streams took {elapsed:?}"
    );
    assert_eq!(mesh.b.metrics.streams_opened(Side::Inbound), STREAMS as u64);
    // All over the node's pooled connections, dialed once each.
    let lanes = u64::from(clustermesh_tunnel::config::defaults::connections_per_peer());
    assert_eq!(
        mesh.a
            .metrics
            .peer_dials
            .get_or_create(&clustermesh_tunnel::metrics::DialLabels {
                result: clustermesh_tunnel::metrics::DialResult::Connected
            })
            .get(),
        lanes
    );
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_is_refused_in_the_handshake() {
    let mesh = Mesh::new().await;
    let dir = tempfile::tempdir().unwrap();
    // Claims to be a node of the connected cluster `east`, signed by another CA.
    let impostor_ca = ClusterCa::named(TRUST_DOMAIN, "east", "impostor-ca", dir.path());
    let impostor = Node::start(&impostor_ca, "c", impostor_ca.node("c")).await;
    impostor.connect_cluster(&mesh.west);
    impostor.route_to(&mesh.b, "west", "b", mesh.backend);
    let reply = exchange(impostor.outbound, b"let me in").await;
    assert!(
        reply.is_err() || reply.as_ref().unwrap().is_empty(),
        "{reply:?}"
    );
    eventually("the unknown-CA refusal to be counted", || {
        mesh.b
            .metrics
            .handshake_refused(Side::Inbound, HandshakeRefusal::UnknownCa)
            == 1
    })
    .await;
    assert_eq!(mesh.b.metrics.streams_opened(Side::Inbound), 0);
}

#[tokio::test]
async fn a_disconnected_cluster_is_refused_in_the_handshake_and_on_open_connections() {
    let mesh = Mesh::new().await;
    // A node of `north`, a cluster with a real CA that `west` is not connected to.
    let dir = tempfile::tempdir().unwrap();
    let north = ClusterCa::new(TRUST_DOMAIN, "north", dir.path());
    let stranger = Node::start(&north, "n", north.node("n")).await;
    stranger.connect_cluster(&mesh.west);
    stranger.route_to(&mesh.b, "west", "b", mesh.backend);
    let reply = exchange(stranger.outbound, b"hello?").await;
    assert!(
        reply.is_err() || reply.as_ref().unwrap().is_empty(),
        "{reply:?}"
    );
    eventually("the not-connected refusal to be counted", || {
        mesh.b
            .metrics
            .handshake_refused(Side::Inbound, HandshakeRefusal::ClusterNotConnected)
            == 1
    })
    .await;

    // `east` is connected: its stream works. Then it is disconnected: the pooled connection
    // is still up, but the next stream on it is refused.
    // Streams take the node's connections in turn: open every one before the disconnect.
    assert_eq!(exchange(mesh.a.outbound, b"ping").await.unwrap(), b"ping");
    assert_eq!(exchange(mesh.a.outbound, b"ping").await.unwrap(), b"ping");
    mesh.b.disconnect_cluster("east");
    let reply = exchange(mesh.a.outbound, b"ping").await;
    assert!(
        reply.is_err() || reply.as_ref().unwrap().is_empty(),
        "{reply:?}"
    );
    assert_eq!(
        mesh.b
            .metrics
            .inbound_refused(InboundRefusal::ClusterNotConnected),
        1
    );
    assert_eq!(
        mesh.a
            .metrics
            .outbound_refused(OutboundRefusal::RefusedByPeer),
        1
    );
}

#[tokio::test]
async fn a_target_that_is_not_a_shared_backend_is_refused() {
    let mesh = Mesh::new().await;
    let unshared = echo_backend().await;
    mesh.a.route_to(&mesh.b, "west", "b", unshared);
    let reply = exchange(mesh.a.outbound, b"anything").await;
    assert!(
        reply.is_err() || reply.as_ref().unwrap().is_empty(),
        "{reply:?}"
    );
    assert_eq!(
        mesh.b
            .metrics
            .inbound_refused(InboundRefusal::NotSharedBackend),
        1
    );
    assert_eq!(
        mesh.a
            .metrics
            .outbound_refused(OutboundRefusal::RefusedByPeer),
        1
    );
    assert_eq!(mesh.b.metrics.streams_opened(Side::Inbound), 0);
    // The refusal is per stream: a shared backend still works on the same connection.
    mesh.a.route_to(&mesh.b, "west", "b", mesh.backend);
    assert_eq!(exchange(mesh.a.outbound, b"ok").await.unwrap(), b"ok");
}

#[tokio::test]
async fn a_connection_to_an_unknown_vip_is_closed() {
    let mesh = Mesh::new().await;
    mesh.a.routes.send_replace(RoutingTable::new());
    let reply = exchange(mesh.a.outbound, b"where to?").await;
    assert!(
        reply.is_err() || reply.as_ref().unwrap().is_empty(),
        "{reply:?}"
    );
    assert_eq!(
        mesh.a.metrics.outbound_refused(OutboundRefusal::UnknownVip),
        1
    );
    assert_eq!(
        mesh.a
            .metrics
            .peer_dials
            .get_or_create(&clustermesh_tunnel::metrics::DialLabels {
                result: clustermesh_tunnel::metrics::DialResult::Connected
            })
            .get(),
        0
    );
}

#[tokio::test]
async fn certificate_rotation_keeps_established_streams() {
    let mesh = Mesh::new().await;
    let mut stream = TcpStream::connect(mesh.a.outbound).await.unwrap();
    let mut buf = [0u8; 6];
    stream.write_all(b"before").await.unwrap();
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"before");

    // A certificate for another node is refused; the old one stays in use.
    let (wrong_cert, wrong_key) = mesh.east.issue(&clustermesh_tunnel::NodeIdentity::new(
        TRUST_DOMAIN,
        "east",
        "somebody-else",
    ));
    std::fs::write(&mesh.a.credentials.key, wrong_key).unwrap();
    std::fs::write(&mesh.a.credentials.cert, wrong_cert).unwrap();
    eventually("the wrong certificate to be refused", || {
        mesh.a.metrics.cert_reload_failures.get() >= 1
    })
    .await;

    // A new valid certificate (new key) is taken.
    let (cert, key) = mesh.east.issue(&mesh.a.tunnel.identity());
    std::fs::write(&mesh.a.credentials.key, key).unwrap();
    std::fs::write(&mesh.a.credentials.cert, cert).unwrap();
    eventually("the new certificate to be loaded", || {
        mesh.a.metrics.cert_reloads.get() == 1
    })
    .await;

    stream.write_all(b"after!").await.unwrap();
    stream.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"after!");
    stream.shutdown().await.unwrap();
    assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
    // New connections handshake with the new certificate: a fresh node dials `b`.
    let fresh = Node::start(&mesh.east, "a", mesh.a.credentials.clone()).await;
    fresh.connect_cluster(&mesh.west);
    fresh.route_to(&mesh.b, "west", "b", mesh.backend);
    assert_eq!(exchange(fresh.outbound, b"new").await.unwrap(), b"new");
    assert_eq!(mesh.a.metrics.streams_opened(Side::Outbound), 1);
}

#[tokio::test]
async fn a_dead_peer_fails_streams_fast_and_is_redialed() {
    let mesh = Mesh::new().await;
    assert_eq!(exchange(mesh.a.outbound, b"one").await.unwrap(), b"one");
    let inbound = mesh.b.inbound;
    let Mesh {
        _dir: dir,
        a,
        b,
        east,
        west,
        ..
    } = mesh;
    let report = b.tunnel.shutdown(Duration::from_secs(1)).await;
    assert_eq!(report.streams_cut, 0);

    // Nobody listens at b's address now: the stream fails at once, not after a timeout.
    let started = Instant::now();
    let reply = exchange(a.outbound, b"two").await;
    assert!(
        reply.is_err() || reply.as_ref().unwrap().is_empty(),
        "{reply:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(a.metrics.outbound_refused(OutboundRefusal::PeerUnavailable) >= 1);

    // b comes back on the same address; after the backoff a is connected again.
    let b = Node::start_on(&west, "b", b.credentials.clone(), &inbound.to_string()).await;
    b.connect_cluster(&east);
    let backend = echo_backend().await;
    b.share(backend);
    a.route_to(&b, "west", "b", backend);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(reply) = exchange(a.outbound, b"three").await
            && reply == b"three"
        {
            break;
        }
        assert!(Instant::now() < deadline, "a never reconnected to b");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(dir);
}

#[tokio::test]
async fn shutdown_waits_for_open_streams_then_cuts_them() {
    let mesh = Mesh::new().await;
    let mut stream = TcpStream::connect(mesh.a.outbound).await.unwrap();
    stream.write_all(b"x").await.unwrap();
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await.unwrap();
    let started = Instant::now();
    let report = mesh.b.tunnel.shutdown(Duration::from_millis(300)).await;
    assert_eq!(report.streams_cut, 1);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The cut stream ends for the client.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the client was not told its stream ended");
}
