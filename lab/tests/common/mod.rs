//! Helpers shared by the lab's root-only integration tests.

#![allow(dead_code, reason = "each test file uses a different subset")]

use std::time::{Duration, Instant};

/// True when the test may run. Not root: with `CI=true` the test fails (CI must run it),
/// otherwise it says why it skips and returns false.
pub fn require_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "this test needs root (network namespaces, cgroups) and CI=true: it must not be skipped"
        );
    }
    eprintln!("skipped: this test needs root (network namespaces, cgroups)");
    false
}

/// A short random name part, so that concurrent tests never collide.
pub fn unique(prefix: &str) -> String {
    let n: u32 = rand::random();
    format!("{prefix}{:05x}", n & 0xf_ffff)
}

/// Polls `check` until it returns `Some`, or panics after `timeout` saying what it waited for.
pub fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

use std::path::{Path, PathBuf};

use clustermesh_lab::state::Helper;
use clustermesh_lab::topology::Topology;
use clustermesh_lab::{LabConfig, LabGuard};

/// A lab for one test: unique name, state in a temporary directory, taken down on drop
/// (also when the test fails) by its [`LabGuard`].
pub struct TestLab {
    pub lab: LabGuard,
    pub name: String,
    pub state_dir: PathBuf,
    // Dropped after `lab` (fields drop in order), so `down` still finds the state.
    _tmp: tempfile::TempDir,
}

impl TestLab {
    /// Brings up `topology` (default: east and west, two nodes each).
    pub fn up(topology: Option<Topology>) -> TestLab {
        Self::up_with(topology, |_| {})
    }

    /// Like [`TestLab::up`], with a chance to change the config first.
    pub fn up_with(topology: Option<Topology>, change: impl FnOnce(&mut LabConfig)) -> TestLab {
        let name = unique("t");
        let tmp = tempfile::tempdir().unwrap();
        let state_dir = tmp.path().join(&name);
        let mut config = test_config(&name, &state_dir);
        change(&mut config);
        let lab = LabGuard::up(&config, &topology.unwrap_or_default()).expect("lab up");
        TestLab {
            lab,
            name,
            state_dir,
            _tmp: tmp,
        }
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }
}

/// A lab config using the lab crate's own helper binary and `state_dir`.
pub fn test_config(name: &str, state_dir: &Path) -> LabConfig {
    let helper = Helper {
        program: env!("CARGO_BIN_EXE_clustermesh-lab-helper").into(),
        prefix_args: vec![],
    };
    let mut config = LabConfig::new(name, helper);
    config.state_dir = state_dir.to_owned();
    config
}
