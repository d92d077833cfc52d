//! [`Pacing`]: how often responses may invalidate tokens.

use tokio::time::Instant;

use super::options::Options;

/// Paces the invalidations that responses cause (401, gRPC
/// UNAUTHENTICATED): the first after a quiet period goes through at once;
/// one soon after another waits out a delay that doubles like the exchange
/// backoff. An API that rejects every token gets a trickle of exchanges,
/// never one per request.
#[derive(Default)]
pub(super) struct Pacing {
    last: Option<Instant>,
    streak: u32,
}

impl Pacing {
    pub(super) fn record(&mut self, at: Instant, options: &Options) {
        let quiet = options.max_backoff.saturating_mul(2);
        if self
            .last
            .is_some_and(|last| at.saturating_duration_since(last) >= quiet)
        {
            self.streak = 0;
        }
        self.last = Some(at);
        self.streak = self.streak.saturating_add(1);
    }

    /// From when a rejection may invalidate the next token, if not at once.
    pub(super) fn next(&self, options: &Options) -> Option<Instant> {
        self.last?
            .checked_add(options.backoff(self.streak, None, 0.0))
    }
}
