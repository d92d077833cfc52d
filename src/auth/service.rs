use std::fmt;
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{Request, Response};
use tower::Service;

use super::{ResponseFuture, RouteraAuthLayer};
use crate::TokenProvider;
use crate::error::BoxError;
use crate::provider::TokenView;

/// Puts `Authorization: Bearer <token>` on every request, then calls the
/// inner service. Made by [`RouteraAuthLayer`].
///
/// - With a fresh token the request goes straight to the inner service: no
///   lock, no allocation, no await.
/// - Otherwise the request waits for the provider's single shared exchange.
/// - **Fails closed**: if no token can be had, the inner service is never
///   called and the error, a [`TokenError`](crate::TokenError) inside the
///   `BoxError`, is returned.
/// - An `Authorization` header already on the request is replaced.
/// - **A 401 response invalidates the token the request carried**, and only
///   that one: a token fetched since is kept, so a burst of 401s causes one
///   new exchange. So does a gRPC UNAUTHENTICATED (`grpc-status: 16` in the
///   headers of a trailers-only response, as tonic sends it). The response
///   itself is returned untouched; put
///   [`RetryOnUnauthorized`](crate::RetryOnUnauthorized) outside this layer
///   to retry such a request once with a fresh token.
/// - `poll_ready` is the inner service's; the request is sent through the
///   service instance that was polled ready.
/// - Errors are `BoxError`, so the service fits tonic and `ServiceBuilder`
///   stacks.
#[derive(Clone)]
pub struct RouteraAuth<S> {
    inner: S,
    provider: TokenProvider,
    view: TokenView,
}

impl<S> RouteraAuth<S> {
    /// Wraps `inner`, taking tokens from `provider`.
    pub fn new(inner: S, provider: TokenProvider) -> Self {
        let view = provider.token_view();
        Self {
            inner,
            provider,
            view,
        }
    }

    /// A [`RouteraAuthLayer`] taking tokens from `provider`.
    pub fn layer(provider: TokenProvider) -> RouteraAuthLayer {
        RouteraAuthLayer::new(provider)
    }

    /// The provider the service takes its tokens from.
    pub fn provider(&self) -> &TokenProvider {
        &self.provider
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming `self`.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for RouteraAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteraAuth")
            .field("inner", &self.inner)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

impl<S, B, ResBody> Service<Request<B>> for RouteraAuth<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, B>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        match self.provider.fresh_header(&mut self.view) {
            Some((authorization, tag)) => {
                // `self.inner` is the instance that was polled ready.
                request.headers_mut().insert(AUTHORIZATION, authorization);
                ResponseFuture::called(self.inner.call(request), tag)
            }
            None => {
                // The request waits for a token: the instance polled ready
                // goes with it, and `self` keeps a clone, which its caller
                // must poll ready before the next call.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(self.provider.header(), request, inner)
            }
        }
    }
}
