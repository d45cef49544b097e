//! Checks that the machine can run a lab, and prepares what is missing where that is safe
//! (mounting bpffs). Every error says what to do.

use std::path::{Path, PathBuf};

use crate::cgroup::{CgroupError, cgroup2_root};

/// Where bpffs is expected; mounted there by `up` when missing.
pub const BPFFS: &str = "/sys/fs/bpf";

/// What the machine lacks.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("the lab needs root (network namespaces, cgroups, bpffs): run it with sudo or as root")]
    NotRoot,
    #[error(transparent)]
    NoCgroup2(#[from] CgroupError),
    #[error("`{tool}` was not found in PATH; {hint}")]
    MissingTool {
        tool: &'static str,
        hint: &'static str,
    },
    #[error(
        "bpffs is not mounted at {BPFFS} and mounting it failed: {0}; mount it with `mount -t bpf bpf {BPFFS}`"
    )]
    Bpffs(#[source] nix::Error),
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

pub fn require_root() -> Result<(), HostError> {
    if is_root() {
        Ok(())
    } else {
        Err(HostError::NotRoot)
    }
}

/// Finds `program` in PATH (or returns it when it is a path that exists).
pub fn which(program: &str) -> Option<PathBuf> {
    let p = Path::new(program);
    if p.components().count() > 1 {
        return p.exists().then(|| p.to_owned());
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Checks root, cgroup v2 and the tools the lab runs; returns the cgroup v2 root.
pub fn preflight() -> Result<PathBuf, HostError> {
    require_root()?;
    let root = cgroup2_root()?;
    for (tool, hint) in [
        ("ip", "install iproute2 (`apt-get install iproute2`)"),
        ("setsid", "install util-linux"),
        ("sh", "a POSIX shell is needed at /bin/sh"),
    ] {
        if which(tool).is_none() {
            return Err(HostError::MissingTool { tool, hint });
        }
    }
    Ok(root)
}

/// Whether bpffs is mounted at [`BPFFS`].
pub fn bpffs_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|line| {
            let mut f = line.split_whitespace();
            let (_, target, fstype) = (f.next(), f.next(), f.next());
            target == Some(BPFFS) && fstype == Some("bpf")
        })
}

/// Mounts bpffs at [`BPFFS`] if it is not mounted. Returns true if it mounted it now.
pub fn ensure_bpffs() -> Result<bool, HostError> {
    if bpffs_mounted() {
        return Ok(false);
    }
    std::fs::create_dir_all(BPFFS)
        .map_err(|e| HostError::Bpffs(nix::Error::from_raw(e.raw_os_error().unwrap_or(0))))?;
    nix::mount::mount(
        Some("bpf"),
        BPFFS,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(HostError::Bpffs)?;
    Ok(true)
}
