//! Arithmetic on tokio's clock that no option or store answer can make
//! panic, and the jitter that spreads a fleet.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// `at + duration`, or a year after `at` for a longer duration (no option
/// or store answer can make an `Instant` overflow).
pub(crate) fn later(at: Instant, duration: Duration) -> Instant {
    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
    at.checked_add(duration.min(YEAR)).unwrap_or(at)
}

/// `duration` in whole milliseconds, `u64::MAX` for a longer one.
pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A moment, in milliseconds after an epoch its owner keeps, or none yet,
/// in one atomic word: read and written without a lock on the request
/// path. (Stored as the milliseconds plus one, 0 meaning none; that
/// encoding lives here only.)
pub(crate) struct AtomicMoment(AtomicU64);

impl AtomicMoment {
    /// No moment yet.
    pub(crate) const fn none() -> Self {
        Self(AtomicU64::new(0))
    }

    pub(crate) fn load(&self, order: Ordering) -> Option<u64> {
        Self::decode(self.0.load(order))
    }

    pub(crate) fn store(&self, moment: Option<u64>, order: Ordering) {
        self.0.store(Self::encode(moment), order);
    }

    /// Stores `new` if the moment is still `current`; whether it did.
    pub(crate) fn compare_exchange(&self, current: Option<u64>, new: u64) -> bool {
        let (current, new) = (Self::encode(current), Self::encode(Some(new)));
        self.0
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    fn encode(moment: Option<u64>) -> u64 {
        moment.map_or(0, |ms| ms.saturating_add(1))
    }

    fn decode(word: u64) -> Option<u64> {
        word.checked_sub(1)
    }
}

/// A random number in `[0, 1)`, from the standard library's randomly seeded
/// hasher, whose keys change with every `RandomState` (good enough to spread
/// a fleet; not for cryptography).
pub(crate) fn random_unit() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u8(0);
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_atomic_moment_tells_none_from_zero_and_swaps_only_from_what_it_holds() {
        let moment = AtomicMoment::none();
        assert_eq!(moment.load(Ordering::Relaxed), None);
        assert!(moment.compare_exchange(None, 0));
        assert_eq!(moment.load(Ordering::Relaxed), Some(0), "0 ms is a moment");
        assert!(!moment.compare_exchange(None, 5), "it holds 0, not none");
        assert!(moment.compare_exchange(Some(0), 5));
        moment.store(None, Ordering::Relaxed);
        assert_eq!(moment.load(Ordering::Relaxed), None);
        moment.store(Some(u64::MAX), Ordering::Relaxed);
        assert_eq!(
            moment.load(Ordering::Relaxed),
            Some(u64::MAX - 1),
            "saturates"
        );
    }

    #[test]
    fn random_units_are_in_range_and_vary() {
        let draws: Vec<f64> = (0..1000).map(|_| random_unit()).collect();
        assert!(draws.iter().all(|d| (0.0..1.0).contains(d)));
        let mean = draws.iter().sum::<f64>() / draws.len() as f64;
        assert!((0.4..0.6).contains(&mean), "{mean}");
    }

    #[test]
    fn later_never_overflows() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert!(later(now, Duration::MAX) > now);
    }
}
