//! Summaries, the printed tables, the targets and the result file.

use std::time::Duration;

use serde_json::{Value, json};

/// Everything measured for one case, over all rounds.
#[derive(Debug, Default)]
pub struct Measured {
    pub name: &'static str,
    /// Bytes per second, one value per round.
    pub single: Vec<f64>,
    pub parallel: Vec<f64>,
    /// CPU seconds of the proxy (both sides) per GB carried, one value per round.
    pub single_cpu: Vec<f64>,
    pub parallel_cpu: Vec<f64>,
    /// Round trips on an established connection, all rounds pooled.
    pub existing: Vec<Duration>,
    /// Connect + one round trip, all rounds pooled.
    pub new: Vec<Duration>,
}

/// What the table and the file show for one case.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub single_mbps: f64,
    pub parallel_mbps: f64,
    pub single_cpu_s_per_gb: f64,
    pub parallel_cpu_s_per_gb: f64,
    pub existing: Latency,
    pub new: Latency,
}

/// Milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub median: f64,
    pub p99: f64,
    pub samples: usize,
}

impl Measured {
    pub fn summary(&self) -> Summary {
        Summary {
            single_mbps: median_f64(&self.single) / 1e6,
            parallel_mbps: median_f64(&self.parallel) / 1e6,
            single_cpu_s_per_gb: median_f64(&self.single_cpu),
            parallel_cpu_s_per_gb: median_f64(&self.parallel_cpu),
            existing: latency(&self.existing),
            new: latency(&self.new),
        }
    }
}

fn median_f64(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn latency(samples: &[Duration]) -> Latency {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let p99 = if ms.is_empty() {
        f64::NAN
    } else {
        ms[((ms.len() as f64 * 0.99).ceil() as usize).clamp(1, ms.len()) - 1]
    };
    Latency {
        median: median_f64(&ms),
        p99,
        samples: ms.len(),
    }
}

/// One target, evaluated.
pub struct Target {
    pub name: String,
    pub wanted: String,
    pub found: String,
    pub met: bool,
}

/// The targets of the issue, on the tunnel's numbers against plain TCP and stunnel4.
/// Latency targets are judged on medians; the p99 is printed beside them.
pub fn targets(
    plain: &Summary,
    tunnel: &Summary,
    stunnel: &Summary,
    parallel: usize,
) -> Vec<Target> {
    let mut out = Vec::new();
    for (label, ours, tcp, st) in [
        (
            "1 stream".to_owned(),
            tunnel.single_mbps,
            plain.single_mbps,
            stunnel.single_mbps,
        ),
        (
            format!("{parallel} streams"),
            tunnel.parallel_mbps,
            plain.parallel_mbps,
            stunnel.parallel_mbps,
        ),
    ] {
        out.push(Target {
            name: format!("throughput, {label}: tunnel vs stunnel4"),
            wanted: ">= 1.50x".to_owned(),
            found: format!("{:.2}x", ours / st),
            met: ours >= 1.5 * st,
        });
        out.push(Target {
            name: format!("throughput, {label}: tunnel vs plain TCP"),
            wanted: ">= 40%".to_owned(),
            found: format!("{:.0}%", 100.0 * ours / tcp),
            met: ours >= 0.4 * tcp,
        });
    }
    let added_existing = tunnel.existing.median - plain.existing.median;
    out.push(Target {
        name: "added latency, existing connection (median)".to_owned(),
        wanted: "<= 0.100 ms".to_owned(),
        found: format!(
            "{added_existing:+.3} ms (p99 {:+.3} ms)",
            tunnel.existing.p99 - plain.existing.p99
        ),
        met: added_existing <= 0.1,
    });
    let added_new = tunnel.new.median - plain.new.median;
    out.push(Target {
        name: "added latency, new connection (median)".to_owned(),
        wanted: "<= 0.500 ms".to_owned(),
        found: format!(
            "{added_new:+.3} ms (p99 {:+.3} ms)",
            tunnel.new.p99 - plain.new.p99
        ),
        met: added_new <= 0.5,
    });
    out
}

/// `cases[0]` is the baseline for the "vs TCP" ratios (plain TCP when it runs).
pub fn print(
    cases: &[(&str, Summary)],
    stunnel: Option<Summary>,
    targets: &[Target],
    parallel: usize,
) {
    let plain = cases[0].1;
    // Without stunnel the "vs stunnel" columns show NaN.
    let stunnel = stunnel.unwrap_or(Summary {
        single_mbps: f64::NAN,
        parallel_mbps: f64::NAN,
        ..plain
    });
    println!();
    println!(
        "{:<20} {:>12} {:>12}   {:>17} {:>17}",
        "", "throughput", "MB/s", "RTT existing conn", "RTT new conn"
    );
    println!(
        "{:<20} {:>12} {:>12}   {:>8} {:>8} {:>8} {:>8}",
        "case",
        "1 stream",
        format!("{parallel} streams"),
        "med ms",
        "p99 ms",
        "med ms",
        "p99 ms"
    );
    for (name, s) in cases {
        println!(
            "{:<20} {:>12.0} {:>12.0}   {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            name,
            s.single_mbps,
            s.parallel_mbps,
            s.existing.median,
            s.existing.p99,
            s.new.median,
            s.new.p99
        );
    }
    println!();
    println!("CPU seconds of the proxy (both sides) per GB carried");
    println!(
        "{:<20} {:>12} {:>12}",
        "case",
        "1 stream",
        format!("{parallel} streams")
    );
    for (name, s) in cases {
        println!(
            "{:<20} {:>12.2} {:>12.2}",
            name, s.single_cpu_s_per_gb, s.parallel_cpu_s_per_gb
        );
    }
    println!();
    println!("ratios (throughput: this case / baseline; latency: this case minus plain TCP, ms)");
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>9}   {:>15} {:>15}",
        "case", "1s/TCP", "1s/stun", "Ns/TCP", "Ns/stun", "+RTT exist med", "+RTT new med"
    );
    for (name, s) in cases {
        println!(
            "{:<20} {:>8.2}x {:>8.2}x {:>8.2}x {:>8.2}x   {:>+15.3} {:>+15.3}",
            name,
            s.single_mbps / plain.single_mbps,
            s.single_mbps / stunnel.single_mbps,
            s.parallel_mbps / plain.parallel_mbps,
            s.parallel_mbps / stunnel.parallel_mbps,
            s.existing.median - plain.existing.median,
            s.new.median - plain.new.median,
        );
    }
    println!();
    if targets.is_empty() {
        println!("targets not judged: they need the plain, tunnel and stunnel cases");
        return;
    }
    println!("targets (clustermesh tunnel):");
    for t in targets {
        println!(
            "  [{}] {:<48} wanted {:<12} found {}",
            if t.met { "met" } else { "MISSED" },
            t.name,
            t.wanted,
            t.found
        );
    }
}

pub fn json(cases: &[(&str, Summary)], targets: &[Target], context: Value) -> Value {
    let latency =
        |l: &Latency| json!({ "median_ms": l.median, "p99_ms": l.p99, "samples": l.samples });
    json!({
        "context": context,
        "cases": cases.iter().map(|(name, s)| json!({
            "name": name,
            "throughput_1_stream_mb_per_s": s.single_mbps,
            "throughput_parallel_mb_per_s": s.parallel_mbps,
            "proxy_cpu_s_per_gb_1_stream": s.single_cpu_s_per_gb,
            "proxy_cpu_s_per_gb_parallel": s.parallel_cpu_s_per_gb,
            "rtt_existing_connection": latency(&s.existing),
            "rtt_new_connection": latency(&s.new),
        })).collect::<Vec<_>>(),
        "targets": targets.iter().map(|t| json!({
            "name": t.name, "wanted": t.wanted, "found": t.found, "met": t.met,
        })).collect::<Vec<_>>(),
        "pass": targets.iter().all(|t| t.met),
    })
}
