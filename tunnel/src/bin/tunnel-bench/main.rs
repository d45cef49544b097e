//! tunnel-bench: the clustermesh tunnel against plain TCP, stunnel4 and HAProxy TLS, in the
//! same run, on the same topology.
//!
//! Two network namespaces joined by a veth pair: the client namespace (10.250.0.1) runs the
//! load generator and the sending side of each case, the server namespace (10.250.0.2) the
//! receiving side and one backend that every case reaches. The cases:
//!
//! - plain TCP: load generator → backend;
//! - clustermesh tunnel: → outbound listener of node `a` → HTTP/2 CONNECT over mutual TLS 1.3
//!   → node `b` → backend;
//! - stunnel4: → stunnel (client mode) → mutual TLS 1.3 → stunnel (server) → backend;
//! - HAProxy: → haproxy (`server … ssl`) → mutual TLS 1.3 → haproxy (`bind … ssl`) → backend.
//!
//! For each: throughput with one stream and with N parallel streams (client → backend), the
//! round-trip time of a small ping on an established connection, and connect + one round trip
//! on a new connection. Rounds interleave the cases so that drift on a shared machine hits all
//! of them. It prints the tables, judges the targets and writes `bench-results/tunnel.json`.
//!
//! Needs root (namespaces). Installs stunnel4 and haproxy with apt-get if they are missing
//! (unless `--no-install`). Namespaces, processes and files are removed at the end, on error
//! and on Ctrl-C; namespaces left by a killed run are removed at the next start.

mod load;
mod proxies;
mod report;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use clustermesh_tunnel::testing::ClusterCa;
use clustermesh_tunnel::testing::netns::{self, Link, NetNs, SERVER_IP};
use clustermesh_tunnel::{
    AllowAll, AuthorizationView, Metrics, RemoteTarget, RoutingTable, Tunnel, TunnelConfig,
    TunnelInputs,
};
use nix::sys::signal::{SigSet, Signal};
use serde_json::json;
use tokio::sync::watch;

use crate::proxies::{Side, Tools};
use crate::report::Measured;

#[derive(Parser, Debug)]
#[command(about = "Tunnel throughput and latency against plain TCP, stunnel4 and HAProxy TLS")]
struct Args {
    /// MiB sent per throughput measurement (split over the streams in the parallel one).
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Streams in the parallel throughput measurement.
    #[arg(long, default_value_t = 16)]
    parallel: usize,
    /// Rounds; each measures every case once. Throughput is the median round.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Pings on an established connection, per case and round.
    #[arg(long, default_value_t = 2000)]
    pings: usize,
    /// New connections, per case and round.
    #[arg(long, default_value_t = 300)]
    connects: usize,
    /// Runtime worker threads of each tunnel node, and `nbthread` of each HAProxy.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Where the result JSON goes.
    #[arg(long, default_value = "bench-results/tunnel.json")]
    output: PathBuf,
    /// Fail instead of installing missing stunnel4/haproxy packages.
    #[arg(long)]
    no_install: bool,
}

const TRUST_DOMAIN: &str = "bench.clustermesh";
const BACKEND_PORT: u16 = 9000;
const TUNNEL_PORT: u16 = 4244;
const STUNNEL_PORT: u16 = 4245;
const HAPROXY_PORT: u16 = 4246;
const LOCAL_TUNNEL: u16 = 15001;
const LOCAL_STUNNEL: u16 = 15002;
const LOCAL_HAPROXY: u16 = 15003;

/// What a signal handler must remove before the process exits (drop guards do not run then).
static PENDING: Mutex<Vec<Pending>> = Mutex::new(Vec::new());

enum Pending {
    Netns(String),
    Dir(PathBuf),
}

fn cleanup_pending() {
    let pending = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|e| e.into_inner()));
    for item in pending {
        match item {
            // Kills the proxies too: they run inside the namespaces.
            Pending::Netns(name) => netns::delete(&name),
            Pending::Dir(path) => {
                let _ = std::fs::remove_dir_all(path);
            }
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Block the signals in every thread (threads inherit the mask; child processes get a
    // clean one from std) and take them on one thread, which cleans up and exits.
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(signal);
    }
    if let Err(error) = signals.thread_block() {
        eprintln!("error: cannot block signals: {error}");
        return ExitCode::FAILURE;
    }
    std::thread::spawn(move || {
        if let Ok(signal) = signals.wait() {
            eprintln!("\n{signal}: removing namespaces, processes and files");
            cleanup_pending();
            std::process::exit(130);
        }
    });
    let result = run(&args);
    cleanup_pending();
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("some targets were missed (see above)");
            ExitCode::from(2)
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// A tunnel node on its own runtime inside its namespace.
struct TunnelNode {
    runtime: tokio::runtime::Runtime,
    tunnel: Option<Tunnel>,
    routes: watch::Sender<RoutingTable>,
    authz: watch::Sender<AuthorizationView>,
}

impl TunnelNode {
    fn start(
        netns: &NetNs,
        threads: usize,
        ca: &ClusterCa,
        node: &str,
        inbound: SocketAddr,
        outbound: SocketAddr,
    ) -> anyhow::Result<Self> {
        let runtime = netns.runtime(threads)?;
        let config = TunnelConfig::new(TRUST_DOMAIN, &ca.cluster, node, ca.node(node));
        let (routes, routes_rx) = watch::channel(RoutingTable::new());
        let (authz, authz_rx) = watch::channel(AuthorizationView::default());
        let tunnel = NetNs::block_on(&runtime, async move {
            let inbound = tokio::net::TcpListener::bind(inbound)
                .await
                .with_context(|| format!("bind {inbound}"))?;
            let outbound = tokio::net::TcpListener::bind(outbound)
                .await
                .with_context(|| format!("bind {outbound}"))?;
            let metrics = Arc::new(Metrics::new(&mut Default::default()));
            let inputs = TunnelInputs {
                routes: routes_rx,
                authz: authz_rx,
                policy: Arc::new(AllowAll),
            };
            anyhow::Ok(Tunnel::start(config, inputs, metrics, inbound, outbound)?)
        })?;
        Ok(Self {
            runtime,
            tunnel: Some(tunnel),
            routes,
            authz,
        })
    }

    fn stop(mut self) {
        if let Some(tunnel) = self.tunnel.take() {
            NetNs::block_on(&self.runtime, async move {
                tunnel.shutdown(Duration::from_secs(2)).await;
            });
        }
    }
}

fn run(args: &Args) -> anyhow::Result<bool> {
    if let Some(reason) = netns::unavailable() {
        bail!("tunnel-bench {reason}");
    }
    if args.parallel == 0 || args.rounds == 0 || args.pings == 0 || args.connects == 0 {
        bail!("--parallel, --rounds, --pings and --connects must be at least 1");
    }
    let tools = Tools::find_or_install(!args.no_install)?;
    let (stunnel_version, haproxy_version) = tools.versions();
    for name in netns::remove_leftovers("bench") {
        eprintln!("removed namespace {name} left by an earlier run");
    }

    let link = Link::create("bench").context("create the benchmark namespaces")?;
    {
        let mut pending = PENDING.lock().unwrap();
        pending.push(Pending::Netns(link.client.name().to_owned()));
        pending.push(Pending::Netns(link.server.name().to_owned()));
    }
    let dir = tempfile::Builder::new().prefix("cmt-bench-").tempdir()?;
    PENDING
        .lock()
        .unwrap()
        .push(Pending::Dir(dir.path().to_owned()));
    let east = ClusterCa::new(TRUST_DOMAIN, "east", dir.path());
    let west = ClusterCa::new(TRUST_DOMAIN, "west", dir.path());

    let backend = SocketAddr::from((SERVER_IP, BACKEND_PORT));
    let backend_rt = link.server.runtime(2)?;
    NetNs::block_on(&backend_rt, async move {
        let listener = tokio::net::TcpListener::bind(backend).await?;
        tokio::spawn(load::serve_backend(listener));
        std::io::Result::Ok(())
    })
    .context("start the backend")?;

    let local = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let server_tunnel = SocketAddr::from((SERVER_IP, TUNNEL_PORT));
    let a = TunnelNode::start(
        &link.client,
        args.threads,
        &east,
        "a",
        SocketAddr::from((netns::CLIENT_IP, TUNNEL_PORT)),
        local(LOCAL_TUNNEL),
    )?;
    let b = TunnelNode::start(
        &link.server,
        args.threads,
        &west,
        "b",
        server_tunnel,
        local(LOCAL_TUNNEL),
    )?;
    a.authz.send_modify(|view| {
        view.connected.insert("west".into(), west.bundle());
    });
    b.authz.send_modify(|view| {
        view.connected.insert("east".into(), east.bundle());
        view.shared_backends.insert(backend);
    });
    a.routes.send_modify(|table| {
        table.insert(
            Ipv4Addr::LOCALHOST.into(),
            Some(LOCAL_TUNNEL),
            RemoteTarget {
                cluster: "west".into(),
                node: "b".into(),
                tunnel: server_tunnel,
                backend_ip: backend.ip(),
                backend_port: Some(BACKEND_PORT),
            },
        );
    });

    let a_creds = east.node("a-proxy");
    let b_creds = west.node("b-proxy");
    let client_side = || Side {
        own: &a_creds,
        peer_ca: west.ca_path(),
    };
    let server_side = || Side {
        own: &b_creds,
        peer_ca: east.ca_path(),
    };
    let mut stunnel = proxies::start_stunnel(
        &tools,
        dir.path(),
        &link.client,
        &link.server,
        client_side(),
        server_side(),
        local(LOCAL_STUNNEL),
        SocketAddr::from((SERVER_IP, STUNNEL_PORT)),
        backend,
    )?;
    let mut haproxy = proxies::start_haproxy(
        &tools,
        dir.path(),
        &link.client,
        &link.server,
        client_side(),
        server_side(),
        local(LOCAL_HAPROXY),
        SocketAddr::from((SERVER_IP, HAPROXY_PORT)),
        backend,
        args.threads,
    )?;

    let cases: [(&'static str, SocketAddr); 4] = [
        ("plain TCP", backend),
        ("clustermesh tunnel", local(LOCAL_TUNNEL)),
        ("stunnel4", local(LOCAL_STUNNEL)),
        ("HAProxy", local(LOCAL_HAPROXY)),
    ];
    let in_client = |f: &mut (dyn FnMut() -> std::io::Result<()> + Send)| {
        link.client.run(f).map_err(std::io::Error::other)?
    };
    proxies::wait_ready("plain TCP", &mut [], || {
        in_client(&mut || load::probe(backend))
    })?;
    proxies::wait_ready("the tunnel", &mut [], || {
        in_client(&mut || load::probe(local(LOCAL_TUNNEL)))
    })?;
    proxies::wait_ready("stunnel4", &mut stunnel, || {
        in_client(&mut || load::probe(local(LOCAL_STUNNEL)))
    })?;
    proxies::wait_ready("HAProxy", &mut haproxy, || {
        in_client(&mut || load::probe(local(LOCAL_HAPROXY)))
    })?;

    let mut measured: Vec<Measured> = cases
        .iter()
        .map(|(name, _)| Measured {
            name,
            ..Default::default()
        })
        .collect();
    let bytes = args.mib << 20;
    let parallel = args.parallel;
    let mb = |bps: f64| bps / 1e6;
    link.client.run(|| -> anyhow::Result<()> {
        eprintln!("warming up every case");
        for (name, addr) in cases {
            load::throughput(addr, 64 << 20, 1).with_context(|| format!("{name}: warm-up"))?;
            load::pings(addr, 1, 200).with_context(|| format!("{name}: warm-up"))?;
            load::connects(addr, 50).with_context(|| format!("{name}: warm-up"))?;
        }
        for round in 0..args.rounds {
            // Rotate the order so no case always runs first or right after a heavy one.
            let order: Vec<usize> = (0..cases.len()).map(|i| (i + round) % cases.len()).collect();
            for &i in &order {
                let (name, addr) = cases[i];
                let single = load::throughput(addr, bytes, 1)
                    .with_context(|| format!("{name}: 1-stream throughput"))?;
                let many = load::throughput(addr, bytes, parallel)
                    .with_context(|| format!("{name}: {parallel}-stream throughput"))?;
                measured[i].single.push(single);
                measured[i].parallel.push(many);
                eprintln!(
                    "round {}/{}: {name:<20} 1 stream {:>6.0} MB/s, {parallel} streams {:>6.0} MB/s",
                    round + 1,
                    args.rounds,
                    mb(single),
                    mb(many)
                );
            }
            for &i in &order {
                let (name, addr) = cases[i];
                let pings = load::pings(addr, args.pings, 50)
                    .with_context(|| format!("{name}: pings"))?;
                let connects = load::connects(addr, args.connects)
                    .with_context(|| format!("{name}: new connections"))?;
                measured[i].existing.extend(pings);
                measured[i].new.extend(connects);
            }
        }
        Ok(())
    })??;
    for proxy in stunnel.iter_mut().chain(haproxy.iter_mut()) {
        proxy.check_alive()?;
    }

    let summaries: Vec<(&str, report::Summary)> =
        measured.iter().map(|m| (m.name, m.summary())).collect();
    let targets = report::targets(&summaries[0].1, &summaries[1].1, &summaries[2].1, parallel);
    report::print(&summaries, &targets, parallel);
    let defaults = TunnelConfig::new(TRUST_DOMAIN, "east", "a", a_creds.clone());
    let context = json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "loadavg_at_end": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "topology": "client netns 10.250.0.1 <-veth-> server netns 10.250.0.2; all cases share one backend in the server netns",
        "tls": "mutual TLS 1.3 everywhere, ECDSA P-256 certificates from per-cluster CAs",
        "mib_per_throughput_measurement": args.mib,
        "parallel_streams": parallel,
        "rounds": args.rounds,
        "pings_per_round": args.pings,
        "ping_bytes": load::PING,
        "connects_per_round": args.connects,
        "tunnel_threads_per_node": args.threads,
        "haproxy_nbthread": args.threads,
        "tunnel_stream_window": defaults.stream_window,
        "tunnel_connection_window": defaults.connection_window,
        "stunnel": stunnel_version,
        "haproxy": haproxy_version,
        "mb": "10^6 bytes",
    });
    let result = report::json(&summaries, &targets, context);
    if let Some(parent) = args.output.parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&args.output, serde_json::to_string_pretty(&result)? + "\n")
        .with_context(|| format!("write {}", args.output.display()))?;
    println!("\nwrote {}", args.output.display());

    a.stop();
    b.stop();
    drop(stunnel);
    drop(haproxy);
    drop(backend_rt);
    drop(link);
    Ok(targets.iter().all(|t| t.met))
}
