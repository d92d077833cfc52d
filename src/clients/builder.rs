//! [`CredentialSource`], where a keyed set of providers gets each client's
//! credentials, and [`TokenProvidersBuilder`], its options.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tower::{Service, ServiceExt};

use super::TokenProviders;
use crate::error::BoxError;
use crate::{ClientCredentials, Token, TokenProvider, TokenRequest};

/// Default of [`TokenProvidersBuilder::max_clients`].
pub const DEFAULT_MAX_CLIENTS: u64 = 10_000;
/// Default of [`TokenProvidersBuilder::idle_timeout`].
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default of [`TokenProvidersBuilder::recheck_interval`].
pub const DEFAULT_RECHECK_INTERVAL: Duration = Duration::from_secs(10);

type Lookup<K> = dyn Fn(K) -> Pin<Box<dyn Future<Output = Result<ClientCredentials, BoxError>> + Send>>
    + Send
    + Sync;

/// Builds the provider of one client from its key and credentials.
pub(super) type MakeProvider<K> = dyn Fn(&K, ClientCredentials) -> TokenProvider + Send + Sync;

/// Where a [`TokenProviders`] gets the credentials of a client: a closure
/// ([`from_fn`](Self::from_fn)) or a tower service
/// ([`from_service`](Self::from_service)), asynchronous either way, so
/// that they may come from a secrets manager.
///
/// It is asked when a client's first request comes (once, however many
/// requests come at once), again after the client's provider was evicted,
/// removed or left idle, and after the API or the token endpoint rejects
/// the client (at most once per
/// [`recheck_interval`](TokenProvidersBuilder::recheck_interval)): if it
/// then answers other credentials, the client's provider takes them, as
/// with [`TokenProvider::set_credentials`].
///
/// ```
/// use routera_auth::ClientCredentials;
/// use routera_auth::clients::CredentialSource;
///
/// let source = CredentialSource::from_fn(|tenant: u32| async move {
///     // A lookup in a secrets manager, a database, a configuration file…
///     Ok::<_, std::io::Error>(ClientCredentials::new(format!("tenant-{tenant}"), "s3cr3t"))
/// });
/// # let _ = source;
/// ```
pub struct CredentialSource<K> {
    lookup: Arc<Lookup<K>>,
}

impl<K> Clone for CredentialSource<K> {
    fn clone(&self) -> Self {
        Self {
            lookup: Arc::clone(&self.lookup),
        }
    }
}

impl<K: Send + 'static> CredentialSource<K> {
    /// Credentials from an async closure, given the client's key. Its
    /// error, whatever its type, reaches the client's callers as the
    /// `source()` of a [`CredentialsError`](super::CredentialsError).
    pub fn from_fn<F, Fut, E>(lookup: F) -> Self
    where
        F: Fn(K) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ClientCredentials, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Self {
            lookup: Arc::new(move |key| {
                let future = lookup(key);
                Box::pin(async move { future.await.map_err(Into::into) })
            }),
        }
    }

    /// Credentials from a tower service that takes a key: each lookup is a
    /// `oneshot` call on a clone of `service`.
    pub fn from_service<S>(service: S) -> Self
    where
        S: Service<K, Response = ClientCredentials> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let service = Mutex::new(service);
        Self {
            lookup: Arc::new(move |key| {
                let service = service
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                Box::pin(async move { service.oneshot(key).await.map_err(Into::into) })
            }),
        }
    }

    /// Looks up the credentials of `key`.
    pub(super) fn lookup(
        &self,
        key: K,
    ) -> Pin<Box<dyn Future<Output = Result<ClientCredentials, BoxError>> + Send>> {
        (self.lookup)(key)
    }
}

impl<K> fmt::Debug for CredentialSource<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialSource").finish_non_exhaustive()
    }
}

/// Builds a [`TokenProviders`]; from [`TokenProviders::builder`] or
/// [`TokenProviders::builder_with`].
pub struct TokenProvidersBuilder<K> {
    pub(super) source: CredentialSource<K>,
    pub(super) make_provider: Arc<MakeProvider<K>>,
    pub(super) max_clients: u64,
    pub(super) idle_timeout: Duration,
    pub(super) recheck_interval: Duration,
}

impl<K> TokenProvidersBuilder<K>
where
    K: std::hash::Hash + Eq + Clone + Send + Sync + 'static,
{
    pub(super) fn new(source: CredentialSource<K>, make_provider: Arc<MakeProvider<K>>) -> Self {
        Self {
            source,
            make_provider,
            max_clients: DEFAULT_MAX_CLIENTS,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            recheck_interval: DEFAULT_RECHECK_INTERVAL,
        }
    }

    /// The most providers kept at once (default 10,000, at least 1).
    ///
    /// The cache splits them over its shards (a power of two, up to 4 per
    /// core, each for at least 32 clients), rounding up: 10,000 on 8
    /// shards, 1,250 each. Clients go to shards by the hash of their key,
    /// unevenly, and a full shard evicts one of its own, so the set may
    /// start evicting a few percent below `max_clients` (on 8 shards,
    /// 10,000 keys in a set of 10,000: 9,830 to 9,930 kept; 1,000 in 1,000:
    /// 956 to 982), more with more shards. Leave room to spare.
    ///
    /// Whom a full shard evicts is decided by S3-FIFO, not by least recent
    /// use. A new client is on probation, in a small queue (3% of the
    /// shard); when its turn comes, it is evicted if no request used it
    /// since it came, else it joins the kept clients. Among those a clock
    /// hand turns when a client joins them and they are over their share
    /// (or when none is on probation): each use counts up to two, each
    /// pass of the hand counts one down, and the hand evicts a client it
    /// finds at zero. So a client used again outlives a run of clients
    /// used once, and in a small set the kept clients hold their places
    /// while new ones take turns in the rest. A client evicted lately that
    /// comes back joins the kept ones at once.
    ///
    /// A request that already holds an evicted provider finishes with it,
    /// and the next request for its client builds a new one (one credential
    /// lookup, one exchange).
    pub fn max_clients(mut self, max_clients: u64) -> Self {
        self.max_clients = max_clients.max(1);
        self
    }

    /// How long a provider may go without a request before it is no
    /// longer used (default 1 h, at least 1 ms), on the tokio clock: the
    /// next request for its client looks its credentials up and builds a
    /// new provider in its place. No timer runs for it: an idle provider
    /// stays in memory, unused, until that request, until the clock hand of
    /// [`max_clients`](Self::max_clients) finds it (no request marks it
    /// used), or until [`TokenProviders::run_pending_tasks`].
    pub fn idle_timeout(mut self, idle_timeout: Duration) -> Self {
        self.idle_timeout = idle_timeout.max(Duration::from_millis(1));
        self
    }

    /// How often at most the credentials of one client are looked up again
    /// after the API answers its requests 401, or the token endpoint
    /// rejects its credentials (default 10 s): a rotated secret is picked
    /// up within that, and a storm of 401s costs the credential source one
    /// lookup per interval and client.
    ///
    /// It is also the longest pause after failed lookups: a client whose
    /// lookup fails gets that error at once for 1 s, doubling with each
    /// failure in a row up to this interval, then the next request looks
    /// its credentials up again.
    pub fn recheck_interval(mut self, interval: Duration) -> Self {
        self.recheck_interval = interval;
        self
    }

    /// Builds the set. It holds no provider until the first request.
    pub fn build(self) -> TokenProviders<K> {
        TokenProviders::from_builder(self)
    }
}

impl<K> fmt::Debug for TokenProvidersBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProvidersBuilder")
            .field("max_clients", &self.max_clients)
            .field("idle_timeout", &self.idle_timeout)
            .field("recheck_interval", &self.recheck_interval)
            .finish_non_exhaustive()
    }
}

/// Builds each client's provider with default options over a clone of
/// `exchange`.
pub(super) fn over_exchange<K, S>(exchange: S) -> Arc<MakeProvider<K>>
where
    S: Service<TokenRequest, Response = Token> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let exchange = Mutex::new(exchange);
    Arc::new(move |_key: &K, credentials| {
        let exchange = exchange
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        TokenProvider::new(exchange, credentials)
    })
}
