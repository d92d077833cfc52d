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
//!   providers (rounded up to a multiple of the cache's shards, each of
//!   which evicts when its share is full). Beyond it, a client used once
//!   is evicted before one used again (S3-FIFO, not least recently used:
//!   see `max_clients`). A provider without requests for
//!   [`idle_timeout`](TokenProvidersBuilder::idle_timeout) is never used
//!   again; no timer drops it, it waits for the cache to need its place.
//!   An evicted, removed or idle client is not served to any later
//!   request: requests that hold its provider finish with it, and the
//!   next request for its client builds a new one.
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
mod client;
mod error;
mod layer;

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use quick_cache::sync::{Cache, EntryAction, EntryResult};
use tokio::time::Instant;
use tower::Service;

pub use self::builder::{
    CredentialSource, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CLIENTS, DEFAULT_RECHECK_INTERVAL,
    TokenProvidersBuilder,
};
use self::builder::{MakeProvider, over_exchange};
use self::client::{Client, FailedLookup, SetContext};
pub use self::error::{CredentialsError, MissingClientKey};
pub use self::layer::{PerClientAuth, PerClientAuthLayer, PerClientFuture};
use crate::error::BoxError;
use crate::{ClientCredentials, Token, TokenProvider, TokenRequest};

/// A bounded set of [`TokenProvider`]s, one per client key (a tenant id,
/// an account): many Routera clients in one process.
///
/// A handle: clones share one set. Each client's credentials come from a
/// [`CredentialSource`] the first time the client is used; see the
/// [module docs](self) for the guarantees and an example.
///
/// `K` is any `Hash + Eq + Clone + Send + Sync` type. Clients are kept in
/// one [quick_cache](https://docs.rs/quick_cache) concurrent cache, which
/// bounds the set, chooses whom to evict (S3-FIFO, see
/// [`max_clients`](TokenProvidersBuilder::max_clients)), builds a provider
/// once per key, and answers each request: a read takes its shard's read
/// lock, finds the key and marks it used, and allocates nothing.
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
    /// Every client with a provider, and the single flight of a new
    /// client's lookup (the cache's placeholder for its key).
    clients: Cache<K, Arc<Client<K>>>,
    /// The clients whose last lookup failed, apart from `clients` so that
    /// they take no place from a provider; as many as `max_clients`.
    failures: Cache<K, FailedLookup>,
    make_provider: Arc<MakeProvider<K>>,
    context: Arc<SetContext<K>>,
    max_clients: u64,
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
        let capacity = usize::try_from(builder.max_clients).unwrap_or(usize::MAX);
        let context = SetContext::new(
            builder.source,
            builder.recheck_interval,
            builder.idle_timeout,
        );
        Self {
            inner: Arc::new(Inner {
                clients: Cache::new(capacity),
                failures: Cache::new(capacity),
                make_provider: builder.make_provider,
                context: Arc::new(context),
                max_clients: builder.max_clients,
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
        let client = self.client(key.clone()).await?;
        Ok(client.provider().clone())
    }

    /// The provider kept for `key`, if any; builds none.
    pub fn get(&self, key: &K) -> Option<TokenProvider> {
        let client = self.used(key, Instant::now())?;
        Some(client.provider().clone())
    }

    /// Whether a provider is kept for `key`.
    pub fn contains(&self, key: &K) -> bool {
        let client = self.inner.clients.peek(key);
        client.is_some_and(|client| !client.is_idle(Instant::now()))
    }

    /// Gives the client `key` new credentials, for secret rotation, as
    /// [`TokenProvider::set_credentials`] does for its provider. Returns
    /// whether a provider was kept for it; if none was, the next request
    /// looks the credentials up from the source, which should then give the
    /// new ones, even if the last lookup for `key` failed moments ago.
    pub fn set_credentials(&self, key: &K, credentials: ClientCredentials) -> bool {
        let _ = self.inner.failures.remove(key);
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
        let _ = self.inner.failures.remove(key);
        let _ = self.inner.clients.remove(key);
    }

    /// How many clients are kept, idle ones included until they are
    /// dropped (by a request for them, by the bound, or by
    /// [`run_pending_tasks`](Self::run_pending_tasks)).
    pub fn len(&self) -> u64 {
        u64::try_from(self.inner.clients.len()).unwrap_or(u64::MAX)
    }

    /// Whether no client is kept (idle ones counted, as in
    /// [`len`](Self::len)).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the clients idle for the idle timeout now, so that
    /// [`len`](Self::len) counts the live ones only: for gauges and
    /// tests. An idle client is never used again whether or not this runs;
    /// its next request builds a new provider.
    pub fn run_pending_tasks(&self) {
        let now = Instant::now();
        self.inner.clients.retain(|_, client| !client.is_idle(now));
    }

    /// The client of `key`, built if there is none or it was idle: one
    /// lookup and one build for concurrent callers, who all get its
    /// result.
    pub(crate) async fn client(&self, key: K) -> Result<Arc<Client<K>>, CredentialsError> {
        let inner = &self.inner;
        let now = Instant::now();
        if let Some(client) = self.used(&key, now) {
            return Ok(client);
        }
        let before = inner.failures.get(&key);
        if let Some(failed) = &before
            && now < failed.retry_at
        {
            // Its last lookup failed, and the pause is not over.
            return Err(failed.error.clone());
        }
        // The first caller gets the key's placeholder; the others wait on
        // it, and get the client it fills it with, or the placeholder
        // itself if it is dropped unfilled (the lookup failed, or its
        // caller went away).
        let placeholder = loop {
            let entry = inner.clients.entry_async(&key, |_, client| {
                if client.use_at(now) {
                    EntryAction::Retain(Arc::clone(client))
                } else {
                    EntryAction::ReplaceWithGuard
                }
            });
            match entry.await {
                EntryResult::Retained(client) => return Ok(client),
                EntryResult::Vacant(placeholder) | EntryResult::Replaced(placeholder, _) => {
                    break placeholder;
                }
                EntryResult::Removed(..) | EntryResult::Timeout => {}
            }
        };
        if let Some(failed) = inner.failures.get(&key)
            && before.as_ref().is_none_or(|before| before.at != failed.at)
        {
            // The lookup this caller waited on failed.
            return Err(failed.error);
        }
        let credentials = inner.context.source().lookup(key.clone()).await;
        let credentials = credentials.map_err(|error| {
            let error = CredentialsError::new(error);
            let failed = inner.context.failed(error.clone(), before);
            inner.failures.insert(key.clone(), failed);
            error
        })?;
        let _ = inner.failures.remove(&key);
        let provider = (inner.make_provider)(&key, credentials);
        let client = Arc::new(Client::new(key, provider, Arc::clone(&inner.context)));
        // Removed meanwhile: this caller and its waiters are served by it,
        // and the next request builds another.
        let _ = placeholder.insert(Arc::clone(&client));
        Ok(client)
    }

    /// The live client of `key`, if any, used at `now`. The request path.
    #[inline]
    pub(crate) fn used(&self, key: &K, now: Instant) -> Option<Arc<Client<K>>> {
        let client = self.inner.clients.get(key)?;
        client.use_at(now).then_some(client)
    }
}

impl<K> fmt::Debug for TokenProviders<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProviders")
            .field("max_clients", &self.inner.max_clients)
            .field("idle_timeout", &self.inner.context.idle_timeout())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::test_double::TestExchange as MockExchange;

    const HOUR: Duration = Duration::from_secs(3600);

    /// A set over a source that counts its lookups.
    fn counted(
        max_clients: u64,
        idle_timeout: Duration,
    ) -> (TokenProviders<u32>, Arc<AtomicUsize>) {
        let lookups = Arc::new(AtomicUsize::new(0));
        let source = CredentialSource::from_fn({
            let lookups = Arc::clone(&lookups);
            move |key: u32| {
                lookups.fetch_add(1, Ordering::SeqCst);
                async move {
                    Ok::<_, Infallible>(ClientCredentials::new(format!("client-{key}"), "s3cr3t"))
                }
            }
        });
        let providers = TokenProviders::builder(MockExchange::new(HOUR), source)
            .max_clients(max_clients)
            .idle_timeout(idle_timeout)
            .build();
        (providers, lookups)
    }

    #[tokio::test(start_paused = true)]
    async fn an_evicted_or_removed_client_is_not_served_to_the_next_request() {
        let (providers, lookups) = counted(1, HOUR);
        providers.provider(&1).await.unwrap();
        assert!(providers.used(&1, Instant::now()).is_some());
        // The only place is client 1's, used: client 2 is served to the
        // request that built it, and evicted at once.
        providers.provider(&2).await.unwrap();
        assert!(providers.used(&2, Instant::now()).is_none(), "evicted");
        assert!(providers.used(&1, Instant::now()).is_some());
        providers.remove(&1);
        assert!(providers.used(&1, Instant::now()).is_none(), "removed");
        assert!(providers.is_empty());
        providers.provider(&1).await.unwrap();
        assert_eq!(lookups.load(Ordering::SeqCst), 3, "built again");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_client_is_not_used_again_and_its_next_request_builds_a_new_one() {
        let idle_timeout = Duration::from_secs(60);
        let (providers, lookups) = counted(10, idle_timeout);
        let first = providers.client(1).await.unwrap();
        tokio::time::advance(idle_timeout - Duration::from_millis(1)).await;
        assert!(providers.used(&1, Instant::now()).is_some(), "used: live");
        tokio::time::advance(idle_timeout).await;
        assert!(providers.used(&1, Instant::now()).is_none(), "idle");
        assert!(providers.used(&1, Instant::now()).is_none(), "still idle");
        assert_eq!(providers.len(), 1, "kept until its place is needed");

        let second = providers.client(1).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &second), "a new provider");
        assert_eq!(lookups.load(Ordering::SeqCst), 2);
        assert_eq!(providers.len(), 1, "in the idle one's place");
        assert!(Arc::ptr_eq(
            &providers.used(&1, Instant::now()).unwrap(),
            &second
        ));
    }
}
