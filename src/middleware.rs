//! [`RouteraAuthMiddleware`]: the token on every request of a
//! [reqwest-middleware](reqwest_middleware) client (feature
//! `reqwest-middleware`).

use http::Extensions;
use http::header::AUTHORIZATION;
use reqwest_middleware::{Middleware, Next};

use crate::{TokenError, TokenProvider};

/// A [`reqwest_middleware::Middleware`] that puts
/// `Authorization: Bearer <token>` from a [`TokenProvider`] on every
/// request, as [`RouteraAuth`](crate::RouteraAuth) does for tower stacks:
///
/// - **Fails closed**: if no token can be had, the request is not sent and
///   the [`TokenError`](crate::TokenError) is returned (as
///   [`reqwest_middleware::Error::Middleware`]).
/// - **A 401 invalidates the token the request carried**, and only that one,
///   then the request is sent once more with a fresh token if it can be
///   cloned (`reqwest::Request::try_clone`: not for a streaming body, whose
///   401 is returned unchanged).
/// - An `Authorization` header already on the request is replaced; the
///   header is marked sensitive.
///
/// ```no_run
/// # #[cfg(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls"))]
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use routera_auth::{ClientCredentials, HttpTokenExchange, RouteraAuthMiddleware, TokenProvider};
///
/// let provider = TokenProvider::new(HttpTokenExchange::reqwest()?, ClientCredentials::from_env()?);
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(RouteraAuthMiddleware::new(provider))
///     .build();
/// let routes = client.get("https://api.routera.io/v1/routes").send().await?;
/// # let _ = routes;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct RouteraAuthMiddleware {
    provider: TokenProvider,
}

impl RouteraAuthMiddleware {
    /// A middleware taking its tokens from `provider`.
    pub fn new(provider: TokenProvider) -> Self {
        Self { provider }
    }

    /// The provider the middleware takes its tokens from.
    pub fn provider(&self) -> &TokenProvider {
        &self.provider
    }
}

#[async_trait::async_trait]
impl Middleware for RouteraAuthMiddleware {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let retry = request.try_clone();
        let (header, tag) = self
            .provider
            .header::<TokenError>()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        request.headers_mut().insert(AUTHORIZATION, header);
        let response = next.clone().run(request, extensions).await?;
        if response.status() != reqwest::StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        tag.reject();
        let Some(mut retry) = retry else {
            return Ok(response);
        };
        let (header, tag) = self
            .provider
            .header::<TokenError>()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        retry.headers_mut().insert(AUTHORIZATION, header);
        let response = next.run(retry, extensions).await?;
        if response.status() == reqwest::StatusCode::UNAUTHORIZED {
            tag.reject();
        }
        Ok(response)
    }
}
