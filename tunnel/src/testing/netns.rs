//! Network namespaces for the namespaced tests and the benchmark: two namespaces joined by a
//! veth pair, code run inside them on threads that `setns(2)`-ed there, and guards that delete
//! them (killing what still runs inside) when dropped, also when a test panics.
//!
//! A socket belongs to the namespace of the thread that created it and stays there, whichever
//! thread uses it later. So [`NetNs::runtime`] builds a Tokio runtime whose every thread entered
//! the namespace: listeners bound and connections dialed by its tasks live in the namespace.
//! (`Runtime::block_on` runs its future on the *calling* thread: spawn onto the runtime
//! instead, see [`NetNs::block_on`].)
//!
//! Names start with `cmt-` and carry the process ID, so parallel tests never collide and
//! [`remove_leftovers`] can delete what a killed run left behind.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use nix::sched::{CloneFlags, setns};

/// Where `ip netns` keeps its namespace files.
const NETNS_DIR: &str = "/run/netns";
/// Every namespace made here starts with this.
pub const PREFIX: &str = "cmt-";

/// The address of the client side of a [`Link`].
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
/// The address of the server side of a [`Link`].
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);

#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    #[error("could not run `{command}`: {source} (is iproute2 installed?)")]
    Spawn { command: String, source: io::Error },
    #[error("`{command}` failed: {stderr} (this needs root)")]
    Failed { command: String, stderr: String },
    #[error("cannot open {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("setns into network namespace {name} failed: {source} (this needs CAP_SYS_ADMIN)")]
    Setns { name: String, source: nix::Error },
    #[error("cannot build a runtime in network namespace {name}: {source}")]
    Runtime { name: String, source: io::Error },
}

/// Why namespaced code cannot run here, or `None` when it can: root and `ip` are needed.
pub fn unavailable() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root to create network namespaces".to_owned());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(output) if output.status.success() => None,
        _ => Some("needs `ip` (Debian package iproute2)".to_owned()),
    }
}

/// For tests: `true` when namespaced tests can run. Otherwise, with `CI=true` it panics
/// (a test that cannot run must fail in CI), and elsewhere it prints why and returns `false`.
pub fn can_run(test: &str) -> bool {
    let Some(reason) = unavailable() else {
        return true;
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true and {test} cannot run: {reason}");
    }
    // Straight to stderr: the harness captures the output of passing tests.
    use std::io::Write as _;
    let _ = writeln!(io::stderr(), "skipping {test}: {reason}");
    false
}

/// A network namespace made with `ip netns add`, with `lo` up. Dropping it kills every
/// process inside and deletes it.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    file: Arc<File>,
}

impl NetNs {
    /// Creates `cmt-<tag>-<pid>-<n>`.
    pub fn create(tag: &str) -> Result<Self, NetNsError> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "{PREFIX}{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let path = PathBuf::from(NETNS_DIR).join(&name);
        let file = match File::open(&path) {
            Ok(file) => Arc::new(file),
            Err(source) => {
                let _ = run(Command::new("ip").args(["netns", "del", &name]));
                return Err(NetNsError::Open { path, source });
            }
        };
        let netns = Self { name, file };
        netns.ip(&["link", "set", "lo", "up"])?;
        Ok(netns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <name> <args…>`.
    pub fn ip(&self, args: &[&str]) -> Result<(), NetNsError> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Moves the calling thread into the namespace, for good.
    pub fn enter(&self) -> Result<(), NetNsError> {
        setns(&*self.file, CloneFlags::CLONE_NEWNET).map_err(|source| NetNsError::Setns {
            name: self.name.clone(),
            source,
        })
    }

    /// Runs `f` on a new thread inside the namespace and returns what it returns.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetNsError> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter()?;
                    Ok(f())
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// A multi-threaded Tokio runtime whose worker and blocking threads all live in the
    /// namespace; its threads are called `name` (profilers show it).
    pub fn runtime(
        &self,
        name: &str,
        workers: usize,
    ) -> Result<tokio::runtime::Runtime, NetNsError> {
        // Fail here, with the reason, rather than in a runtime thread.
        self.run(|| ())?;
        let file = self.file.clone();
        let netns = self.name.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .thread_name(name)
            .on_thread_start(move || {
                if let Err(error) = setns(&*file, CloneFlags::CLONE_NEWNET) {
                    panic!("setns into {netns} in a runtime thread: {error}");
                }
            })
            .enable_all()
            .build()
            .map_err(|source| NetNsError::Runtime {
                name: self.name.clone(),
                source,
            })
    }

    /// Runs `future` as a task of `runtime` (so inside its namespace) and waits for it.
    pub fn block_on<T: Send + 'static>(
        runtime: &tokio::runtime::Runtime,
        future: impl Future<Output = T> + Send + 'static,
    ) -> T {
        runtime
            .block_on(runtime.spawn(future))
            .unwrap_or_else(|error| match error.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(error) => panic!("task in namespace cancelled: {error}"),
            })
    }

    /// A [`Command`] that runs `program` inside the namespace (through `ip netns exec`).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Kills (SIGKILL) every process inside the namespace.
    pub fn kill_all(&self) {
        kill_pids_in(&self.name);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        kill_pids_in(&self.name);
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
    }
}

/// Two namespaces joined by a veth pair: `client` has [`CLIENT_IP`]/24 and `server` has
/// [`SERVER_IP`]/24, each on an interface named `cmt0`. Dropping it deletes both.
#[derive(Debug)]
pub struct Link {
    pub client: NetNs,
    pub server: NetNs,
}

impl Link {
    /// Creates `cmt-<tag>c-…` and `cmt-<tag>s-…` and the veth pair between them.
    pub fn create(tag: &str) -> Result<Self, NetNsError> {
        let client = NetNs::create(&format!("{tag}c"))?;
        let server = NetNs::create(&format!("{tag}s"))?;
        // Both ends are created directly in their namespaces, so the names cannot collide
        // with interfaces of the host or of other tests.
        client.ip(&[
            "link",
            "add",
            "cmt0",
            "type",
            "veth",
            "peer",
            "name",
            "cmt0",
            "netns",
            &server.name,
        ])?;
        for (netns, ip) in [(&client, CLIENT_IP), (&server, SERVER_IP)] {
            netns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "cmt0"])?;
            netns.ip(&["link", "set", "cmt0", "up"])?;
        }
        Ok(Self { client, server })
    }
}

/// Deletes `cmt-<tag>…` namespaces whose creating process is gone (a run killed before its
/// guards could clean up), with everything still running inside them. Returns their names.
pub fn remove_leftovers(tag: &str) -> Vec<String> {
    let prefix = format!("{PREFIX}{tag}");
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return removed;
    };
    for name in entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
    {
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        // `<c|s|…>-<pid>-<n>`: the creator's pid is the second field.
        let Some(pid) = rest.split('-').nth(1).and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if PathBuf::from(format!("/proc/{pid}")).exists() {
            continue;
        }
        kill_pids_in(&name);
        if run(Command::new("ip").args(["netns", "del", &name])).is_ok() {
            removed.push(name);
        }
    }
    removed
}

fn kill_pids_in(name: &str) {
    let Ok(output) = Command::new("ip").args(["netns", "pids", name]).output() else {
        return;
    };
    let me = std::process::id();
    for pid in String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|&p| p as u32 != me)
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

fn run(command: &mut Command) -> Result<(), NetNsError> {
    let rendered = format!("{command:?}").replace('"', "");
    let output = command.output().map_err(|source| NetNsError::Spawn {
        command: rendered.clone(),
        source,
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(NetNsError::Failed {
            command: rendered,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Kills what runs inside the namespace `name` and deletes it, without a guard: for a signal
/// handler that must clean up before the process exits (guards do not run on `exit`).
pub fn delete(name: &str) {
    kill_pids_in(name);
    let _ = run(Command::new("ip").args(["netns", "del", name]));
}
