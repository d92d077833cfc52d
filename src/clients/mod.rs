//! Many Routera clients in one process (feature `multi-client`): a
//! [`TokenProviders`] keeps one [`TokenProvider`] per client key, such as
//! a tenant id, and
//! [`RouteraAuthLayer::per_client`](crate::RouteraAuthLayer::per_client)
//! picks the provider of each request.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), routera_auth::BoxError> {
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use http::{Request, Response, header::AUTHORIZATION};
//! use routera_auth::clients::{CredentialSource, TokenProviders};
//! use routera_auth_test::MockExchange;
//! use routera_auth::{ClientCredentials, RouteraAuthLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! #[derive(Clone, Hash, PartialEq, Eq)]
//! struct Tenant(u32);
//!
//! let exchange = MockExchange::new(Duration::from_secs(3600));
//! let source = CredentialSource::from_fn(|tenant: Tenant| async move {
//!     Ok::<_, Infallible>(ClientCredentials::new(format!("tenant-{}", tenant.0), "s3cr3t"))
//! });
//! let providers = TokenProviders::builder(exchange.clone(), source)
//!     .max_clients(1_000)
//!     .idle_timeout(Duration::from_secs(15 * 60))
//!     .build();
//!
//! let http_client = service_fn(|request: Request<()>| async move {
//!     Ok::<_, Infallible>(Response::new(request.headers()[AUTHORIZATION].clone()))
//! });
//! // The tenant of each request, from an extension an earlier layer set.
//! let api = ServiceBuilder::new()
//!     .layer(RouteraAuthLayer::per_client(providers.clone(), |request: &Request<()>| {
//!         request.extensions().get::<Tenant>().cloned()
//!     }))
//!     .service(http_client);
//!
//! let mut request = Request::new(());
//! request.extensions_mut().insert(Tenant(7));
//! let response = api.clone().oneshot(request).await?;
//! assert_eq!(response.body(), "Bearer token-1");
//! assert_eq!(exchange.credentials_seen()[0].client_id(), "tenant-7");
//!
//! // A request that names no tenant is refused, and not sent.
//! let refused = api.oneshot(Request::new(())).await.unwrap_err();
//! assert!(refused.is::<routera_auth::clients::MissingClientKey>());
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! - **One provider per client, built once**: however many requests for a
//!   new client come at once, its credentials are looked up once and one
//!   provider is built, which makes one exchange. Requests for other
//!   clients never wait on it.
//! - **Isolation**: a request carries the token of the provider its key
//!   names, and a 401 invalidates that token only.
//! - **Bounded**: at most [`max_clients`](TokenProvidersBuilder::max_clients)
//!   providers, the least recently used (to the second) evicted beyond it,
//!   and a provider without requests for
//!   [`idle_timeout`](TokenProvidersBuilder::idle_timeout) is dropped.
//!   Requests that hold an evicted provider finish with it; the next
//!   request for its client builds a new one.
//! - **Failures stay with their client**: a client whose credentials cannot
//!   be loaded gets a [`CredentialsError`], a client whose exchange fails
//!   its [`TokenError`](crate::TokenError); other clients are served as
//!   before. A failed lookup is the answer for a pause (1 s, doubling up to
//!   [`recheck_interval`](TokenProvidersBuilder::recheck_interval)), so a
//!   busy client whose secret is missing costs the source one lookup per
//!   pause, not one per request.
//! - **Rotation**: [`TokenProviders::set_credentials`] gives one client new
//!   credentials; and after a 401 from the API, or the token endpoint
//!   rejecting a client's credentials, the layer asks the
//!   [`CredentialSource`] again, and a different answer rotates that
//!   client's provider as [`TokenProvider::set_credentials`] does.
//!
//! With the fleet store (feature `shared-store`), build each client's
//! provider over its own [`SharedCache`](crate::store::SharedCache) with
//! [`TokenProviders::builder_with`]: the store's entries are named by
//! client id, so each client shares its own token across the fleet.

mod builder;
mod error;
mod layer;
mod slot;

use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{Ordering, fence};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::Service;

pub use self::builder::{
    CredentialSource, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CLIENTS, DEFAULT_RECHECK_INTERVAL,
    TokenProvidersBuilder,
};
use self::builder::{MakeProvider, over_exchange};
pub use self::error::{CredentialsError, MissingClientKey};
pub use self::layer::{PerClientAuth, PerClientAuthLayer, PerClientFuture};
use self::slot::{Failed, Kept, Slot, SlotShared};
use crate::error::BoxError;
use crate::{ClientCredentials, Token, TokenProvider, TokenRequest};

/// The request path's map: no lock to read, and a fast hash of the key.
type Built<K> = papaya::HashMap<K, Kept<K>, foldhash::fast::RandomState>;

/// A bounded set of [`TokenProvider`]s, one per client key (a tenant id,
/// an account): many Routera clients in one process.
///
/// A handle: clones share one set. Each client's credentials come from a
/// [`CredentialSource`] the first time the client is used; see the
/// [module docs](self) for the guarantees and an example.
///
/// `K` is any `Hash + Eq + Clone + Send + Sync` type. Providers are kept in
/// a [moka](https://docs.rs/moka) concurrent cache, which bounds the set,
/// orders it by use and builds a provider once per key. Requests find
/// their client's provider in a [papaya](https://docs.rs/papaya) map of
/// the built ones, which takes no lock; the cache hears of a busy client's
/// use once a second, so the LRU order is kept to the second.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), routera_auth::BoxError> {
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use routera_auth::clients::{CredentialSource, TokenProviders};
/// use routera_auth_test::MockExchange;
/// use routera_auth::ClientCredentials;
///
/// // Each account's credentials, from wherever they are kept.
/// let source = CredentialSource::from_fn(|account: String| async move {
///     Ok::<_, Infallible>(ClientCredentials::new(format!("{account}-client"), "s3cr3t"))
/// });
/// // Any token exchange: `HttpTokenExchange::reqwest()?` against Routera.
/// let exchange = MockExchange::new(Duration::from_secs(3600));
/// let providers = TokenProviders::builder(exchange.clone(), source)
///     .max_clients(10_000)
///     .idle_timeout(Duration::from_secs(15 * 60))
///     .build();
///
/// // The provider of one account, built on its first use.
/// let acme = providers.provider(&"acme".to_owned()).await?;
/// assert_eq!(acme.token().await?.secret(), "token-1");
/// assert_eq!(exchange.credentials_seen()[0].client_id(), "acme-client");
/// # Ok(())
/// # }
/// ```
pub struct TokenProviders<K> {
    inner: Arc<Inner<K>>,
}

struct Inner<K> {
    /// Every client: the bound, the LRU order and the single flight.
    cache: Cache<K, Kept<K>>,
    /// The built providers of `cache`, for the request path. An entry
    /// leaves it when it leaves the cache (the cache's eviction listener),
    /// and one that missed that is removed at its next ranking or sweep.
    built: Arc<Built<K>>,
    source: CredentialSource<K>,
    make_provider: Arc<MakeProvider<K>>,
    /// What every slot shares.
    shared: Arc<SlotShared<K>>,
    max_clients: u64,
    idle_timeout: Duration,
    /// The clients whose last lookup failed, apart from `cache` so that
    /// they take no place from a provider; as many as `max_clients`.
    failures: Cache<K, Failed>,
    /// The task that drops idle providers, once one was built.
    sweeper: Mutex<Option<JoinHandle<()>>>,
}

impl<K> Clone for TokenProviders<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K> TokenProviders<K>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    /// A set with default options whose providers get their tokens from
    /// clones of `exchange` (the same token endpoint for every client),
    /// with credentials from `source`.
    pub fn new<S>(exchange: S, source: CredentialSource<K>) -> Self
    where
        S: Service<TokenRequest, Response = Token> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        Self::builder(exchange, source).build()
    }

    /// A builder over clones of `exchange`, each client's provider with
    /// [`TokenProvider::new`]'s default options.
    pub fn builder<S>(exchange: S, source: CredentialSource<K>) -> TokenProvidersBuilder<K>
    where
        S: Service<TokenRequest, Response = Token> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        TokenProvidersBuilder::new(source, over_exchange(exchange))
    }

    /// A builder that builds each client's provider with `make_provider`,
    /// given the client's key and credentials: for provider options of
    /// your own, an exchange per client (another token URL, timeouts), or
    /// a fleet's [`SharedCache`](crate::store::SharedCache) per client.
    ///
    /// ```
    /// use std::time::Duration;
    /// use routera_auth::clients::{CredentialSource, TokenProviders};
    /// use routera_auth_test::MockExchange;
    /// use routera_auth::{ClientCredentials, TokenProvider};
    ///
    /// let exchange = MockExchange::new(Duration::from_secs(3600));
    /// let source = CredentialSource::from_fn(|tenant: String| async move {
    ///     Ok::<_, std::io::Error>(ClientCredentials::new(tenant, "s3cr3t"))
    /// });
    /// let providers = TokenProviders::builder_with(source, move |_tenant: &String, credentials| {
    ///     TokenProvider::builder(exchange.clone(), credentials)
    ///         .expiry_skew(Duration::from_secs(60))
    ///         .build()
    /// })
    /// .build();
    /// # let _ = providers;
    /// ```
    pub fn builder_with<F>(
        source: CredentialSource<K>,
        make_provider: F,
    ) -> TokenProvidersBuilder<K>
    where
        F: Fn(&K, ClientCredentials) -> TokenProvider + Send + Sync + 'static,
    {
        TokenProvidersBuilder::new(source, Arc::new(make_provider))
    }

    fn from_builder(builder: TokenProvidersBuilder<K>) -> Self {
        let built: Arc<Built<K>> = Arc::default();
        let cache = Cache::builder()
            .max_capacity(builder.max_clients)
            .eviction_policy(EvictionPolicy::lru())
            .support_invalidation_closures()
            .eviction_listener({
                let built = Arc::clone(&built);
                move |key: Arc<K>, gone: Kept<K>, _| {
                    // Pairs with the fence after an insert into `built`.
                    fence(Ordering::SeqCst);
                    let _ = built.pin().remove_if(&*key, |_, kept| kept.same(&gone));
                }
            })
            .build();
        let shared = Arc::new(SlotShared::new(
            builder.source.clone(),
            builder.recheck_interval,
        ));
        Self {
            inner: Arc::new(Inner {
                cache,
                built,
                source: builder.source,
                make_provider: builder.make_provider,
                shared,
                max_clients: builder.max_clients,
                idle_timeout: builder.idle_timeout,
                failures: Cache::new(builder.max_clients),
                sweeper: Mutex::new(None),
            }),
        }
    }

    /// The provider of `key`: the one kept, or a new one built from the
    /// credentials the source gives for `key`. Concurrent calls for a new
    /// key share one lookup and one provider.
    ///
    /// # Errors
    ///
    /// A [`CredentialsError`] when the source fails for `key`, to every
    /// call that waited on that lookup, and at once to the calls of the
    /// next second (doubling with each failure in a row, up to
    /// [`recheck_interval`](TokenProvidersBuilder::recheck_interval)); the
    /// first call after that asks the source again.
    pub async fn provider(&self, key: &K) -> Result<TokenProvider, CredentialsError> {
        self.provider_of(key.clone()).await
    }

    /// The provider kept for `key`, if any; builds none.
    pub fn get(&self, key: &K) -> Option<TokenProvider> {
        let kept = self.inner.cache.get(key)?;
        kept.slot().map(|slot| slot.provider().clone())
    }

    /// Whether a provider is kept for `key`.
    pub fn contains(&self, key: &K) -> bool {
        self.inner
            .cache
            .get(key)
            .is_some_and(|kept| kept.slot().is_some())
    }

    /// Gives the client `key` new credentials, for secret rotation, as
    /// [`TokenProvider::set_credentials`] does for its provider. Returns
    /// whether a provider was kept for it; if none was, the next request
    /// looks the credentials up from the source, which should then give the
    /// new ones, even if the last lookup for `key` failed moments ago.
    pub fn set_credentials(&self, key: &K, credentials: ClientCredentials) -> bool {
        self.inner.failures.invalidate(key);
        match self.get(key) {
            Some(provider) => {
                provider.set_credentials(credentials);
                true
            }
            None => false,
        }
    }

    /// Drops the provider of `key` (a client that was removed), or the
    /// failure of its last lookup. Requests holding the provider finish
    /// with it; the next request for `key` looks its credentials up and
    /// builds a new one.
    pub fn remove(&self, key: &K) {
        self.inner.failures.invalidate(key);
        self.inner.cache.invalidate(key);
    }

    /// How many clients are kept. Evictions are applied in batches, so
    /// the count may lag behind them until
    /// [`run_pending_tasks`](Self::run_pending_tasks).
    pub fn len(&self) -> u64 {
        self.inner.cache.entry_count()
    }

    /// Whether no client is kept (with the lag of [`len`](Self::len)).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies the evictions and removals that are pending now, so that
    /// [`len`](Self::len) is exact. They are applied on their own as
    /// requests come; this is for gauges and tests.
    pub fn run_pending_tasks(&self) {
        self.inner.cache.run_pending_tasks();
    }

    /// The provider of `key`, built if there is none: one lookup and one
    /// build for concurrent callers, who all get its result.
    pub(crate) async fn provider_of(&self, key: K) -> Result<TokenProvider, CredentialsError> {
        let inner = &self.inner;
        if let Some(failed) = inner.failures.get(&key)
            && Instant::now() < failed.retry_at
        {
            // Its last lookup failed, and the pause is not over.
            return Err(failed.error);
        }
        // The entry is made at once; what takes time is filled in below,
        // by the first caller, while the others wait on it.
        let kept = inner.cache.get_with_by_ref(&key, Kept::empty);
        let built = kept
            .0
            .get_or_init(|| async {
                self.start_sweeper();
                let credentials = inner.source.lookup(key.clone()).await;
                let credentials = credentials.map_err(|error| {
                    let error = CredentialsError::new(error);
                    let failed = inner.shared.failed(error.clone(), inner.failures.get(&key));
                    inner.failures.insert(key.clone(), failed);
                    error
                })?;
                inner.failures.invalidate(&key);
                let provider = (inner.make_provider)(&key, credentials);
                Ok(Slot::new(key.clone(), provider, Arc::clone(&inner.shared)))
            })
            .await;
        match built {
            Ok(slot) => {
                slot.touch(Instant::now());
                let provider = slot.provider().clone();
                let _ = inner.built.pin().insert(key.clone(), kept.clone());
                // Evicted meanwhile: the listener may have run before the
                // insert (the fence pairs with the listener's).
                fence(Ordering::SeqCst);
                self.ranked(&key, &kept);
                Ok(provider)
            }
            Err(error) => {
                let error = error.clone();
                // The failure is kept apart, for its pause (above); the
                // entry goes, if it is still this one, so that failing
                // clients hold no place among the providers.
                let _ = inner
                    .cache
                    .entry_by_ref(&key)
                    .and_compute_with(|entry| match entry {
                        Some(entry) if entry.value().same(&kept) => Op::Remove,
                        _ => Op::Nop,
                    });
                Err(error)
            }
        }
    }

    /// The built provider's entry for `key`, if any, used at `now`. The
    /// request path.
    #[inline]
    pub(crate) fn used(&self, key: &K, now: Instant) -> Option<Kept<K>> {
        let kept = self.inner.built.pin().get(key).cloned()?;
        if kept.slot().is_some_and(|slot| slot.touch(now)) {
            self.ranked(key, &kept);
        }
        Some(kept)
    }

    /// Moves `key` up the LRU order, as a use of `kept`; if the cache no
    /// longer holds `kept`, the request path stops finding it.
    pub(crate) fn ranked(&self, key: &K, kept: &Kept<K>) {
        if !self
            .inner
            .cache
            .get(key)
            .is_some_and(|held| held.same(kept))
        {
            let _ = self
                .inner
                .built
                .pin()
                .remove_if(key, |_, held| held.same(kept));
        }
    }

    /// Starts the task that drops idle providers, unless it runs.
    fn start_sweeper(&self) {
        let mut sweeper = self
            .inner
            .sweeper
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if sweeper.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let period = (self.inner.idle_timeout / 4).clamp(Duration::from_millis(1), MINUTE);
        *sweeper = Some(runtime.spawn(sweep(Arc::downgrade(&self.inner), period)));
    }
}

const MINUTE: Duration = Duration::from_secs(60);

/// Every `period`, drops the providers idle for the set's idle timeout;
/// ends with the set.
async fn sweep<K>(set: Weak<Inner<K>>, period: Duration)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = set.upgrade() else {
            return;
        };
        let now = inner.shared.millis(Instant::now());
        let idle = inner.shared.millis_of(inner.idle_timeout);
        // Judged when the cache applies it: a provider used since is kept,
        // and so is an entry whose first lookup runs.
        let _ = inner
            .cache
            .invalidate_entries_if(move |_, kept| match kept.0.get() {
                Some(Ok(slot)) => slot.idle_for(now) >= idle,
                Some(Err(_)) => true,
                None => false,
            });
        inner.cache.run_pending_tasks();
        // An entry the listener missed, unused since, goes too.
        inner
            .built
            .pin()
            .retain(|_, kept| kept.slot().is_some_and(|slot| slot.idle_for(now) < idle));
    }
}

impl<K> Drop for Inner<K> {
    fn drop(&mut self) {
        if let Some(task) = self
            .sweeper
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

impl<K> fmt::Debug for TokenProviders<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProviders")
            .field("clients", &self.inner.cache.entry_count())
            .field("max_clients", &self.inner.max_clients)
            .field("idle_timeout", &self.inner.idle_timeout)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;
    use crate::test_double::TestExchange as MockExchange;

    const HOUR: Duration = Duration::from_secs(3600);

    /// A set with one built client, 1, whose entry in the request path's
    /// map is then one the cache no longer holds: the eviction listener
    /// ran before the entry was inserted, a race the set must survive.
    async fn with_a_stray_entry() -> TokenProviders<u32> {
        let source = CredentialSource::from_fn(|key: u32| async move {
            Ok::<_, Infallible>(ClientCredentials::new(format!("client-{key}"), "s3cr3t"))
        });
        let providers = TokenProviders::new(MockExchange::new(HOUR), source);
        providers.provider(&1).await.unwrap();
        let kept = providers.used(&1, Instant::now()).unwrap();
        providers.inner.cache.invalidate(&1);
        assert!(providers.inner.built.pin().get(&1).is_none(), "listener");
        let _ = providers.inner.built.pin().insert(1, kept);
        providers
    }

    #[tokio::test(start_paused = true)]
    async fn a_stray_entry_leaves_the_request_path_at_its_next_ranking() {
        let providers = with_a_stray_entry().await;
        // Within the second of its last ranking, it is used as it is.
        assert!(providers.used(&1, Instant::now()).is_some());
        tokio::time::advance(Duration::from_secs(1)).await;
        // The request that ranks it still gets it; the next one does not.
        assert!(providers.used(&1, Instant::now()).is_some());
        assert!(providers.used(&1, Instant::now()).is_none());
        assert!(providers.inner.built.pin().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unused_stray_entry_leaves_at_the_idle_sweep() {
        let providers = with_a_stray_entry().await;
        tokio::time::sleep(HOUR + 2 * MINUTE).await;
        assert!(providers.inner.built.pin().is_empty());
    }
}
