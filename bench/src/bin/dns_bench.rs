//! DNS benchmark: the agent's DNS server answering clusterset names from its view ("cached":
//! no I/O behind the answer) against the forwarding path (a name outside the zone, forwarded
//! to an upstream), in the same run.
//!
//! Both servers run in this process on loopback: the agent's (`clusterset.local`, a view of
//! `--services` services, forwarding to the upstream) and the upstream, a second instance of the
//! same server authoritative for `cluster.local` — so the forwarding case pays exactly one extra
//! hop to an equally fast server. A small closed-loop load program (`--clients` concurrent
//! clients, each one query in flight) measures queries per second and latency percentiles;
//! when Debian's `dnsperf` is installed it is run against both cases too, for its QPS.
//! The servers and the load run on separate single-thread runtimes (the machine has two cores).
//! Results go to `bench-results/dns.json`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use clustermesh_model::Protocol;
use clustermesh_node_agent::dns::zone::{DnsService, DnsView, NamedPort};
use clustermesh_node_agent::dns::{DnsServer, DnsSettings};
use prometheus_client::registry::Registry;

#[derive(Parser, Debug)]
#[command(about = "Measure the agent's DNS server: names from its view vs forwarded names")]
struct Args {
    /// Services in the view.
    #[arg(long, default_value_t = 1000)]
    services: usize,
    /// Concurrent clients of the load program (one query in flight each).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Seconds per case.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Skip dnsperf even if it is installed.
    #[arg(long)]
    no_dnsperf: bool,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "bench-results/dns.json")]
    out: PathBuf,
}

fn view(services: usize, zone_port_name: &str) -> DnsView {
    let mut view = DnsView {
        ready: true,
        services: BTreeMap::new(),
    };
    for i in 0..services {
        view.services.insert(
            ("bench".to_owned(), format!("svc-{i}")),
            std::sync::Arc::new(DnsService {
                headless: false,
                vips: vec![std::net::IpAddr::from([10, 96, (i >> 8) as u8, i as u8])],
                ports: vec![NamedPort {
                    name: zone_port_name.to_owned(),
                    protocol: Protocol::Tcp,
                    port: 80,
                }],
                endpoints: vec![],
            }),
        );
    }
    view
}

/// A DNS query for `name` (type A, class IN, RD set) with ID `id`.
fn query(name: &str, id: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

#[derive(Debug, Clone, serde::Serialize)]
struct CaseResult {
    case: String,
    queries: u64,
    errors: u64,
    qps: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    dnsperf_qps: Option<f64>,
    dnsperf_avg_latency_us: Option<f64>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The closed-loop load program: `clients` tasks, each asking one of `names` in turn.
fn load(
    server: SocketAddr,
    names: &[String],
    clients: usize,
    seconds: u64,
) -> anyhow::Result<(Vec<Duration>, u64, Duration)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let names = names.to_vec();
            tasks.push(tokio::spawn(async move {
                let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
                socket.connect(server).await?;
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut buf = [0u8; 1500];
                let mut i = c;
                while Instant::now() < deadline {
                    let id = (i & 0xffff) as u16;
                    let q = query(&names[i % names.len()], id);
                    i += clients;
                    let t = Instant::now();
                    if socket.send(&q).await.is_err() {
                        errors += 1;
                        continue;
                    }
                    let got = tokio::time::timeout(Duration::from_secs(1), async {
                        loop {
                            let n = socket.recv(&mut buf).await?;
                            // Same ID and NOERROR (rcode in the low 4 bits of byte 3).
                            if n >= 12 && buf[..2] == id.to_be_bytes() {
                                return Ok::<bool, std::io::Error>(buf[3] & 0x0f == 0);
                            }
                        }
                    })
                    .await;
                    match got {
                        Ok(Ok(true)) => latencies.push(t.elapsed()),
                        _ => errors += 1,
                    }
                }
                Ok::<_, std::io::Error>((latencies, errors))
            }));
        }
        let mut all = Vec::new();
        let mut errors = 0;
        for t in tasks {
            let (l, e) = t.await??;
            all.extend(l);
            errors += e;
        }
        all.sort();
        Ok((all, errors, started.elapsed()))
    })
}

/// Runs dnsperf against `server` with `names`; returns (QPS, average latency in µs).
fn dnsperf(
    server: SocketAddr,
    names: &[String],
    seconds: u64,
    clients: usize,
) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("queries");
    std::fs::write(
        &data,
        names.iter().map(|n| format!("{n} A\n")).collect::<String>(),
    )?;
    let out = Command::new("dnsperf")
        .args([
            "-s",
            &server.ip().to_string(),
            "-p",
            &server.port().to_string(),
        ])
        .args(["-d"])
        .arg(&data)
        .args([
            "-l",
            &seconds.to_string(),
            "-c",
            &clients.to_string(),
            "-q",
            &(clients * 4).to_string(),
        ])
        .output()
        .context("running dnsperf")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    match (field("Queries per second:"), field("Average Latency (s):")) {
        (Some(qps), Some(avg)) => Ok((qps, avg * 1e6)),
        _ => bail!("cannot read dnsperf's output: {text}"),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The servers on their own runtime thread.
    let server_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (agent, upstream, _servers) = server_rt.block_on(async {
        let mut registry = Registry::default();
        let (upstream, upstream_feed) = DnsServer::start(
            &DnsSettings {
                listen: "127.0.0.1:0".parse().unwrap(),
                upstream: None,
                ttl_seconds: 5,
                zone: "cluster.local.".into(),
            },
            &mut registry,
        )
        .await?;
        upstream_feed.update(view(args.services, "http"));
        let upstream_addr = upstream.local_addr();
        let (agent, agent_feed) = DnsServer::start(
            &DnsSettings {
                listen: "127.0.0.1:0".parse().unwrap(),
                upstream: Some(upstream_addr),
                ttl_seconds: 5,
                zone: "clusterset.local.".into(),
            },
            &mut Registry::default(),
        )
        .await?;
        agent_feed.update(view(args.services, "http"));
        anyhow::Ok((
            agent.local_addr(),
            upstream_addr,
            (agent, upstream, agent_feed, upstream_feed),
        ))
    })?;
    let server_thread = std::thread::spawn(move || {
        server_rt.block_on(std::future::pending::<()>());
    });
    let _ = &server_thread;
    let _ = upstream;

    let names = |suffix: &str| -> Vec<String> {
        (0..args.services.min(1000))
            .map(|i| format!("svc-{i}.bench.svc.{suffix}"))
            .collect()
    };
    let cases = [
        ("clusterset name (from the view)", names("clusterset.local")),
        ("forwarded name (baseline)", names("cluster.local")),
    ];
    let dnsperf_ok = !args.no_dnsperf && Command::new("dnsperf").arg("-h").output().is_ok();
    let mut results = Vec::new();
    for (case, names) in &cases {
        let (latencies, errors, elapsed) = load(agent, names, args.clients, args.seconds)?;
        let (dnsperf_qps, dnsperf_avg) = if dnsperf_ok {
            match dnsperf(agent, names, args.seconds, args.clients) {
                Ok((q, l)) => (Some(q), Some(l)),
                Err(e) => {
                    eprintln!("dnsperf: {e}");
                    (None, None)
                }
            }
        } else {
            (None, None)
        };
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        results.push(CaseResult {
            case: (*case).to_owned(),
            queries: latencies.len() as u64,
            errors,
            qps: latencies.len() as f64 / elapsed.as_secs_f64(),
            p50_us: us(percentile(&latencies, 0.50)),
            p99_us: us(percentile(&latencies, 0.99)),
            max_us: us(latencies.last().copied().unwrap_or_default()),
            dnsperf_qps,
            dnsperf_avg_latency_us: dnsperf_avg,
        });
    }

    println!(
        "DNS: {} services in the view, {} clients, {} s per case, loopback, one process",
        args.services, args.clients, args.seconds
    );
    println!(
        "{:<34} {:>10} {:>8} {:>10} {:>10} {:>10} {:>14} {:>16}",
        "case", "queries", "errors", "QPS", "p50 µs", "p99 µs", "dnsperf QPS", "dnsperf avg µs"
    );
    for r in &results {
        let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        println!(
            "{:<34} {:>10} {:>8} {:>10.0} {:>10.0} {:>10.0} {:>14} {:>16}",
            r.case,
            r.queries,
            r.errors,
            r.qps,
            r.p50_us,
            r.p99_us,
            opt(r.dnsperf_qps),
            opt(r.dnsperf_avg_latency_us)
        );
    }
    if let [view, forward] = results.as_slice() {
        println!(
            "view vs forwarding: {:.1}x the QPS, p99 {:.0} µs vs {:.0} µs",
            view.qps / forward.qps.max(1.0),
            view.p99_us,
            forward.p99_us
        );
    }
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &args.out,
        serde_json::to_vec_pretty(&serde_json::json!({
            "services": args.services,
            "clients": args.clients,
            "seconds": args.seconds,
            "results": results,
        }))?,
    )?;
    println!("results written to {}", args.out.display());
    std::process::exit(0);
}
