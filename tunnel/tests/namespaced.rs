//! The tunnel between two network namespaces joined by a veth pair, with real certificates:
//! the sending node `a` of cluster `east` lives in the client namespace (10.250.0.1), the
//! receiving node `b` of cluster `west` and its backends in the server namespace (10.250.0.2).
//! Each side runs on its own Tokio runtime whose threads entered its namespace, so every
//! listener and every dial is made where a real node would make it.
//!
//! These tests need root. Outside CI they skip with a printed reason; with `CI=true` they fail.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clustermesh_tunnel::metrics::{DirectionLabels, InboundRefusal, OutboundRefusal, Side};
use clustermesh_tunnel::testing::ClusterCa;
use clustermesh_tunnel::testing::netns::{CLIENT_IP, Link, NetNs, SERVER_IP};
use clustermesh_tunnel::{
    AllowAll, AuthorizationView, Metrics, RemoteTarget, RoutingTable, Tunnel, TunnelConfig,
    TunnelInputs,
};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::sync::watch;

const TRUST_DOMAIN: &str = "mesh.test";
/// Every step of a test is bounded, so a broken tunnel fails instead of hanging CI.
const STEP: Duration = Duration::from_secs(30);

/// Echoes every connection until the client half-closes; remembers who connected.
struct EchoBackend {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl EchoBackend {
    /// Must run inside the namespace's runtime.
    async fn start(ip: IpAddr) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind echo backend");
        let addr = listener.local_addr().unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = peers.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut tcp, peer)) = listener.accept().await else {
                    return;
                };
                seen.lock().unwrap().push(peer);
                tokio::spawn(async move {
                    let (mut read, mut write) = tcp.split();
                    if tokio::io::copy(&mut read, &mut write).await.is_ok() {
                        let _ = write.shutdown().await;
                    }
                });
            }
        });
        Self { addr, peers }
    }

    fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

/// One tunnel node on its namespace's runtime.
struct Node {
    tunnel: Option<Tunnel>,
    inbound: SocketAddr,
    outbound: SocketAddr,
    routes: watch::Sender<RoutingTable>,
    authz: watch::Sender<AuthorizationView>,
    metrics: Arc<Metrics>,
}

impl Node {
    /// Starts a tunnel on `runtime`, its peer listener on `ip`, its outbound ("VIP") listener
    /// on the namespace's loopback.
    fn start(runtime: &Runtime, ca: &ClusterCa, node: &str, ip: IpAddr) -> Self {
        let config = TunnelConfig::new(TRUST_DOMAIN, &ca.cluster, node, ca.node(node));
        NetNs::block_on(runtime, async move {
            let inbound = TcpListener::bind((ip, 0))
                .await
                .expect("bind peer listener");
            let outbound = TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind outbound listener");
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
                tunnel: Some(tunnel),
                inbound: inbound_addr,
                outbound: outbound_addr,
                routes,
                authz,
                metrics,
            }
        })
    }

    fn connect_cluster(&self, ca: &ClusterCa) {
        self.authz.send_modify(|view| {
            view.connected.insert(ca.cluster.clone(), ca.bundle());
        });
    }

    /// Routes this node's outbound listener (its "VIP") to `backend` behind `peer`.
    fn route_to(&self, peer: &Node, backend: SocketAddr) {
        let target = RemoteTarget {
            cluster: "west".to_owned(),
            node: "b".to_owned(),
            tunnel: peer.inbound,
            backend_ip: backend.ip(),
            backend_port: Some(backend.port()),
        };
        self.routes.send_modify(|table| {
            table.insert(self.outbound.ip(), Some(self.outbound.port()), target);
        });
    }

    fn bytes_sent(&self, direction: Side) -> u64 {
        self.metrics
            .bytes_sent
            .get_or_create(&DirectionLabels { direction })
            .get()
    }

    fn shutdown(&mut self, runtime: &Runtime) {
        if let Some(tunnel) = self.tunnel.take() {
            NetNs::block_on(runtime, async move {
                tunnel.shutdown(Duration::from_secs(1)).await;
            });
        }
    }
}

/// `a` (east) in the client namespace, `b` (west) in the server namespace with a shared echo
/// backend and an unshared one; `a` routes its VIP to the shared one.
struct Mesh {
    a: Node,
    b: Node,
    shared: EchoBackend,
    unshared: EchoBackend,
    // Dropped in this order: runtimes (and with them every socket), then the namespaces.
    client_rt: Runtime,
    server_rt: Runtime,
    _link: Link,
    _dir: tempfile::TempDir,
}

impl Mesh {
    fn new(tag: &str) -> Self {
        let link = Link::create(tag).expect("create the namespaces and the veth pair");
        let client_rt = link.client.runtime("tunnel-a", 1).expect("client runtime");
        let server_rt = link.server.runtime("tunnel-b", 1).expect("server runtime");
        let dir = tempfile::tempdir().unwrap();
        let east = ClusterCa::new(TRUST_DOMAIN, "east", dir.path());
        let west = ClusterCa::new(TRUST_DOMAIN, "west", dir.path());
        let a = Node::start(&client_rt, &east, "a", CLIENT_IP.into());
        let b = Node::start(&server_rt, &west, "b", SERVER_IP.into());
        let shared = NetNs::block_on(&server_rt, EchoBackend::start(SERVER_IP.into()));
        let unshared = NetNs::block_on(&server_rt, EchoBackend::start(SERVER_IP.into()));
        a.connect_cluster(&west);
        b.connect_cluster(&east);
        b.authz.send_modify(|view| {
            view.shared_backends.insert(shared.addr);
        });
        a.route_to(&b, shared.addr);
        Self {
            a,
            b,
            shared,
            unshared,
            client_rt,
            server_rt,
            _link: link,
            _dir: dir,
        }
    }

    /// Runs `future` in the client namespace, failing after [`STEP`].
    fn in_client<T: Send + 'static>(
        &self,
        what: &'static str,
        future: impl Future<Output = T> + Send + 'static,
    ) -> T {
        NetNs::block_on(&self.client_rt, async move {
            tokio::time::timeout(STEP, future)
                .await
                .unwrap_or_else(|_| panic!("timed out: {what}"))
        })
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        // Only on success: while unwinding a panic, a second one would abort.
        if !std::thread::panicking() {
            self.a.shutdown(&self.client_rt);
            self.b.shutdown(&self.server_rt);
        }
    }
}

/// A pseudo-random pattern, so that a lost, repeated or reordered chunk shows.
fn pattern(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Sends `message` while reading the echo, half-closes, and returns all that came back.
async fn echo_through(addr: SocketAddr, message: Arc<Vec<u8>>) -> std::io::Result<Vec<u8>> {
    let tcp = TcpStream::connect(addr).await?;
    let (mut read, mut write) = tcp.into_split();
    let writer = tokio::spawn(async move {
        write.write_all(&message).await?;
        write.shutdown().await
    });
    let mut reply = Vec::new();
    read.read_to_end(&mut reply).await?;
    writer.await.expect("writer task")?;
    Ok(reply)
}

#[test]
fn bytes_in_equal_bytes_out_across_namespaces() {
    if !clustermesh_tunnel::testing::netns::can_run("the namespaced tunnel test") {
        return;
    }
    const LEN: usize = 32 << 20;
    let mesh = Mesh::new("tun");
    let message = Arc::new(pattern(LEN));

    let sent = message.clone();
    let vip = mesh.a.outbound;
    let reply = mesh
        .in_client("32 MiB echoed through the tunnel", async move {
            echo_through(vip, sent).await
        })
        .expect("echo through the tunnel");
    assert_eq!(reply.len(), LEN, "bytes out");
    assert!(reply == *message, "the echoed bytes differ from those sent");

    // Counted on both nodes: into the tunnel in the client namespace, out of it to the backend
    // in the server namespace.
    assert_eq!(mesh.a.bytes_sent(Side::Outbound), LEN as u64);
    assert_eq!(mesh.b.bytes_sent(Side::Inbound), LEN as u64);
    assert_eq!(mesh.a.metrics.streams_opened(Side::Outbound), 1);
    assert_eq!(mesh.b.metrics.streams_opened(Side::Inbound), 1);
    // The backend was dialed by the receiving node, from inside the server namespace.
    let peers = mesh.shared.peers();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].ip(), IpAddr::from(SERVER_IP), "{peers:?}");
    // And the sender dialed the receiver over the veth pair, not over some loopback.
    assert_eq!(mesh.b.inbound.ip(), IpAddr::from(SERVER_IP));
}

#[test]
fn an_unshared_target_is_refused_across_namespaces() {
    if !clustermesh_tunnel::testing::netns::can_run("the namespaced tunnel test") {
        return;
    }
    let mesh = Mesh::new("tun");
    let unshared = mesh.unshared.addr;

    // The unshared backend is reachable from the client namespace over the veth pair, so a
    // refusal below is the tunnel's authorization, not routing.
    let direct = mesh.in_client("a direct connection to the unshared backend", async move {
        echo_through(unshared, Arc::new(b"direct".to_vec())).await
    });
    assert_eq!(direct.expect("direct connection"), b"direct");
    assert_eq!(mesh.unshared.peers()[0].ip(), IpAddr::from(CLIENT_IP));

    mesh.a.route_to(&mesh.b, unshared);
    let vip = mesh.a.outbound;
    let tunneled = mesh.in_client(
        "a tunneled connection to the unshared backend",
        async move { echo_through(vip, Arc::new(b"let me through".to_vec())).await },
    );
    assert!(
        tunneled.as_ref().is_err() || tunneled.as_ref().unwrap().is_empty(),
        "the unshared backend answered through the tunnel: {tunneled:?}"
    );
    assert_eq!(
        mesh.b
            .metrics
            .inbound_refused(InboundRefusal::NotSharedBackend),
        1
    );
    assert_eq!(mesh.b.metrics.streams_opened(Side::Inbound), 0);
    assert_eq!(mesh.b.bytes_sent(Side::Inbound), 0);
    assert_eq!(mesh.unshared.peers().len(), 1, "the tunnel dialed it");
    // The refusal reached the sender (counted once its stream task saw the answer).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mesh
        .a
        .metrics
        .outbound_refused(OutboundRefusal::RefusedByPeer)
        != 1
    {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for the sender to count the refusal"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    // The same peer connection still carries a shared backend.
    mesh.a.route_to(&mesh.b, mesh.shared.addr);
    let shared = mesh.in_client("a tunneled connection to the shared backend", async move {
        echo_through(vip, Arc::new(b"shared".to_vec())).await
    });
    assert_eq!(
        shared.expect("shared backend through the tunnel"),
        b"shared"
    );
}
