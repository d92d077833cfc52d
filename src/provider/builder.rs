//! [`TokenProviderBuilder`]: the options of a provider, set before it is built.

use std::fmt;
use std::time::Duration;

use tower::Service;

use super::TokenProvider;
use super::schedule::{LONGEST_BACKOFF, Options, SHORTEST_BACKOFF};
use crate::ClientCredentials;
use crate::error::BoxError;
use crate::token::{Token, TokenRequest};

/// Builds a [`TokenProvider`]; from [`TokenProvider::builder`].
///
/// Every option has a default that suits Routera's one-hour tokens; set
/// only what your deployment needs.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use routera_auth::{ClientCredentials, Token, TokenProvider, TokenRequest};
/// use tower::service_fn;
///
/// # let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// # runtime.block_on(async {
/// // Any `Service<TokenRequest, Response = Token, Error = TokenError>`:
/// // `HttpTokenExchange::reqwest()?` against Routera.
/// let exchange = service_fn(|_: TokenRequest| async {
///     Ok::<_, routera_auth::TokenError>(Token::new("t0k3n", Duration::from_secs(3600)))
/// });
/// let provider = TokenProvider::builder(exchange, ClientCredentials::new("my-client", "my-secret"))
///     // Give up on an exchange after 5 s (default 10 s).
///     .exchange_timeout(Duration::from_secs(5))
///     // After a failure, wait 500 ms, doubling up to 30 s.
///     .backoff(Duration::from_millis(500), Duration::from_secs(30))
///     .build();
///
/// assert_eq!(provider.token().await?.secret(), "t0k3n");
/// # Ok::<_, routera_auth::TokenError>(())
/// # }).unwrap();
/// ```
pub struct TokenProviderBuilder<S> {
    pub(super) exchange: S,
    pub(super) credentials: ClientCredentials,
    pub(super) options: Options,
}

impl<S> TokenProviderBuilder<S> {
    /// How long before its `expires_in` runs out a token stops being served
    /// (default 30 s), to absorb clock skew and request latency. Capped at a
    /// quarter of each token's lifetime, so short-lived tokens stay usable
    /// and leave time for a refresh, but never below 1 s where the skew and
    /// half the lifetime allow: OAuth servers count expiry in whole seconds,
    /// so a token can die up to a second before its `expires_in` says.
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
