//! reqwest as a tower HTTP service (feature `reqwest`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tower::Service;

use crate::error::{BoxError, ConfigError};
use crate::exchange::HttpTokenExchange;

/// A [`reqwest::Client`] as a `tower::Service<http::Request<B>>` that
/// answers `http::Response<reqwest::Body>`.
///
/// It lets reqwest sit under [`HttpTokenExchange`], and under
/// [`RouteraAuthLayer`](crate::RouteraAuthLayer) for API calls:
///
/// ```no_run
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
    Pin<Box<dyn Future<Output = Result<http::Response<reqwest::Body>, reqwest::Error>> + Send>>;

impl<B> Service<http::Request<B>> for ReqwestService
where
    B: http_body::Body + Send + Sync + 'static,
    B::Data: Into<Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<reqwest::Body>;
    type Error = reqwest::Error;
    type Future = ReqwestFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let client = self.client.clone();
        let request = reqwest::Request::try_from(request.map(reqwest::Body::wrap));
        Box::pin(async move {
            let response = client.execute(request?).await?;
            Ok(http::Response::from(response))
        })
    }
}

impl HttpTokenExchange<ReqwestService> {
    /// An exchange over a new reqwest client (rustls) that never follows
    /// redirects, connects within 10 s and gives up on a response after 30 s.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] if the TLS backend cannot be initialised.
    pub fn reqwest() -> Result<Self, ConfigError> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(ConfigError::http_client)?;
        Ok(Self::new(ReqwestService::new(client)))
    }
}
