//! Apiserver benchmark: publish N global services with M endpoints from manifests, then mirror
//! them into a second cluster.
//!
//! Reports, in one run:
//! - time to full sync: apiserver start → `/readyz` says the first full view is published;
//! - mirror lag: a put into cluster A's etcd → the copy in cluster B's `cache/`, median/p99,
//!   against the baseline of a plain etcd watch (put → event on the same etcd);
//! - peak RSS of both apiservers.
//!
//! Runs the real `clustermesh-apiserver` binary (build it first:
//! `cargo build --release -p clustermesh-apiserver -p clustermesh-bench`), two real etcds, and
//! writes `bench-results/apiserver.json`.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use clustermesh_store::{EtcdConfig, WatchEvent, WatchReader, connect};
use clustermesh_testkit::EtcdServer;

#[derive(Parser, Debug)]
#[command(
    about = "Measure the apiserver's time to full sync, mirror lag and memory against real etcds"
)]
struct Args {
    /// Global services to publish.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Ready endpoints (pods) per service.
    #[arg(long, default_value_t = 10)]
    endpoints_per_service: usize,
    /// Mirror-lag samples.
    #[arg(long, default_value_t = 200)]
    lag_samples: usize,
    /// The apiserver binary (default: next to this program).
    #[arg(long)]
    apiserver_bin: Option<PathBuf>,
    #[arg(long, default_value = "bench-results/apiserver.json")]
    out: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Writes one file per service: the Service, its EndpointSlice and its pods.
fn write_manifests(dir: &Path, services: usize, per_service: usize) -> anyhow::Result<()> {
    let nodes = 100;
    let mut f = std::fs::File::create(dir.join("nodes.yaml"))?;
    for n in 0..nodes {
        writeln!(
            f,
            "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-{n}\nspec:\n  podCIDR: 10.{}.{}.0/24\nstatus:\n  addresses:\n  - type: InternalIP\n    address: 192.168.{}.{}\n---",
            100 + n / 256,
            n % 256,
            n / 256,
            n % 256 + 1
        )?;
    }
    for s in 0..services {
        let mut text = format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{s}\n  namespace: bench\n  annotations:\n    clustermesh.io/global: \"true\"\nspec:\n  clusterIP: 10.96.{}.{}\n  ports:\n  - name: http\n    port: 80\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: svc-{s}-x\n  namespace: bench\n  labels:\n    kubernetes.io/service-name: svc-{s}\naddressType: IPv4\nports:\n- name: http\n  port: 8080\n  protocol: TCP\nendpoints:\n",
            s / 256,
            s % 256
        );
        let ip = |e: usize| {
            let i = s * per_service + e;
            format!("10.{}.{}.{}", 128 + i / 65536, (i / 256) % 256, i % 256)
        };
        for e in 0..per_service {
            text.push_str(&format!(
                "- addresses: [\"{}\"]\n  nodeName: node-{}\n  conditions:\n    ready: true\n",
                ip(e),
                (s + e) % nodes
            ));
        }
        for e in 0..per_service {
            text.push_str(&format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: svc-{s}-{e}\n  namespace: bench\n  labels:\n    app: svc-{s}\nspec:\n  nodeName: node-{}\nstatus:\n  phase: Running\n  podIP: {}\n",
                (s + e) % nodes,
                ip(e)
            ));
        }
        std::fs::write(dir.join(format!("svc-{s}.yaml")), text)?;
    }
    Ok(())
}

struct Apiserver {
    child: Child,
    health: u16,
}

impl Drop for Apiserver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Apiserver {
    fn start(
        bin: &Path,
        name: &str,
        id: u32,
        etcd: &str,
        manifests: &Path,
        peers: Option<&Path>,
        log: &Path,
    ) -> anyhow::Result<Apiserver> {
        let health = free_port();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--cluster-name={name}"))
            .arg(format!("--cluster-id={id}"))
            .arg(format!("--etcd-endpoints={etcd}"))
            .arg("--source=manifests")
            .arg(format!("--manifests-dir={}", manifests.display()))
            .arg(format!("--health-addr=127.0.0.1:{health}"))
            .arg(format!("--status-addr=127.0.0.1:{}", free_port()))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log)?);
        if let Some(peers) = peers {
            cmd.arg(format!("--peers-dir={}", peers.display()));
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {} (build it with cargo build --release -p clustermesh-apiserver)",
                bin.display()
            )
        })?;
        Ok(Apiserver { child, health })
    }

    fn ready(&self) -> bool {
        use std::io::Read;
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.health)) else {
            return false;
        };
        let _ = s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n");
        let mut response = String::new();
        let _ = s.read_to_string(&mut response);
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
    }

    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// put → the watch event for that key, `samples` times.
async fn lag(
    put: &clustermesh_store::Client,
    watch_client: &clustermesh_store::Client,
    put_prefix: &str,
    watch_prefix: &str,
    value: impl Fn(usize) -> Vec<u8>,
    samples: usize,
) -> anyhow::Result<Vec<Duration>> {
    let (_reader, mut events) =
        WatchReader::spawn(watch_client.clone(), watch_prefix.to_owned(), 4096);
    loop {
        match events.recv().await {
            Some(WatchEvent::InitDone) => break,
            Some(_) => {}
            None => bail!("watch reader stopped"),
        }
    }
    let mut put = put.clone();
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let name = format!("lag-{i}");
        let start = Instant::now();
        put.put(format!("{put_prefix}{name}"), value(i), None)
            .await?;
        let want = format!("{watch_prefix}{name}");
        loop {
            match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                Ok(Some(WatchEvent::Upsert(e))) if e.key == want => break,
                Ok(Some(_)) => {}
                Ok(None) => bail!("watch reader stopped"),
                Err(_) => bail!("{want} did not appear within 10 s"),
            }
        }
        out.push(start.elapsed());
    }
    out.sort();
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = match &args.apiserver_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("clustermesh-apiserver"),
    };
    let work = tempfile::tempdir()?;
    let (a_dir, b_dir, peers) = (
        work.path().join("a"),
        work.path().join("b"),
        work.path().join("peers"),
    );
    for d in [&a_dir, &b_dir, &peers] {
        std::fs::create_dir_all(d)?;
    }
    let endpoints = args.services * args.endpoints_per_service;
    eprintln!(
        "writing manifests: {} services, {endpoints} endpoints ...",
        args.services
    );
    write_manifests(&a_dir, args.services, args.endpoints_per_service)?;

    eprintln!("starting two etcds ...");
    let (etcd_a, etcd_b) = (EtcdServer::start(), EtcdServer::start());

    eprintln!("apiserver east: publishing ...");
    let start = Instant::now();
    let east = Apiserver::start(
        &bin,
        "east",
        1,
        &etcd_a.endpoint(),
        &a_dir,
        None,
        &work.path().join("east.log"),
    )?;
    while !east.ready() {
        if start.elapsed() > Duration::from_secs(600) {
            bail!("east not ready after 10 minutes; see its log");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let full_sync = start.elapsed();

    eprintln!("apiserver west: mirroring east ...");
    std::fs::write(
        peers.join("east.yaml"),
        format!(
            "name: east\nid: 1\nendpoints: [\"{}\"]\n",
            etcd_a.endpoint()
        ),
    )?;
    let start = Instant::now();
    let west = Apiserver::start(
        &bin,
        "west",
        2,
        &etcd_b.endpoint(),
        &b_dir,
        Some(&peers),
        &work.path().join("west.log"),
    )?;
    let (client_a, client_b) = (
        connect(&EtcdConfig::plain(etcd_a.endpoint())).await?,
        connect(&EtcdConfig::plain(etcd_b.endpoint())).await?,
    );
    let marker = "clustermesh/cache/synced/east/endpoints";
    loop {
        if client_b.clone().get(marker, None).await?.count() == 1 {
            break;
        }
        if start.elapsed() > Duration::from_secs(600) {
            bail!("west did not mirror east within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let full_mirror = start.elapsed();

    eprintln!("measuring lag ({} samples each) ...", args.lag_samples);
    let service = |i: usize| {
        format!(
            r#"{{"cluster":"east","clusterID":1,"namespace":"lag","name":"lag-{i}","frontends":{{"10.97.0.1":{{"http":{{"Protocol":"TCP","Port":80}}}}}},"backends":{{"10.200.0.1":{{"http":{{"Protocol":"TCP","Port":8080}}}}}}}}"#
        )
        .into_bytes()
    };
    let baseline = lag(
        &client_a,
        &client_a,
        "bench/plain/",
        "bench/plain/",
        service,
        args.lag_samples,
    )
    .await?;
    let mirror = lag(
        &client_a,
        &client_b,
        "clustermesh/state/services/v1/east/lag/",
        "clustermesh/cache/services/v1/east/lag/",
        service,
        args.lag_samples,
    )
    .await?;

    let (rss_a, rss_b) = (east.peak_rss_mib(), west.peak_rss_mib());
    println!();
    println!(
        "apiserver benchmark: {} global services, {endpoints} endpoints, 100 nodes",
        args.services
    );
    println!(
        "{:<44} {:>12}",
        "time to full sync (start -> ready)",
        format!("{:.2} s", full_sync.as_secs_f64())
    );
    println!(
        "{:<44} {:>12}",
        "time to full mirror (start -> synced)",
        format!("{:.2} s", full_mirror.as_secs_f64())
    );
    println!();
    println!("{:<44} {:>12} {:>12}", "put -> event", "median", "p99");
    println!(
        "{:<44} {:>9.3} ms {:>9.3} ms",
        "baseline: etcd watch on the same etcd",
        ms(percentile(&baseline, 0.5)),
        ms(percentile(&baseline, 0.99))
    );
    println!(
        "{:<44} {:>9.3} ms {:>9.3} ms",
        "mirror: east etcd -> west cache",
        ms(percentile(&mirror, 0.5)),
        ms(percentile(&mirror, 0.99))
    );
    println!();
    println!(
        "{:<44} {:>9.1} MiB",
        "peak RSS, publishing apiserver (east)", rss_a
    );
    println!(
        "{:<44} {:>9.1} MiB",
        "peak RSS, mirroring apiserver (west)", rss_b
    );

    let result = serde_json::json!({
        "services": args.services,
        "endpoints": endpoints,
        "time_to_full_sync_s": full_sync.as_secs_f64(),
        "time_to_full_mirror_s": full_mirror.as_secs_f64(),
        "baseline_watch_ms": {"median": ms(percentile(&baseline, 0.5)), "p99": ms(percentile(&baseline, 0.99))},
        "mirror_lag_ms": {"median": ms(percentile(&mirror, 0.5)), "p99": ms(percentile(&mirror, 0.99))},
        "peak_rss_mib": {"east": rss_a, "west": rss_b},
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&result)?)?;
    println!("\nresults written to {}", args.out.display());
    Ok(())
}
