use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use pin_project_lite::pin_project;
use tower::Service;

use crate::error::{BoxError, TokenError, TokenErrorKind};
use crate::provider::TokenTag;

/// The header of a request waiting for a token, or why it gets none.
pub(crate) type HeaderFuture =
    Pin<Box<dyn Future<Output = Result<(HeaderValue, TokenTag), BoxError>> + Send>>;

pin_project! {
    /// Response future of [`RouteraAuth`](super::RouteraAuth).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        // No fresh token when the request came in: wait for the provider.
        // Boxed, so that the future of the common case stays small.
        Token {
            waiting: Box<Waiting<S, B>>,
        },
        // The request is with the inner service.
        Called {
            #[pin]
            future: S::Future,
            tag: TokenTag,
        },
    }
}

/// A request waiting for a token, with the service instance polled ready
/// for it.
struct Waiting<S, B> {
    token: HeaderFuture,
    request: Option<Request<B>>,
    inner: Option<S>,
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn called(future: S::Future, tag: TokenTag) -> Self {
        Self {
            state: State::Called { future, tag },
        }
    }

    pub(crate) fn waiting(token: HeaderFuture, request: Request<B>, inner: S) -> Self {
        Self {
            state: State::Token {
                waiting: Box::new(Waiting {
                    token,
                    request: Some(request),
                    inner: Some(inner),
                }),
            },
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Token { waiting } => {
                    // Fail closed: on error, return before the inner service
                    // ever sees the request.
                    let (authorization, tag) = ready!(waiting.token.as_mut().poll(cx))?;
                    let (Some(mut request), Some(mut inner)) =
                        (waiting.request.take(), waiting.inner.take())
                    else {
                        return Poll::Ready(Err(TokenError::with_detail(
                            TokenErrorKind::Internal,
                            "the response future was polled after it completed",
                        )
                        .into()));
                    };
                    request.headers_mut().insert(AUTHORIZATION, authorization);
                    let future = inner.call(request);
                    this.state.set(State::Called { future, tag });
                }
                StateProj::Called { future, tag } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if rejects_token(&response) && tag.reject() {
                        tracing::debug!("the API rejected the token; it was invalidated");
                    }
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}

/// `grpc-status`, the header of a gRPC trailers-only response.
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Whether the API rejected the token: an HTTP 401, or a gRPC
/// UNAUTHENTICATED (`grpc-status: 16`, carried by an HTTP/2 200).
#[inline]
pub(crate) fn rejects_token<B>(response: &Response<B>) -> bool {
    response.status() == StatusCode::UNAUTHORIZED
        || (response.version() == Version::HTTP_2
            && response
                .headers()
                .get(GRPC_STATUS)
                .is_some_and(|status| status.as_bytes() == b"16"))
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
