//! The token exchange: `POST /oauth2/token` with client credentials, as a
//! tower [`Service`].
//!
//! [`HttpTokenExchange`] speaks the protocol over any HTTP client service
//! `H: Service<http::Request<Full<Bytes>>>`: reqwest by default (feature
//! `reqwest`), a hyper-util client, or a mock in tests. Since it is an
//! ordinary service, it can be wrapped with ordinary tower layers (timeout,
//! concurrency limit, retry) before it is handed to a
//! [`TokenProvider`](crate::TokenProvider):
//!
//! ```
//! # #[cfg(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls"))]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use routera_auth::{ClientCredentials, HttpTokenExchange, Token, TokenError, TokenProvider, TokenRequest};
//! use tower::ServiceBuilder;
//! use tower::retry::Policy;
//!
//! /// Retries transient failures (429, 5xx, transport, timeouts) twice, at once.
//! #[derive(Clone)]
//! struct RetryTransient(usize);
//!
//! impl Policy<TokenRequest, Token, TokenError> for RetryTransient {
//!     type Future = std::future::Ready<()>;
//!
//!     fn retry(&mut self, _: &mut TokenRequest, result: &mut Result<Token, TokenError>) -> Option<Self::Future> {
//!         match result {
//!             Err(err) if err.is_retryable() && self.0 > 0 => {
//!                 self.0 -= 1;
//!                 Some(std::future::ready(()))
//!             }
//!             _ => None,
//!         }
//!     }
//!
//!     fn clone_request(&mut self, request: &TokenRequest) -> Option<TokenRequest> {
//!         Some(request.clone())
//!     }
//! }
//!
//! let exchange = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(10))
//!     .concurrency_limit(1)
//!     .retry(RetryTransient(2))
//!     .service(HttpTokenExchange::reqwest()?);
//! let provider = TokenProvider::new(exchange, ClientCredentials::new("id", "secret"));
//! # let _ = provider;
//! # Ok(())
//! # }
//! # #[cfg(not(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls")))]
//! # fn main() {}
//! ```
//!
//! The provider clones the exchange service for each exchange (one at a
//! time), so layers whose clones share their state (`ConcurrencyLimit`,
//! `Buffer`, `RateLimit` behind a `Buffer`) behave as one service. The
//! provider already retries failed exchanges with backoff; a retry layer
//! here retries within one exchange, before the provider sees a failure.

mod future;
mod parse;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, Uri};
use http_body_util::Full;
use tower::Service;

pub use self::future::ExchangeFuture;
use crate::credentials::{AuthMethod, form_urlencode};
use crate::error::{BoxError, ConfigError, TokenError};
use crate::token::{Token, TokenRequest};

/// The body type [`HttpTokenExchange`] sends.
pub type ExchangeBody = Full<Bytes>;

/// In the extensions of every request [`HttpTokenExchange`] sends: tells an
/// HTTP client adapter that the answer must come from the request's URL
/// itself (`ReqwestService` refuses one that came through a redirect).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenEndpointRequest;

/// A token exchange over HTTP: a `Service<TokenRequest, Response = Token,
/// Error = TokenError>` that posts client credentials to the token endpoint
/// and parses the answer.
///
/// - The request is exactly the contract's: `POST`,
///   `Content-Type: application/x-www-form-urlencoded`,
///   `Accept: application/json`, `grant_type=client_credentials`, and the
///   credentials in the body or in a `Basic` header ([`AuthMethod`]).
/// - The response body is read up to 64 KiB and no further; a larger body
///   is an error.
/// - Redirects are never followed to get a token: a 3xx answer is an
///   [`UnexpectedStatus`](crate::TokenErrorKind::UnexpectedStatus) error,
///   and the credentials go to the token URL only, provided the HTTP client
///   under the exchange does not follow redirects either: the client of
///   `HttpTokenExchange::reqwest()` does not, nor does a hyper-util client.
///   Over a `ReqwestService` whose client follows them, an answer that did
///   not come from the token URL is refused with an error that says how to
///   fix the client (see `ReqwestService` for what reqwest has sent by then).
/// - Every failure is a [`TokenError`] that says what happened, with the
///   status and OAuth error code where there is one.
///
/// `H` is any HTTP client service whose response is `http::Response<B>`
/// with `B: http_body::Body`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use http_body_util::Full;
/// use hyper_util::client::legacy::Client;
/// use hyper_util::rt::TokioExecutor;
/// use routera_auth::{AuthMethod, HttpTokenExchange, TokenRequest};
/// use tower::ServiceExt;
/// # let emulator = routera_auth_test::Emulator::start().await?;
/// # let token_url = emulator.token_url();
/// # let credentials = emulator.credentials();
///
/// // Any HTTP client service will do; here a hyper-util client (plain HTTP
/// // is accepted for a loopback token URL only).
/// let client = Client::builder(TokioExecutor::new()).build_http::<Full<bytes::Bytes>>();
/// let exchange = HttpTokenExchange::new(client)
///     .with_token_url(&token_url)?
///     .with_auth_method(AuthMethod::BasicAuth);
///
/// let token = exchange.oneshot(TokenRequest::new(credentials)).await?;
/// assert!(token.expires_in().is_some());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct HttpTokenExchange<H> {
    http: H,
    config: Arc<ExchangeConfig>,
}

#[derive(Debug, Clone)]
struct ExchangeConfig {
    token_url: Uri,
    auth_method: AuthMethod,
}

impl<H> HttpTokenExchange<H> {
    /// An exchange that sends its requests through `http`, to
    /// [`crate::defaults::TOKEN_URL`] with [`AuthMethod::RequestBody`].
    pub fn new(http: H) -> Self {
        Self {
            http,
            config: Arc::new(ExchangeConfig {
                token_url: Uri::from_static(crate::defaults::TOKEN_URL),
                auth_method: AuthMethod::RequestBody,
            }),
        }
    }

    /// Sends token requests to `token_url` instead of the default.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if the URL does not parse, has no host, carries
    /// credentials (`user:password@`), or is not
    /// `https` while its host is not loopback (`localhost`, `127.0.0.0/8`,
    /// `[::1]`).
    pub fn with_token_url(mut self, token_url: &str) -> Result<Self, ConfigError> {
        let token_url = validate_token_url(token_url)?;
        Arc::make_mut(&mut self.config).token_url = token_url;
        Ok(self)
    }

    /// Sends token requests to the URL in the environment variable
    /// [`ROUTERA_TOKEN_URL`](crate::TOKEN_URL_ENV) if it is set, as
    /// [`with_token_url`](Self::with_token_url) does; unchanged if it is
    /// not.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the variable if it is set but empty, not
    /// Unicode, or not a token URL `with_token_url` accepts.
    pub fn with_token_url_from_env(self) -> Result<Self, ConfigError> {
        self.with_token_url_from(std::env::var)
    }

    /// [`with_token_url_from_env`](Self::with_token_url_from_env) over any
    /// variable lookup, so the logic is testable without touching the
    /// process environment.
    pub(crate) fn with_token_url_from(
        self,
        lookup: impl Fn(&'static str) -> Result<String, std::env::VarError>,
    ) -> Result<Self, ConfigError> {
        let name = crate::TOKEN_URL_ENV;
        match crate::credentials::read_env(name, &lookup) {
            Ok(url) => self
                .with_token_url(&url)
                .map_err(|error| ConfigError::env_invalid(name, error)),
            Err(error) if error.is_env_missing() => Ok(self),
            Err(error) => Err(error),
        }
    }

    /// Authenticates with `auth_method` instead of the default
    /// [`AuthMethod::RequestBody`].
    pub fn with_auth_method(mut self, auth_method: AuthMethod) -> Self {
        Arc::make_mut(&mut self.config).auth_method = auth_method;
        self
    }

    /// The URL token requests are sent to.
    pub fn token_url(&self) -> &Uri {
        &self.config.token_url
    }

    /// How the client authenticates.
    pub fn auth_method(&self) -> AuthMethod {
        self.config.auth_method
    }

    /// The HTTP client service.
    pub fn get_ref(&self) -> &H {
        &self.http
    }

    /// The HTTP client service, mutably.
    pub fn get_mut(&mut self) -> &mut H {
        &mut self.http
    }

    /// The HTTP client service, consuming the exchange.
    pub fn into_inner(self) -> H {
        self.http
    }

    /// The HTTP request for `request`, as this exchange sends it.
    fn build_request(&self, request: &TokenRequest) -> Result<Request<ExchangeBody>, TokenError> {
        let credentials = request.credentials();
        let mut builder = Request::builder()
            .method(Method::POST)
            .uri(self.config.token_url.clone())
            .extension(TokenEndpointRequest)
            .header(
                CONTENT_TYPE,
                HeaderValue::from_static("application/x-www-form-urlencoded"),
            )
            .header(ACCEPT, HeaderValue::from_static("application/json"));
        let body = match self.config.auth_method {
            AuthMethod::RequestBody => format!(
                "grant_type=client_credentials&client_id={}&client_secret={}",
                form_urlencode(credentials.client_id()),
                form_urlencode(credentials.client_secret()),
            ),
            AuthMethod::BasicAuth => {
                builder = builder.header(
                    AUTHORIZATION,
                    basic_authorization(credentials.client_id(), credentials.client_secret())?,
                );
                "grant_type=client_credentials".to_owned()
            }
        };
        builder
            .header(CONTENT_LENGTH, HeaderValue::from(body.len()))
            .body(Full::new(Bytes::from(body)))
            .map_err(|_| {
                TokenError::with_detail(
                    crate::error::TokenErrorKind::Internal,
                    "the token request could not be built",
                )
            })
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`, marked sensitive
/// (RFC 6749 §2.3.1).
pub(crate) fn basic_authorization(
    client_id: &str,
    client_secret: &str,
) -> Result<HeaderValue, TokenError> {
    let joined = format!(
        "{}:{}",
        form_urlencode(client_id),
        form_urlencode(client_secret)
    );
    let encoded = base64::engine::general_purpose::STANDARD.encode(joined);
    let mut value = HeaderValue::try_from(format!("Basic {encoded}")).map_err(|_| {
        TokenError::with_detail(
            crate::error::TokenErrorKind::Internal,
            "the Basic credentials could not be encoded",
        )
    })?;
    value.set_sensitive(true);
    Ok(value)
}

fn validate_token_url(token_url: &str) -> Result<Uri, ConfigError> {
    let uri: Uri = token_url
        .parse()
        .map_err(|_| ConfigError::invalid_token_url("it does not parse as a URL"))?;
    let host = uri
        .host()
        .ok_or_else(|| ConfigError::invalid_token_url("it has no host"))?;
    if uri
        .authority()
        .is_some_and(|authority| authority.as_str().contains('@'))
    {
        // Credentials in a URL end up in logs and error messages.
        return Err(ConfigError::invalid_token_url(
            "it must not carry credentials (user:password@)",
        ));
    }
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback(host) => Ok(uri),
        Some("http") => Err(ConfigError::insecure_token_url(host)),
        _ => Err(ConfigError::invalid_token_url("the scheme must be https")),
    }
}

fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl<H> fmt::Debug for HttpTokenExchange<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpTokenExchange")
            .field("token_url", &self.config.token_url)
            .field("auth_method", &self.config.auth_method)
            .finish_non_exhaustive()
    }
}

impl<H, B> Service<TokenRequest> for HttpTokenExchange<H>
where
    H: Service<Request<ExchangeBody>, Response = Response<B>> + Clone,
    H::Error: Into<BoxError>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    type Response = Token;
    type Error = TokenError;
    type Future = ExchangeFuture<H::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(TokenError::transport)
    }

    fn call(&mut self, request: TokenRequest) -> Self::Future {
        let http_request = match self.build_request(&request) {
            Ok(http_request) => http_request,
            Err(err) => return ExchangeFuture::failed(err),
        };
        let clone = self.http.clone();
        let mut http = std::mem::replace(&mut self.http, clone);
        tracing::debug!(
            token_url = %self.config.token_url,
            client_id = request.credentials().client_id(),
            auth_method = ?self.config.auth_method,
            "token exchange started"
        );
        ExchangeFuture::new(http.call(http_request), request.credentials().clone())
    }
}

#[cfg(test)]
mod tests;
