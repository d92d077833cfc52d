//! [`SharedExchange`]: a token exchange that a fleet shares, made by the
//! [`SharedCache`] layer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Service, ServiceExt};

use super::coordination::Decision;
use super::{SharedCache, StoreStats};
use crate::error::TokenError;
use crate::token::{Token, TokenRequest};

/// A token exchange shared by the replicas of a fleet: made by the
/// [`SharedCache`] layer over an exchange service `S`.
///
/// For each [`TokenRequest`] it looks in the store for the fleet's token
/// and returns it, with its [age](Token::age), if this replica may use it;
/// otherwise it takes the fleet's lock, calls `S` and shares its token, or
/// waits for the replica that holds the lock. See the [module](super).
///
/// - A request whose [reason](TokenRequest::reason) is a
///   [rejected](crate::TokenReason::Rejected) token removes that token from
///   the store first, and never gets it back.
/// - It waits for the replica that holds the lock as long as that replica
///   renews its lease, up to the request's [timeout](TokenRequest::timeout)
///   (a [`Timeout`](crate::TokenErrorKind::Timeout) error then), and never
///   exchanges beside it. When the lease lapses, it may take the lock.
/// - When the holder's exchange fails, the fleet backs off: a replica
///   that waited for it gets an error of the same kind, whose `retry_after`
///   is what is left of the backoff; one that asks during the backoff gets
///   that error marked [deferred](TokenError::deferred).
/// - Its own exchange ends a little before the request's timeout, so that
///   it can publish a timeout as a failure.
/// - Cancel-safe: a future dropped while this replica holds the fleet's
///   lock releases the lock at once, from a task on the current tokio
///   runtime (best effort: otherwise its lease lapses, one second by
///   default).
///
/// `poll_ready` is always ready: `S` is driven to readiness in the future,
/// only when this replica exchanges, so that a replica waiting for the
/// fleet holds nothing of `S` (a concurrency limit's permit) meanwhile.
///
/// # Example
///
/// Made by the [`SharedCache`] layer, usually in a `ServiceBuilder`:
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), routera_auth::TokenError> {
/// use std::time::Duration;
/// use routera_auth::store::{SharedCache, SharedExchange};
/// use routera_auth_test::{MemoryStore, MockExchange};
/// use routera_auth::{AuthMethod, TokenProvider};
///
/// let store = MemoryStore::new();
/// let exchange = MockExchange::new(Duration::from_secs(3600));
/// let cache = SharedCache::new(store, "https://auth.test/oauth2/token", AuthMethod::RequestBody);
/// let shared: SharedExchange<MockExchange> = tower::Layer::layer(&cache, exchange.clone());
/// let provider = TokenProvider::new(shared, MockExchange::credentials());
/// provider.token().await?;
/// assert_eq!(cache.stats().lock_wins, 1, "it exchanged for the fleet");
/// # Ok(())
/// # }
/// ```
pub struct SharedExchange<S> {
    inner: S,
    cache: SharedCache,
}

impl<S> SharedExchange<S> {
    /// `inner`, shared through `cache` (as [`SharedCache`]'s `layer` does).
    pub fn new(inner: S, cache: &SharedCache) -> Self {
        Self {
            inner,
            cache: cache.clone(),
        }
    }

    /// The exchange service underneath.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The exchange service underneath, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The exchange service underneath, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The counts of the [`SharedCache`] that made this service (shared by
    /// all its services).
    pub fn stats(&self) -> StoreStats {
        self.cache.stats()
    }
}

impl<S: Clone> Clone for SharedExchange<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            cache: self.cache.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for SharedExchange<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedExchange")
            .field("inner", &self.inner)
            .field("cache", &self.cache)
            .finish()
    }
}

impl<S> Service<TokenRequest> for SharedExchange<S>
where
    S: Service<TokenRequest, Response = Token, Error = TokenError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Token;
    type Error = TokenError;
    /// Boxed: this runs once per token, not per request.
    type Future = Pin<Box<dyn Future<Output = Result<Token, TokenError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TokenError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: TokenRequest) -> Self::Future {
        let inner = self.inner.clone();
        let replica = Arc::clone(self.cache.coordinator());
        Box::pin(async move {
            let own = match replica.coordinate(&request).await {
                Decision::Stored(token) => return Ok(token),
                Decision::Failed(error) => return Err(error),
                Decision::Exchange(own) => own,
            };
            let result = own.run(inner.oneshot(request.clone())).await;
            own.settle(&result, &request).await;
            result
        })
    }
}
