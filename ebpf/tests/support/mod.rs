//! Guards for what the datapath tests create (network namespaces, cgroups, bpffs pin
//! directories, helper processes), each removed on drop, also when a test fails; servers that
//! say who they are; and the privilege check that skips outside CI and fails in it.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of this module"
)]

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

pub const BPFFS: &str = "/sys/fs/bpf";
pub const CGROUP2_ROOT: &str = "/sys/fs/cgroup/unified";
pub const PROBE: &str = env!("CARGO_BIN_EXE_datapath-probe");

/// A name unique to this test process and call, so parallel tests and runs never collide.
fn unique_name(kind: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "cmebpf-{kind}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether this test can run: root, a cgroup v2 mount and a bpffs (mounted here if missing).
/// With `CI=true` a test that cannot run fails instead of skipping.
pub fn can_run() -> bool {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    let reason = REASON.get_or_init(|| {
        if !nix::unistd::geteuid().is_root() {
            return Some("needs root (it loads eBPF programs and creates namespaces)".into());
        }
        if !is_fs(CGROUP2_ROOT, nix::sys::statfs::CGROUP2_SUPER_MAGIC) {
            return Some(format!("needs cgroup v2 mounted at {CGROUP2_ROOT}"));
        }
        if !is_fs(BPFFS, nix::sys::statfs::BPF_FS_MAGIC) {
            let mounted = Command::new("mount")
                .args(["-t", "bpf", "bpffs", BPFFS])
                .status()
                .is_ok_and(|status| status.success());
            if !mounted {
                return Some(format!("needs a bpffs at {BPFFS} and could not mount one"));
            }
        }
        None
    });
    match reason {
        None => true,
        Some(reason) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true and this test cannot run: {reason}")
        }
        Some(reason) => {
            // Straight to stderr: the test harness would swallow eprintln! of a passing test.
            let _ = writeln!(std::io::stderr(), "skipping datapath test: {reason}");
            false
        }
    }
}

fn is_fs(path: &str, magic: nix::sys::statfs::FsType) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|fs| fs.filesystem_type() == magic)
}

fn run(command: &mut Command) {
    let output = command.output().expect("spawning a command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A network namespace (`ip netns add`) with `lo` up; deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new() -> Self {
        let name = unique_name("ns");
        run(Command::new("ip").args(["netns", "add", &name]));
        let netns = Self { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// Runs `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) {
        run(Command::new("ip").args(["-n", &self.name]).args(args));
    }

    /// Runs `f` on a thread inside the namespace; sockets it creates stay in the namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let netns = File::open(self.path()).expect("opening the netns file");
        std::thread::spawn(move || {
            nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("thread in netns panicked")
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A cgroup v2 directory; on drop its processes are killed and it is removed.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn new() -> Self {
        let path = Path::new(CGROUP2_ROOT).join(unique_name("cg"));
        std::fs::create_dir(&path).expect("creating a cgroup");
        Self { path }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let procs = std::fs::read_to_string(self.path.join("cgroup.procs")).unwrap_or_default();
            if procs.trim().is_empty() {
                break;
            }
            for pid in procs
                .lines()
                .filter_map(|pid| pid.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// A pin directory on bpffs; on drop everything pinned there is detached and removed.
pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    pub fn new() -> Self {
        Self {
            path: Path::new(BPFFS).join(unique_name("pin")),
        }
    }

    pub fn config(&self) -> clustermesh_ebpf::DatapathConfig {
        clustermesh_ebpf::DatapathConfig {
            pin_dir: self.path.clone(),
            ..Default::default()
        }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = clustermesh_ebpf::Datapath::remove_pinned(&self.path);
    }
}

/// A child process killed (SIGKILL) and reaped on drop.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL, like the OOM killer or a node agent crash.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `datapath-probe` as a client inside `netns` and `cgroup`; panics if it fails.
pub fn probe(netns: &NetNs, cgroup: Option<&Cgroup>, args: &[&str]) -> String {
    let output = probe_output(netns, cgroup, args);
    assert!(
        output.status.success(),
        "datapath-probe {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

pub fn probe_output(netns: &NetNs, cgroup: Option<&Cgroup>, args: &[&str]) -> Output {
    probe_command(netns, cgroup, args)
        .output()
        .expect("running datapath-probe")
}

pub fn probe_command(netns: &NetNs, cgroup: Option<&Cgroup>, args: &[&str]) -> Command {
    let mut command = Command::new(PROBE);
    command.arg("--netns").arg(netns.path());
    if let Some(cgroup) = cgroup {
        command.arg("--cgroup").arg(&cgroup.path);
    }
    command.args(args).env("RUST_BACKTRACE", "0");
    command
}

/// Starts `datapath-probe loader` (outside any test cgroup) and waits for "ready".
/// Returns the guard and the number of services it found already pinned.
pub fn start_loader(
    pin: &PinDir,
    cgroup: &Cgroup,
    vip: &str,
    backends: &[&str],
) -> (ChildGuard, usize) {
    let mut child = ChildGuard(
        Command::new(PROBE)
            .arg("loader")
            .arg(&pin.path)
            .arg(&cgroup.path)
            .arg(vip)
            .args(backends)
            .env("RUST_BACKTRACE", "0")
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawning the loader"),
    );
    let stdout = child.0.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("reading the loader's output");
    let found = line
        .trim()
        .strip_prefix("ready services_found=")
        .unwrap_or_else(|| panic!("loader did not get ready, it said {line:?}"))
        .parse()
        .expect("a number");
    (child, found)
}

/// A TCP server in `netns` at `addr` that sends each client its own address and closes.
/// The thread and socket live until the test process exits.
pub fn tcp_server(netns: &NetNs, addr: &str) -> SocketAddr {
    let addr: SocketAddr = addr.parse().expect("socket address");
    let listener = netns.run(move || TcpListener::bind(addr).expect("binding a test server"));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let _ = writeln!(stream, "{addr}");
        }
    });
    addr
}

/// A UDP server in `netns` at `addr` that answers every datagram with its own address.
pub fn udp_server(netns: &NetNs, addr: &str) -> SocketAddr {
    let addr: SocketAddr = addr.parse().expect("socket address");
    let socket = netns.run(move || UdpSocket::bind(addr).expect("binding a test server"));
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((_, client)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(addr.to_string().as_bytes(), client);
        }
    });
    addr
}

/// Reads everything from a stream, for the tunnel-listener test.
pub fn read_all(mut stream: impl Read) -> String {
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    text
}
