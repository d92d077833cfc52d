//! Options of a [`TokenProvider`](super::TokenProvider), its builder, and
//! the timing math: lifetimes, refresh-ahead jitter, backoff.

use std::fmt;
use std::time::Duration;

use tower::Service;

use super::TokenProvider;
use crate::ClientCredentials;
use crate::error::BoxError;
use crate::token::{Token, TokenRequest};

/// Default for [`TokenProviderBuilder::expiry_skew`].
pub const DEFAULT_EXPIRY_SKEW: Duration = Duration::from_secs(30);
/// Default for [`TokenProviderBuilder::refresh_ahead`].
pub const DEFAULT_REFRESH_AHEAD: Duration = Duration::from_secs(5 * 60);
/// Default for [`TokenProviderBuilder::assumed_lifetime`].
pub const DEFAULT_ASSUMED_LIFETIME: Duration = Duration::from_secs(60);
/// Default for [`TokenProviderBuilder::exchange_timeout`].
pub const DEFAULT_EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default first delay of [`TokenProviderBuilder::backoff`].
pub const DEFAULT_MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Default longest delay of [`TokenProviderBuilder::backoff`].
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);
/// The longest lifetime a token is trusted for, whatever `expires_in` says.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);
/// The longest `Retry-After` honoured; a longer one waits this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(10 * 60);

/// The shortest first delay of [`TokenProviderBuilder::backoff`]: a
/// failing endpoint is never retried in a tight loop.
pub(super) const SHORTEST_BACKOFF: Duration = Duration::from_millis(10);
/// The longest delay of [`TokenProviderBuilder::backoff`].
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
    /// `skew = min(expiry_skew, L / 4)`, and its refresh starts `window`
    /// before that, where `window = min(refresh_ahead, L - skew - L / 2)`,
    /// shortened by up to 20 % by the jitter. So every token is served for
    /// at least half of its lifetime before its refresh starts, and a
    /// quarter of its lifetime or more is left for the refresh.
    pub(crate) fn schedule(&self, token: &Token, jitter: f64) -> Schedule {
        let lifetime = self.lifetime(token);
        let fresh_for = lifetime - self.expiry_skew.min(lifetime / 4);
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

/// Builds a [`TokenProvider`]; from [`TokenProvider::builder`].
pub struct TokenProviderBuilder<S> {
    pub(super) exchange: S,
    pub(super) credentials: ClientCredentials,
    pub(super) options: Options,
}

impl<S> TokenProviderBuilder<S> {
    /// How long before its `expires_in` runs out a token stops being served
    /// (default 30 s), to absorb clock skew and request latency. Capped at a
    /// quarter of each token's lifetime, so short-lived tokens stay usable
    /// and leave time for a refresh.
    pub fn expiry_skew(mut self, skew: Duration) -> Self {
        self.options.expiry_skew = skew;
        self
    }

    /// How long before a token stops being served a background refresh
    /// starts (default 5 min). The token is still served meanwhile, so no
    /// caller waits for a healthy refresh. Capped so that every token is
    /// served for at least half of its lifetime before its refresh starts,
    /// and shortened by up to 20 % at random for each token so a fleet of
    /// processes does not refresh in lockstep.
    pub fn refresh_ahead(mut self, window: Duration) -> Self {
        self.options.refresh_ahead = window;
        self
    }

    /// The lifetime assumed for a token whose response has no `expires_in`,
    /// or `expires_in: 0` (default 60 s, at least 1 s). Short on purpose:
    /// such a token is renewed often rather than used past its real expiry.
    pub fn assumed_lifetime(mut self, lifetime: Duration) -> Self {
        self.options.assumed_lifetime = lifetime.max(Duration::from_secs(1));
        self
    }

    /// How long one exchange may take before it fails with
    /// [`TokenErrorKind::Timeout`](crate::TokenErrorKind::Timeout) and every
    /// waiting caller is released (default 10 s).
    pub fn exchange_timeout(mut self, timeout: Duration) -> Self {
        self.options.exchange_timeout = timeout;
        self
    }

    /// The delays between failed exchanges: `min` after the first failure,
    /// doubling up to `max` (defaults 1 s and 60 s), each shortened by up to
    /// 20 % at random. A `Retry-After` from the endpoint is waited out.
    /// Both are kept between 10 ms and 24 h, so that a failing endpoint is
    /// never retried in a tight loop and a retry always comes.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        let min = min.clamp(SHORTEST_BACKOFF, LONGEST_BACKOFF);
        self.options.min_backoff = min;
        self.options.max_backoff = max.clamp(min, LONGEST_BACKOFF);
        self
    }

    /// Builds the provider.
    pub fn build(self) -> TokenProvider
    where
        S: Service<TokenRequest, Response = Token> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        TokenProvider::from_builder(self)
    }
}

impl<S> fmt::Debug for TokenProviderBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProviderBuilder")
            .field("credentials", &self.credentials)
            .field("options", &self.options)
            .finish_non_exhaustive()
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
        // 3 s: skew 0.75 s, refresh from 1.5 s (jitter 0) to 1.65 s (jitter 1).
        let schedule = at(3, 0.0);
        assert_eq!(schedule.fresh_for, Duration::from_millis(2250));
        assert_eq!(schedule.refresh_after, Duration::from_millis(1500));
        assert_eq!(at(3, 1.0).refresh_after, Duration::from_millis(1650));
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
                assert!(schedule.fresh_for >= lifetime - lifetime / 4);
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
}
