//! Named Linux network namespaces, the kind `ip netns` manages under `/run/netns`.
//!
//! [`NetNs`] is a guard: [`NetNs::create`] makes a namespace (with `lo` up) and dropping the
//! guard kills every process still inside it and deletes it. [`NetNs::open`] refers to a
//! namespace somebody else owns and never deletes it.
//!
//! Code runs inside a namespace in two ways:
//! - [`NetNs::run`] runs a closure on a fresh thread that has `setns(2)`-ed into the namespace,
//!   so sockets the closure opens live there (they stay usable from any thread afterwards);
//! - [`NetNs::command`] builds a [`Command`] that `ip netns exec`s the program inside it.
//!
//! ```no_run
//! use clustermesh_lab::netns::NetNs;
//! let ns = NetNs::create("mytest-a").unwrap();
//! ns.ip(&["addr", "add", "10.1.0.1/32", "dev", "lo"]).unwrap();
//! let listener = ns.run(|| std::net::TcpListener::bind("10.1.0.1:80")).unwrap().unwrap();
//! # drop(listener);
//! // `ns` is deleted here, with every process that still runs in it.
//! ```

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sched::CloneFlags;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Where `ip netns` keeps its bind-mounted namespace files.
pub const NETNS_DIR: &str = "/run/netns";

/// What can go wrong with a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    #[error("invalid network namespace name {0:?}: use 1..=200 characters from [A-Za-z0-9._-]")]
    InvalidName(String),
    #[error(
        "network namespace {0:?} already exists; delete it with `ip netns del {0}` if it is a leftover"
    )]
    AlreadyExists(String),
    #[error("network namespace {0:?} does not exist (see `ip netns list`)")]
    NotFound(String),
    #[error("could not run `ip`: {0} (is iproute2 installed?)")]
    SpawnIp(#[source] io::Error),
    #[error("`ip {args}` failed: {stderr} (are you root?)")]
    Ip { args: String, stderr: String },
    #[error("cannot open {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "setns into network namespace {name:?} failed: {source} (this needs root / CAP_SYS_ADMIN)"
    )]
    Setns {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("the code running inside network namespace {0:?} panicked")]
    Panicked(String),
}

/// A named network namespace. Deleted on drop when this guard created it.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    owned: bool,
}

impl NetNs {
    /// Creates the namespace `name` (fails if it exists) and brings its `lo` up.
    /// The namespace is deleted when the guard is dropped.
    pub fn create(name: &str) -> Result<Self, NetNsError> {
        validate_name(name)?;
        if Self::exists(name) {
            return Err(NetNsError::AlreadyExists(name.to_owned()));
        }
        run_ip(["netns", "add", name])?;
        let ns = NetNs {
            name: name.to_owned(),
            owned: true,
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Refers to an existing namespace without taking ownership: dropping it deletes nothing.
    pub fn open(name: &str) -> Result<Self, NetNsError> {
        validate_name(name)?;
        if !Self::exists(name) {
            return Err(NetNsError::NotFound(name.to_owned()));
        }
        Ok(NetNs {
            name: name.to_owned(),
            owned: false,
        })
    }

    /// Turns the guard into a plain name: the namespace stays after the guard is gone
    /// (the lab keeps its namespaces until `down`).
    pub fn keep(mut self) -> String {
        self.owned = false;
        std::mem::take(&mut self.name)
    }

    /// Whether `/run/netns/<name>` exists.
    pub fn exists(name: &str) -> bool {
        validate_name(name).is_ok() && PathBuf::from(NETNS_DIR).join(name).exists()
    }

    /// Names of every namespace under `/run/netns` that start with `prefix`, sorted.
    pub fn list_with_prefix(prefix: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(NETNS_DIR)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| name.starts_with(prefix))
            .collect();
        names.sort();
        names
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file, e.g. `/run/netns/<name>`; open it to get a namespace fd.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// Opens the namespace file: a namespace fd, e.g. to attach an `sk_lookup` program to
    /// the namespace or to `setns(2)` into it yourself.
    pub fn open_fd(&self) -> Result<File, NetNsError> {
        let path = self.path();
        File::open(&path).map_err(|source| NetNsError::Open { path, source })
    }

    /// Runs `f` on a new thread inside the namespace and returns its result.
    /// The calling thread's namespace is never changed.
    pub fn run<T, F>(&self, f: F) -> Result<T, NetNsError>
    where
        T: Send,
        F: FnOnce() -> T + Send,
    {
        let file = self.open_fd()?;
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| {
                        NetNsError::Setns {
                            name: self.name.clone(),
                            source,
                        }
                    })?;
                    Ok(f())
                })
                .join()
                .map_err(|_| NetNsError::Panicked(self.name.clone()))?
        })
    }

    /// A [`Command`] that runs `program` inside the namespace (through `ip netns exec`).
    /// Add arguments, environment and stdio as usual; the child's pid is the program's pid.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `ip -n <name> <args…>` and returns its standard output.
    pub fn ip(&self, args: &[&str]) -> Result<String, NetNsError> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(full)
    }

    /// Sets a sysctl inside the namespace, e.g. `("net.ipv4.ip_forward", "1")`.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), NetNsError> {
        let path = PathBuf::from(format!("/proc/sys/{}", key.replace('.', "/")));
        let written = {
            let path = path.clone();
            let value = value.to_owned();
            self.run(move || std::fs::write(path, value))?
        };
        written.map_err(|source| NetNsError::Open { path, source })
    }

    /// Pids of the processes whose network namespace is this one.
    pub fn pids(&self) -> Vec<u32> {
        run_ip(["netns", "pids", &self.name])
            .map(|out| {
                out.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kills (SIGKILL) every process inside the namespace and deletes it.
    pub fn delete(mut self) -> Result<(), NetNsError> {
        self.owned = false;
        delete_by_name(&self.name)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.owned
            && let Err(err) = delete_by_name(&self.name)
        {
            tracing::warn!(netns = %self.name, %err, "could not delete network namespace");
        }
    }
}

/// Kills every process inside the namespace `name` and deletes it. Missing is not an error.
pub fn delete_by_name(name: &str) -> Result<(), NetNsError> {
    validate_name(name)?;
    if !NetNs::exists(name) {
        return Ok(());
    }
    let ns = NetNs {
        name: name.to_owned(),
        owned: false,
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = ns.pids();
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        for pid in pids {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    run_ip(["netns", "del", name]).map(|_| ())
}

fn validate_name(name: &str) -> Result<(), NetNsError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NetNsError::InvalidName(name.to_owned()))
    }
}

/// Runs `ip <args…>` and returns its standard output, or its standard error as the error.
pub(crate) fn run_ip<I, S>(args: I) -> Result<String, NetNsError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let output = Command::new("ip")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .map_err(NetNsError::SpawnIp)?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(NetNsError::Ip {
            args: args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("cml-ab12-east-node-1").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name("..").is_err());
        assert!(validate_name(&"x".repeat(201)).is_err());
    }
}
