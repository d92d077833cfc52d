//! A provider's options, their defaults, and their arithmetic: a token's
//! lifetime and schedule (when its refresh is due, until when it is
//! served), the backoff between failed exchanges, and the pacing of
//! invalidations.

use std::time::Duration;

use tokio::time::Instant;

use crate::token::{Token, served_for};

/// Default for [`TokenProviderBuilder::expiry_skew`](super::TokenProviderBuilder::expiry_skew).
pub const DEFAULT_EXPIRY_SKEW: Duration = Duration::from_secs(30);
/// Default for [`TokenProviderBuilder::refresh_ahead`](super::TokenProviderBuilder::refresh_ahead).
pub const DEFAULT_REFRESH_AHEAD: Duration = Duration::from_secs(5 * 60);
/// Default for [`TokenProviderBuilder::assumed_lifetime`](super::TokenProviderBuilder::assumed_lifetime).
pub const DEFAULT_ASSUMED_LIFETIME: Duration = Duration::from_secs(60);
/// Default for [`TokenProviderBuilder::exchange_timeout`](super::TokenProviderBuilder::exchange_timeout).
pub const DEFAULT_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default first delay of [`TokenProviderBuilder::backoff`](super::TokenProviderBuilder::backoff).
pub const DEFAULT_MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Default longest delay of [`TokenProviderBuilder::backoff`](super::TokenProviderBuilder::backoff).
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The longest lifetime a token is trusted for, whatever `expires_in` says.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest `Retry-After` honoured; a longer one waits this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10 * 60);

/// The shortest first delay of [`TokenProviderBuilder::backoff`](super::TokenProviderBuilder::backoff)(super::TokenProviderBuilder::backoff): a
/// failing endpoint is never retried in a tight loop.
pub(super) const SHORTEST_BACKOFF: Duration = Duration::from_millis(10);
/// The longest delay of [`TokenProviderBuilder::backoff`](super::TokenProviderBuilder::backoff)(super::TokenProviderBuilder::backoff).
pub(super) const LONGEST_BACKOFF: Duration = Duration::from_secs(24 * 60 * 60);

/// Backoff delays are scaled by a random factor in `[1 - JITTER, 1]`.
const BACKOFF_JITTER: f64 = 0.2;
/// The refresh-ahead window is scaled by a random factor in `[1 - JITTER, 1]`.
const REFRESH_JITTER: f64 = 0.2;

#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    pub(super) expiry_skew: Duration,
    pub(super) refresh_ahead: Duration,
    pub(super) assumed_lifetime: Duration,
    pub(crate) exchange_timeout: Duration,
    pub(super) min_backoff: Duration,
    pub(super) max_backoff: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            expiry_skew: DEFAULT_EXPIRY_SKEW,
            refresh_ahead: DEFAULT_REFRESH_AHEAD,
            assumed_lifetime: DEFAULT_ASSUMED_LIFETIME,
            exchange_timeout: DEFAULT_EXCHANGE_TIMEOUT,
            min_backoff: DEFAULT_MIN_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
        }
    }
}

/// When a token obtained by a request sent at time 0 is renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Schedule {
    /// From then on, the token is still served and a background refresh starts.
    pub(crate) refresh_after: Duration,
    /// From then on, the token is no longer served.
    pub(crate) fresh_for: Duration,
}

impl Options {
    /// How long `token` lives: its `expires_in`, or the assumed lifetime,
    /// at most [`MAX_TOKEN_LIFETIME`].
    pub(super) fn lifetime(&self, token: &Token) -> Duration {
        token
            .expires_in()
            .filter(|lifetime| !lifetime.is_zero())
            .unwrap_or(self.assumed_lifetime)
            .min(MAX_TOKEN_LIFETIME)
    }

    /// The schedule of `token`, with `jitter` in `[0, 1]` drawn by the caller.
    ///
    /// With `L` the lifetime: the token is served until `L - skew`, where
    /// `skew = min(expiry_skew, max(L / 4, min(1 s, L / 2)))`, and its
    /// refresh starts `window`
    /// before that, where `window = min(refresh_ahead, L - skew - L / 2)`,
    /// shortened by up to 20 % by the jitter. So every token is served for
    /// at least half of its lifetime before its refresh starts, and a
    /// quarter of its lifetime or more is left for the refresh.
    pub(crate) fn schedule(&self, token: &Token, jitter: f64) -> Schedule {
        let lifetime = self.lifetime(token);
        let fresh_for = served_for(lifetime, self.expiry_skew);
        let window = scale(
            self.refresh_ahead
                .min(fresh_for.saturating_sub(lifetime / 2)),
            1.0 - REFRESH_JITTER * jitter.clamp(0.0, 1.0),
        );
        Schedule {
            refresh_after: fresh_for.saturating_sub(window),
            fresh_for,
        }
    }

    /// How long to wait after the `failures`-th failure in a row: doubling
    /// from the minimum to the maximum, scaled down by up to 20 % at random,
    /// and never shorter than the server's `Retry-After` (up to
    /// [`MAX_RETRY_AFTER`]).
    pub(super) fn backoff(
        &self,
        failures: u32,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let base = self
            .min_backoff
            .saturating_mul(1u32 << doublings)
            .min(self.max_backoff);
        let delay = scale(base, 1.0 - BACKOFF_JITTER * jitter.clamp(0.0, 1.0));
        match retry_after {
            Some(asked) => delay.max(asked.min(MAX_RETRY_AFTER)),
            None => delay,
        }
    }
}

/// `duration` times `factor` (in `[0, 1]`); `duration` itself where the
/// product cannot be represented, so that no option can cause a panic.
fn scale(duration: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(duration.as_secs_f64() * factor).unwrap_or(duration)
}

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
    /// A response rejected, at `at`, a token served since `served_since`.
    /// The streak starts over after a quiet period of twice the longest
    /// backoff, or when the rejected token had been served without
    /// rejection for longer than the delay the streak imposes.
    pub(super) fn record(&mut self, at: Instant, served_since: Instant, options: &Options) {
        let quiet = options.max_backoff.saturating_mul(2);
        let since_last = self.last.map(|last| at.saturating_duration_since(last));
        let served = at.saturating_duration_since(served_since);
        if since_last.is_some_and(|since| since >= quiet) || served > self.delay(options) {
            self.streak = 0;
        }
        self.last = Some(at);
        self.streak = self.streak.saturating_add(1);
    }

    /// From when a rejection may invalidate the next token, if not at once.
    pub(super) fn next(&self, options: &Options) -> Option<Instant> {
        self.last?.checked_add(self.delay(options))
    }

    fn delay(&self, options: &Options) -> Duration {
        if self.streak == 0 {
            return Duration::ZERO;
        }
        options.backoff(self.streak, None, 0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn an_hour_token_refreshes_five_minutes_ahead_and_expires_thirty_seconds_early() {
        let options = Options::default();
        let token = Token::new("t", HOUR);
        let schedule = options.schedule(&token, 0.0);
        assert_eq!(schedule.fresh_for, HOUR - Duration::from_secs(30));
        assert_eq!(schedule.refresh_after, HOUR - Duration::from_secs(330));
        // Full jitter shortens the window by 20 %: refresh 4 min before.
        let schedule = options.schedule(&token, 1.0);
        assert_eq!(schedule.refresh_after, HOUR - Duration::from_secs(30 + 240));
    }

    #[test]
    fn short_tokens_are_served_half_their_life_before_a_refresh() {
        let options = Options::default();
        let at = |secs: u64, jitter| {
            options.schedule(&Token::new("t", Duration::from_secs(secs)), jitter)
        };
        // 3 s: skew 1 s (OAuth servers count whole seconds), refresh from
        // 1.5 s (jitter 0) to 1.6 s (jitter 1).
        let schedule = at(3, 0.0);
        assert_eq!(schedule.fresh_for, Duration::from_millis(2000));
        assert_eq!(schedule.refresh_after, Duration::from_millis(1500));
        assert_eq!(at(3, 1.0).refresh_after, Duration::from_millis(1600));
        // 2 s: skew 1 s, refresh when it stops being served.
        let schedule = at(2, 0.0);
        assert_eq!(schedule.fresh_for, Duration::from_secs(1));
        assert_eq!(schedule.refresh_after, Duration::from_secs(1));
        // 60 s: skew 15 s, refresh at 30 s.
        let schedule = at(60, 0.0);
        assert_eq!(schedule.fresh_for, Duration::from_secs(45));
        assert_eq!(schedule.refresh_after, Duration::from_secs(30));
        // 120 s: skew 30 s, refresh at 60 s.
        let schedule = at(120, 0.0);
        assert_eq!(schedule.fresh_for, Duration::from_secs(90));
        assert_eq!(schedule.refresh_after, Duration::from_secs(60));
        // 600 s: the whole 5 min window fits.
        let schedule = at(600, 0.0);
        assert_eq!(schedule.fresh_for, Duration::from_secs(570));
        assert_eq!(schedule.refresh_after, Duration::from_secs(300));
        for secs in [1, 2, 3, 7, 60, 61, 119, 120, 599, 3600, 86_400] {
            for jitter in [0.0, 0.5, 1.0] {
                let lifetime = Duration::from_secs(secs);
                let schedule = at(secs, jitter);
                assert!(schedule.refresh_after >= lifetime / 2, "{secs} s {jitter}");
                assert!(schedule.refresh_after <= schedule.fresh_for);
                assert!(schedule.fresh_for >= lifetime / 2);
                assert!(
                    schedule.fresh_for <= lifetime - (lifetime / 4).min(Duration::from_secs(1))
                );
                assert!(schedule.fresh_for <= lifetime - DEFAULT_EXPIRY_SKEW.min(lifetime / 4));
            }
        }
    }

    #[test]
    fn zero_margins_serve_a_token_to_its_end() {
        let options = Options {
            expiry_skew: Duration::ZERO,
            refresh_ahead: Duration::ZERO,
            ..Options::default()
        };
        let schedule = options.schedule(&Token::new("t", Duration::from_millis(200)), 0.5);
        assert_eq!(schedule.fresh_for, Duration::from_millis(200));
        assert_eq!(schedule.refresh_after, Duration::from_millis(200));
    }

    #[test]
    fn backoff_doubles_to_the_maximum_with_bounded_jitter() {
        let options = Options::default();
        let secs = |failures, jitter| options.backoff(failures, None, jitter).as_secs_f64();
        assert_eq!(
            (1..=8).map(|n| secs(n, 0.0)).collect::<Vec<_>>(),
            [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
        );
        assert_eq!(secs(1_000, 0.0), 60.0);
        assert!((secs(3, 1.0) - 3.2).abs() < 1e-9);
        assert!((secs(50, 1.0) - 48.0).abs() < 1e-9);
    }

    #[test]
    fn huge_options_never_panic() {
        let options = Options {
            expiry_skew: Duration::MAX,
            refresh_ahead: Duration::MAX,
            min_backoff: Duration::MAX,
            max_backoff: Duration::MAX,
            ..Options::default()
        };
        for jitter in [0.0, 0.3, 1.0] {
            for failures in [0, 1, 2, 64, u32::MAX] {
                assert!(options.backoff(failures, None, jitter) >= Duration::from_secs(1 << 60));
                let asked = Some(Duration::MAX);
                assert!(options.backoff(failures, asked, jitter) >= MAX_RETRY_AFTER);
            }
            let schedule = options.schedule(&Token::new("t", Duration::MAX), jitter);
            assert_eq!(
                schedule.fresh_for,
                MAX_TOKEN_LIFETIME - MAX_TOKEN_LIFETIME / 4
            );
            assert!(schedule.refresh_after >= MAX_TOKEN_LIFETIME / 2);
        }
    }

    #[test]
    fn backoff_honours_retry_after_up_to_a_cap() {
        let options = Options::default();
        let wait = |asked| options.backoff(1, Some(Duration::from_secs(asked)), 0.0);
        assert_eq!(wait(120), Duration::from_secs(120));
        assert_eq!(wait(0), Duration::from_secs(1));
        assert_eq!(wait(86_400), MAX_RETRY_AFTER);
    }

    #[test]
    fn pacing_doubles_and_starts_over_after_a_token_served_long_enough() {
        let options = Options::default();
        let start = Instant::now();
        let mut pacing = Pacing::default();
        assert_eq!(pacing.next(&options), None);
        let secs = |s| Duration::from_secs(s);
        // Tokens rejected right after they were stored: 1 s, then 2 s.
        pacing.record(start, start, &options);
        assert_eq!(pacing.next(&options), Some(start + secs(1)));
        pacing.record(start + secs(1), start + secs(1), &options);
        assert_eq!(pacing.next(&options), Some(start + secs(3)));
        // A token served 10 s (more than the 2 s delay) before its
        // rejection: the streak starts over.
        pacing.record(start + secs(13), start + secs(3), &options);
        assert_eq!(pacing.next(&options), Some(start + secs(14)));
    }
}
