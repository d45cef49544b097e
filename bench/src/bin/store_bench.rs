//! Store benchmark: how fast the sync writer gets a cluster's services into etcd, and how fast the
//! watch reader sees a change, each against a baseline measured in the same run.
//!
//! - write throughput: N global-service values through the pipelined sync writer, against the
//!   same N values written with one `put` per round trip;
//! - put→event latency: a `put`, timed until the watch reader delivers its event.
//!
//! It starts its own etcd (Debian's etcd-server) in a temp dir unless `--endpoint` is given,
//! prints a table and writes the numbers to `bench-results/store.json`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use clustermesh_model::{
    Affinity, Backend, ClusterId, ClusterName, Frontend, GlobalService, KeySchema, Kind, L4Port,
    MaxConnectedClusters, ObjectName, Protocol,
};
use clustermesh_store::{
    EtcdConfig, Session, SyncWriter, SyncWriterConfig, WatchEvent, WatchReader, connect,
};
use clustermesh_testkit::EtcdServer;

#[derive(Parser, Debug)]
#[command(
    about = "Measure the sync writer's throughput and the watch reader's latency against a real etcd"
)]
struct Args {
    /// Service entries to write.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// put→event samples for the latency measurement.
    #[arg(long, default_value_t = 500)]
    latency_samples: usize,
    /// Use this etcd (plain http) instead of starting one.
    #[arg(long)]
    endpoint: Option<String>,
    /// Where to write the results as JSON.
    #[arg(long, default_value = "bench-results/store.json")]
    out: PathBuf,
}

fn service(cluster: &ClusterName, id: ClusterId, i: usize) -> GlobalService {
    let port = |p| {
        BTreeMap::from([(
            "http".to_owned(),
            L4Port {
                protocol: Protocol::Tcp,
                port: p,
            },
        )])
    };
    let ip = |a: u8, i: usize| IpAddr::V4(Ipv4Addr::new(10, a, (i >> 8) as u8, i as u8));
    GlobalService {
        cluster: cluster.clone(),
        cluster_id: id,
        namespace: "bench".to_owned(),
        name: format!("svc-{i}"),
        frontends: vec![Frontend {
            ip: ip(96, i),
            ports: port(80),
        }],
        backends: (0..3)
            .map(|b| Backend {
                ip: ip(244 - b, i),
                ports: port(8080),
                node: Some(format!("node-{b}")),
                zone: None,
                hostname: None,
                ready: true,
            })
            .collect(),
        shared: true,
        affinity: Affinity::None,
        include_external: false,
        modified_unix_millis: None,
        headless: false,
        labels: BTreeMap::new(),
        selector: BTreeMap::new(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.keys == 0 || args.latency_samples == 0 {
        bail!("--keys and --latency-samples must be at least 1");
    }
    let _own_etcd;
    let endpoint = match &args.endpoint {
        Some(e) => e.clone(),
        None => {
            eprintln!("starting a private etcd ...");
            let etcd = EtcdServer::start();
            let e = etcd.endpoint();
            _own_etcd = etcd;
            e
        }
    };
    let client = connect(&EtcdConfig::plain(&endpoint))
        .await
        .with_context(|| format!("connecting to {endpoint}"))?;
    let schema = KeySchema::new("bench").expect("valid root");
    let mesh = MaxConnectedClusters::Max255;
    let cluster_id = ClusterId::new(1, mesh)?;
    let names = ["baseline", "writer"].map(|n| ClusterName::new(n).expect("valid name"));
    let values = |cluster: &ClusterName| -> BTreeMap<String, Vec<u8>> {
        (0..args.keys)
            .map(|i| {
                let svc = service(cluster, cluster_id, i);
                let object = ObjectName::Service {
                    namespace: svc.namespace.clone(),
                    name: svc.name.clone(),
                };
                (schema.state(cluster, &object), svc.to_json())
            })
            .collect()
    };

    // Baseline: one put per round trip.
    eprintln!("baseline: {} sequential puts ...", args.keys);
    let baseline_values = values(&names[0]);
    let mut c = client.clone();
    let start = Instant::now();
    for (k, v) in &baseline_values {
        c.put(k.as_str(), v.clone(), None).await?;
    }
    let baseline = start.elapsed();

    // The sync writer: batched transactions, pipelined.
    eprintln!("sync writer: {} keys ...", args.keys);
    let session = Session::start(client.clone(), Duration::from_secs(30)).await?;
    let writer = SyncWriter::start(
        client.clone(),
        &session,
        SyncWriterConfig {
            prefixes: vec![schema.state_prefix(Kind::Services, &names[1])],
            synced_key: schema.synced(&names[1], Kind::Services),
            synced_value: b"{}".to_vec(),
        },
    );
    let writer_values = values(&names[1]);
    let start = Instant::now();
    writer.replace_all(writer_values)?;
    writer.mark_synced();
    writer.flush().await;
    let pipelined = start.elapsed();
    let written = c
        .get(
            schema.state_prefix(Kind::Services, &names[1]),
            Some(
                etcd_client::GetOptions::new()
                    .with_prefix()
                    .with_count_only(),
            ),
        )
        .await?
        .count();
    if written != args.keys as i64 {
        bail!(
            "the sync writer reported done but etcd holds {written} of {} keys",
            args.keys
        );
    }

    // put→event latency through the watch reader.
    eprintln!("watch latency: {} samples ...", args.latency_samples);
    let prefix = schema.cache_prefix(Kind::Services, &names[1]);
    let (_reader, mut events) = WatchReader::spawn(client.clone(), prefix.clone(), 1024);
    loop {
        match events.recv().await {
            Some(WatchEvent::InitDone) => break,
            Some(_) => continue,
            None => bail!("watch reader stopped"),
        }
    }
    let mut latencies = Vec::with_capacity(args.latency_samples);
    for i in 0..args.latency_samples {
        let key = format!("{prefix}bench/svc-{i}");
        let start = Instant::now();
        c.put(key.as_str(), format!("{i}"), None).await?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                Ok(Some(WatchEvent::Upsert(e))) if e.key == key => break,
                Ok(Some(_)) => continue,
                Ok(None) => bail!("watch reader stopped"),
                Err(_) => bail!("no event for {key} within 10 s"),
            }
        }
        latencies.push(start.elapsed());
    }
    latencies.sort();

    let rate = |d: Duration| args.keys as f64 / d.as_secs_f64();
    let speedup = rate(pipelined) / rate(baseline);
    let median = percentile(&latencies, 0.5);
    let p99 = percentile(&latencies, 0.99);
    let verdict = if speedup >= 5.0 { "PASS" } else { "FAIL" };

    println!();
    println!(
        "store benchmark: {} global services, etcd at {endpoint}",
        args.keys
    );
    println!("{:<42} {:>12} {:>12}", "write path", "keys/s", "total");
    println!(
        "{:<42} {:>12.0} {:>12}",
        "baseline: one put per round trip",
        rate(baseline),
        ms(baseline)
    );
    println!(
        "{:<42} {:>12.0} {:>12}",
        "sync writer: batched + pipelined txns",
        rate(pipelined),
        ms(pipelined)
    );
    println!("speed-up: {speedup:.1}x (target >= 5x: {verdict})");
    println!();
    println!("{:<42} {:>12} {:>12}", "watch reader", "median", "p99");
    println!(
        "{:<42} {:>12} {:>12}",
        format!("put -> event ({} samples)", latencies.len()),
        ms(median),
        ms(p99)
    );

    let result = serde_json::json!({
        "keys": args.keys,
        "baseline_keys_per_sec": rate(baseline),
        "sync_writer_keys_per_sec": rate(pipelined),
        "speedup": speedup,
        "target_speedup": 5.0,
        "pass": speedup >= 5.0,
        "watch_put_to_event_ms": {
            "samples": latencies.len(),
            "median": median.as_secs_f64() * 1000.0,
            "p99": p99.as_secs_f64() * 1000.0,
        },
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&result)?)
        .with_context(|| format!("writing {}", args.out.display()))?;
    println!("\nresults written to {}", args.out.display());
    Ok(())
}
