//! CPU time spent by the proxy of a case (both of its sides), from /proc. On a shared machine
//! throughput moves with the neighbours' load; CPU seconds per GB moves much less, so it is
//! the fairer efficiency comparison between the proxies.

use std::time::Duration;

/// Whose CPU time counts.
#[derive(Debug, Clone)]
pub enum Meter {
    /// Nothing runs between client and backend (plain TCP).
    None,
    /// Threads of this process whose name starts with one of these (the tunnel's and the
    /// relay's runtimes are named for their role).
    Threads(Vec<&'static str>),
    /// Whole child processes (stunnel, haproxy).
    Processes(Vec<u32>),
}

impl Meter {
    /// User + system time so far.
    pub fn read(&self) -> Duration {
        let ticks: u64 = match self {
            Self::None => 0,
            Self::Threads(prefixes) => std::fs::read_dir("/proc/self/task")
                .into_iter()
                .flatten()
                .flatten()
                .filter(|task| {
                    std::fs::read_to_string(task.path().join("comm"))
                        .is_ok_and(|comm| prefixes.iter().any(|prefix| comm.starts_with(prefix)))
                })
                .filter_map(|task| stat_ticks(&task.path().join("stat")))
                .sum(),
            Self::Processes(pids) => pids
                .iter()
                .filter_map(|pid| stat_ticks(format!("/proc/{pid}/stat").as_ref()))
                .sum(),
        };
        Duration::from_secs_f64(ticks as f64 / clock_ticks_per_second())
    }
}

/// utime + stime of a `stat` file, in clock ticks.
fn stat_ticks(path: &std::path::Path) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces; the fields after it are fixed.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}
