//! [`SharedCache`]: how a provider uses a [`TokenStore`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::{StoreKeyRing, TokenStore};
use crate::AuthMethod;

/// Default of [`SharedCache::operation_timeout`].
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_millis(250);
/// Default of [`SharedCache::breaker`]: failures in a row that open it.
pub const DEFAULT_BREAKER_FAILURES: u32 = 3;
/// Default of [`SharedCache::breaker`]: how long it stays open.
pub const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(5);
/// Default of [`SharedCache::key_prefix`].
pub const DEFAULT_KEY_PREFIX: &str = "routera-auth";

/// A fleet-wide second-level cache for a provider, given to
/// [`TokenProviderBuilder::shared_cache`](crate::TokenProviderBuilder::shared_cache).
///
/// The providers of every replica that share a store, a token URL, a client
/// id, an auth method and a client secret share one token: one exchange for
/// the fleet at start and at each refresh. See the [module](super) for the
/// guarantees.
///
/// ```no_run
/// # #[cfg(all(feature = "redis", feature = "reqwest"))]
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use routera_auth::store::{RedisStore, SharedCache};
/// use routera_auth::{ClientCredentials, HttpTokenExchange, TokenProvider};
///
/// let exchange = HttpTokenExchange::reqwest()?;
/// // Connects on first use: the service starts even while Redis is down.
/// let store = RedisStore::open("redis://127.0.0.1:6379")?;
/// let provider = TokenProvider::builder(exchange.clone(), ClientCredentials::from_env()?)
///     .shared_cache(SharedCache::for_exchange(store, &exchange))
///     .build();
/// # let _ = provider;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SharedCache {
    pub(crate) store: Arc<dyn TokenStore>,
    pub(crate) token_url: String,
    pub(crate) auth_method: AuthMethod,
    pub(crate) key_ring: Option<StoreKeyRing>,
    pub(crate) key_prefix: String,
    pub(crate) operation_timeout: Duration,
    pub(crate) breaker_failures: u32,
    pub(crate) breaker_open_for: Duration,
}

impl SharedCache {
    /// A shared cache in `store` for the tokens of `token_url`, fetched
    /// with `auth_method`. They name the entries, with the client id and
    /// secret: replicas that differ in any of them share nothing.
    pub fn new(
        store: impl TokenStore,
        token_url: impl Into<String>,
        auth_method: AuthMethod,
    ) -> Self {
        Self {
            store: Arc::new(store),
            token_url: token_url.into(),
            auth_method,
            key_ring: None,
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            breaker_failures: DEFAULT_BREAKER_FAILURES,
            breaker_open_for: DEFAULT_BREAKER_OPEN_FOR,
        }
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
    pub fn key_ring(mut self, ring: StoreKeyRing) -> Self {
        self.key_ring = Some(ring);
        self
    }

    /// The longest a store operation may take before the provider gives up
    /// on it and exchanges on its own. Default 250 ms.
    pub fn operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// After `failures` failed or timed-out store operations in a row
    /// (at least 1), the provider leaves the store alone for `open_for`,
    /// then tries it again. Default: 3 failures, 5 s.
    pub fn breaker(mut self, failures: u32, open_for: Duration) -> Self {
        self.breaker_failures = failures.max(1);
        self.breaker_open_for = open_for;
        self
    }

    /// What key names start with. Default `routera-auth`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }
}

impl fmt::Debug for SharedCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedCache")
            .field("token_url", &self.token_url)
            .field("auth_method", &self.auth_method)
            .field("key_ring", &self.key_ring)
            .field("key_prefix", &self.key_prefix)
            .field("operation_timeout", &self.operation_timeout)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_open_for", &self.breaker_open_for)
            .finish_non_exhaustive()
    }
}
