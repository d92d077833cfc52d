//! reqwest as a tower HTTP service (feature `reqwest`), and the exchange's
//! own reqwest client (features `rustls`, `rustls-ring`, `native-tls`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tower::Service;

use crate::error::{BoxError, TokenError, TokenErrorKind};
use crate::exchange::TokenEndpointRequest;
#[cfg(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls"))]
use crate::{error::ConfigError, exchange::HttpTokenExchange};

/// A [`reqwest::Client`] as a `tower::Service<http::Request<B>>` that
/// answers `http::Response<reqwest::Body>`.
///
/// It lets reqwest sit under [`HttpTokenExchange`](crate::HttpTokenExchange),
/// and under [`RouteraAuthLayer`](crate::RouteraAuthLayer) for API calls:
///
/// ```no_run
/// # #[cfg(feature = "rustls")]
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use routera_auth::{ClientCredentials, HttpTokenExchange, ReqwestService, RouteraAuthLayer, TokenProvider};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// let provider = TokenProvider::new(HttpTokenExchange::reqwest()?, ClientCredentials::from_env()?);
/// let api = ServiceBuilder::new()
///     .layer(RouteraAuthLayer::new(provider))
///     .service(ReqwestService::new(reqwest::Client::new()));
/// let request = http::Request::get("https://api.routera.io/v1/routes").body(String::new())?;
/// let response = api.oneshot(request).await?;
/// println!("{}", response.status());
/// # Ok(())
/// # }
/// ```
///
/// # Redirects
///
/// A request to the token endpoint (one that
/// [`HttpTokenExchange`](crate::HttpTokenExchange) sends) must be answered by
/// the token URL itself. If the client followed a redirect, the answer came
/// from somewhere else and is refused: the service fails with a
/// [`TokenError`] of kind [`UnexpectedStatus`](TokenErrorKind::UnexpectedStatus)
/// that says so. The redirected request has been sent by then, so build the
/// client for the exchange with
/// `.redirect(reqwest::redirect::Policy::none())`, as
/// [`HttpTokenExchange::reqwest`](crate::HttpTokenExchange::reqwest) does: a
/// redirect is then an error before anything goes to its target. (reqwest
/// itself turns a 301, 302 or 303 into a `GET` without the body, which
/// carries the credentials with [`AuthMethod::RequestBody`](crate::AuthMethod::RequestBody),
/// drops the `Authorization` header, which carries them with
/// [`AuthMethod::BasicAuth`](crate::AuthMethod::BasicAuth), when a redirect
/// leaves the host, port or scheme, and does not follow a 307 or 308 with
/// the exchange's request body.)
///
/// Other requests, such as API calls under the layer, follow redirects as
/// the client is configured to.
#[derive(Clone)]
pub struct ReqwestService {
    client: reqwest::Client,
}

impl ReqwestService {
    /// Wraps `client`.
    pub fn new(client: reqwest::Client) -> Self {
        Self { client }
    }

    /// The client.
    pub fn get_ref(&self) -> &reqwest::Client {
        &self.client
    }

    /// The client, mutably.
    pub fn get_mut(&mut self) -> &mut reqwest::Client {
        &mut self.client
    }

    /// The client, consuming the service.
    pub fn into_inner(self) -> reqwest::Client {
        self.client
    }
}

impl fmt::Debug for ReqwestService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReqwestService").finish_non_exhaustive()
    }
}

/// The response future of [`ReqwestService`].
pub type ReqwestFuture =
    Pin<Box<dyn Future<Output = Result<http::Response<reqwest::Body>, BoxError>> + Send>>;

impl<B> Service<http::Request<B>> for ReqwestService
where
    B: http_body::Body + Send + Sync + 'static,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<reqwest::Body>;
    /// A [`reqwest::Error`], or a [`TokenError`] for an answer to a token
    /// request that came from another URL (see [Redirects](ReqwestService#redirects)).
    type Error = BoxError;
    type Future = ReqwestFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let client = self.client.clone();
        let to_token_endpoint = request.extensions().get::<TokenEndpointRequest>().is_some();
        let request = reqwest::Request::try_from(request.map(reqwest::Body::wrap));
        Box::pin(async move {
            let request = request?;
            let token_url = to_token_endpoint.then(|| request.url().clone());
            let response = client.execute(request).await?;
            if let Some(token_url) = token_url
                && response.url() != &token_url
            {
                return Err(redirect_followed(response.url()).into());
            }
            Ok(http::Response::from(response))
        })
    }
}

/// The error for an answer to a token request that came from `answered_by`,
/// not from the token URL: the client followed a redirect. Names only the
/// origin (scheme, host, port), never a path or query.
fn redirect_followed(answered_by: &reqwest::Url) -> TokenError {
    TokenError::with_detail(
        TokenErrorKind::UnexpectedStatus,
        format!(
            "it redirected and the HTTP client followed the redirect, so the answer came \
             from {} instead of the token URL; a token is only taken from the token URL \
             itself: build the reqwest client with `.redirect(reqwest::redirect::Policy::none())` \
             (as `HttpTokenExchange::reqwest()` does) so that a redirect fails before anything \
             is sent to its target",
            answered_by.origin().ascii_serialization()
        ),
    )
}

#[cfg(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls")))
)]
impl HttpTokenExchange<ReqwestService> {
    /// An exchange over a new reqwest client that never follows redirects,
    /// connects within 10 s and gives up on a response after 30 s, over the
    /// TLS the crate's features chose:
    ///
    /// - `rustls` (default): rustls with the aws-lc-rs crypto provider;
    /// - `rustls-ring`: rustls with the ring crypto provider;
    /// - `native-tls`: the platform's TLS library.
    ///
    /// With rustls, the client is given its crypto provider explicitly and
    /// verifies certificates against the platform's roots
    /// (`rustls-platform-verifier`, as reqwest does by default): it neither
    /// needs nor installs a process-wide default `CryptoProvider`, so it
    /// works beside an application that chose another provider, or none.
    /// When several of these features are on, `native-tls` wins over
    /// `rustls-ring`, which wins over `rustls`.
    ///
    /// Its token URL is Routera's, or the one in the environment variable
    /// [`ROUTERA_TOKEN_URL`](crate::TOKEN_URL_ENV) when it is set (the
    /// Routera emulator's, say: `http://127.0.0.1:<port>/oauth2/token`), so
    /// that the same program runs against either; plain http is accepted
    /// for loopback hosts only. [`with_token_url`](Self::with_token_url)
    /// afterwards overrides both.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if the TLS backend cannot be initialised, for
    /// example when no root certificate can be loaded from the platform, or
    /// if `ROUTERA_TOKEN_URL` is set to something that is not a token URL
    /// (the error names the variable).
    pub fn reqwest() -> Result<Self, ConfigError> {
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(std::time::Duration::from_secs(10))
            .timeout(std::time::Duration::from_secs(30));
        let client = tls::configure(builder)?
            .build()
            .map_err(|err| ConfigError::http_client(crate::error::ErrorChain(&err)))?;
        Self::new(ReqwestService::new(client)).with_token_url_from_env()
    }
}

/// The TLS of [`HttpTokenExchange::reqwest`]'s client.
#[cfg(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls"))]
mod tls {
    use crate::error::ConfigError;

    /// The platform's TLS library.
    #[cfg(feature = "native-tls")]
    pub(super) fn configure(
        builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, ConfigError> {
        Ok(builder.tls_backend_native())
    }

    /// rustls on ring.
    #[cfg(all(feature = "rustls-ring", not(feature = "native-tls")))]
    pub(super) fn configure(
        builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, ConfigError> {
        rustls(builder, ring())
    }

    /// rustls on aws-lc-rs.
    #[cfg(all(
        feature = "rustls",
        not(feature = "rustls-ring"),
        not(feature = "native-tls")
    ))]
    pub(super) fn configure(
        builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, ConfigError> {
        rustls(builder, aws_lc_rs())
    }

    /// The ring provider.
    #[cfg(feature = "rustls-ring")]
    #[cfg_attr(feature = "native-tls", allow(dead_code))]
    pub(super) fn ring() -> std::sync::Arc<::rustls::crypto::CryptoProvider> {
        std::sync::Arc::new(::rustls::crypto::ring::default_provider())
    }

    /// The aws-lc-rs provider.
    #[cfg(feature = "rustls")]
    #[cfg_attr(any(feature = "rustls-ring", feature = "native-tls"), allow(dead_code))]
    pub(super) fn aws_lc_rs() -> std::sync::Arc<::rustls::crypto::CryptoProvider> {
        std::sync::Arc::new(::rustls::crypto::aws_lc_rs::default_provider())
    }

    /// `builder` with a rustls configuration of its own on `provider`.
    #[cfg(any(feature = "rustls", feature = "rustls-ring"))]
    #[cfg_attr(feature = "native-tls", allow(dead_code))]
    fn rustls(
        builder: reqwest::ClientBuilder,
        provider: std::sync::Arc<::rustls::crypto::CryptoProvider>,
    ) -> Result<reqwest::ClientBuilder, ConfigError> {
        Ok(builder.tls_backend_preconfigured(rustls_config(provider)?))
    }

    /// A rustls client configuration on `provider`, never on a process-wide
    /// default, verifying certificates against the platform's roots.
    #[cfg(any(feature = "rustls", feature = "rustls-ring"))]
    #[cfg_attr(feature = "native-tls", allow(dead_code))]
    pub(super) fn rustls_config(
        provider: std::sync::Arc<::rustls::crypto::CryptoProvider>,
    ) -> Result<::rustls::ClientConfig, ConfigError> {
        use rustls_platform_verifier::BuilderVerifierExt as _;

        let config = ::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| {
                ConfigError::http_client(format_args!(
                    "the rustls crypto provider supports no safe TLS version ({err})"
                ))
            })?
            .with_platform_verifier()
            .map_err(|err| {
                ConfigError::http_client(format_args!(
                    "the platform's root certificates could not be loaded for rustls ({err})"
                ))
            })?
            .with_no_client_auth();
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_error_names_the_origin_only_and_the_fix() {
        let url =
            reqwest::Url::parse("https://elsewhere.example:8443/steal?code=s3cr3t#x").unwrap();
        let err = redirect_followed(&url);
        assert_eq!(err.kind(), TokenErrorKind::UnexpectedStatus);
        assert!(!err.is_retryable());
        let shown = format!("{err} {err:?}");
        assert!(shown.contains("https://elsewhere.example:8443"), "{shown}");
        assert!(shown.contains("Policy::none()"), "{shown}");
        assert!(
            !shown.contains("steal") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }

    #[cfg(any(feature = "rustls", feature = "rustls-ring"))]
    #[test]
    fn the_rustls_config_uses_the_provider_it_is_given_and_installs_none() {
        let providers = [
            #[cfg(feature = "rustls-ring")]
            tls::ring(),
            #[cfg(feature = "rustls")]
            tls::aws_lc_rs(),
        ];
        for provider in providers {
            let config = tls::rustls_config(provider.clone()).unwrap();
            assert!(std::sync::Arc::ptr_eq(config.crypto_provider(), &provider));
        }
        HttpTokenExchange::reqwest().unwrap();
        assert!(
            ::rustls::crypto::CryptoProvider::get_default().is_none(),
            "no process-wide provider was installed"
        );
    }
}
