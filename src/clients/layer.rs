//! [`PerClientAuthLayer`] and [`PerClientAuth`]: the token of each
//! request's own client, from a [`TokenProviders`].

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::header::AUTHORIZATION;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::Service;
use tower_layer::Layer;

use super::client::Client;
use super::{MissingClientKey, TokenProviders};
use crate::RouteraAuthLayer;
use crate::auth::{HeaderFuture, ResponseFuture, rejects_token};
use crate::error::{BoxError, TokenError, TokenErrorKind};

impl RouteraAuthLayer {
    /// A layer that puts on each request the token of its own client:
    /// `key_fn` reads the client's key from the request (an extension, a
    /// header, a path segment), and the request gets the token of that
    /// key's provider in `providers`, built on first use.
    ///
    /// Per client, everything works as with [`RouteraAuthLayer::new`]:
    /// the fast path of a fresh token, a 401 invalidating the token the
    /// request carried (and only it), [`RetryOnUnauthorized`] outside the
    /// layer, failing closed. A request for which `key_fn` answers `None`
    /// is refused with [`MissingClientKey`], and the inner service is not
    /// called; a client whose credentials cannot be loaded gets a
    /// [`CredentialsError`](super::CredentialsError). Both are inside the
    /// `BoxError`, as a [`TokenError`] is.
    ///
    /// After a 401 from the API, or when the token endpoint rejects the
    /// client's credentials, the client's credentials are looked up again
    /// (paced by
    /// [`recheck_interval`](super::TokenProvidersBuilder::recheck_interval)),
    /// and its provider takes them if they changed.
    ///
    /// [`RetryOnUnauthorized`]: crate::RetryOnUnauthorized
    pub fn per_client<K, F>(providers: TokenProviders<K>, key_fn: F) -> PerClientAuthLayer<K, F> {
        PerClientAuthLayer { providers, key_fn }
    }
}

/// Wraps a tower HTTP service in [`PerClientAuth`]; from
/// [`RouteraAuthLayer::per_client`].
pub struct PerClientAuthLayer<K, F> {
    providers: TokenProviders<K>,
    key_fn: F,
}

impl<K, F: Clone> Clone for PerClientAuthLayer<K, F> {
    fn clone(&self) -> Self {
        Self {
            providers: self.providers.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

impl<K, F> fmt::Debug for PerClientAuthLayer<K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerClientAuthLayer")
            .field("providers", &self.providers)
            .finish_non_exhaustive()
    }
}

impl<S, K, F: Clone> Layer<S> for PerClientAuthLayer<K, F> {
    type Service = PerClientAuth<S, K, F>;

    fn layer(&self, inner: S) -> Self::Service {
        PerClientAuth {
            inner,
            providers: self.providers.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

/// Puts `Authorization: Bearer <token>` of each request's own client on
/// it, then calls the inner service. Made by
/// [`RouteraAuthLayer::per_client`], which tells how it behaves.
pub struct PerClientAuth<S, K, F> {
    inner: S,
    providers: TokenProviders<K>,
    key_fn: F,
}

impl<S, K, F> PerClientAuth<S, K, F> {
    /// The set the service takes its providers from.
    pub fn providers(&self) -> &TokenProviders<K> {
        &self.providers
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, consuming `self`.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, K, F: Clone> Clone for PerClientAuth<S, K, F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            providers: self.providers.clone(),
            key_fn: self.key_fn.clone(),
        }
    }
}

impl<S: fmt::Debug, K, F> fmt::Debug for PerClientAuth<S, K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerClientAuth")
            .field("inner", &self.inner)
            .field("providers", &self.providers)
            .finish_non_exhaustive()
    }
}

impl<S, K, F, B, ResBody> Service<Request<B>> for PerClientAuth<S, K, F>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    F: Fn(&Request<B>) -> Option<K>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = PerClientFuture<S, B, K>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let Some(key) = (self.key_fn)(&request) else {
            return PerClientFuture::refused(MissingClientKey.into());
        };
        let now = Instant::now();
        let Some(client) = self.providers.used(&key, now) else {
            // A new client (or one idle too long): wait for its provider,
            // then for its token. This request has just looked the
            // credentials up, so its rejection looks up nothing more.
            let providers = self.providers.clone();
            let token: HeaderFuture = Box::pin(async move {
                let client = providers.client(key).await?;
                client.provider().header::<BoxError>().await
            });
            return PerClientFuture::sent(self.waiting(token, request), None);
        };
        match client.provider().fresh_header_at(now) {
            Some((authorization, tag)) => {
                // `self.inner` is the instance that was polled ready.
                request.headers_mut().insert(AUTHORIZATION, authorization);
                let future = ResponseFuture::called(self.inner.call(request), tag);
                PerClientFuture::sent(future, Some(client))
            }
            None => {
                let token = client.provider().header();
                PerClientFuture::sent(self.waiting(token, request), Some(client))
            }
        }
    }
}

impl<S: Clone, K, F> PerClientAuth<S, K, F> {
    /// A request that waits for its token: the instance polled ready goes
    /// with it, and `self` keeps a clone, which its caller must poll ready
    /// before the next call.
    fn waiting<B>(&mut self, token: HeaderFuture, request: Request<B>) -> ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::waiting(token, request, inner)
    }
}

pin_project! {
    /// Response future of [`PerClientAuth`].
    pub struct PerClientFuture<S, B, K>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B, K>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B, K>
    where
        S: Service<Request<B>>,
    {
        // The request names no client, or cannot be sent: the inner
        // service is never called.
        Refused {
            error: Option<BoxError>,
        },
        // On the path of its client's provider. The client is there to
        // look the credentials up again if it is rejected.
        Sent {
            #[pin]
            future: ResponseFuture<S, B>,
            client: Option<Arc<Client<K>>>,
        },
    }
}

impl<S, B, K> PerClientFuture<S, B, K>
where
    S: Service<Request<B>>,
{
    fn refused(error: BoxError) -> Self {
        Self {
            state: State::Refused { error: Some(error) },
        }
    }

    fn sent(future: ResponseFuture<S, B>, client: Option<Arc<Client<K>>>) -> Self {
        Self {
            state: State::Sent { future, client },
        }
    }
}

impl<S, B, K, ResBody> Future for PerClientFuture<S, B, K>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
    K: Clone + Send + Sync + 'static,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Refused { error } => Poll::Ready(Err(error.take().unwrap_or_else(|| {
                TokenError::with_detail(
                    TokenErrorKind::Internal,
                    "the response future was polled after it completed",
                )
                .into()
            }))),
            StateProj::Sent { future, client } => {
                let result = ready!(future.poll(cx));
                let rejected = match &result {
                    Ok(response) => rejects_token(response),
                    Err(error) => error
                        .downcast_ref::<TokenError>()
                        .is_some_and(|error| error.kind() == TokenErrorKind::InvalidClient),
                };
                if let Some(client) = client.take().filter(|_| rejected) {
                    client.recheck_credentials();
                }
                Poll::Ready(result)
            }
        }
    }
}

impl<S, B, K> fmt::Debug for PerClientFuture<S, B, K>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerClientFuture").finish_non_exhaustive()
    }
}
