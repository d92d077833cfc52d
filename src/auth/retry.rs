//! [`RetryOnUnauthorized`]: retry a request once with a fresh token after a
//! 401.

use std::future::{Ready, ready};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower::retry::Policy;

/// A [`tower::retry::Policy`] that retries a request once when the API
/// answers 401 Unauthorized, so that a revoked or rejected token recovers
/// by itself.
///
/// Put it **outside** [`RouteraAuthLayer`](crate::RouteraAuthLayer): the
/// auth layer sees the 401, invalidates the token the request carried, and
/// attaches a fresh token to the retried request as it passes through again.
/// (Inside the auth layer, the retry would resend the rejected token.)
///
/// ```
/// # async fn run() -> Result<(), routera_auth::BoxError> {
/// use routera_auth::{ClientCredentials, RetryOnUnauthorized, RouteraAuthLayer, Token, TokenProvider, TokenRequest};
/// use tower::{ServiceBuilder, ServiceExt};
/// # let exchange = tower::service_fn(|_: TokenRequest| async {
/// #     Ok::<_, routera_auth::TokenError>(Token::new("t", std::time::Duration::from_secs(3600)))
/// # });
/// # let provider = TokenProvider::new(exchange, ClientCredentials::new("id", "secret"));
/// # let http_client = tower::service_fn(|_: http::Request<String>| async {
/// #     Ok::<_, std::convert::Infallible>(http::Response::new(()))
/// # });
///
/// let api = ServiceBuilder::new()
///     .retry(RetryOnUnauthorized::new())
///     .layer(RouteraAuthLayer::new(provider))
///     .service(http_client);
/// let response = api.oneshot(http::Request::new(String::from("{}"))).await?;
/// # let _ = response;
/// # Ok(())
/// # }
/// ```
///
/// A request is retried at most once. Only a request whose body can be
/// cloned ([`TryCloneBody`]) can be retried; for any other, such as a
/// streaming body, the 401 response reaches the caller unchanged. Every
/// other response and every error is passed through as it is.
#[derive(Debug, Clone)]
pub struct RetryOnUnauthorized {
    retries_left: usize,
}

impl RetryOnUnauthorized {
    /// A policy that retries each request at most once after a 401.
    pub fn new() -> Self {
        Self { retries_left: 1 }
    }
}

impl Default for RetryOnUnauthorized {
    fn default() -> Self {
        Self::new()
    }
}

impl<B, ResBody, E> Policy<Request<B>, Response<ResBody>, E> for RetryOnUnauthorized
where
    B: TryCloneBody,
{
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _request: &mut Request<B>,
        result: &mut Result<Response<ResBody>, E>,
    ) -> Option<Self::Future> {
        match result {
            Ok(response)
                if response.status() == StatusCode::UNAUTHORIZED && self.retries_left > 0 =>
            {
                self.retries_left -= 1;
                Some(ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        if self.retries_left == 0 {
            return None;
        }
        let mut clone = Request::new(request.body().try_clone_body()?);
        *clone.method_mut() = request.method().clone();
        *clone.uri_mut() = request.uri().clone();
        *clone.version_mut() = request.version();
        *clone.headers_mut() = request.headers().clone();
        *clone.extensions_mut() = request.extensions().clone();
        Some(clone)
    }
}

/// A request body that may be cloned, so that
/// [`RetryOnUnauthorized`] can send its request again.
///
/// Implemented for the buffered body types (`String`, `Vec<u8>`, `Bytes`,
/// `()`, `http_body_util::Full` and `Empty`, reqwest's buffered bodies) and,
/// answering `None`, for the boxed streaming bodies of `http_body_util`.
/// Implement it for a body type of your own to make its requests retryable.
pub trait TryCloneBody: Sized {
    /// A copy of the body, or `None` if it cannot be replayed.
    fn try_clone_body(&self) -> Option<Self>;
}

macro_rules! clone_body {
    ($($body:ty),* $(,)?) => {
        $(
            impl TryCloneBody for $body {
                fn try_clone_body(&self) -> Option<Self> {
                    Some(self.clone())
                }
            }
        )*
    };
}

clone_body!(String, Vec<u8>, Bytes, (), &'static str, &'static [u8]);

impl<D: Clone> TryCloneBody for http_body_util::Full<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> TryCloneBody for http_body_util::Empty<D> {
    fn try_clone_body(&self) -> Option<Self> {
        Some(http_body_util::Empty::new())
    }
}

impl<D, E> TryCloneBody for http_body_util::combinators::BoxBody<D, E> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

impl<D, E> TryCloneBody for http_body_util::combinators::UnsyncBoxBody<D, E> {
    fn try_clone_body(&self) -> Option<Self> {
        None
    }
}

#[cfg(feature = "reqwest")]
impl TryCloneBody for reqwest::Body {
    fn try_clone_body(&self) -> Option<Self> {
        self.as_bytes()
            .map(|bytes| reqwest::Body::from(Bytes::copy_from_slice(bytes)))
    }
}
