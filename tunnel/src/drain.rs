//! One shutdown signal for the whole tunnel: running → draining (no new connections or
//! streams, peers told with GOAWAY) → stopped (what is left is cut).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{Notify, watch};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Running,
    Draining,
    Stopped,
}

#[derive(Clone)]
pub(crate) struct Drain {
    phase: watch::Sender<Phase>,
    active: Arc<(AtomicUsize, Notify)>,
}

impl Drain {
    pub fn new() -> Self {
        Self {
            phase: watch::channel(Phase::Running).0,
            active: Arc::new((AtomicUsize::new(0), Notify::new())),
        }
    }

    pub fn set(&self, phase: Phase) {
        self.phase.send_if_modified(|p| {
            let changed = *p < phase;
            if changed {
                *p = phase;
            }
            changed
        });
    }

    pub fn is_draining(&self) -> bool {
        *self.phase.borrow() >= Phase::Draining
    }

    /// Resolves once the phase is at least `phase`.
    pub async fn reached(&self, phase: Phase) {
        let mut rx = self.phase.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|p| *p >= phase).await;
    }

    /// Counts a stream as active until the guard is dropped.
    pub fn stream(&self) -> StreamGuard {
        self.active.0.fetch_add(1, Ordering::AcqRel);
        StreamGuard {
            active: self.active.clone(),
        }
    }

    pub fn active_streams(&self) -> usize {
        self.active.0.load(Ordering::Acquire)
    }

    /// Resolves when no stream is active.
    pub async fn idle(&self) {
        loop {
            let notified = self.active.1.notified();
            if self.active_streams() == 0 {
                return;
            }
            notified.await;
        }
    }
}

pub(crate) struct StreamGuard {
    active: Arc<(AtomicUsize, Notify)>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.active.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.active.1.notify_waiters();
        }
    }
}
