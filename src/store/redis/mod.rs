//! [`RedisStore`]: the [`TokenStore`] on Redis 6+ or Valkey.

mod error;
mod scripts;
#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, RedisResult, Value};

use self::error::RedisStoreError;
use self::scripts::{BACK_OFF, FIELDS, REMOVE, RENEW, SAVE, UNLOCK, millis, parse_token};
use super::{Snapshot, StoreError, StoreFuture, StoreKeys, StoredToken, TokenStore};

/// How long a command may wait for its answer before it fails.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one attempt to connect may take.
const CONNECTION_TIMEOUT: Duration = Duration::from_millis(500);
/// Attempts to reconnect after the first one fails, within one reconnection:
/// none, so that an operation fails at once while Redis is down (the
/// manager's retries are spaced by sleeps); the next operation starts a new
/// reconnection, and [`RedisStore::run`] gives each operation one more try.
const RECONNECT_RETRIES: usize = 0;

/// The shared token store on Redis 6 or later, or Valkey (feature `redis`).
///
/// The public API takes and gives types of the [`redis`](https://docs.rs/redis/1)
/// crate, major version 1 (`redis::Client`,
/// `redis::aio::ConnectionManager`, `redis::aio::ConnectionManagerConfig`):
/// use the same major version in your own `Cargo.toml` to pass them.
///
/// # What it stores
///
/// For each client (see [`StoreKeys`]):
///
/// - `…:token`: a hash with fields `iat` and `exp` (issue and expiry times,
///   decimal milliseconds since the Unix epoch), `fp` (the token's keyed
///   fingerprint) and `v` (the sealed token), expiring when the token may
///   no longer be served. It is replaced only by a token issued later, and
///   removed only by a replica that names its fingerprint. An entry that
///   misses a field or holds a malformed number reads as no entry.
/// - `…:lock`: the exchange lock, `SET NX PX`, holding its owner's id: a
///   lease that its owner renews while it exchanges, and releases; no other
///   replica renews or releases it.
/// - `…:backoff`: present while the fleet backs off; a backoff is never
///   shortened.
///
/// Every operation is one round trip and atomic: those that read and write
/// are Lua scripts (`EVALSHA`, loaded again after a restart of Redis). All
/// keys of a client share one hash tag, so they would sit on one Redis
/// Cluster slot; but the connection manager talks to one server and does
/// not follow a cluster's `MOVED` redirects: use a single Redis (or one
/// with replicas behind a failover address), or implement [`TokenStore`]
/// on a cluster client.
///
/// # Connections and failures
///
/// One multiplexed connection ([`ConnectionManager`]) carries every
/// operation; clones of the store share it. It is opened on the first
/// operation (except with [`RedisStore::connect`]), which must run on a
/// Tokio runtime, and reopened by itself after Redis restarts or the
/// connection drops. The settings ([`RedisStore::manager_config`]):
///
/// - a command fails if Redis does not answer it within 500 ms (a frozen
///   or overloaded server), and an attempt to connect fails after 500 ms;
/// - a lost connection is reopened at once, with a single attempt; while
///   Redis is down each operation fails at once (a refused connection) or
///   after the connection timeout (an unreachable host), and makes a new
///   attempt, so operations succeed again as soon as Redis is back;
/// - an operation that could not be sent because the connection was lost
///   or refused is tried once more, on the new connection, so the first
///   operation after a restart of Redis succeeds. The exchange lock is
///   tried again only if the connection was refused: a `SET NX` that
///   Redis may have applied is not repeated.
///
/// Each failure is a [`StoreError`] with the Redis error as its source; the
/// provider also bounds each operation with its own timeout
/// ([`SharedCache::operation_timeout`](super::SharedCache::operation_timeout))
/// and exchanges on its own while the store fails.
///
/// # Starting while Redis is down
///
/// [`RedisStore::open`] and [`RedisStore::new`] do not connect: the
/// application starts whether Redis is up or not, and shares tokens as soon
/// as it is reachable. [`RedisStore::connect`] connects and checks the
/// server first, for applications that would rather not start without it.
///
/// ```no_run
/// # async fn run() -> Result<(), routera_auth::store::StoreError> {
/// use routera_auth::store::RedisStore;
///
/// // Starts even if Redis is down; fails only on a malformed URL.
/// let store = RedisStore::open("redis://:password@redis.internal:6379/0")?;
/// // Fails unless Redis answers now.
/// let checked = RedisStore::connect("redis+unix:///run/redis/redis.sock").await?;
/// # let _ = (store, checked);
/// # Ok(())
/// # }
/// ```
///
/// Its `Debug` output names the server's host and port (or socket path),
/// never a user name or password.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where the manager connects, for `Debug` and errors: host and port or
    /// socket path, without credentials. `None` for a manager given as is.
    server: Option<String>,
    /// The client a lazy store builds its manager from.
    client: Option<Client>,
    /// The connection manager, built on the first operation.
    manager: OnceLock<ConnectionManager>,
}

impl RedisStore {
    /// A store on the server `url` names, connected on its first operation:
    /// it does not need Redis to be up.
    ///
    /// `url` is `redis://[[user]:password@]host[:port][/db]` or
    /// `redis+unix:///path/to/redis.sock[?db=N&user=U&pass=P]` (`valkey://`
    /// and `valkey+unix://` too). `rediss://` needs a TLS feature of the
    /// `redis` crate (`tls-rustls` or `tls-native-tls`), which this crate
    /// does not turn on: add it to your own dependency on `redis` 1.x.
    ///
    /// # Errors
    ///
    /// A malformed or unsupported URL. The error does not repeat the URL,
    /// which may hold a password.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let client = Client::open(url).map_err(|source| {
            RedisStoreError::with_source(
                "invalid Redis URL: expected redis://[[user]:password@]host[:port][/db] \
                 or redis+unix:///path/to/redis.sock (rediss:// needs a TLS feature of \
                 the redis crate)",
                source,
            )
        })?;
        Ok(Self::new(client))
    }

    /// A store on the server of `client`, connected on its first operation
    /// with [`RedisStore::manager_config`]: it does not need Redis to be up.
    pub fn new(client: Client) -> Self {
        Self {
            inner: Arc::new(Inner {
                server: Some(client.get_connection_info().addr().to_string()),
                client: Some(client),
                manager: OnceLock::new(),
            }),
        }
    }

    /// A store on the server `url` names (see [`RedisStore::open`]), once
    /// it has connected and Redis has answered a `PING`.
    ///
    /// Use it when the application should not start without Redis; use
    /// [`RedisStore::open`] to start anyway and share tokens once Redis is
    /// reachable.
    ///
    /// # Errors
    ///
    /// A malformed URL, or a server that could not be reached or did not
    /// answer: at once for a refused connection, after 500 ms for a host
    /// that does not answer.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let store = Self::open(url)?;
        let mut manager = store.manager()?;
        let reply: RedisResult<Value> = redis::cmd("PING").query_async(&mut manager).await;
        let Err(source) = reply else {
            return Ok(store);
        };
        let server = store.inner.server.as_deref().unwrap_or("the given address");
        let message = if source.is_io_error() {
            format!(
                "could not reach Redis at {server}: check that it runs and that the URL is \
                 right, or use RedisStore::open to start without it"
            )
        } else {
            format!(
                "Redis at {server} refused the connection: check the user, password and \
                 database in the URL"
            )
        };
        Err(RedisStoreError::with_source(message, source).into())
    }

    /// A store on `manager`, as it was configured (its timeouts and
    /// reconnection included; [`RedisStore::manager_config`] gives this
    /// store's settings to start from).
    pub fn from_manager(manager: ConnectionManager) -> Self {
        Self {
            inner: Arc::new(Inner {
                server: None,
                client: None,
                manager: OnceLock::from(manager),
            }),
        }
    }

    /// The settings of the connection manager [`RedisStore::open`],
    /// [`RedisStore::new`] and [`RedisStore::connect`] build: 500 ms to
    /// answer a command, 500 ms to connect, and a lost connection reopened
    /// with a single attempt (the next operation makes the next one).
    pub fn manager_config() -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES)
    }

    /// The connection manager, built the first time (lazily: building it
    /// connects nothing, but it spawns a task, so it needs a Tokio runtime).
    fn manager(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(manager) = self.inner.manager.get() {
            return Ok(manager.clone());
        }
        let Some(client) = &self.inner.client else {
            return Err(RedisStoreError::new("the store has no connection manager").into());
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(RedisStoreError::new(
                "RedisStore needs a Tokio runtime: run its operations on one",
            )
            .into());
        }
        let manager =
            ConnectionManager::new_lazy_with_config(client.clone(), Self::manager_config())
                .map_err(|source| {
                    RedisStoreError::with_source(
                        "could not set up the Redis connection manager",
                        source,
                    )
                })?;
        // Two first operations at once may both build one; the second is
        // dropped before it connects.
        Ok(self.inner.manager.get_or_init(|| manager).clone())
    }

    /// Runs `command` on the connection, once more if it could not be sent
    /// (see the type's documentation), and names `operation` in its error.
    async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        again: Again,
        command: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let manager = self.manager()?;
        let error = match command(manager.clone()).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let error = if again.applies(&error) {
            match command(manager).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            }
        } else {
            error
        };
        Err(RedisStoreError::operation(operation, error).into())
    }
}

/// When [`RedisStore::run`] tries a command once more.
#[derive(Clone, Copy)]
enum Again {
    /// After a lost or refused connection: the command may have been
    /// applied, but applying it twice changes nothing that matters.
    IfConnectionLost,
    /// Only after a refused connection: the command was not sent.
    IfRefused,
}

impl Again {
    fn applies(self, error: &RedisError) -> bool {
        match self {
            Again::IfConnectionLost => {
                error.is_connection_refusal() || error.is_connection_dropped()
            }
            Again::IfRefused => error.is_connection_refusal(),
        }
    }
}

impl TokenStore for RedisStore {
    fn load<'a>(&'a self, keys: &'a StoreKeys) -> StoreFuture<'a, Snapshot> {
        Box::pin(async move {
            let (fields, token_ttl, lock_ttl, backoff): (Vec<Option<Vec<u8>>>, i64, i64, i64) =
                self.run(
                    "load",
                    Again::IfConnectionLost,
                    |mut connection| async move {
                        // MULTI/EXEC: a save cannot land between the
                        // fields and their time to live.
                        redis::pipe()
                            .atomic()
                            .cmd("HMGET")
                            .arg(keys.token())
                            .arg(&FIELDS[..])
                            .cmd("PTTL")
                            .arg(keys.token())
                            .cmd("PTTL")
                            .arg(keys.lock())
                            .cmd("PTTL")
                            .arg(keys.backoff())
                            .query_async(&mut connection)
                            .await
                    },
                )
                .await?;
            let token = parse_token(fields);
            Ok(Snapshot {
                token_ttl: token.as_ref().and_then(|_| positive_ms(token_ttl)),
                token,
                lock_ttl: positive_ms(lock_ttl),
                backoff: positive_ms(backoff),
            })
        })
    }

    fn save<'a>(
        &'a self,
        keys: &'a StoreKeys,
        token: &'a StoredToken,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let Some(ttl_ms) = millis(ttl) else {
                return Ok(false);
            };
            let written: i64 = self
                .run(
                    "save",
                    Again::IfConnectionLost,
                    |mut connection| async move {
                        SAVE.key(keys.token())
                            .arg(token.issued_at_ms)
                            .arg(token.expires_at_ms)
                            .arg(&token.fingerprint)
                            .arg(&token.sealed[..])
                            .arg(ttl_ms)
                            .invoke_async(&mut connection)
                            .await
                    },
                )
                .await?;
            Ok(written == 1)
        })
    }

    fn remove<'a>(&'a self, keys: &'a StoreKeys, fingerprint: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let removed: i64 = self
                .run(
                    "remove",
                    Again::IfConnectionLost,
                    |mut connection| async move {
                        REMOVE
                            .key(keys.token())
                            .arg(fingerprint)
                            .invoke_async(&mut connection)
                            .await
                    },
                )
                .await?;
            Ok(removed == 1)
        })
    }

    fn lock<'a>(
        &'a self,
        keys: &'a StoreKeys,
        owner: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let Some(ttl_ms) = millis(ttl) else {
                return Ok(false);
            };
            // `OK` when taken, nil when held: redis reads them as a bool.
            let taken: bool = self
                .run("lock", Again::IfRefused, |mut connection| async move {
                    redis::cmd("SET")
                        .arg(keys.lock())
                        .arg(owner)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async(&mut connection)
                        .await
                })
                .await?;
            Ok(taken)
        })
    }

    fn renew_lock<'a>(
        &'a self,
        keys: &'a StoreKeys,
        owner: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let Some(ttl_ms) = millis(ttl) else {
                return Ok(false);
            };
            let renewed: i64 = self
                .run(
                    "renew_lock",
                    Again::IfConnectionLost,
                    |mut connection| async move {
                        RENEW
                            .key(keys.lock())
                            .arg(owner)
                            .arg(ttl_ms)
                            .invoke_async(&mut connection)
                            .await
                    },
                )
                .await?;
            Ok(renewed == 1)
        })
    }

    fn unlock<'a>(&'a self, keys: &'a StoreKeys, owner: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let _released: i64 = self
                .run(
                    "unlock",
                    Again::IfConnectionLost,
                    |mut connection| async move {
                        UNLOCK
                            .key(keys.lock())
                            .arg(owner)
                            .invoke_async(&mut connection)
                            .await
                    },
                )
                .await?;
            Ok(())
        })
    }

    fn back_off<'a>(&'a self, keys: &'a StoreKeys, duration: Duration) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let Some(duration_ms) = millis(duration) else {
                return Ok(());
            };
            let _set: i64 = self
                .run(
                    "back_off",
                    Again::IfConnectionLost,
                    |mut connection| async move {
                        BACK_OFF
                            .key(keys.backoff())
                            .arg(duration_ms)
                            .invoke_async(&mut connection)
                            .await
                    },
                )
                .await?;
            Ok(())
        })
    }
}

/// A `PTTL` answer as a duration: `None` for no key (-2), no expiry (-1)
/// or an expired one.
fn positive_ms(ms: i64) -> Option<Duration> {
    u64::try_from(ms)
        .ok()
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("RedisStore");
        if let Some(server) = &self.inner.server {
            debug.field("server", server);
        }
        debug.finish_non_exhaustive()
    }
}
