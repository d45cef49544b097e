//! Connect + first-byte latency through the datapath, against direct connections and against
//! kube-proxy-style nftables DNAT, with 1, 1k and 10k services. Needs root.
//!
//! ```text
//! cargo run --release -p clustermesh-ebpf --bin datapath-bench   # BENCH_SAMPLES=5000 by default
//! ```
//!
//! Everything happens in a network namespace, a cgroup and a bpffs pin directory that the
//! benchmark creates and removes; the process moves itself into the namespace and cgroup. One
//! backend (a thread answering each connection with one byte) listens on 10.0.0.1:9000, an
//! address the benchmark gives the namespace's loopback. Service VIPs are 10.96.x.y (eBPF) and
//! 10.97.x.y (nftables); each sample dials a random one of the programmed services.
//!
//! Latencies are compared with direct connections sampled in the same loop (alternating), so
//! that machine noise hits both alike. Results go to stdout and `bench-results/datapath.json`.

use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};
use clustermesh_ebpf::{Datapath, DatapathConfig, Frontend, Protocol, Service, SessionAffinity};

const SERVICE_COUNTS: [usize; 3] = [1, 1_000, 10_000];
const WARMUP: usize = 200;
const BACKEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 9000);
const NFT_TABLE: &str = "cmbench";

fn main() -> anyhow::Result<()> {
    ensure!(
        nix::unistd::geteuid().is_root(),
        "datapath-bench needs root (eBPF, namespaces, nftables)"
    );
    let samples: usize = std::env::var("BENCH_SAMPLES")
        .ok()
        .map(|n| n.parse().context("BENCH_SAMPLES"))
        .transpose()?
        .unwrap_or(5000);
    let sandbox = Sandbox::enter()?;
    spawn_backend()?;
    let mut rng = XorShift::seeded();
    let mut rows = Vec::new();

    // Nothing attached: the baseline.
    let baseline = measure(samples, |_| connect_first_byte(BACKEND.into()))?;
    rows.push(Row::new("direct", 0, &baseline, None));
    eprintln!("direct: done");

    // Socket load balancing.
    {
        let mut datapath = Datapath::load(&DatapathConfig {
            pin_dir: sandbox.pin_dir.clone(),
            ..DatapathConfig::default()
        })?;
        datapath.attach_cgroup(&sandbox.cgroup)?;
        // Makes the kernel account the programs' run time, until dropped.
        let _run_time_stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
        let mut programmed = 0;
        for count in SERVICE_COUNTS {
            let started = Instant::now();
            while programmed < count {
                datapath.upsert_service(&Service {
                    frontend: Frontend {
                        addr: vip(0x0a60_0000, programmed),
                        protocol: Protocol::Tcp,
                    },
                    backends: vec![BACKEND.into()],
                    affinity: SessionAffinity::None,
                })?;
                programmed += 1;
            }
            eprintln!(
                "ebpf: {count} services programmed in {:?}",
                started.elapsed()
            );
            let before = connect4_runs();
            let (direct, via) =
                measure_interleaved(samples, &mut rng, |n| vip(0x0a60_0000, n % count))?;
            let (time, runs) = connect4_runs().since(before);
            let mut row = Row::new("eBPF socket LB VIP", count, &via, Some(&direct));
            row.connect4_ns_per_run = Some(time.as_nanos() as f64 / runs.max(1) as f64);
            rows.push(row);
        }
    }
    Datapath::remove_pinned(&sandbox.pin_dir)?;

    // kube-proxy-like nftables.
    for count in SERVICE_COUNTS {
        let started = Instant::now();
        load_nft_services(&sandbox.netns, count)?;
        eprintln!(
            "nftables: {count} services loaded in {:?}",
            started.elapsed()
        );
        let (direct, via) =
            measure_interleaved(samples, &mut rng, |n| vip(0x0a61_0000, n % count))?;
        rows.push(Row::new("nftables DNAT VIP", count, &via, Some(&direct)));
    }

    report(&rows, samples)?;
    drop(sandbox);
    Ok(())
}

/// The n-th service VIP in the /16 starting at `base`, port 80.
fn vip(base: u32, n: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::from(base + 1 + n as u32), 80))
}

/// One sample: connect() until the server's first byte arrives. The client then resets the
/// connection (SO_LINGER 0) so that no TIME_WAIT state piles up across thousands of samples.
fn connect_first_byte(target: SocketAddr) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut stream =
        TcpStream::connect(target).with_context(|| format!("connecting to {target}"))?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte)?;
    let elapsed = started.elapsed();
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&stream, nix::sys::socket::sockopt::Linger, &linger)?;
    Ok(elapsed)
}

fn measure(
    samples: usize,
    mut sample: impl FnMut(usize) -> anyhow::Result<Duration>,
) -> anyhow::Result<Vec<Duration>> {
    for n in 0..WARMUP {
        sample(n)?;
    }
    (0..samples).map(sample).collect()
}

/// Alternates direct samples with samples through a VIP (flipping which goes first).
fn measure_interleaved(
    samples: usize,
    rng: &mut XorShift,
    vip_of: impl Fn(usize) -> SocketAddr,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let mut direct = Vec::with_capacity(samples);
    let mut via = Vec::with_capacity(samples);
    for n in 0..WARMUP + samples {
        let target = vip_of(rng.next() as usize);
        let (d, v) = if n % 2 == 0 {
            let d = connect_first_byte(BACKEND.into())?;
            (d, connect_first_byte(target)?)
        } else {
            let v = connect_first_byte(target)?;
            (connect_first_byte(BACKEND.into())?, v)
        };
        if n >= WARMUP {
            direct.push(d);
            via.push(v);
        }
    }
    Ok((direct, via))
}

/// A kube-proxy (iptables mode) shaped ruleset: one rule per service in a dispatch chain, each
/// jumping to a chain of its own that DNATs to the endpoint. Replaces the previous ruleset.
///
/// Unlike kube-proxy, connections straight to the backend skip the dispatch chain, so that the
/// direct samples interleaved with the nftables ones stay a clean baseline. On a real
/// kube-proxy node every new outgoing connection walks the chain, service or not.
fn load_nft_services(netns: &str, count: usize) -> anyhow::Result<()> {
    let mut rules = format!(
        "table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\ntable ip {NFT_TABLE} {{\n\
         chain output {{ type nat hook output priority -100; policy accept;\n\
         ip daddr {ip} tcp dport {port} accept; jump services; }}\n\
         chain services {{\n",
        ip = BACKEND.ip(),
        port = BACKEND.port(),
    );
    for n in 0..count {
        let vip = vip(0x0a61_0000, n);
        rules += &format!(
            "ip daddr {} tcp dport {} jump svc-{n}\n",
            vip.ip(),
            vip.port()
        );
    }
    rules += "}\n";
    for n in 0..count {
        rules += &format!("chain svc-{n} {{ meta l4proto tcp dnat to {BACKEND}; }}\n");
    }
    rules += "}\n";
    let mut nft = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .context("running nft (apt-get install nftables)")?;
    nft.stdin
        .take()
        .context("nft stdin")?
        .write_all(rules.as_bytes())?;
    let status = nft.wait()?;
    ensure!(status.success(), "nft -f failed with {status}");
    Ok(())
}

/// Total run time and run count of every loaded program named `connect4` (ours, and any other
/// loaded at the same time, which would only make ours look slower).
#[derive(Clone, Copy)]
struct ProgramRuns(Duration, u64);

impl ProgramRuns {
    fn since(self, before: ProgramRuns) -> (Duration, u64) {
        (
            self.0.saturating_sub(before.0),
            self.1.saturating_sub(before.1),
        )
    }
}

fn connect4_runs() -> ProgramRuns {
    aya::programs::loaded_programs()
        .flatten()
        .filter(|program| program.name_as_str() == Some("connect4"))
        .fold(ProgramRuns(Duration::ZERO, 0), |total, program| {
            ProgramRuns(total.0 + program.run_time(), total.1 + program.run_count())
        })
}

fn spawn_backend() -> anyhow::Result<()> {
    let listener = TcpListener::bind(BACKEND).context("binding the backend")?;
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(b"x");
        }
    });
    Ok(())
}

struct Row {
    case: &'static str,
    services: usize,
    median: Duration,
    p99: Duration,
    /// Direct connections measured in the same loop.
    direct_median: Option<Duration>,
    /// Kernel-measured run time of the connect4 program, averaged over its runs for the direct
    /// (not a service: one lookup) and the VIP connections of this row alike.
    connect4_ns_per_run: Option<f64>,
}

impl Row {
    fn new(
        case: &'static str,
        services: usize,
        samples: &[Duration],
        direct: Option<&[Duration]>,
    ) -> Self {
        Self {
            case,
            services,
            median: percentile(samples, 50),
            p99: percentile(samples, 99),
            direct_median: direct.map(|direct| percentile(direct, 50)),
            connect4_ns_per_run: None,
        }
    }

    /// What the path adds to a direct connection measured in the same loop.
    fn added_to_direct(&self) -> Option<Duration> {
        self.direct_median
            .map(|direct| self.median.saturating_sub(direct))
    }

    fn ratio_to_direct(&self) -> Option<f64> {
        self.direct_median
            .map(|direct| self.median.as_secs_f64() / direct.as_secs_f64())
    }
}

fn percentile(samples: &[Duration], percent: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[(sorted.len() * percent / 100).min(sorted.len() - 1)]
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn report(rows: &[Row], samples: usize) -> anyhow::Result<()> {
    println!("connect() + first byte, {samples} samples per row, microseconds");
    println!("added: median minus the median of direct connections sampled in the same loop;");
    println!("ratio: median over that direct median; connect4 ns: program run time per call");
    println!(
        "{:<20} {:>8} {:>8} {:>8} {:>18} {:>8} {:>8} {:>12}",
        "case", "services", "median", "p99", "direct (same loop)", "added", "ratio", "connect4 ns"
    );
    let or_dash = |value: Option<String>| value.unwrap_or_else(|| "-".into());
    for row in rows {
        println!(
            "{:<20} {:>8} {:>8.1} {:>8.1} {:>18} {:>8} {:>8} {:>12}",
            row.case,
            row.services,
            micros(row.median),
            micros(row.p99),
            or_dash(row.direct_median.map(|d| format!("{:.1}", micros(d)))),
            or_dash(row.added_to_direct().map(|d| format!("{:.1}", micros(d)))),
            or_dash(row.ratio_to_direct().map(|r| format!("{r:.3}"))),
            or_dash(row.connect4_ns_per_run.map(|ns| format!("{ns:.0}"))),
        );
    }

    let ebpf = |count| {
        rows.iter()
            .find(|r| r.case.starts_with("eBPF") && r.services == count)
    };
    let nft = |count| {
        rows.iter()
            .find(|r| r.case.starts_with("nftables") && r.services == count)
    };
    let worst_ebpf_ratio = rows
        .iter()
        .filter(|r| r.case.starts_with("eBPF"))
        .filter_map(Row::ratio_to_direct)
        .fold(0.0, f64::max);
    let (Some(ebpf_10k), Some(nft_10k)) = (ebpf(10_000), nft(10_000)) else {
        bail!("missing 10k rows");
    };
    let nft_over_ebpf = nft_10k.median.as_secs_f64() / ebpf_10k.median.as_secs_f64();
    let added = |row: &Row| row.added_to_direct().map_or(0.0, micros);
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    println!(
        "target VIP <= 1.05x direct at every size: {} (worst {worst_ebpf_ratio:.3}x)",
        verdict(worst_ebpf_ratio <= 1.05)
    );
    // "Faster" is judged on what each datapath adds to a direct connect: the end-to-end time
    // also holds the TCP handshake every datapath pays alike, which no service lookup can
    // remove (5x on totals would be faster than a direct connect). Both are printed.
    let added_ratio = added(nft_10k) / added(ebpf_10k).max(0.001);
    println!(
        "target eBPF >= 5x faster than nftables at 10k services (latency each adds to a direct connect): {} ({added_ratio:.1}x: eBPF +{:.1} us, nftables +{:.1} us)",
        verdict(added_ratio >= 5.0),
        added(ebpf_10k),
        added(nft_10k)
    );
    println!(
        "  end to end (connect + first byte, including the handshake both pay): nftables/eBPF = {nft_over_ebpf:.2}x"
    );

    let json = serde_json::json!({
        "benchmark": "connect() + first byte latency",
        "samples_per_row": samples,
        "rows": rows.iter().map(|row| serde_json::json!({
            "case": row.case,
            "services": row.services,
            "median_us": micros(row.median),
            "p99_us": micros(row.p99),
            "direct_same_run_median_us": row.direct_median.map(micros),
            "added_to_direct_us": row.added_to_direct().map(micros),
            "ratio_to_direct": row.ratio_to_direct(),
            "connect4_ns_per_run": row.connect4_ns_per_run,
        })).collect::<Vec<_>>(),
        "worst_ebpf_ratio_to_direct": worst_ebpf_ratio,
        "nftables_over_ebpf_at_10k_end_to_end": nft_over_ebpf,
        "nftables_over_ebpf_at_10k_added_latency": added_ratio,
        "targets": {
            "vip_at_most_1_05x_direct": worst_ebpf_ratio <= 1.05,
            "ebpf_5x_faster_than_nftables_at_10k_added_latency": added_ratio >= 5.0,
        },
        "added_at_10k_us": { "ebpf": added(ebpf_10k), "nftables": added(nft_10k) },
    });
    let path = Path::new("bench-results/datapath.json");
    std::fs::create_dir_all("bench-results")?;
    std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")?;
    println!("written to {}", path.display());
    Ok(())
}

/// The namespace, cgroup and pin directory the benchmark runs in; removed on drop (also when
/// the benchmark fails), after moving the process back to its original cgroup.
struct Sandbox {
    netns: String,
    cgroup: PathBuf,
    original_cgroup: PathBuf,
    pin_dir: PathBuf,
}

const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";

impl Sandbox {
    fn enter() -> anyhow::Result<Self> {
        let name = format!("cmbench-{}", std::process::id());
        if !nix::sys::statfs::statfs("/sys/fs/bpf")
            .is_ok_and(|fs| fs.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
        {
            run(Command::new("mount").args(["-t", "bpf", "bpffs", "/sys/fs/bpf"]))?;
        }
        let original = std::fs::read_to_string("/proc/self/cgroup")?
            .lines()
            .find_map(|line| line.strip_prefix("0::").map(str::to_owned))
            .context("no cgroup v2 entry in /proc/self/cgroup")?;
        let sandbox = Self {
            netns: name.clone(),
            cgroup: Path::new(CGROUP2_ROOT).join(&name),
            original_cgroup: Path::new(CGROUP2_ROOT).join(original.trim_start_matches('/')),
            pin_dir: Path::new("/sys/fs/bpf").join(&name),
        };
        run(Command::new("ip").args(["netns", "add", &name]))?;
        for args in [
            &["link", "set", "lo", "up"][..],
            &["addr", "add", "10.0.0.1/32", "dev", "lo"],
            // kube-proxy nodes have a route for service VIPs; nftables DNAT needs one to get
            // past the routing decision in connect(). The eBPF path rewrites before routing.
            &[
                "route",
                "add",
                "10.96.0.0/12",
                "dev",
                "lo",
                "src",
                "10.0.0.1",
            ],
        ] {
            run(Command::new("ip").args(["-n", &name]).args(args))?;
        }
        // The process is still single-threaded: every thread spawned later starts here too.
        let netns = File::open(format!("/run/netns/{name}"))?;
        nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        std::fs::create_dir(&sandbox.cgroup)?;
        std::fs::write(sandbox.cgroup.join("cgroup.procs"), "0")?;
        Ok(sandbox)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = Datapath::remove_pinned(&self.pin_dir);
        let _ = std::fs::write(self.original_cgroup.join("cgroup.procs"), "0");
        let _ = std::fs::remove_dir(&self.cgroup);
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command.status()?;
    ensure!(status.success(), "{command:?} failed with {status}");
    Ok(())
}

/// Picks services; quality is irrelevant, speed and no dependency matter.
struct XorShift(u64);

impl XorShift {
    fn seeded() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Self(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
