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
//! # How the fleet shares one exchange
//!
//! - **Only when the provider needs a token.** The layer runs when the
//!   provider calls its exchange: with no token, with its refresh due,
//!   after a response rejected its token; never on the request path. The
//!   provider says why and by when in the [`TokenRequest`](crate::TokenRequest);
//!   a token from the store comes back with its [age](crate::Token::age),
//!   so it is scheduled from its real issue time.
//! - **Single flight across processes.** The replica that takes the lock
//!   (`SET NX PX` with an owner id, renewed and released by its owner only)
//!   exchanges and writes the token, only if it is newer than the stored
//!   one. The others poll for it (10 ms doubling to 100 ms, jittered). A
//!   replica that still serves a token takes a stored one only if it is
//!   newer; a replica with none takes it as long as it may be served.
//! - **The waiting rule: a live holder is waited for, a dead one is
//!   replaced by one replica.** While the holder renews its lease, the
//!   others wait for its token or its published failure, however slow the
//!   token endpoint: its exchange asks the same endpoint as theirs would,
//!   so giving up on it would only add requests to an endpoint already
//!   struggling. A replica that still serves a token keeps serving it
//!   meanwhile; its callers wait only once it stops being served, as the
//!   callers of one process wait on its one exchange. A cold replica's
//!   callers wait up to the provider's exchange timeout, as they would for
//!   an exchange of its own. Only a failing store (errors, timeouts, the
//!   breaker) sends a replica to an exchange of its own.
//! - **The lock is a lease that dies with its holder.** It lives four
//!   operation timeouts (1 s at least, so 1 s by default), and its holder
//!   renews it every third of that while its exchange runs. A holder that
//!   dies or stalls mid-exchange holds the fleet up for one lease at most:
//!   the first waiter to look then takes the lock and exchanges, and the
//!   others wait for it in turn. A replica whose exchange is cancelled (new
//!   credentials, provider dropped) releases the lock at once.
//! - **Failures and backoff.** The holder's exchange ends a little before
//!   its provider's exchange timeout, so that a timeout is its answer too.
//!   When it fails, the holder publishes the failure (its kind) with the
//!   time its own provider now backs off: the endpoint's `Retry-After` (at
//!   most 10 minutes) or the provider's next
//!   [backoff](crate::TokenRequest::backoff). The replicas that waited for
//!   that exchange fail with it, as the callers of one process do: their
//!   providers count the failure and back off. A replica that asks while
//!   the fleet backs off gets a [deferred](crate::TokenError::deferred)
//!   error of the same kind: its provider waits out exactly what is left,
//!   counting no failure. So the fleet backs off together, as one process
//!   would, and the endpoint sees one attempt per backoff, not one per
//!   replica. A 401 on one replica removes the shared token only if it is
//!   the rejected one (compared by fingerprint).
//! - **Time.** Each replica counts a shared token's remaining time from the
//!   entry's time to live, which the store counts, so replicas whose clocks
//!   disagree still agree on when it stops being served. Issue times are
//!   compared on the replicas' wall clocks (each reads it once, then
//!   follows its monotonic clock): keep hosts on NTP; a skew of seconds is
//!   absorbed by the expiry skew.
//! - **Off the caller's path.** The holder writes the token to the store
//!   (and releases the lock) after its provider has it, in a task of its
//!   own: a slow store never delays the answer.
//! - **The store is never a reason for a request to fail.** Each operation
//!   has a timeout ([`SharedCache::operation_timeout`], 250 ms); after 3
//!   failures with no write accepted between them (the lock's `SET`) a
//!   breaker opens ([`SharedCache::breaker`]), and the replica exchanges on
//!   its own. Reads and scripts that happen not to write never close it, so
//!   a Redis that answers reads but refuses writes (a read-only replica
//!   after a failover) opens it too. While it is open, one token request
//!   every 250 ms tries the store again (half-open); the first whose lock is
//!   accepted closes it, so sharing resumes about one operation timeout
//!   after the store answers again. A wiped store (`FLUSHALL`) is a miss.
//! - **Logs.** The first failure since the store last accepted a write is
//!   a `WARN` at once (a store unreachable from the start is reported at
//!   the first token, not the first refresh), and the only one until the
//!   store takes a write again: a breaker that opens is an `INFO`, and so
//!   is the first accepted write after failures. Each names the store
//!   ([`TokenStore::address`]) and quotes its error. [`SharedCache::stats`] counts hits, misses, errors,
//!   lock wins, waits, fallbacks and unreadable entries.
//!
//! # What the store holds
//!
//! Per client, under `routera-auth:{<tag>}:…` (the hash tag puts them on
//! one Redis Cluster slot):
//!
//! | key | type | content | lives |
//! |---|---|---|---|
//! | `…:token` | hash | `iat` and `exp` (ms since the epoch), `fp` (a keyed fingerprint of the token), `v` (the sealed token) | as long as the token may be served |
//! | `…:lock` | string | the owner id of the replica exchanging | its lease (1 s), renewed while the exchange runs |
//! | `…:backoff` | string | what the holder's exchange failed with (`server_error`, `timeout`, …) | the holder's backoff |
//!
//! The tag is an HMAC of the token URL, client id and auth method under a
//! key derived from the client secret: reading the store reveals none of
//! them, and a new secret moves the fleet to new keys. Values are sealed
//! with XChaCha20-Poly1305; the key name, issue and expiry times and the key
//! id are associated data, so a value moved or altered does not open. No
//! secret and no token is in the store in any encoding (a test scans every
//! byte of a real Redis). The keys are derived with HMAC-SHA256, which is
//! fast: their strength is the client secret's. Routera's secrets are long
//! and random; with a short or guessable secret, anyone who can read the
//! store could test guesses against the key names offline. An empty secret
//! turns sharing off.
//!
//! **The key** is by default derived from the client secret, so every
//! replica that has the secret has it and nothing else to configure. To
//! keep values sealed under a key of your own, give a [`StoreKeyRing`]:
//! keys with ids, one current (seals) and previous ones (still open).
//! Rotate by deploying the new key as current with the old as previous,
//! then dropping the old one. A replica without the key that sealed the
//! stored token (a wrong or missing key, or another client secret) never
//! serves garbage and never fails: it counts the entry as `unreadable`,
//! warns once per entry (naming the key id the entry was sealed under,
//! never a secret), and replaces it through the lock as on a miss. The
//! replicas that share its key take its token, so a misconfigured group of
//! replicas costs one exchange per refresh, not one per replica.
//!
//! [`TokenStore`] is the backend: six operations, small enough to write for
//! another database. [`RedisStore`] implements it on Redis 6+ or Valkey: one
//! server over TCP, TLS or a unix socket, or a Redis Cluster (feature
//! `redis-cluster`), over TLS too, as managed clusters with in-transit
//! encryption require:
//!
//! ```no_run
//! # #[cfg(all(feature = "redis-cluster", feature = "rustls"))]
//! # fn run(ca_pem: &[u8]) -> Result<(), routera_auth::store::StoreError> {
//! use routera_auth::store::RedisStore;
//!
//! // A cluster's TLS is the `redis` crate's, which on rustls needs the
//! // process-wide provider: install it once, when the application starts.
//! let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
//! let store = RedisStore::cluster_builder(["rediss://:password@clustercfg.cache.internal:6379"])
//!     .add_root_certificates(ca_pem) // a private CA only
//!     .build()?;
//! # let _ = store;
//! # Ok(())
//! # }
//! ```
//!
//! The nodes' certificates must name the endpoints the nodes announce
//! (host names, on managed services); see [`RedisStore`] for the details.

mod backend;
mod breaker;
mod coordination;
mod held_lock;
mod layer;
mod publish;
mod replica;
mod seal;
mod service;

#[cfg(feature = "redis")]
mod redis;

pub use backend::{Snapshot, StoreError, StoreFuture, StoreKeys, StoredToken, TokenStore};
pub use layer::{
    DEFAULT_BREAKER_FAILURES, DEFAULT_BREAKER_PROBE_EVERY, DEFAULT_KEY_PREFIX,
    DEFAULT_OPERATION_TIMEOUT, SharedCache, StoreStats,
};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::{RedisStore, RedisStoreBuilder, RedisTls};
pub use seal::StoreKeyRing;
pub use service::SharedExchange;

pub(crate) use seal::{Sealer, random_id};
