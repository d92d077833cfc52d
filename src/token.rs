//! What goes into and comes out of a token exchange.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::ClientCredentials;

/// The request a token exchange service answers: "a token for these
/// credentials".
///
/// The exchange is a `tower::Service<TokenRequest, Response = Token>`;
/// [`TokenProvider`](crate::TokenProvider) sends one of these each time it
/// needs a new token.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    credentials: ClientCredentials,
}

impl TokenRequest {
    /// A request for a token for `credentials`.
    pub fn new(credentials: ClientCredentials) -> Self {
        Self { credentials }
    }

    /// The credentials to authenticate with.
    pub fn credentials(&self) -> &ClientCredentials {
        &self.credentials
    }
}

/// An OAuth 2.0 access token. `Debug` and `Display` never show it.
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

/// A token as issued by the token endpoint: the access token and its lifetime.
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
}

impl Token {
    /// A token that lives `expires_in` from the moment it was requested.
    pub fn new(access_token: impl Into<Arc<str>>, expires_in: Duration) -> Self {
        Self {
            access_token: AccessToken::new(access_token),
            expires_in: Some(expires_in),
        }
    }

    /// A token whose lifetime the endpoint did not say (`expires_in` missing
    /// or 0). The provider assumes
    /// [`TokenProviderBuilder::assumed_lifetime`](crate::TokenProviderBuilder::assumed_lifetime).
    pub fn with_unknown_lifetime(access_token: impl Into<Arc<str>>) -> Self {
        Self {
            access_token: AccessToken::new(access_token),
            expires_in: None,
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
}
