//! A second-level token cache shared by the processes of a fleet (feature
//! `shared-store`; the Redis/Valkey backend is feature `redis`): a
//! `tower::Layer` over the token exchange.
//!
//! Every replica of a service that calls Routera would otherwise fetch and
//! renew its own token: 500 pods restarting at once send 500 token requests
//! in the same second. Put a [`SharedCache`] over the exchange of each
//! replica, and the replicas of a fleet share one token and one exchange:
//!
//! ```no_run
//! # #[cfg(all(feature = "redis", feature = "reqwest"))]
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use routera_auth::store::{RedisStore, SharedCache};
//! use routera_auth::{ClientCredentials, HttpTokenExchange, TokenProvider};
//! use tower::ServiceBuilder;
//!
//! let exchange = HttpTokenExchange::reqwest()?;
//! let shared_cache = SharedCache::for_exchange(RedisStore::open("redis://127.0.0.1:6379")?, &exchange);
//! let exchange = ServiceBuilder::new().layer(shared_cache.clone()).service(exchange);
//! let provider = TokenProvider::new(exchange, ClientCredentials::from_env()?);
//! # let _ = provider;
//! # Ok(())
//! # }
//! ```
//!
//! - The store is consulted only when the provider calls its exchange: it
//!   has no token, its refresh is due, a response rejected its token.
//!   **Never on the request path**. What the layer needs to know travels in
//!   the [`TokenRequest`](crate::TokenRequest) (why, by when, within which
//!   timeout) and the [`Token`](crate::Token) it returns (its age).
//! - **Single flight across processes**: the replica that takes the store's
//!   lock exchanges and writes the token, if it is newer than the stored
//!   one; the others wait for it (bounded, jittered polls) and take the
//!   shared token, and exchange for themselves if the holder takes too
//!   long: a replica waits half of the provider's exchange timeout at most.
//!   A replica that still serves a token takes only a newer one.
//! - **Nothing readable is stored**: key names are keyed hashes (HMAC) of the
//!   token URL, client id and auth method, under a key derived from the
//!   client secret, so changing the secret moves to new keys. Values are
//!   sealed with XChaCha20-Poly1305, bound to their key name and lifetime.
//!   A value that does not open is a miss, never an error.
//! - **The store is never a reason for a request to fail**: each operation
//!   has a timeout ([`SharedCache::operation_timeout`], 250 ms by default),
//!   repeated failures open a breaker, and the replica exchanges on its
//!   own meanwhile.
//! - [`SharedCache::stats`] counts hits, misses, errors, lock wins, waits
//!   and fallbacks.
//!
//! [`TokenStore`] is the backend: six operations, small enough to write for
//! another database. [`RedisStore`] implements it on Redis 6+ or Valkey.

mod backend;
mod breaker;
mod coordination;
mod held_lock;
mod layer;
mod seal;
mod service;

#[cfg(feature = "redis")]
mod redis;

pub use backend::{Snapshot, StoreError, StoreFuture, StoreKeys, StoredToken, TokenStore};
pub use layer::{
    DEFAULT_BREAKER_FAILURES, DEFAULT_BREAKER_OPEN_FOR, DEFAULT_KEY_PREFIX,
    DEFAULT_OPERATION_TIMEOUT, SharedCache, StoreStats,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{RedisStore, RedisStoreBuilder, RedisTls};
pub use seal::StoreKeyRing;
pub use service::SharedExchange;

pub(crate) use seal::{Sealer, random_id};
