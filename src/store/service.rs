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
/// # #[cfg(feature = "test-util")]
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), routera_auth::TokenError> {
/// use std::time::Duration;
/// use routera_auth::store::{SharedCache, SharedExchange};
/// use routera_auth::test_util::{MemoryStore, MockExchange};
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
/// # #[cfg(not(feature = "test-util"))]
/// # fn main() {}
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
        let fleet = Arc::clone(self.cache.coordinator());
        Box::pin(async move {
            let own = match fleet.coordinate(&request).await {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;
    use tokio_test::{assert_pending, task};

    use super::*;
    use crate::test_util::{MemoryStore, MockExchange};
    use crate::{AuthMethod, TokenErrorKind, TokenReason};

    const HOUR: Duration = Duration::from_secs(3600);

    /// One replica's exchange: `exchange` under a shared cache of its own
    /// in `store`.
    fn replica(store: &MemoryStore, exchange: &MockExchange) -> SharedExchange<MockExchange> {
        let cache = SharedCache::new(
            store.clone(),
            "https://auth.test/t",
            AuthMethod::RequestBody,
        );
        tower::Layer::layer(&cache, exchange.clone())
    }

    /// What a provider with no token to serve sends.
    fn cold() -> TokenRequest {
        TokenRequest::new(MockExchange::credentials())
    }

    /// The answer to `request`, once what follows it (the save, the
    /// unlock: a task of their own) has run.
    async fn ask(
        service: &SharedExchange<MockExchange>,
        request: TokenRequest,
    ) -> Result<Token, TokenError> {
        let answer = service.clone().oneshot(request).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        answer
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_from_the_store_says_how_long_ago_it_was_issued() {
        let store = MemoryStore::new();
        let exchange = MockExchange::new(HOUR);
        let fresh = ask(&replica(&store, &exchange), cold()).await.unwrap();
        assert_eq!(fresh.age(), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(600)).await;

        let other = replica(&store, &exchange);
        let shared = ask(&other, cold()).await.unwrap();

        assert_eq!(exchange.calls(), 1);
        assert_eq!(shared.access_token().secret(), "token-1");
        assert_eq!(shared.expires_in(), Some(HOUR));
        assert_eq!(shared.age(), Duration::from_secs(600));
        assert_eq!(other.stats().hits, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_rejected_token_is_removed_from_the_store_and_never_taken() {
        let store = MemoryStore::new();
        let exchange = MockExchange::new(HOUR);
        let first = ask(&replica(&store, &exchange), cold()).await.unwrap();
        let fingerprint = store.tokens()[0].1.fingerprint.clone();

        let rejected = TokenReason::Rejected(first.access_token().clone());
        let other = replica(&store, &exchange);
        let renewed = ask(&other, cold().with_reason(rejected)).await.unwrap();

        assert_eq!(renewed.access_token().secret(), "token-2");
        let stored = store.tokens();
        assert_eq!(stored.len(), 1);
        assert_ne!(stored[0].1.fingerprint, fingerprint, "token-2 replaced it");
        assert_eq!(other.stats().lock_wins, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_fleets_backoff_is_a_deferred_error() {
        let store = MemoryStore::new();
        let exchange = MockExchange::new(HOUR);
        let asked = Duration::from_secs(30);
        exchange.fail_next(TokenError::new(TokenErrorKind::RateLimited).with_retry_after(asked));
        let endpoints = ask(&replica(&store, &exchange), cold()).await.unwrap_err();
        assert!(!endpoints.is_deferred(), "the endpoint's own answer");
        tokio::time::advance(Duration::from_secs(10)).await;

        let held_off = ask(&replica(&store, &exchange), cold()).await.unwrap_err();

        assert_eq!(exchange.calls(), 1, "no exchange while the fleet backs off");
        assert!(held_off.is_deferred());
        assert_eq!(held_off.kind(), TokenErrorKind::RateLimited);
        assert_eq!(held_off.retry_after(), Some(Duration::from_secs(20)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_future_dropped_holding_the_lock_releases_it_at_once() {
        let store = MemoryStore::new();
        let hung = MockExchange::new(HOUR).gated();
        let holder = replica(&store, &hung);
        let mut holding = task::spawn(holder.clone().oneshot(cold()));
        assert_pending!(holding.poll());
        assert_eq!(hung.calls(), 1, "it holds the lock and exchanges");
        drop(holding);
        // The release runs in a task of its own.
        tokio::task::yield_now().await;

        let exchange = MockExchange::new(HOUR);
        let other = replica(&store, &exchange);
        let started = Instant::now();
        let token = ask(&other, cold()).await.unwrap();

        assert_eq!(token.access_token().secret(), "token-1");
        assert_eq!(started.elapsed(), Duration::ZERO, "no wait for the lock");
        let stats = other.stats();
        assert_eq!((stats.lock_wins, stats.waits), (1, 0));
    }

    /// A replica whose exchange has started and never ends, holding the
    /// fleet's lock: alive (its future runs on the runtime, and renews the
    /// lease).
    async fn live_holder(store: &MemoryStore) -> tokio::task::JoinHandle<()> {
        let hung = MockExchange::new(HOUR).gated();
        let holder = replica(store, &hung);
        let holding = tokio::spawn(async move {
            let _ = holder.oneshot(cold()).await;
        });
        while hung.calls() == 0 {
            tokio::task::yield_now().await;
        }
        holding
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_holders_lease_lapses_and_a_waiter_takes_over() {
        let store = MemoryStore::new();
        let hung = MockExchange::new(HOUR).gated();
        let mut holding = task::spawn(replica(&store, &hung).oneshot(cold()));
        assert_pending!(holding.poll());
        assert_eq!(hung.calls(), 1, "it holds the lock and exchanges");
        // Never polled again: a replica that died (its lock is not
        // released, its lease not renewed).

        let exchange = MockExchange::new(HOUR);
        let waiter = replica(&store, &exchange);
        let started = Instant::now();
        let token = ask(&waiter, cold()).await.unwrap();

        // The lease (1 s), then at most one pause between looks (100 ms).
        let waited = started.elapsed();
        assert!(
            (Duration::from_secs(1)..=Duration::from_millis(1_100)).contains(&waited),
            "{waited:?}"
        );
        assert_eq!(token.access_token().secret(), "token-1");
        let stats = waiter.stats();
        assert_eq!((stats.waits, stats.lock_wins, stats.fallbacks), (1, 1, 0));
        drop(holding);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_waits_for_a_live_holder_until_its_own_timeout_and_never_exchanges() {
        let store = MemoryStore::new();
        // Alive past its lease: it renews it, so the waiter waits its whole
        // timeout.
        let _holding = live_holder(&store).await;

        let exchange = MockExchange::new(HOUR);
        let waiter = replica(&store, &exchange);
        let started = Instant::now();
        let request = cold().with_timeout(Duration::from_secs(4));
        let error = ask(&waiter, request).await.unwrap_err();

        // Its answer comes 10 ms before its caller would give up on it.
        assert_eq!(started.elapsed(), Duration::from_millis(3_990));
        assert_eq!(error.kind(), TokenErrorKind::Timeout);
        assert!(!error.is_deferred(), "{error}");
        assert_eq!(exchange.calls(), 0, "no exchange beside a live holder's");
        let stats = waiter.stats();
        assert_eq!((stats.waits, stats.fallbacks, stats.lock_wins), (1, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_with_a_token_waits_for_a_live_holder_past_half_its_serving_time() {
        let store = MemoryStore::new();
        let slow = MockExchange::new(HOUR).with_delay(Duration::from_secs(3));
        let holder = replica(&store, &slow);
        let holding = tokio::spawn(holder.oneshot(cold()));
        while slow.calls() == 0 {
            tokio::task::yield_now().await;
        }

        let exchange = MockExchange::new(HOUR);
        let refreshing = replica(&store, &exchange);
        let started = Instant::now();
        // Its token is served 2 s more: it serves it meanwhile, and waits
        // for the holder's 3 s exchange rather than add one of its own.
        let request = cold()
            .with_reason(TokenReason::RefreshDue)
            .with_needed_by(started + Duration::from_secs(2));
        let token = ask(&refreshing, request).await.unwrap();

        let waited = started.elapsed();
        assert!(
            (Duration::from_secs(3)..=Duration::from_millis(3_100)).contains(&waited),
            "{waited:?}"
        );
        assert_eq!(token.access_token().secret(), "token-1");
        assert_eq!(exchange.calls(), 0);
        assert_eq!(refreshing.stats().hits, 1);
        holding.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_holders_failure_is_the_answer_of_its_waiters_and_holds_off_the_others() {
        let store = MemoryStore::new();
        let slow = MockExchange::new(HOUR).with_delay(Duration::from_secs(1));
        slow.fail_next(TokenError::new(TokenErrorKind::ServerError));
        let holder = replica(&store, &slow);
        let backoff = Duration::from_millis(1_500);
        let holding = tokio::spawn(holder.oneshot(cold().with_backoff(backoff)));
        while slow.calls() == 0 {
            tokio::task::yield_now().await;
        }

        let exchange = MockExchange::new(HOUR);
        let waiter = replica(&store, &exchange);
        let started = Instant::now();
        let error = ask(&waiter, cold()).await.unwrap_err();

        // The holder's failure, as its waiters' own (their providers count
        // it), with what is left of the backoff the holder takes.
        let waited = started.elapsed();
        assert!(
            (Duration::from_secs(1)..=Duration::from_millis(1_100)).contains(&waited),
            "{waited:?}"
        );
        assert!(holding.await.unwrap().is_err());
        assert_eq!(error.kind(), TokenErrorKind::ServerError);
        assert!(!error.is_deferred(), "{error}");
        let left = error.retry_after().unwrap();
        assert!(
            left > Duration::from_millis(1_400) && left <= backoff,
            "{left:?}"
        );
        assert!(error.to_string().contains("another replica"), "{error}");

        // A replica that comes during the backoff waits it out, deferred.
        tokio::time::advance(Duration::from_millis(500)).await;
        let held_off = ask(&replica(&store, &exchange), cold()).await.unwrap_err();
        assert!(held_off.is_deferred());
        assert_eq!(held_off.kind(), TokenErrorKind::ServerError);
        assert_eq!(exchange.calls(), 0, "no exchange while the fleet backs off");

        // After it, the next one exchanges.
        tokio::time::advance(Duration::from_millis(1_200)).await;
        let token = ask(&replica(&store, &exchange), cold()).await.unwrap();
        assert_eq!(token.access_token().secret(), "token-1");
        assert_eq!(exchange.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_holders_exchange_that_outlasts_its_timeout_fails_here_and_is_published() {
        let store = MemoryStore::new();
        let hung = MockExchange::new(HOUR).gated();
        let holder = replica(&store, &hung);
        let request = cold()
            .with_timeout(Duration::from_secs(2))
            .with_backoff(Duration::from_secs(1));
        let answer = tokio::time::timeout(Duration::from_secs(3), ask(&holder, request));
        let error = answer
            .await
            .expect("answered within its timeout")
            .unwrap_err();

        assert_eq!(error.kind(), TokenErrorKind::Timeout);
        assert_eq!(
            error.to_string(),
            "the token exchange timed out: no answer within 2000 ms"
        );
        let held_off = ask(&replica(&store, &hung), cold()).await.unwrap_err();
        assert!(held_off.is_deferred());
        assert_eq!(held_off.kind(), TokenErrorKind::Timeout);
        assert_eq!(hung.calls(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_store_is_written_after_the_answer_not_before() {
        // A store that takes 200 ms an operation (under its timeout).
        let store = MemoryStore::new();
        store.set_delay(Some(Duration::from_millis(200)));
        let exchange = MockExchange::new(HOUR);
        let started = Instant::now();
        let token = replica(&store, &exchange).oneshot(cold()).await.unwrap();
        // Look, lock, look again: 600 ms; the save and the unlock follow.
        assert_eq!(started.elapsed(), Duration::from_millis(600));
        assert_eq!(token.access_token().secret(), "token-1");
        assert!(store.tokens().is_empty(), "saved after the answer");
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(store.tokens().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_with_a_token_takes_only_a_newer_one() {
        let store = MemoryStore::new();
        let exchange = MockExchange::new(HOUR);
        let own = replica(&store, &exchange);
        ask(&own, cold()).await.unwrap();
        tokio::time::advance(Duration::from_secs(3300)).await;

        // Its own token is the stored one: it exchanges.
        let needed_by = Instant::now() + Duration::from_secs(270);
        let due = || {
            cold()
                .with_reason(TokenReason::RefreshDue)
                .with_needed_by(needed_by)
        };
        let renewed = ask(&own, due()).await.unwrap();
        assert_eq!(renewed.access_token().secret(), "token-2");

        // Another replica, whose token is older, takes the newer one.
        let other = replica(&store, &exchange);
        ask(&other, cold()).await.unwrap();
        assert_eq!(other.stats().hits, 1);
        assert_eq!(exchange.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn debug_shows_no_secret() {
        let store = MemoryStore::new();
        let exchange = MockExchange::new(HOUR);
        let service = replica(&store, &exchange);
        ask(&service, cold()).await.unwrap();
        let text = format!("{service:?}");
        assert!(text.contains("SharedExchange"), "{text}");
        assert!(
            !text.contains("token-1") && !text.contains("mock-secret"),
            "{text}"
        );
    }
}
