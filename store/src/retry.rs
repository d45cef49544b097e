//! Reconnect pacing: exponential backoff with jitter (backon), reset after a success, so a flapping
//! etcd is not hammered and many clients do not retry in lockstep.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

const MIN_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(10);

pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    pub fn new() -> Self {
        let builder = ExponentialBuilder::new()
            .with_min_delay(MIN_DELAY)
            .with_max_delay(MAX_DELAY)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            delays: builder.build(),
            builder,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(MAX_DELAY)
    }

    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Called after a success: the next failure starts again from the shortest delay.
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_to_the_cap_and_reset() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first >= MIN_DELAY && first <= MIN_DELAY * 2, "{first:?}");
        let mut last = first;
        for _ in 0..20 {
            last = b.next_delay();
        }
        // Jitter adds up to one more min_delay-sized share on top of the capped delay.
        assert!(last >= MAX_DELAY && last <= MAX_DELAY * 2, "{last:?}");
        b.reset();
        assert!(b.next_delay() <= MIN_DELAY * 2);
    }
}
