//! [`SharedCache`]: the configuration of fleet sharing, and the
//! `tower::Layer` that puts it over a token exchange; [`StoreStats`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::replica::{Config, Replica};
use super::{SharedExchange, StoreKeyRing, TokenStore};
use crate::AuthMethod;

/// Default of [`SharedCache::operation_timeout`].
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_millis(250);
/// Default of [`SharedCache::breaker`]: failures in a row that open it.
pub const DEFAULT_BREAKER_FAILURES: u32 = 3;
/// Default of [`SharedCache::breaker`]: how often an open breaker lets one
/// probe through.
pub const DEFAULT_BREAKER_PROBE_EVERY: Duration = Duration::from_millis(250);
/// Default of [`SharedCache::key_prefix`].
pub const DEFAULT_KEY_PREFIX: &str = "routera-auth";

/// A fleet-wide second-level cache in front of a token exchange: a
/// `tower::Layer` whose service, [`SharedExchange`], takes the fleet's
/// token from a [`TokenStore`] or makes one exchange for the fleet.
///
/// The replicas that share a store, a token URL, a client id, an auth
/// method and a client secret share one token: one exchange for the fleet
/// at start and at each refresh. See the [module](super) for the
/// guarantees.
///
/// Use one `SharedCache` per provider: its clones, and the services it
/// makes, share one state (the breaker, the counters of
/// [`stats`](Self::stats), the issue time of the token the replica holds).
/// The builder methods return a cache with a state of its own: configure
/// it before you use it.
///
/// ```no_run
/// # #[cfg(all(feature = "redis", feature = "reqwest"))]
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use routera_auth::store::{RedisStore, SharedCache};
/// use routera_auth::{ClientCredentials, HttpTokenExchange, TokenProvider};
/// use tower::ServiceBuilder;
///
/// let exchange = HttpTokenExchange::reqwest()?;
/// // Connects on first use: the service starts even while Redis is down.
/// let store = RedisStore::open("redis://127.0.0.1:6379")?;
/// let shared_cache = SharedCache::for_exchange(store, &exchange);
/// let fleet_exchange = ServiceBuilder::new()
///     .layer(shared_cache.clone())
///     .service(exchange);
/// let provider = TokenProvider::new(fleet_exchange, ClientCredentials::from_env()?);
/// # let _ = provider;
/// println!("tokens taken from the store: {}", shared_cache.stats().hits);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SharedCache {
    replica: Arc<Replica>,
}

/// What a [`SharedCache`] has done so far; from [`SharedCache::stats`] or
/// [`SharedExchange::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Tokens taken from the store instead of an exchange.
    pub hits: u64,
    /// Looks at the store that found no token this replica could use.
    pub misses: u64,
    /// Store operations that failed or timed out.
    pub errors: u64,
    /// Exchanges this replica made for the fleet, holding the store's lock.
    pub lock_wins: u64,
    /// Times this replica waited for another replica's exchange.
    pub waits: u64,
    /// Exchanges made without the store's coordination (the store failing
    /// or its breaker open, a client secret with no keys).
    pub fallbacks: u64,
    /// Stored entries this replica could not open (sealed under another
    /// key, or not a token), which it then replaced with its own token
    /// through the lock, as on a miss.
    pub unreadable: u64,
}

impl SharedCache {
    /// A shared cache in `store` for the tokens of `token_url`, fetched
    /// with `auth_method`. They name the entries, with the client id and
    /// secret of each request: replicas that differ in any of them share
    /// nothing.
    pub fn new(
        store: impl TokenStore,
        token_url: impl Into<String>,
        auth_method: AuthMethod,
    ) -> Self {
        Self::from_config(Config {
            address: store.address().map(Arc::from),
            store: Arc::new(store),
            token_url: token_url.into(),
            auth_method,
            key_ring: None,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_probe_every: DEFAULT_BREAKER_PROBE_EVERY,
        })
    }

    /// A shared cache in `store` for the token URL and auth method of
    /// `exchange`.
    pub fn for_exchange<H>(store: impl TokenStore, exchange: &crate::HttpTokenExchange<H>) -> Self {
        Self::new(
            store,
            exchange.token_url().to_string(),
            exchange.auth_method(),
        )
    }

    /// Seals values with `ring` instead of a key derived from the client
    /// secret. Every replica must have the key that sealed a value to use
    /// it; one without it misses and exchanges for itself.
    pub fn key_ring(self, ring: StoreKeyRing) -> Self {
        self.configure(|config| config.key_ring = Some(ring))
    }

    /// The longest a store operation may take before the replica gives up
    /// on it and exchanges on its own. Default 250 ms.
    pub fn operation_timeout(self, timeout: Duration) -> Self {
        self.configure(|config| config.operation_timeout = timeout)
    }

    /// After `failures` failed or timed-out store operations (at least 1)
    /// with no write accepted between them (the taking of the lock, which
    /// a store refuses whenever it refuses writes), the replica leaves the
    /// store alone and exchanges on its own, except that every
    /// `probe_every` one token request tries the store again (a probe); the
    /// first probe whose lock is accepted closes the breaker. Other
    /// successes do not close it, so a store that answers reads but refuses
    /// writes (a read-only replica after a failover) opens it too. Default: 3 failures, a probe every
    /// 250 ms, so that sharing resumes about one operation timeout after
    /// the store answers again.
    pub fn breaker(self, failures: u32, probe_every: Duration) -> Self {
        self.configure(|config| {
            config.breaker_failures = failures.max(1);
            config.breaker_probe_every = probe_every;
        })
    }

    /// What key names start with. Default `routera-auth`.
    pub fn key_prefix(self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.configure(|config| config.key_prefix = prefix)
    }

    /// The counts of this cache and of every service it made.
    pub fn stats(&self) -> StoreStats {
        self.replica.stats()
    }

    fn configure(self, change: impl FnOnce(&mut Config)) -> Self {
        let mut config = self.replica.config.clone();
        change(&mut config);
        Self::from_config(config)
    }

    fn from_config(config: Config) -> Self {
        Self {
            replica: Arc::new(Replica::new(config)),
        }
    }

    pub(super) fn coordinator(&self) -> &Arc<Replica> {
        &self.replica
    }
}

impl<S> Layer<S> for SharedCache {
    type Service = SharedExchange<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SharedExchange::new(inner, self)
    }
}

impl fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = &self.replica.config;
        f.debug_struct("SharedCache")
            .field("token_url", &config.token_url)
            .field("auth_method", &config.auth_method)
            .field("key_ring", &config.key_ring)
            .field("key_prefix", &config.key_prefix)
            .field("operation_timeout", &config.operation_timeout)
            .field("breaker_failures", &config.breaker_failures)
            .field("breaker_probe_every", &config.breaker_probe_every)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
