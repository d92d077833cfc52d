//! [`RetryOnUnauthorized`]: retry a request once with a fresh token after a
//! 401 or a gRPC UNAUTHENTICATED.

use std::future::{Ready, ready};

use bytes::Bytes;
use http::{Request, Response};
use tower::retry::Policy;

use super::future::rejects_token;

/// A [`tower::retry::Policy`] that retries a request once when the API
/// rejects its token, so that a revoked or rejected token recovers by
/// itself: the responses [`RouteraAuth`](crate::RouteraAuth) takes as a
/// rejection, a 401 Unauthorized or a gRPC UNAUTHENTICATED (`grpc-status:
/// 16` in the headers of an HTTP/2 response, a trailers-only answer).
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
/// A request is retried at most once, and only if its body can be replayed:
/// by default, a body whose type implements [`ReplayableBody`] (the buffered
/// ones). For any other body type, such as `hyper::body::Incoming`,
/// `axum::body::Body` or `tonic::body::Body` in a proxying stack, say how
/// to replay it with [`with_replay`](Self::with_replay):
/// [`empty_body_only`] replays requests without a body (GET, DELETE, …),
/// [`never`](fn@never) none. A request whose body cannot be replayed gets the 401
/// response unchanged (its token is invalidated all the same). Every other
/// response and every error is passed through as it is.
///
/// **gRPC.** A gRPC call refused with UNAUTHENTICATED is retried when its
/// body can be replayed: a buffered gRPC message (`Full<Bytes>`, say, on a
/// hyper HTTP/2 client). A tonic client's request body is a stream of
/// encoded messages that cannot be copied, so a tonic call is never
/// retried (with [`empty_body_only`], whose gRPC bodies are never empty, or
/// [`never`](fn@never)): it fails with `Code::Unauthenticated`, and since the layer
/// invalidated its token, the next call goes out with a new one. Retry
/// such a call in the application, where the request message is at hand.
///
/// ```
/// use routera_auth::RetryOnUnauthorized;
/// use routera_auth::auth::{empty_body_only, never};
///
/// // An axum gateway forwarding `axum::body::Body` requests: retry those
/// // without a body.
/// let _policy = RetryOnUnauthorized::new().with_replay(empty_body_only::<axum::body::Body>);
/// // A hyper proxy forwarding `Incoming` bodies, which cannot be replayed:
/// // the policy compiles and passes the 401 through.
/// let _policy = RetryOnUnauthorized::new().with_replay(never::<hyper::body::Incoming>);
/// ```
#[derive(Debug, Clone)]
pub struct RetryOnUnauthorized<C = IfReplayable> {
    retries_left: usize,
    replay: C,
}

impl RetryOnUnauthorized {
    /// A policy that retries each request at most once after a 401, when
    /// its body implements [`ReplayableBody`].
    pub fn new() -> Self {
        Self {
            retries_left: 1,
            replay: IfReplayable,
        }
    }
}

impl<C> RetryOnUnauthorized<C> {
    /// The same policy for any body type: `replay` returns a copy of a
    /// request's body to resend it with, or `None` when it cannot be
    /// replayed (then the 401 reaches the caller).
    pub fn with_replay<F>(self, replay: F) -> RetryOnUnauthorized<F> {
        RetryOnUnauthorized {
            retries_left: self.retries_left,
            replay,
        }
    }
}

impl Default for RetryOnUnauthorized {
    fn default() -> Self {
        Self::new()
    }
}

/// The default way [`RetryOnUnauthorized`] replays a body: through its
/// type's [`ReplayableBody`] impl.
#[derive(Debug, Clone, Copy, Default)]
pub struct IfReplayable;

/// How [`RetryOnUnauthorized`] replays a request body of type `B`: the
/// strategy it is configured with, where [`ReplayableBody`] is what a body
/// type says of itself.
///
/// Implemented by [`IfReplayable`] for [`ReplayableBody`] types, and by
/// every `FnMut(&B) -> Option<B>`, such as [`empty_body_only`] and
/// [`never`](fn@never).
pub trait ReplayBody<B> {
    /// A copy of `body` to resend, or `None` if it cannot be replayed.
    fn replay(&mut self, body: &B) -> Option<B>;
}

impl<B: ReplayableBody> ReplayBody<B> for IfReplayable {
    fn replay(&mut self, body: &B) -> Option<B> {
        body.try_replay()
    }
}

impl<B, F: FnMut(&B) -> Option<B>> ReplayBody<B> for F {
    fn replay(&mut self, body: &B) -> Option<B> {
        self(body)
    }
}

/// Replays a body that is known to be empty (`is_end_stream()`) as a new
/// empty one (`B::default()`); no other. For streaming body types that have
/// an empty value, such as `axum::body::Body` and `tonic::body::Body`.
pub fn empty_body_only<B: http_body::Body + Default>(body: &B) -> Option<B> {
    body.is_end_stream().then(B::default)
}

/// Replays no body: for body types that can never be replayed, such as
/// `hyper::body::Incoming`.
pub fn never<B>(_body: &B) -> Option<B> {
    None
}

impl<B, ResBody, E, C> Policy<Request<B>, Response<ResBody>, E> for RetryOnUnauthorized<C>
where
    C: ReplayBody<B>,
{
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _request: &mut Request<B>,
        result: &mut Result<Response<ResBody>, E>,
    ) -> Option<Self::Future> {
        match result {
            Ok(response) if rejects_token(response) && self.retries_left > 0 => {
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
        let mut clone = Request::new(self.replay.replay(request.body())?);
        *clone.method_mut() = request.method().clone();
        *clone.uri_mut() = request.uri().clone();
        *clone.version_mut() = request.version();
        *clone.headers_mut() = request.headers().clone();
        *clone.extensions_mut() = request.extensions().clone();
        Some(clone)
    }
}

/// A body type that can copy itself so that its request is sent again
/// (the buffered ones): what [`RetryOnUnauthorized`] replays by default,
/// through [`IfReplayable`].
///
/// Implemented for the buffered body types (`String`, `Vec<u8>`, `Bytes`,
/// `()`, `http_body_util::Full` and `Empty`, reqwest's buffered bodies) and,
/// answering `None`, for the boxed streaming bodies of `http_body_util`.
/// Implement it for a body type of your own to make its requests retryable.
pub trait ReplayableBody: Sized {
    /// A copy of the body, or `None` if it cannot be replayed.
    fn try_replay(&self) -> Option<Self>;
}

macro_rules! replayable {
    ($($body:ty),* $(,)?) => {
        $(
            impl ReplayableBody for $body {
                fn try_replay(&self) -> Option<Self> {
                    Some(self.clone())
                }
            }
        )*
    };
}

replayable!(String, Vec<u8>, Bytes, (), &'static str, &'static [u8]);

impl<D: Clone> ReplayableBody for http_body_util::Full<D> {
    fn try_replay(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> ReplayableBody for http_body_util::Empty<D> {
    fn try_replay(&self) -> Option<Self> {
        Some(http_body_util::Empty::new())
    }
}

impl<D, E> ReplayableBody for http_body_util::combinators::BoxBody<D, E> {
    fn try_replay(&self) -> Option<Self> {
        None
    }
}

impl<D, E> ReplayableBody for http_body_util::combinators::UnsyncBoxBody<D, E> {
    fn try_replay(&self) -> Option<Self> {
        None
    }
}

#[cfg(feature = "reqwest")]
impl ReplayableBody for reqwest::Body {
    fn try_replay(&self) -> Option<Self> {
        self.as_bytes()
            .map(|bytes| reqwest::Body::from(Bytes::copy_from_slice(bytes)))
    }
}
