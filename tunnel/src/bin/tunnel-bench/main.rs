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
//! - HAProxy: → haproxy (`server … ssl`) → mutual TLS 1.3 → haproxy (`bind … ssl`) → backend;
//! - TCP relay ×2: → a plain user-space relay → another one → backend, no TLS: the cost of the
//!   two extra TCP hops every proxy here has, i.e. the ceiling for the TLS cases (not judged).
//!
//! For each: throughput with one stream and with N parallel streams (client → backend), the
//! round-trip time of a small ping on an established connection, and connect + one round trip
//! on a new connection. Rounds interleave the cases so that drift on a shared machine hits all
//! of them. It prints the tables, judges the targets and writes `bench-results/tunnel.json`.
//!
//! Needs root (namespaces). Installs stunnel4 and haproxy with apt-get if they are missing
//! (unless `--no-install`). Namespaces, processes and files are removed at the end, on error
//! and on Ctrl-C; namespaces left by a killed run are removed at the next start.

mod cpu;
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
    /// Runtime worker threads of each tunnel node and of each relay, and `nbthread` of each
    /// HAProxy (stunnel has a thread per connection). Default: half the CPUs, at least one:
    /// the two simulated nodes share this machine, so each gets half of it.
    #[arg(long)]
    threads: Option<usize>,
    /// Where the result JSON goes.
    #[arg(long, default_value = "bench-results/tunnel.json")]
    output: PathBuf,
    /// Fail instead of installing missing stunnel4/haproxy packages.
    #[arg(long)]
    no_install: bool,
    /// Cases to run (targets are judged only with plain, tunnel and stunnel).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "plain,relay,tunnel,stunnel,haproxy"
    )]
    cases: Vec<CaseKind>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CaseKind {
    Plain,
    Relay,
    Tunnel,
    Stunnel,
    Haproxy,
}

impl CaseKind {
    fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain TCP",
            Self::Relay => "TCP relay x2 no TLS",
            Self::Tunnel => "clustermesh tunnel",
            Self::Stunnel => "stunnel4",
            Self::Haproxy => "HAProxy",
        }
    }
}

const TRUST_DOMAIN: &str = "bench.clustermesh";
const BACKEND_PORT: u16 = 9000;
const TUNNEL_PORT: u16 = 4244;
const STUNNEL_PORT: u16 = 4245;
const HAPROXY_PORT: u16 = 4246;
const LOCAL_TUNNEL: u16 = 15001;
const LOCAL_STUNNEL: u16 = 15002;
const LOCAL_HAPROXY: u16 = 15003;
const RELAY_PORT: u16 = 4247;
const LOCAL_RELAY: u16 = 15004;

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
        let runtime = netns.runtime(&format!("tunnel-{node}"), threads)?;
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
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or((cpus / 2).max(1));
    let loadavg = || {
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let load_at_start = loadavg();
    if let Some(load) = load_at_start
        .split_whitespace()
        .next()
        .and_then(|l| l.parse::<f64>().ok())
        && load > cpus as f64 / 2.0
    {
        eprintln!(
            "warning: load average {load} on {cpus} CPUs before the start: other work shares \
             this machine and the numbers will be noisy (the CPU seconds per GB less so)"
        );
    }
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
    let backend_rt = link.server.runtime("backend", 2)?;
    NetNs::block_on(&backend_rt, async move {
        let listener = tokio::net::TcpListener::bind(backend).await?;
        tokio::spawn(load::serve_backend(listener));
        std::io::Result::Ok(())
    })
    .context("start the backend")?;

    let local = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let wanted = |kind| args.cases.contains(&kind);
    let in_client = |f: &mut (dyn FnMut() -> std::io::Result<()> + Send)| {
        link.client.run(f).map_err(std::io::Error::other)?
    };
    let mut cases: Vec<(CaseKind, SocketAddr, cpu::Meter)> = Vec::new();
    // Everything that runs for the measurement; stopped in reverse order at the end.
    let mut proxies_running: Vec<proxies::Proxy> = Vec::new();
    let mut runtimes: Vec<tokio::runtime::Runtime> = Vec::new();
    let mut tunnel_nodes: Vec<TunnelNode> = Vec::new();

    if wanted(CaseKind::Plain) {
        cases.push((CaseKind::Plain, backend, cpu::Meter::None));
    }
    if wanted(CaseKind::Relay) {
        let server_relay = SocketAddr::from((SERVER_IP, RELAY_PORT));
        for (netns, name, listen, to) in [
            (&link.server, "relay-b", server_relay, backend),
            (&link.client, "relay-a", local(LOCAL_RELAY), server_relay),
        ] {
            let runtime = netns.runtime(name, threads)?;
            NetNs::block_on(&runtime, async move {
                let listener = tokio::net::TcpListener::bind(listen).await?;
                tokio::spawn(load::serve_relay(listener, to));
                std::io::Result::Ok(())
            })
            .with_context(|| format!("start {name}"))?;
            runtimes.push(runtime);
        }
        cases.push((
            CaseKind::Relay,
            local(LOCAL_RELAY),
            cpu::Meter::Threads(vec!["relay-"]),
        ));
    }
    let a_creds = east.node("a-proxy");
    if wanted(CaseKind::Tunnel) {
        let server_tunnel = SocketAddr::from((SERVER_IP, TUNNEL_PORT));
        let a = TunnelNode::start(
            &link.client,
            threads,
            &east,
            "a",
            SocketAddr::from((netns::CLIENT_IP, TUNNEL_PORT)),
            local(LOCAL_TUNNEL),
        )?;
        let b = TunnelNode::start(
            &link.server,
            threads,
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
        tunnel_nodes.extend([a, b]);
        cases.push((
            CaseKind::Tunnel,
            local(LOCAL_TUNNEL),
            cpu::Meter::Threads(vec!["tunnel-"]),
        ));
    }
    let b_creds = west.node("b-proxy");
    let client_side = || Side {
        own: &a_creds,
        peer_ca: west.ca_path(),
    };
    let server_side = || Side {
        own: &b_creds,
        peer_ca: east.ca_path(),
    };
    if wanted(CaseKind::Stunnel) {
        let started = proxies::start_stunnel(
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
        let pids = started.iter().map(proxies::Proxy::pid).collect();
        proxies_running.extend(started);
        cases.push((
            CaseKind::Stunnel,
            local(LOCAL_STUNNEL),
            cpu::Meter::Processes(pids),
        ));
    }
    if wanted(CaseKind::Haproxy) {
        let started = proxies::start_haproxy(
            &tools,
            dir.path(),
            &link.client,
            &link.server,
            client_side(),
            server_side(),
            local(LOCAL_HAPROXY),
            SocketAddr::from((SERVER_IP, HAPROXY_PORT)),
            backend,
            threads,
        )?;
        let pids = started.iter().map(proxies::Proxy::pid).collect();
        proxies_running.extend(started);
        cases.push((
            CaseKind::Haproxy,
            local(LOCAL_HAPROXY),
            cpu::Meter::Processes(pids),
        ));
    }
    if cases.is_empty() {
        bail!("no case selected (--cases)");
    }
    for &(kind, addr, _) in &cases {
        proxies::wait_ready(kind.name(), &mut proxies_running, || {
            in_client(&mut || load::probe(addr))
        })?;
    }

    let mut measured: Vec<Measured> = cases
        .iter()
        .map(|(kind, _, _)| Measured {
            name: kind.name(),
            ..Default::default()
        })
        .collect();
    let bytes = args.mib << 20;
    let parallel = args.parallel;
    let mb = |bps: f64| bps / 1e6;
    link.client.run(|| -> anyhow::Result<()> {
        eprintln!("warming up every case");
        for &(kind, addr, _) in &cases {
            let name = kind.name();
            load::throughput(addr, 64 << 20, 1).with_context(|| format!("{name}: warm-up"))?;
            load::pings(addr, 1, 200).with_context(|| format!("{name}: warm-up"))?;
            load::connects(addr, 50).with_context(|| format!("{name}: warm-up"))?;
        }
        for round in 0..args.rounds {
            // Rotate the order so no case always runs first or right after a heavy one.
            let order: Vec<usize> = (0..cases.len())
                .map(|i| (i + round) % cases.len())
                .collect();
            for &i in &order {
                let (kind, addr, ref meter) = cases[i];
                let name = kind.name();
                // CPU seconds of the proxy per GB carried.
                let cpu_per_gb =
                    |before: Duration| (meter.read() - before).as_secs_f64() / (bytes as f64 / 1e9);
                let before = meter.read();
                let single = load::throughput(addr, bytes, 1)
                    .with_context(|| format!("{name}: 1-stream throughput"))?;
                let single_cpu = cpu_per_gb(before);
                let before = meter.read();
                let many = load::throughput(addr, bytes, parallel)
                    .with_context(|| format!("{name}: {parallel}-stream throughput"))?;
                let many_cpu = cpu_per_gb(before);
                measured[i].single.push(single);
                measured[i].parallel.push(many);
                measured[i].single_cpu.push(single_cpu);
                measured[i].parallel_cpu.push(many_cpu);
                eprintln!(
                    "round {}/{}: {name:<20} 1 stream {:>6.0} MB/s ({single_cpu:.2} CPU s/GB), \
                     {parallel} streams {:>6.0} MB/s ({many_cpu:.2} CPU s/GB)",
                    round + 1,
                    args.rounds,
                    mb(single),
                    mb(many)
                );
            }
            for &i in &order {
                let (kind, addr, _) = cases[i];
                let name = kind.name();
                let pings =
                    load::pings(addr, args.pings, 50).with_context(|| format!("{name}: pings"))?;
                let connects = load::connects(addr, args.connects)
                    .with_context(|| format!("{name}: new connections"))?;
                measured[i].existing.extend(pings);
                measured[i].new.extend(connects);
            }
        }
        Ok(())
    })??;
    for proxy in &mut proxies_running {
        proxy.check_alive()?;
    }

    let summaries: Vec<(&str, report::Summary)> =
        measured.iter().map(|m| (m.name, m.summary())).collect();
    let summary_of = |kind: CaseKind| {
        summaries
            .iter()
            .find(|(name, _)| *name == kind.name())
            .map(|(_, s)| *s)
    };
    let targets = match (
        summary_of(CaseKind::Plain),
        summary_of(CaseKind::Tunnel),
        summary_of(CaseKind::Stunnel),
    ) {
        (Some(plain), Some(tunnel), Some(stunnel)) => {
            report::targets(&plain, &tunnel, &stunnel, parallel)
        }
        _ => Vec::new(),
    };
    println!(
        "\n{cpus} CPUs; {threads} thread(s) per tunnel node, relay side and HAProxy; \
         {} MiB per throughput measurement, {} rounds; load average {} -> {}",
        args.mib,
        args.rounds,
        load_at_start.split_whitespace().next().unwrap_or("?"),
        loadavg().split_whitespace().next().unwrap_or("?"),
    );
    report::print(
        &summaries,
        summary_of(CaseKind::Stunnel),
        &targets,
        parallel,
    );
    let defaults = TunnelConfig::new(TRUST_DOMAIN, "east", "a", a_creds.clone());
    let context = json!({
        "cpus": cpus,
        "loadavg_at_start": load_at_start,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "loadavg_at_end": loadavg(),
        "topology": "client netns 10.250.0.1 <-veth-> server netns 10.250.0.2; all cases share one backend in the server netns",
        "tls": "mutual TLS 1.3 everywhere, ECDSA P-256 certificates from per-cluster CAs",
        "mib_per_throughput_measurement": args.mib,
        "parallel_streams": parallel,
        "rounds": args.rounds,
        "pings_per_round": args.pings,
        "ping_bytes": load::PING,
        "connects_per_round": args.connects,
        "cases": args.cases.iter().map(|k| k.name()).collect::<Vec<_>>(),
        "tunnel_threads_per_node": threads,
        "relay_threads_per_side": threads,
        "haproxy_nbthread": threads,
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

    for node in tunnel_nodes {
        node.stop();
    }
    drop(proxies_running);
    drop(runtimes);
    drop(backend_rt);
    drop(link);
    Ok(!targets.is_empty() && targets.iter().all(|t| t.met))
}
