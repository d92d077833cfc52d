//! Error types: [`TokenError`] for getting a token, [`ConfigError`] for
//! configuration.
//!
//! Neither ever contains the client secret or an access token: not in
//! `Display`, not in `Debug`, not in a `source()`.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

mod config;
mod tls;
pub use self::config::ConfigError;

/// A type-erased error, as used by tower.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// What kind of failure a [`TokenError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenErrorKind {
    /// The token endpoint answered 400: the request or grant was refused
    /// (`invalid_request`, `unsupported_grant_type`, `invalid_grant`, …).
    /// Permanent: retrying the same request will not help.
    InvalidRequest,
    /// The token endpoint rejected the client credentials: a 401, or
    /// `invalid_client` with any status. Permanent until the credentials change.
    InvalidClient,
    /// The token endpoint answered 429 Too Many Requests. Transient; see
    /// [`TokenError::retry_after`].
    RateLimited,
    /// The token endpoint answered with a 5xx status. Transient.
    ServerError,
    /// The token endpoint answered with a status this crate does not expect:
    /// a redirect (never followed to get a token; an answer that an HTTP
    /// client under the exchange got by following one is refused too), a
    /// 403, a 404, …
    UnexpectedStatus,
    /// The token endpoint answered with a success status, but the body is not
    /// a usable token response: not JSON, too large, no `access_token`, a
    /// `token_type` other than `Bearer`, an invalid `expires_in`, …
    InvalidResponse,
    /// The HTTP client failed: connection refused or reset, DNS, TLS, a body
    /// that broke off, … Transient.
    Transport,
    /// The token exchange took too long. Transient.
    Timeout,
    /// The token could not be fetched for a reason inside this process, such
    /// as a tokio runtime that is missing or shutting down.
    Internal,
}

impl TokenErrorKind {
    /// Every kind, for [`TokenErrorKind::from_label`].
    #[cfg(feature = "shared-store")]
    const ALL: [Self; 9] = [
        Self::InvalidRequest,
        Self::InvalidClient,
        Self::RateLimited,
        Self::ServerError,
        Self::UnexpectedStatus,
        Self::InvalidResponse,
        Self::Transport,
        Self::Timeout,
        Self::Internal,
    ];

    /// The kind whose [`label`](Self::label) is `label`.
    #[cfg(feature = "shared-store")]
    pub(crate) fn from_label(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.label() == label)
    }

    /// A short snake-case name, as used in metric labels and in a shared
    /// store's backoff entry.
    #[cfg_attr(
        not(any(feature = "metrics", feature = "shared-store")),
        allow(dead_code)
    )]
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::RateLimited => "rate_limited",
            Self::ServerError => "server_error",
            Self::UnexpectedStatus => "unexpected_status",
            Self::InvalidResponse => "invalid_response",
            Self::Transport => "transport",
            Self::Timeout => "timeout",
            Self::Internal => "internal",
        }
    }

    fn summary(self) -> &'static str {
        match self {
            Self::InvalidRequest => "the token endpoint refused the token request",
            Self::InvalidClient => "the token endpoint rejected the client credentials",
            Self::RateLimited => "the token endpoint is rate limiting this client",
            Self::ServerError => "the token endpoint failed",
            Self::UnexpectedStatus => "the token endpoint answered with an unexpected status",
            Self::InvalidResponse => "the token endpoint sent an unusable token response",
            Self::Transport => "the token endpoint could not be reached",
            Self::Timeout => "the token exchange timed out",
            Self::Internal => "the token could not be fetched",
        }
    }
}

/// An OAuth 2.0 error response body (RFC 6749 §5.2), as sent by the token
/// endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub(crate) code: String,
    pub(crate) description: Option<String>,
    pub(crate) uri: Option<String>,
}

impl OAuthError {
    /// The `error` code, such as `invalid_client` or `invalid_request`.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The `error_description`, if the endpoint sent one. Control characters
    /// are removed, the length is bounded and any occurrence of the client
    /// secret is redacted.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The `error_uri`, if the endpoint sent one.
    pub fn uri(&self) -> Option<&str> {
        self.uri.as_deref()
    }
}

/// Getting an access token failed.
///
/// Cloning is cheap: every caller waiting on the same exchange receives a
/// clone of the same error.
///
/// ```
/// use routera_auth::error::{TokenError, TokenErrorKind};
///
/// fn should_page_someone(err: &TokenError) -> bool {
///     err.kind() == TokenErrorKind::InvalidClient
/// }
/// # let _ = should_page_someone;
/// ```
#[derive(Clone)]
pub struct TokenError {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    kind: TokenErrorKind,
    status: Option<StatusCode>,
    oauth: Option<OAuthError>,
    retry_after: Option<Duration>,
    detail: Option<Cow<'static, str>>,
    source: Option<Arc<dyn StdError + Send + Sync>>,
    deferred: bool,
}

impl TokenError {
    /// An error of this kind, with nothing else set.
    ///
    /// With the `with_*` methods, this is how a custom or mock exchange
    /// service reports failures the way [`HttpTokenExchange`](crate::HttpTokenExchange) does:
    ///
    /// ```
    /// use std::time::Duration;
    /// use http::StatusCode;
    /// use routera_auth::{TokenError, TokenErrorKind};
    ///
    /// let err = TokenError::new(TokenErrorKind::RateLimited)
    ///     .with_status(StatusCode::TOO_MANY_REQUESTS)
    ///     .with_retry_after(Duration::from_secs(30));
    /// assert!(err.is_retryable());
    /// assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    /// ```
    pub fn new(kind: TokenErrorKind) -> Self {
        Self::build(kind, None, None, None, None, None)
    }

    /// Sets the HTTP status the token endpoint answered with.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        Arc::make_mut(&mut self.inner).status = Some(status);
        self
    }

    /// Sets how long the endpoint asked the client to wait.
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        Arc::make_mut(&mut self.inner).retry_after = Some(retry_after);
        self
    }

    /// Sets the OAuth 2.0 error code and description the endpoint sent.
    /// Keep secrets out of the description: it is shown by `Display`.
    pub fn with_oauth_error(
        mut self,
        code: impl Into<String>,
        description: Option<String>,
    ) -> Self {
        Arc::make_mut(&mut self.inner).oauth = Some(OAuthError {
            code: code.into(),
            description,
            uri: None,
        });
        self
    }

    /// Marks the error as a deferral: the exchange stack sent nothing to the
    /// token endpoint and asks to be called again after
    /// [`retry_after`](Self::retry_after). An exchange middleware that holds
    /// calls back on behalf of others (a fleet's shared backoff, a
    /// client-side rate limiter) answers with one.
    ///
    /// A [`TokenProvider`](crate::TokenProvider) waits out exactly its
    /// `retry_after` before its next attempt, and counts it as no failure of
    /// its own: its backoff does not grow.
    pub fn deferred(mut self) -> Self {
        Arc::make_mut(&mut self.inner).deferred = true;
        self
    }

    /// Whether the error is a [deferral](Self::deferred): no request reached
    /// the token endpoint.
    pub fn is_deferred(&self) -> bool {
        self.inner.deferred
    }

    /// Sets the cause, returned by `source()`.
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        Arc::make_mut(&mut self.inner).source = Some(Arc::from(source.into()));
        self
    }

    fn build(
        kind: TokenErrorKind,
        status: Option<StatusCode>,
        oauth: Option<OAuthError>,
        retry_after: Option<Duration>,
        detail: Option<Cow<'static, str>>,
        source: Option<BoxError>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                status,
                oauth,
                retry_after,
                detail,
                source: source.map(Arc::from),
                deferred: false,
            }),
        }
    }

    /// An error for a response with this status.
    pub(crate) fn from_status(
        status: StatusCode,
        oauth: Option<OAuthError>,
        retry_after: Option<Duration>,
        detail: Option<Cow<'static, str>>,
    ) -> Self {
        let invalid_client = oauth.as_ref().is_some_and(|o| o.code == "invalid_client");
        let kind = match status {
            StatusCode::UNAUTHORIZED => TokenErrorKind::InvalidClient,
            _ if invalid_client => TokenErrorKind::InvalidClient,
            StatusCode::BAD_REQUEST => TokenErrorKind::InvalidRequest,
            StatusCode::TOO_MANY_REQUESTS => TokenErrorKind::RateLimited,
            s if s.is_server_error() => TokenErrorKind::ServerError,
            _ => TokenErrorKind::UnexpectedStatus,
        };
        Self::build(kind, Some(status), oauth, retry_after, detail, None)
    }

    /// A success response whose body is unusable.
    pub(crate) fn invalid_response(
        status: StatusCode,
        detail: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::build(
            TokenErrorKind::InvalidResponse,
            Some(status),
            None,
            None,
            Some(detail.into()),
            None,
        )
    }

    /// The HTTP client failed. A server certificate the client did not
    /// trust is said so in the message, with what to do.
    pub(crate) fn transport(source: impl Into<BoxError>) -> Self {
        let source = source.into();
        let detail = self::tls::untrusted_certificate(&*source).map(Cow::Borrowed);
        Self::build(
            TokenErrorKind::Transport,
            None,
            None,
            None,
            detail,
            Some(source),
        )
    }

    /// An error with a fixed explanation.
    pub(crate) fn with_detail(kind: TokenErrorKind, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::build(kind, None, None, None, Some(detail.into()), None)
    }

    /// Turns any error of an exchange service into a `TokenError`: a
    /// `TokenError` is kept as it is, a tower timeout becomes
    /// [`TokenErrorKind::Timeout`], anything else [`TokenErrorKind::Transport`].
    pub(crate) fn from_service_error(err: BoxError) -> Self {
        match err.downcast::<TokenError>() {
            Ok(token_error) => *token_error,
            Err(err) if err.is::<tower::timeout::error::Elapsed>() => {
                Self::with_detail(TokenErrorKind::Timeout, "the exchange service timed out")
            }
            Err(err) => Self::transport(err),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> TokenErrorKind {
        self.inner.kind
    }

    /// The HTTP status the token endpoint answered with, if it answered.
    pub fn status(&self) -> Option<StatusCode> {
        self.inner.status
    }

    /// The OAuth 2.0 error body the token endpoint sent, if any.
    pub fn oauth_error(&self) -> Option<&OAuthError> {
        self.inner.oauth.as_ref()
    }

    /// The OAuth `error` code, such as `invalid_client`, if the endpoint sent one.
    pub fn error_code(&self) -> Option<&str> {
        self.inner.oauth.as_ref().map(OAuthError::code)
    }

    /// The OAuth `error_description`, if the endpoint sent one.
    pub fn error_description(&self) -> Option<&str> {
        self.inner.oauth.as_ref().and_then(OAuthError::description)
    }

    /// How long the endpoint asked the client to wait (`Retry-After` in
    /// seconds on a 429 or 503), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// Whether trying again later may succeed: `true` for rate limiting,
    /// 5xx statuses, 408, transport failures and timeouts; `false` for
    /// rejected credentials or requests, unexpected statuses and unusable
    /// responses.
    pub fn is_retryable(&self) -> bool {
        match self.inner.kind {
            TokenErrorKind::RateLimited
            | TokenErrorKind::ServerError
            | TokenErrorKind::Transport
            | TokenErrorKind::Timeout => true,
            TokenErrorKind::UnexpectedStatus => {
                self.inner.status == Some(StatusCode::REQUEST_TIMEOUT)
            }
            TokenErrorKind::InvalidRequest
            | TokenErrorKind::InvalidClient
            | TokenErrorKind::InvalidResponse
            | TokenErrorKind::Internal => false,
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &*self.inner;
        f.write_str(inner.kind.summary())?;
        if let Some(status) = inner.status {
            write!(f, " (HTTP {status}")?;
            if let Some(oauth) = &inner.oauth {
                write!(f, ", {}", oauth.code)?;
                if let Some(description) = &oauth.description {
                    write!(f, ": {description}")?;
                }
            }
            f.write_str(")")?;
        }
        if let Some(detail) = &inner.detail {
            write!(f, ": {detail}")?;
        }
        if let Some(retry_after) = inner.retry_after {
            write!(f, "; retry after {} s", retry_after.as_secs())?;
        }
        // The cause is not repeated here: it is `source()`.
        Ok(())
    }
}

/// The sentence of [`Display`](fmt::Display) followed by each cause, so that
/// `main` returning the error prints what went wrong; with `{:#?}`, the
/// fields.
impl fmt::Debug for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            return write!(f, "{}", ErrorChain(self));
        }
        let inner = &*self.inner;
        let mut debug = f.debug_struct("TokenError");
        debug.field("kind", &inner.kind);
        if let Some(status) = inner.status {
            debug.field("status", &status);
        }
        if let Some(oauth) = &inner.oauth {
            debug.field("oauth", oauth);
        }
        if let Some(retry_after) = inner.retry_after {
            debug.field("retry_after", &retry_after);
        }
        if let Some(detail) = &inner.detail {
            debug.field("detail", detail);
        }
        if let Some(source) = &inner.source {
            debug.field("source", source);
        }
        if inner.deferred {
            debug.field("deferred", &true);
        }
        debug.finish()
    }
}

impl StdError for TokenError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}

/// Displays an error followed by each of its causes, for log lines.
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn StdError + 'static));

impl fmt::Display for ErrorChain<'_> {
    /// A cause that says what the one before it said (some errors give
    /// their own message again as their source) is written once.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut last = self.0.to_string();
        f.write_str(&last)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !last.ends_with(&text) {
                write!(f, ": {text}")?;
            }
            last = text;
            source = cause.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oauth(code: &str) -> Option<OAuthError> {
        Some(OAuthError {
            code: code.to_owned(),
            description: Some("details".to_owned()),
            uri: None,
        })
    }

    #[test]
    fn a_cause_that_repeats_the_one_before_is_written_once() {
        #[derive(Debug)]
        struct Echo(std::io::Error);
        impl fmt::Display for Echo {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
        impl StdError for Echo {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = TokenError::transport(Echo(refused));
        assert_eq!(format!("{err:?}"), format!("{err}: refused"));
    }

    #[test]
    fn debug_reads_as_the_sentence_and_its_causes() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let err = TokenError::transport(refused);
        assert_eq!(format!("{err:?}"), format!("{err}: refused"));
        let rejected = TokenError::build(
            TokenErrorKind::InvalidClient,
            Some(StatusCode::UNAUTHORIZED),
            oauth("invalid_client"),
            None,
            None,
            None,
        );
        assert_eq!(format!("{rejected:?}"), rejected.to_string());
        assert!(!format!("{rejected:?}").contains("TokenError {"));
        assert!(format!("{rejected:#?}").contains("InvalidClient"));
    }

    #[test]
    fn statuses_map_to_kinds() {
        let cases = [
            (400, None, TokenErrorKind::InvalidRequest, false),
            (
                400,
                oauth("invalid_client"),
                TokenErrorKind::InvalidClient,
                false,
            ),
            (
                401,
                oauth("invalid_client"),
                TokenErrorKind::InvalidClient,
                false,
            ),
            (401, None, TokenErrorKind::InvalidClient, false),
            (403, None, TokenErrorKind::UnexpectedStatus, false),
            (302, None, TokenErrorKind::UnexpectedStatus, false),
            (408, None, TokenErrorKind::UnexpectedStatus, true),
            (429, None, TokenErrorKind::RateLimited, true),
            (500, None, TokenErrorKind::ServerError, true),
            (502, None, TokenErrorKind::ServerError, true),
            (503, None, TokenErrorKind::ServerError, true),
        ];
        for (status, body, kind, retryable) in cases {
            let status = StatusCode::from_u16(status).unwrap();
            let err = TokenError::from_status(status, body, None, None);
            assert_eq!(err.kind(), kind, "{status}");
            assert_eq!(err.is_retryable(), retryable, "{status}");
            assert_eq!(err.status(), Some(status));
        }
    }

    #[test]
    fn display_reads_as_a_sentence_with_the_oauth_details() {
        let err = TokenError::from_status(
            StatusCode::UNAUTHORIZED,
            oauth("invalid_client"),
            None,
            None,
        );
        assert_eq!(
            err.to_string(),
            "the token endpoint rejected the client credentials \
             (HTTP 401 Unauthorized, invalid_client: details)"
        );
        assert_eq!(err.error_code(), Some("invalid_client"));
        assert_eq!(err.error_description(), Some("details"));
    }

    #[test]
    fn service_errors_are_classified() {
        let token_error = TokenError::new(TokenErrorKind::InvalidClient);
        let kept = TokenError::from_service_error(Box::new(token_error));
        assert_eq!(kept.kind(), TokenErrorKind::InvalidClient);

        let elapsed =
            TokenError::from_service_error(Box::new(tower::timeout::error::Elapsed::new()));
        assert_eq!(elapsed.kind(), TokenErrorKind::Timeout);
        assert!(elapsed.is_retryable());

        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let transport = TokenError::from_service_error(Box::new(io));
        assert_eq!(transport.kind(), TokenErrorKind::Transport);
        assert!(
            transport
                .source()
                .is_some_and(|source| source.to_string() == "refused")
        );
        assert!(
            !transport.to_string().contains("refused"),
            "the cause is source(), not Display"
        );
        assert_eq!(
            ErrorChain(&transport).to_string(),
            "the token endpoint could not be reached: refused"
        );
    }
}
