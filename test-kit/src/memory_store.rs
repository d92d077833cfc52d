//! [`MemoryStore`]: a [`TokenStore`] in memory, for tests of code that
//! shares tokens, on paused time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use routera_auth::store::{Snapshot, StoreError, StoreFuture, StoreKeys, StoredToken, TokenStore};

/// A [`TokenStore`] in one process's memory, with the semantics of the
/// Redis one, on tokio's clock (so entries, locks and backoffs expire on
/// paused time), and faults to inject.
///
/// Clones share the store: give one clone to each provider of a simulated
/// fleet.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use routera_auth::store::SharedCache;
/// use routera_auth_test::{MemoryStore, MockExchange};
/// use routera_auth::{AuthMethod, TokenProvider};
/// use tower::ServiceBuilder;
///
/// let store = MemoryStore::new();
/// let exchange = MockExchange::new(std::time::Duration::from_secs(3600));
/// let replicas: Vec<TokenProvider> = (0..10)
///     .map(|_| {
///         let cache = SharedCache::new(store.clone(), "https://auth.test/oauth2/token", AuthMethod::RequestBody);
///         let exchange = ServiceBuilder::new().layer(cache).service(exchange.clone());
///         TokenProvider::new(exchange, MockExchange::credentials())
///     })
///     .collect();
/// for replica in &replicas {
///     replica.token().await.unwrap();
/// }
/// assert_eq!(exchange.calls(), 1);
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    tokens: HashMap<String, (StoredToken, Instant)>,
    locks: HashMap<String, (String, Instant)>,
    backoffs: HashMap<String, (Instant, String)>,
    failing: bool,
    read_only: bool,
    delay: Option<Duration>,
    operations: u64,
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        self.tokens.retain(|_, (_, until)| now < *until);
        self.locks.retain(|_, (_, until)| now < *until);
        self.backoffs.retain(|_, (until, _)| now < *until);
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// With `true`, every operation fails (a store that is down) until
    /// called again with `false`.
    pub fn set_failing(&self, failing: bool) {
        self.inner().failing = failing;
    }

    /// With `true`, every operation that writes fails while reads succeed
    /// (a read-only replica after a failover), until called again with
    /// `false`.
    pub fn set_read_only(&self, read_only: bool) {
        self.inner().read_only = read_only;
    }

    /// Every operation answers only after `delay` (a slow or frozen store),
    /// or at once with `None`.
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.inner().delay = delay;
    }

    /// Forgets everything stored (`FLUSHALL`).
    pub fn clear(&self) {
        let mut inner = self.inner();
        inner.tokens.clear();
        inner.locks.clear();
        inner.backoffs.clear();
    }

    /// The tokens stored, by key name.
    pub fn tokens(&self) -> Vec<(String, StoredToken)> {
        let mut inner = self.inner();
        inner.expire(Instant::now());
        let tokens = inner.tokens.iter();
        tokens
            .map(|(key, (token, _))| (key.clone(), token.clone()))
            .collect()
    }

    /// Operations asked of the store so far.
    pub fn operations(&self) -> u64 {
        self.inner().operations
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `operation`, which writes, on the store after the delay, unless
    /// it is failing or read-only.
    fn operate<'a, T: Send + 'a>(
        &'a self,
        operation: impl FnOnce(&mut Inner, Instant) -> T + Send + 'a,
    ) -> StoreFuture<'a, T> {
        self.operate_as(true, operation)
    }

    /// Runs `operation` on the store after the delay, unless it is failing
    /// (or read-only, if it `writes`).
    fn operate_as<'a, T: Send + 'a>(
        &'a self,
        writes: bool,
        operation: impl FnOnce(&mut Inner, Instant) -> T + Send + 'a,
    ) -> StoreFuture<'a, T> {
        Box::pin(async move {
            let delay = {
                let mut inner = self.inner();
                inner.operations += 1;
                inner.delay
            };
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            let mut inner = self.inner();
            if inner.failing {
                return Err(StoreError::new("the memory store is set to fail"));
            }
            if writes && inner.read_only {
                return Err(StoreError::new(
                    "the memory store is set to be read-only: writes fail",
                ));
            }
            let now = Instant::now();
            inner.expire(now);
            Ok(operation(&mut inner, now))
        })
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner();
        f.debug_struct("MemoryStore")
            .field("tokens", &inner.tokens.len())
            .field("failing", &inner.failing)
            .field("delay", &inner.delay)
            .finish_non_exhaustive()
    }
}

impl TokenStore for MemoryStore {
    fn address(&self) -> Option<String> {
        Some("memory".to_owned())
    }

    fn load<'a>(&'a self, keys: &'a StoreKeys) -> StoreFuture<'a, Snapshot> {
        self.operate_as(false, move |inner, now| {
            let token = inner.tokens.get(keys.token());
            let backoff = inner.backoffs.get(keys.backoff());
            Snapshot {
                token: token.map(|(token, _)| token.clone()),
                token_ttl: token.map(|(_, until)| *until - now),
                lock_ttl: inner.locks.get(keys.lock()).map(|(_, until)| *until - now),
                backoff: backoff.map(|(until, _)| *until - now),
                backoff_cause: backoff.map(|(_, cause)| cause.clone()),
            }
        })
    }

    fn save<'a>(
        &'a self,
        keys: &'a StoreKeys,
        token: &'a StoredToken,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        self.operate(move |inner, now| {
            let stored = inner.tokens.get(keys.token());
            if ttl.is_zero()
                || stored.is_some_and(|(old, _)| old.issued_at_ms >= token.issued_at_ms)
            {
                return false;
            }
            let entry = (token.clone(), later(now, ttl));
            inner.tokens.insert(keys.token().to_owned(), entry);
            true
        })
    }

    fn remove<'a>(&'a self, keys: &'a StoreKeys, fingerprint: &'a str) -> StoreFuture<'a, bool> {
        self.operate(move |inner, _| {
            let matches = inner
                .tokens
                .get(keys.token())
                .is_some_and(|(token, _)| token.fingerprint == fingerprint);
            matches && inner.tokens.remove(keys.token()).is_some()
        })
    }

    fn lock<'a>(
        &'a self,
        keys: &'a StoreKeys,
        owner: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        self.operate(move |inner, now| {
            if ttl.is_zero() || inner.locks.contains_key(keys.lock()) {
                return false;
            }
            let lock = (owner.to_owned(), later(now, ttl));
            inner.locks.insert(keys.lock().to_owned(), lock);
            true
        })
    }

    fn renew_lock<'a>(
        &'a self,
        keys: &'a StoreKeys,
        owner: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        self.operate(move |inner, now| match inner.locks.get_mut(keys.lock()) {
            Some((holder, until)) if holder == owner && !ttl.is_zero() => {
                *until = later(now, ttl);
                true
            }
            _ => false,
        })
    }

    fn unlock<'a>(&'a self, keys: &'a StoreKeys, owner: &'a str) -> StoreFuture<'a, ()> {
        self.operate(move |inner, _| {
            if inner
                .locks
                .get(keys.lock())
                .is_some_and(|(holder, _)| holder == owner)
            {
                inner.locks.remove(keys.lock());
            }
        })
    }

    fn back_off<'a>(
        &'a self,
        keys: &'a StoreKeys,
        duration: Duration,
        cause: &'a str,
    ) -> StoreFuture<'a, ()> {
        self.operate(move |inner, now| {
            let until = later(now, duration);
            let entry = inner.backoffs.entry(keys.backoff().to_owned());
            let entry = entry.or_insert_with(|| (until, cause.to_owned()));
            if entry.0 < until {
                *entry = (until, cause.to_owned());
            }
        })
    }
}

/// `now + duration`, or a century from now if that cannot be represented
/// (as Redis caps what it is given).
fn later(now: Instant, duration: Duration) -> Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(duration.min(CENTURY)).unwrap_or(now)
}
