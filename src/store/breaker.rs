//! [`Breaker`]: leaves a failing store alone for a while.

use std::time::Duration;

use tokio::time::Instant;

use crate::clock::later;

/// After enough failed store operations in a row, the store is left alone
/// for a while; then one operation is let through, and a failure opens the
/// breaker again at once.
pub(super) struct Breaker {
    failures_to_open: u32,
    open_for: Duration,
    /// Failed operations in a row, and until when the store is left alone.
    failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    pub(super) fn new(failures_to_open: u32, open_for: Duration) -> Self {
        Self {
            failures_to_open: failures_to_open.max(1),
            open_for,
            failures: 0,
            open_until: None,
        }
    }

    /// Whether the store is left alone at `now`.
    pub(super) fn is_open(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|until| now < until)
    }

    pub(super) fn succeeded(&mut self) {
        (self.failures, self.open_until) = (0, None);
    }

    /// Counts a failure at `now`; how long the breaker is open for if it
    /// opens.
    pub(super) fn failed(&mut self, now: Instant) -> Option<Duration> {
        self.failures = self.failures.saturating_add(1);
        // A failure after the breaker let one operation through opens it
        // again at once.
        if self.failures < self.failures_to_open && self.open_until.is_none() {
            return None;
        }
        self.open_until = Some(later(now, self.open_for));
        self.failures = 0;
        Some(self.open_for)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_in_a_row_and_again_at_once_after_a_trial() {
        let second = Duration::from_secs(1);
        let mut breaker = Breaker::new(2, second);
        let now = Instant::now();
        assert_eq!(breaker.failed(now), None);
        breaker.succeeded();
        assert_eq!(breaker.failed(now), None);
        assert_eq!(breaker.failed(now), Some(second));
        assert!(breaker.is_open(now));
        let after = now + second;
        assert!(!breaker.is_open(after));
        assert_eq!(breaker.failed(after), Some(second), "the trial failed");
        assert!(breaker.is_open(after));
    }
}
