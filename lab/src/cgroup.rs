//! cgroup v2 directories.
//!
//! [`Cgroup`] is a guard: [`Cgroup::create`] makes a directory under the cgroup v2 hierarchy
//! (creating missing parents), [`Cgroup::add_pid`] moves a process into it, and dropping the
//! guard kills every process left in its subtree and removes the directories it created.
//! [`Cgroup::open`] refers to an existing cgroup and removes nothing.
//!
//! The hierarchy is found in `/proc/self/mounts` (on a hybrid system it is
//! `/sys/fs/cgroup/unified`, on a unified one `/sys/fs/cgroup`). eBPF programs of type
//! `cgroup/connect4` etc. attach to the directory fd: open [`Cgroup::path`].
//!
//! ```no_run
//! use clustermesh_lab::cgroup::Cgroup;
//! let cg = Cgroup::create("clustermesh-test/my-test").unwrap();
//! let child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
//! cg.add_pid(child.id()).unwrap();
//! // dropping `cg` kills `sleep` and removes both directories it created
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// What can go wrong with a cgroup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 hierarchy is mounted (looked for a `cgroup2` entry in /proc/self/mounts); \
         mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`"
    )]
    NoCgroup2,
    #[error("cgroup path {0:?} must be relative to the cgroup v2 root and must not contain `..`")]
    InvalidPath(PathBuf),
    #[error("cgroup {0} does not exist")]
    NotFound(PathBuf),
    #[error("{action} {path}: {source} (are you root?)")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "processes {pids:?} are still in cgroup {path} after SIGKILL; they may be stuck in the kernel (D state)"
    )]
    StillPopulated { path: PathBuf, pids: Vec<u32> },
}

/// A cgroup v2 directory. When this guard created it, dropping it kills the processes of its
/// subtree and removes it together with the parents [`Cgroup::create`] had to create.
#[derive(Debug)]
pub struct Cgroup {
    path: PathBuf,
    /// The topmost directory this guard created, removed on drop; `None` when not owned.
    created_top: Option<PathBuf>,
}

/// The mount point of the cgroup v2 hierarchy.
pub fn cgroup2_root() -> Result<PathBuf, CgroupError> {
    let mounts = fs::read_to_string("/proc/self/mounts").map_err(|source| CgroupError::Io {
        action: "read",
        path: "/proc/self/mounts".into(),
        source,
    })?;
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _source = fields.next()?;
            let target = fields.next()?;
            let fstype = fields.next()?;
            (fstype == "cgroup2").then(|| PathBuf::from(target))
        })
        .collect();
    // Prefer the usual places when several are mounted.
    found.sort_by_key(|p| match p.to_str() {
        Some("/sys/fs/cgroup/unified") => 0,
        Some("/sys/fs/cgroup") => 1,
        _ => 2,
    });
    found.into_iter().next().ok_or(CgroupError::NoCgroup2)
}

impl Cgroup {
    /// Creates `relative` (e.g. `clustermesh-lab/lab1/east/east-1`) under the cgroup v2 root,
    /// with any missing parents. Succeeds if it already exists, but then removes on drop only
    /// the parents it created itself (none).
    pub fn create(relative: impl AsRef<Path>) -> Result<Self, CgroupError> {
        let relative = relative.as_ref();
        check_relative(relative)?;
        let root = cgroup2_root()?;
        let path = root.join(relative);
        // Find the topmost missing directory: that one and everything below it is ours.
        let mut created_top = None;
        let mut probe = root.clone();
        for part in relative.components() {
            probe.push(part);
            if !probe.exists() {
                created_top = Some(probe.clone());
                break;
            }
        }
        fs::create_dir_all(&path).map_err(|source| CgroupError::Io {
            action: "create cgroup",
            path: path.clone(),
            source,
        })?;
        Ok(Cgroup { path, created_top })
    }

    /// Refers to an existing cgroup given relative to the cgroup v2 root; removes nothing on drop.
    pub fn open(relative: impl AsRef<Path>) -> Result<Self, CgroupError> {
        let relative = relative.as_ref();
        check_relative(relative)?;
        let path = cgroup2_root()?.join(relative);
        if !path.is_dir() {
            return Err(CgroupError::NotFound(path));
        }
        Ok(Cgroup {
            path,
            created_top: None,
        })
    }

    /// The cgroup directory (absolute).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the process `pid` (all its threads) into this cgroup.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        let procs = self.path.join("cgroup.procs");
        fs::write(&procs, pid.to_string()).map_err(|source| CgroupError::Io {
            action: "write pid to",
            path: procs,
            source,
        })
    }

    /// Pids in this cgroup and all cgroups below it.
    pub fn pids_recursive(&self) -> Vec<u32> {
        pids_recursive(&self.path)
    }

    /// Kills (SIGKILL) every process in the subtree and waits until it is empty.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        kill_tree(&self.path)
    }

    /// Kills the subtree's processes and removes the directories this guard created now,
    /// reporting errors (dropping does the same but can only log them).
    pub fn remove(mut self) -> Result<(), CgroupError> {
        match self.created_top.take() {
            Some(top) => remove_tree(&self.path, &top),
            None => Ok(()),
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Some(top) = self.created_top.take()
            && let Err(err) = remove_tree(&self.path, &top)
        {
            tracing::warn!(cgroup = %self.path.display(), %err, "could not remove cgroup");
        }
    }
}

fn check_relative(relative: &Path) -> Result<(), CgroupError> {
    use std::path::Component;
    let ok = relative.components().count() > 0
        && relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(CgroupError::InvalidPath(relative.to_owned()))
    }
}

/// Kills the processes below `path`, removes `path`'s subtree, then the directories between
/// `path` and `top` (inclusive) that are empty.
fn remove_tree(path: &Path, top: &Path) -> Result<(), CgroupError> {
    if path.exists() {
        kill_tree(path)?;
        remove_dirs_bottom_up(path)?;
    }
    let mut dir = path.parent();
    while let Some(d) = dir {
        if !d.starts_with(top) {
            break;
        }
        // Another user may have created something beside us meanwhile: then it stays.
        if fs::remove_dir(d).is_err() {
            break;
        }
        dir = d.parent();
    }
    Ok(())
}

/// Kills every process in the cgroup subtree at `path` and waits (up to 5 s) until it is empty.
pub fn kill_tree(path: &Path) -> Result<(), CgroupError> {
    if !path.exists() {
        return Ok(());
    }
    // cgroup.kill (Linux 5.14+) kills the whole subtree atomically, including processes that
    // fork meanwhile; on older kernels fall back to signalling each pid.
    let _ = fs::write(path.join("cgroup.kill"), "1");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let pids = pids_recursive(path);
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CgroupError::StillPopulated {
                path: path.to_owned(),
                pids,
            });
        }
        for pid in pids {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes the cgroup directory `path` and every cgroup below it (they must be empty of
/// processes). Missing is not an error.
pub fn remove_dirs_bottom_up(path: &Path) -> Result<(), CgroupError> {
    if !path.exists() {
        return Ok(());
    }
    for child in subdirs(path) {
        remove_dirs_bottom_up(&child)?;
    }
    // A cgroup can stay busy for a moment after its last process exits.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) if Instant::now() > deadline => {
                return Err(CgroupError::Io {
                    action: "remove cgroup",
                    path: path.to_owned(),
                    source,
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn subdirs(path: &Path) -> Vec<PathBuf> {
    fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .map(|e| e.path())
        .collect()
}

/// Pids in the cgroup at `path` and every cgroup below it.
pub fn pids_in_tree(path: &Path) -> Vec<u32> {
    pids_recursive(path)
}

fn pids_recursive(path: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_to_string(path.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for child in subdirs(path) {
        pids.extend(pids_recursive(&child));
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_only() {
        assert!(check_relative(Path::new("clustermesh-lab/a/b")).is_ok());
        assert!(check_relative(Path::new("/sys/fs/cgroup")).is_err());
        assert!(check_relative(Path::new("a/../b")).is_err());
        assert!(check_relative(Path::new("")).is_err());
    }
}
