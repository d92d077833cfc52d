//! [`ProviderStats`]: what a provider has done, counted with its metrics
//! in one place.

use std::sync::Arc;

use super::{Shared, lock};
use crate::metrics::{self, Event};

/// What a [`TokenProvider`](super::TokenProvider) has done so far; from
/// [`TokenProvider::stats`](super::TokenProvider::stats).
///
/// The counters are kept on the slow path only: serving a fresh token
/// counts nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProviderStats {
    /// Exchange attempts started.
    pub exchanges: u64,
    /// Exchange attempts that failed.
    pub failures: u64,
    /// Callers that had to wait for an exchange because no token was fresh.
    pub waits: u64,
    /// Tokens dropped by [`TokenProvider::invalidate`](super::TokenProvider::invalidate) or by a response
    /// that rejected them.
    pub invalidations: u64,
    /// Refreshes started ahead of expiry, while the token was still served.
    pub background_refreshes: u64,
}

impl Shared {
    /// Counts `event` in the provider's stats and its metrics.
    pub(super) fn note(&self, event: Event) {
        let client_id = {
            let mut live = lock(&self.live);
            let stats = &mut live.stats;
            match event {
                Event::ExchangeStarted => stats.exchanges += 1,
                Event::ExchangeFailed { .. } => stats.failures += 1,
                Event::Wait => stats.waits += 1,
                Event::Invalidation => stats.invalidations += 1,
                Event::BackgroundRefresh => stats.background_refreshes += 1,
                Event::ExchangeSucceeded { .. } | Event::TokenStored { .. } => {}
            }
            Arc::clone(live.credentials.label())
        };
        // Outside the lock.
        metrics::record(&client_id, event);
    }
}
