use tower_layer::Layer;

use super::RouteraAuth;
use crate::TokenProvider;

/// Wraps a tower HTTP service in [`RouteraAuth`], which puts
/// `Authorization: Bearer <token>` from a shared [`TokenProvider`] on every
/// request.
///
/// # Example
///
/// A reqwest client that authenticates every request, and sends a request
/// whose token the API rejected (a 401) once more with a new token:
///
/// ```no_run
/// # #[cfg(feature = "rustls")]
/// # async fn run() -> Result<(), routera_auth::BoxError> {
/// use routera_auth::{
///     ClientCredentials, HttpTokenExchange, ReqwestService, RetryOnUnauthorized,
///     RouteraAuthLayer, TokenProvider,
/// };
/// use tower::{ServiceBuilder, ServiceExt};
///
/// // One provider per set of credentials; clone it into every stack.
/// let provider = TokenProvider::new(HttpTokenExchange::reqwest()?, ClientCredentials::from_env()?);
///
/// // Built once, cloned per request.
/// let api = ServiceBuilder::new()
///     .retry(RetryOnUnauthorized::new())
///     .layer(RouteraAuthLayer::new(provider))
///     .service(ReqwestService::new(reqwest::Client::new()));
///
/// let request = http::Request::get("https://api.routera.io/v1/routes").body(String::new())?;
/// let response = api.clone().oneshot(request).await?;
/// println!("{}", response.status());
/// # Ok(())
/// # }
/// ```
///
/// The [module docs](crate::auth) show the same over any
/// `tower::Service<http::Request<B>>`, without a network.
#[derive(Debug, Clone)]
pub struct RouteraAuthLayer {
    provider: TokenProvider,
}

impl RouteraAuthLayer {
    /// A layer that takes its tokens from `provider`.
    pub fn new(provider: TokenProvider) -> Self {
        Self { provider }
    }

    /// The provider the layer takes its tokens from.
    pub fn provider(&self) -> &TokenProvider {
        &self.provider
    }
}

impl<S> Layer<S> for RouteraAuthLayer {
    type Service = RouteraAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteraAuth::new(inner, self.provider.clone())
    }
}
