//! [`Breaker`]: leaves a failing store alone, and lets one probe through
//! now and then to find out when it answers again.

use std::time::Duration;

use tokio::time::Instant;

use crate::clock::later;

/// After enough failed store operations with no write accepted between
/// them, the breaker opens: the store is left alone, except for one probe
/// every `probe_every`. A probe whose write is accepted closes it; a probe
/// that fails keeps it open.
///
/// Other successes do not close it: a store that answers reads but refuses
/// every write (a read-only replica after a failover) opens it too.
pub(super) struct Breaker {
    failures_to_open: u32,
    probe_every: Duration,
    /// Failed operations since the last successful write.
    failures: u32,
    /// While open: when the next probe may go.
    next_probe: Option<Instant>,
}

/// What a failure did to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Failure {
    /// The first since the store last accepted a write (or since the
    /// start). It opened the breaker if one failure is enough.
    First,
    /// Another one; still closed.
    Counted,
    /// Another one, which opened it.
    Opened,
    /// A probe failed: it stays open.
    StillOpen,
}

impl Breaker {
    pub(super) fn new(failures_to_open: u32, probe_every: Duration) -> Self {
        Self {
            failures_to_open: failures_to_open.max(1),
            probe_every,
            failures: 0,
            next_probe: None,
        }
    }

    /// Whether the breaker is open.
    pub(super) fn is_open(&self) -> bool {
        self.next_probe.is_some()
    }

    /// Whether the store may be used at `now`: the breaker is closed, or
    /// a probe is due (which this call takes).
    pub(super) fn admits(&mut self, now: Instant) -> bool {
        match self.next_probe {
            None => true,
            Some(at) if now >= at => {
                self.next_probe = Some(later(now, self.probe_every));
                true
            }
            Some(_) => false,
        }
    }

    /// The store answered without showing that it takes writes (a read, a
    /// script that did not write): it stays open, but the next call may
    /// probe at once, so that a replica that took a token from the store
    /// and must renew it soon after does not exchange without it.
    pub(super) fn answered(&mut self, now: Instant) {
        if let Some(at) = &mut self.next_probe {
            *at = (*at).min(now);
        }
    }

    /// The store accepted a write: the breaker closes. Whether a failure
    /// came before it (the store is back).
    pub(super) fn wrote(&mut self) -> bool {
        let failed = self.failures > 0 || self.is_open();
        (self.failures, self.next_probe) = (0, None);
        failed
    }

    /// Counts a failure at `now`.
    pub(super) fn failed(&mut self, now: Instant) -> Failure {
        self.failures = self.failures.saturating_add(1);
        let (failure, open) = match self.next_probe {
            Some(_) => (Failure::StillOpen, true),
            None => {
                let opens = self.failures >= self.failures_to_open;
                match (self.failures == 1, opens) {
                    (true, _) => (Failure::First, opens),
                    (false, true) => (Failure::Opened, true),
                    (false, false) => (Failure::Counted, false),
                }
            }
        };
        if open {
            self.next_probe = Some(later(now, self.probe_every));
        }
        failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE: Duration = Duration::from_millis(250);

    #[tokio::test(start_paused = true)]
    async fn one_failure_is_enough_when_so_configured() {
        let mut breaker = Breaker::new(1, PROBE);
        assert_eq!(breaker.failed(Instant::now()), Failure::First);
        assert!(breaker.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_without_a_write_and_probes_until_a_write_succeeds() {
        let mut breaker = Breaker::new(3, PROBE);
        let now = Instant::now();
        assert_eq!(breaker.failed(now), Failure::First);
        assert!(breaker.wrote(), "after a failure");
        assert!(!breaker.wrote(), "after none");
        assert_eq!(breaker.failed(now), Failure::First);
        assert_eq!(breaker.failed(now), Failure::Counted);
        assert_eq!(breaker.failed(now), Failure::Opened);
        assert!(breaker.is_open() && !breaker.admits(now));

        let due = now + PROBE;
        assert!(breaker.admits(due), "one probe");
        assert!(!breaker.admits(due), "one probe only");
        assert_eq!(breaker.failed(due), Failure::StillOpen);
        assert!(!breaker.admits(due + PROBE / 2));

        // A probe whose read is answered lets the next call probe at once.
        let next = due + PROBE;
        assert!(breaker.admits(next));
        breaker.answered(next);
        assert!(breaker.is_open(), "a read does not close it");
        assert!(breaker.admits(next), "but the next call may probe");
        assert!(breaker.wrote(), "after it was open");
        assert!(!breaker.is_open());
        assert!(breaker.admits(due + PROBE));
    }
}
