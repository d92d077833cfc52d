//! A token as the provider keeps it: its `Authorization` header value, built
//! once, and the instants that decide when it is refreshed and served.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderValue;
use tokio::time::Instant;

use super::schedule::Schedule;
use crate::clock::{AtomicMoment, millis};
use crate::error::{TokenError, TokenErrorKind};
use crate::token::{AccessToken, Token};

/// A cached token. Immutable once built, except for the record of when a
/// request last asked for its refresh.
pub(crate) struct CachedToken {
    /// Unique among the tokens of one provider: what a request remembers of
    /// the token it carried.
    pub(super) seq: u64,
    pub(super) token: AccessToken,
    /// `Bearer <token>`, marked sensitive. Cloning it moves one reference
    /// count and allocates nothing.
    pub(super) header: HeaderValue,
    /// When the request that fetched it was sent: its lifetime counts from
    /// then.
    pub(super) requested_at: Instant,
    /// From then on, the token is still served and its refresh is due.
    pub(super) refresh_at: Instant,
    /// From then on, the token is not served.
    pub(super) fresh_until: Instant,
    /// Before then, a response rejecting the token does not invalidate it:
    /// the pacing of invalidations, decided when the token was stored.
    pub(super) rejectable_from: Instant,
    /// When a request last asked for the refresh, in milliseconds after
    /// `requested_at`; none before any did.
    refresh_asked: AtomicMoment,
}

impl CachedToken {
    pub(super) fn new(
        seq: u64,
        token: &Token,
        requested_at: Instant,
        schedule: Schedule,
        rejectable_from: Instant,
    ) -> Result<Self, TokenError> {
        let at = |offset| requested_at.checked_add(offset).unwrap_or(requested_at);
        let secret = token.access_token().secret();
        let mut value = Vec::with_capacity("Bearer ".len() + secret.len());
        value.extend_from_slice(b"Bearer ");
        value.extend_from_slice(secret.as_bytes());
        // `from_owner` puts the reference count beside the bytes now, so
        // that no clone ever allocates.
        let mut header =
            HeaderValue::from_maybe_shared(Bytes::from_owner(value)).map_err(|_| {
                TokenError::with_detail(
                    TokenErrorKind::InvalidResponse,
                    "the access token has characters that are not allowed in an HTTP header",
                )
            })?;
        header.set_sensitive(true);
        Ok(Self {
            seq,
            token: token.access_token().clone(),
            header,
            requested_at,
            refresh_at: at(schedule.refresh_after),
            fresh_until: at(schedule.fresh_for),
            rejectable_from,
            refresh_asked: AtomicMoment::none(),
        })
    }

    /// Whether the token may be served at `now`.
    #[inline]
    pub(super) fn is_fresh(&self, now: Instant) -> bool {
        now < self.fresh_until
    }

    /// Whether this caller is the one to ask for the token's refresh: the
    /// first to find it due, or the first after `again` since the last ask
    /// (a worker lost with its runtime never answers it).
    pub(super) fn claim_refresh(&self, now: Instant, again: Duration) -> bool {
        let at = millis(now.saturating_duration_since(self.requested_at));
        // Read first: every later request in the window only reads.
        let last = self.refresh_asked.load(Ordering::Relaxed);
        if last.is_some_and(|last| at < last.saturating_add(millis(again))) {
            return false;
        }
        self.refresh_asked.compare_exchange(last, at)
    }

    /// Lets a later request ask again, when asking failed.
    pub(super) fn unclaim_refresh(&self) {
        self.refresh_asked.store(None, Ordering::Release);
    }

    pub(super) fn timing(&self) -> TokenTiming {
        TokenTiming {
            fetched_at: self.requested_at,
            refresh_at: self.refresh_at,
            served_until: self.fresh_until,
        }
    }
}

/// When the current token of a provider was fetched, when its refresh is
/// due and when it stops being served; from
/// [`TokenProvider::timing`](super::TokenProvider::timing).
///
/// For diagnostics, health endpoints and tests: it says nothing of the
/// token itself. The instants are tokio's, so they follow paused time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenTiming {
    /// When the request that fetched the token was sent; its `expires_in`
    /// counts from then.
    pub fetched_at: Instant,
    /// From then on the token is still served, and the first request to
    /// see it due starts a refresh in the background.
    pub refresh_at: Instant,
    /// From then on the token is never served: a request waits for a new
    /// one instead.
    pub served_until: Instant,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn schedule() -> Schedule {
        Schedule {
            refresh_after: Duration::from_secs(50),
            fresh_for: Duration::from_secs(55),
        }
    }

    #[test]
    fn the_header_is_a_sensitive_bearer_value_and_clones_share_it() {
        let now = Instant::now();
        let token = Token::new("abc.def", Duration::from_secs(60));
        let cached = CachedToken::new(7, &token, now, schedule(), now).unwrap();
        assert_eq!(cached.header, "Bearer abc.def");
        assert!(cached.header.is_sensitive());
        let clone = cached.header.clone();
        assert_eq!(clone.as_bytes().as_ptr(), cached.header.as_bytes().as_ptr());
        let timing = cached.timing();
        assert_eq!(
            timing.refresh_at - timing.fetched_at,
            Duration::from_secs(50)
        );
        assert_eq!(
            timing.served_until - timing.fetched_at,
            Duration::from_secs(55)
        );
    }

    #[test]
    fn a_token_that_cannot_be_a_header_is_refused_without_showing_it() {
        let now = Instant::now();
        let token = Token::new("bad\ntoken", Duration::from_secs(60));
        let Err(err) = CachedToken::new(1, &token, now, schedule(), now) else {
            panic!("a token with a newline was accepted");
        };
        assert_eq!(err.kind(), TokenErrorKind::InvalidResponse);
        assert!(!err.to_string().contains("bad"));
    }

    #[test]
    fn one_refresh_claim_per_token_until_released_or_past_its_time() {
        let now = Instant::now();
        let token = Token::new("t", Duration::from_secs(60));
        let cached = CachedToken::new(1, &token, now, schedule(), now).unwrap();
        let again = Duration::from_secs(10);
        assert!(cached.claim_refresh(now, again));
        assert!(!cached.claim_refresh(now, again));
        assert!(!cached.claim_refresh(now + Duration::from_millis(9_999), again));
        assert!(cached.claim_refresh(now + again, again));
        cached.unclaim_refresh();
        assert!(cached.claim_refresh(now + again, again));
    }
}
