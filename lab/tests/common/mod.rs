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
