//! What goes into and comes out of a token exchange.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::ClientCredentials;

/// What a provider asks its token exchange for: a [`Token`] for these
/// credentials, with why it is wanted and by when (the question, where a
/// `Token` is the answer).
///
/// The exchange is a `tower::Service<TokenRequest, Response = Token>`;
/// [`TokenProvider`](crate::TokenProvider) sends one of these each time it
/// needs a new token. [`reason`](Self::reason) and
/// [`needed_by`](Self::needed_by) are for exchange middleware (a fleet's
/// shared cache, a logging or metrics layer): an HTTP exchange ignores them.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    credentials: ClientCredentials,
    reason: TokenReason,
    needed_by: Option<Instant>,
    timeout: Duration,
    expiry_skew: Duration,
    backoff: Duration,
}

impl TokenRequest {
    /// A request for a token for `credentials`, wanted because there is
    /// none ([`TokenReason::Missing`]) and needed now, by a provider with
    /// the default [`exchange_timeout`](crate::defaults::EXCHANGE_TIMEOUT) and
    /// [`expiry_skew`](crate::defaults::EXPIRY_SKEW).
    pub fn new(credentials: ClientCredentials) -> Self {
        Self {
            credentials,
            reason: TokenReason::Missing,
            needed_by: None,
            timeout: crate::defaults::EXCHANGE_TIMEOUT,
            expiry_skew: crate::defaults::EXPIRY_SKEW,
            backoff: crate::defaults::MIN_BACKOFF,
        }
    }

    /// Says how long the caller waits for the answer before it gives up.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Says how long before its expiry the caller stops serving a token
    /// (see [`served_for`](Self::served_for)).
    pub fn with_expiry_skew(mut self, skew: Duration) -> Self {
        self.expiry_skew = skew;
        self
    }

    /// How long the caller waits for the answer: the provider's
    /// [`exchange_timeout`](crate::TokenProviderBuilder::exchange_timeout).
    /// A middleware that waits for something else first (another process's
    /// exchange) keeps within it.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long after its issue the caller serves a token of `lifetime`:
    /// its lifetime less the provider's
    /// [`expiry_skew`](crate::TokenProviderBuilder::expiry_skew), which is
    /// capped at a quarter of the lifetime but kept at 1 s where half the
    /// lifetime allows. A cache that hands out a token issued earlier
    /// ([`Token::with_age`]) must hand out one with time left to serve.
    pub fn served_for(&self, lifetime: Duration) -> Duration {
        served_for(lifetime, self.expiry_skew)
    }

    /// Says how long the caller waits before it asks again if this
    /// exchange fails (see [`backoff`](Self::backoff)).
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long the caller waits before it asks again if this exchange
    /// fails without a `Retry-After` that asks for longer: the provider's
    /// next backoff, jitter included (the
    /// minimum of [`backoff`](crate::TokenProviderBuilder::backoff) by
    /// default). A middleware that shares the failure with others (a
    /// fleet's shared cache) makes them back off as long.
    pub fn backoff(&self) -> Duration {
        self.backoff
    }

    /// Says why the token is wanted.
    pub fn with_reason(mut self, reason: TokenReason) -> Self {
        self.reason = reason;
        self
    }

    /// Says by when the caller needs the token: the moment its current
    /// token stops being served.
    pub fn with_needed_by(mut self, needed_by: Instant) -> Self {
        self.needed_by = Some(needed_by);
        self
    }

    /// The credentials to authenticate with.
    pub fn credentials(&self) -> &ClientCredentials {
        &self.credentials
    }

    /// Why the token is wanted.
    pub fn reason(&self) -> &TokenReason {
        &self.reason
    }

    /// By when the caller needs the token: the moment the token it serves
    /// now stops being served. `None` when it has no token to serve: it
    /// needs one now.
    pub fn needed_by(&self) -> Option<Instant> {
        self.needed_by
    }
}

/// How long after its issue a token of `lifetime` is served with an expiry
/// skew of `skew`: the skew is capped at a quarter of the lifetime, but kept
/// at 1 s (OAuth servers count expiry in whole seconds) where half the
/// lifetime allows it.
pub(crate) fn served_for(lifetime: Duration, skew: Duration) -> Duration {
    const SECOND: Duration = Duration::from_secs(1);
    lifetime - skew.min((lifetime / 4).max(SECOND.min(lifetime / 2)))
}

/// Why a [`TokenProvider`](crate::TokenProvider) asks for a token; from
/// [`TokenRequest::reason`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenReason {
    /// The provider has no token it may serve: its first token, or the last
    /// one stopped being served.
    Missing,
    /// The current token's refresh is due; it is served meanwhile, until
    /// [`TokenRequest::needed_by`].
    RefreshDue,
    /// This token was rejected: a response refused it (a 401), or
    /// [`TokenProvider::invalidate`](crate::TokenProvider::invalidate)
    /// dropped it. A new token must differ from it.
    Rejected(AccessToken),
    /// [`TokenProvider::refresh`](crate::TokenProvider::refresh) asked for a
    /// new token while the current one may still be served.
    Forced,
}

impl TokenReason {
    /// A short snake-case name, for logs and metric labels.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::RefreshDue => "refresh_due",
            Self::Rejected(_) => "rejected",
            Self::Forced => "forced",
        }
    }
}

/// The bearer secret alone, as it goes in `Authorization: Bearer …`, without
/// its lifetime (which a [`Token`] adds). `Debug` and `Display` never show
/// it.
///
/// Cloning is cheap (one reference count).
///
/// ```
/// use routera_auth::AccessToken;
///
/// let token = AccessToken::new("eyJraWQiOi");
/// assert_eq!(token.secret(), "eyJraWQiOi");
/// assert_eq!(format!("{token:?}"), "AccessToken([redacted])");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct AccessToken(Arc<str>);

impl AccessToken {
    /// Wraps a token string.
    pub fn new(token: impl Into<Arc<str>>) -> Self {
        Self(token.into())
    }

    /// The token itself, to put on the wire. Keep it out of logs.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken([redacted])")
    }
}

/// What a token exchange answers to a [`TokenRequest`]: an [`AccessToken`]
/// with its lifetime (and age), as the token endpoint issued it.
///
/// Build one by hand to mock the exchange:
///
/// ```
/// use std::time::Duration;
/// use routera_auth::Token;
///
/// let token = Token::new("mock-token", Duration::from_secs(3600));
/// assert_eq!(token.expires_in(), Some(Duration::from_secs(3600)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    access_token: AccessToken,
    expires_in: Option<Duration>,
    age: Duration,
}

impl Token {
    /// A token that lives `expires_in` from the moment it was requested.
    pub fn new(access_token: impl Into<Arc<str>>, expires_in: Duration) -> Self {
        Self {
            access_token: AccessToken::new(access_token),
            expires_in: Some(expires_in),
            age: Duration::ZERO,
        }
    }

    /// A token whose lifetime the endpoint did not say (`expires_in` missing
    /// or 0). The provider assumes
    /// [`TokenProviderBuilder::assumed_lifetime`](crate::TokenProviderBuilder::assumed_lifetime).
    pub fn with_unknown_lifetime(access_token: impl Into<Arc<str>>) -> Self {
        Self {
            access_token: AccessToken::new(access_token),
            expires_in: None,
            age: Duration::ZERO,
        }
    }

    /// The access token.
    pub fn access_token(&self) -> &AccessToken {
        &self.access_token
    }

    /// The lifetime the endpoint gave, if it gave one.
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_in
    }

    /// Says that the token was issued `age` before it is handed over: it
    /// comes from a cache (a fleet's shared store), not from the endpoint
    /// just now. A [`TokenProvider`](crate::TokenProvider) counts its
    /// lifetime, [`expires_in`](Self::expires_in), from its issue time, not
    /// from the moment it received it.
    pub fn with_age(mut self, age: Duration) -> Self {
        self.age = age;
        self
    }

    /// How long before it was handed over the token was issued: zero for a
    /// token fresh from the endpoint.
    pub fn age(&self) -> Duration {
        self.age
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_of_skew_is_kept_where_half_the_lifetime_allows() {
        let secs = |s: f64| Duration::from_secs_f64(s);
        let served = |lifetime: f64, skew: f64| served_for(secs(lifetime), secs(skew));
        assert_eq!(served(3600.0, 30.0), secs(3570.0));
        assert_eq!(served(60.0, 30.0), secs(45.0));
        assert_eq!(served(3.0, 30.0), secs(2.0));
        assert_eq!(served(2.0, 30.0), secs(1.0));
        assert_eq!(served(1.0, 30.0), secs(0.5));
        assert_eq!(served(3.0, 0.0), secs(3.0));
        assert_eq!(served(3.0, 0.2), secs(2.8));
    }
}
