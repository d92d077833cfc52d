//! [`RedisStore`]: the [`TokenStore`] on Redis 6+ or Valkey.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, RedisResult, Script, Value};

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
/// The longest time to live or backoff written, about a century: Redis
/// refuses expiry times that overflow, and Lua numbers are exact below 2^53.
const MAX_TTL_MS: u64 = 100 * 365 * 24 * 3600 * 1000;

/// The fields of the token's hash.
const FIELDS: [&str; 4] = ["iat", "exp", "fp", "v"];

/// `save`: KEYS[1] the token's hash; ARGV the new `iat`, `exp`, `fp`, `v`
/// and the time to live in milliseconds. Writes unless the stored entry is
/// one [`RedisStore::load`] would read (both numbers decimal `u64`, `fp`
/// UTF-8, `v` present) and was issued at the same time or later; an entry
/// `load` reads as a miss is replaced. Numbers are compared as decimal
/// strings, digit by digit, so the whole `u64` range compares exactly (Lua
/// numbers are doubles).
const SAVE_LUA: &str = r"
local function at_least(a, b)
  if #a ~= #b then return #a > #b end
  for i = 1, #a do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x > y end
  end
  return true
end
local function decimal(value)
  if not value then return nil end
  local digits = string.match(value, '^0*(%d+)$')
  if digits and at_least('18446744073709551615', digits) then return digits end
  return nil
end
local function utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = string.byte(s, i)
    local len, lo, hi = 1, 0x80, 0xBF
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then len = 3
    elseif c >= 0xF0 and c <= 0xF4 then len = 4
    else return false end
    if c == 0xE0 then lo = 0xA0 elseif c == 0xED then hi = 0x9F
    elseif c == 0xF0 then lo = 0x90 elseif c == 0xF4 then hi = 0x8F end
    if i + len - 1 > n then return false end
    for j = i + 1, i + len - 1 do
      local d = string.byte(s, j)
      if d < lo or d > hi then return false end
      lo, hi = 0x80, 0xBF
    end
    i = i + len
  end
  return true
end
local stored = redis.call('HMGET', KEYS[1], 'iat', 'exp', 'fp', 'v')
local iat = decimal(stored[1])
if iat and decimal(stored[2]) and stored[3] and utf8(stored[3]) and stored[4]
    and at_least(iat, ARGV[1]) then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'iat', ARGV[1], 'exp', ARGV[2], 'fp', ARGV[3], 'v', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
";

/// `remove`: KEYS[1] the token's hash; ARGV[1] the fingerprint. Deletes the
/// entry only if it holds that fingerprint.
const REMOVE_LUA: &str = r"
if redis.call('HGET', KEYS[1], 'fp') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// `unlock`: KEYS[1] the lock; ARGV[1] the owner. Deletes the lock only if
/// that owner holds it.
const UNLOCK_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// `back_off`: KEYS[1] the backoff key; ARGV[1] the duration in
/// milliseconds. Sets it unless it already has at least that long to live,
/// so a backoff is never shortened; a key without expiry (never written by
/// this store) is given one rather than blocking the fleet forever. PTTL
/// and SET are in every Redis since 2.6, unlike `SET … GT` (none) or
/// `PEXPIRE … GT` (7.0).
const BACK_OFF_LUA: &str = r"
local remaining = redis.call('PTTL', KEYS[1])
if remaining >= tonumber(ARGV[1]) then
  return 0
end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return 1
";

static SAVE: LazyLock<Script> = LazyLock::new(|| Script::new(SAVE_LUA));
static REMOVE: LazyLock<Script> = LazyLock::new(|| Script::new(REMOVE_LUA));
static UNLOCK: LazyLock<Script> = LazyLock::new(|| Script::new(UNLOCK_LUA));
static BACK_OFF: LazyLock<Script> = LazyLock::new(|| Script::new(BACK_OFF_LUA));

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
/// - `…:lock`: the exchange lock, `SET NX PX`, holding its owner's id and
///   released only by that owner.
/// - `…:backoff`: present while the fleet backs off; a backoff is never
///   shortened.
///
/// Every operation is one round trip and atomic: those that read and write
/// are Lua scripts (`EVALSHA`, loaded again after a restart of Redis). All
/// keys of a client share one hash tag, so this works on one Redis Cluster
/// slot too, through a connection manager that routes commands.
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
            let (fields, backoff): (Vec<Option<Vec<u8>>>, i64) = self
                .run(
                    "load",
                    Again::IfConnectionLost,
                    |mut connection| async move {
                        redis::pipe()
                            .cmd("HMGET")
                            .arg(keys.token())
                            .arg(&FIELDS[..])
                            .cmd("PTTL")
                            .arg(keys.backoff())
                            .query_async(&mut connection)
                            .await
                    },
                )
                .await?;
            Ok(Snapshot {
                token: parse_token(fields),
                backoff: u64::try_from(backoff)
                    .ok()
                    .filter(|&ms| ms > 0)
                    .map(Duration::from_millis),
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
            let reply: Value = self
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
            match reply {
                Value::Nil => Ok(false),
                Value::Okay => Ok(true),
                Value::SimpleString(status) if status == "OK" => Ok(true),
                _ => Err(RedisStoreError::new("lock: unexpected reply to SET NX").into()),
            }
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

/// A duration in whole milliseconds for `PX`/`PEXPIRE`: `None` for zero,
/// at least 1 otherwise, at most [`MAX_TTL_MS`].
fn millis(duration: Duration) -> Option<u64> {
    if duration.is_zero() {
        return None;
    }
    let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    Some(ms.clamp(1, MAX_TTL_MS))
}

/// The token in the fields `iat`, `exp`, `fp`, `v` of its hash; `None` if
/// one is missing or malformed.
fn parse_token(fields: Vec<Option<Vec<u8>>>) -> Option<StoredToken> {
    let mut fields = fields.into_iter();
    let mut next = || fields.next().flatten();
    let number = |bytes: Vec<u8>| -> Option<u64> {
        if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(&bytes).ok()?.parse().ok()
    };
    let issued_at_ms = number(next()?)?;
    let expires_at_ms = number(next()?)?;
    let fingerprint = String::from_utf8(next()?).ok()?;
    let sealed = next()?;
    Some(StoredToken {
        issued_at_ms,
        expires_at_ms,
        fingerprint,
        sealed,
    })
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

/// What went wrong in a [`RedisStore`], the source of its [`StoreError`].
#[derive(Debug)]
struct RedisStoreError {
    message: String,
    source: Option<RedisError>,
}

impl RedisStoreError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    fn with_source(message: impl Into<String>, source: RedisError) -> Self {
        Self {
            message: message.into(),
            source: Some(source),
        }
    }

    fn operation(operation: &'static str, source: RedisError) -> Self {
        let what = if source.is_timeout() {
            "Redis did not answer in time"
        } else if source.is_connection_refusal() || source.is_connection_dropped() {
            "no connection to Redis"
        } else {
            "Redis refused or failed it"
        };
        Self::with_source(format!("{operation}: {what}"), source)
    }
}

impl fmt::Display for RedisStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The cause is not repeated here: it is `source()`.
        f.write_str(&self.message)
    }
}

impl StdError for RedisStoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_ref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}

impl From<RedisStoreError> for StoreError {
    fn from(error: RedisStoreError) -> Self {
        StoreError::new(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(values: [Option<&[u8]>; 4]) -> Vec<Option<Vec<u8>>> {
        values.iter().map(|v| v.map(<[u8]>::to_vec)).collect()
    }

    #[test]
    fn complete_fields_are_a_token() {
        let token = parse_token(fields([
            Some(b"10"),
            Some(b"20"),
            Some(b"fp"),
            Some(b"\0\xffsealed"),
        ]));
        assert_eq!(
            token,
            Some(StoredToken {
                issued_at_ms: 10,
                expires_at_ms: 20,
                fingerprint: "fp".to_owned(),
                sealed: b"\0\xffsealed".to_vec(),
            })
        );
    }

    #[test]
    fn missing_or_malformed_fields_are_a_miss() {
        let cases = [
            fields([None, Some(b"20"), Some(b"fp"), Some(b"v")]),
            fields([Some(b"10"), None, Some(b"fp"), Some(b"v")]),
            fields([Some(b"10"), Some(b"20"), None, Some(b"v")]),
            fields([Some(b"10"), Some(b"20"), Some(b"fp"), None]),
            fields([Some(b"ten"), Some(b"20"), Some(b"fp"), Some(b"v")]),
            fields([Some(b"-1"), Some(b"20"), Some(b"fp"), Some(b"v")]),
            fields([Some(b"+1"), Some(b"20"), Some(b"fp"), Some(b"v")]),
            fields([Some(b""), Some(b"20"), Some(b"fp"), Some(b"v")]),
            fields([
                Some(b"10"),
                Some(b"99999999999999999999"),
                Some(b"fp"),
                Some(b"v"),
            ]),
            fields([Some(b"10"), Some(b"20"), Some(b"\xff"), Some(b"v")]),
            Vec::new(),
        ];
        for case in cases {
            assert_eq!(parse_token(case.clone()), None, "{case:?}");
        }
    }

    #[test]
    fn durations_become_milliseconds_for_px() {
        assert_eq!(millis(Duration::ZERO), None);
        assert_eq!(millis(Duration::from_nanos(1)), Some(1));
        assert_eq!(millis(Duration::from_millis(1500)), Some(1500));
        assert_eq!(millis(Duration::MAX), Some(MAX_TTL_MS));
    }

    #[test]
    fn debug_shows_no_password() {
        let store = RedisStore::open("redis://user:hunter2@redis.internal:6380/2");
        let store = match store {
            Ok(store) => store,
            Err(error) => panic!("{error}"),
        };
        let debug = format!("{store:?}");
        assert!(debug.contains("redis.internal:6380"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(!debug.contains("user"), "{debug}");
    }

    #[test]
    fn a_bad_url_says_what_is_expected() {
        for url in ["http://localhost", "not a url", "redis://host:99999"] {
            let error = match RedisStore::open(url) {
                Ok(store) => panic!("{url} opened {store:?}"),
                Err(error) => error,
            };
            let message = error.to_string();
            assert!(message.contains("invalid Redis URL"), "{message}");
            assert!(message.contains("redis://"), "{message}");
            assert!(error.source().is_some());
        }
    }

    #[test]
    fn an_operation_outside_a_runtime_is_an_error() {
        let store = RedisStore::open("redis://127.0.0.1:1");
        let store = match store {
            Ok(store) => store,
            Err(error) => panic!("{error}"),
        };
        let error = match store.manager() {
            Ok(_) => panic!("built a manager without a runtime"),
            Err(error) => error,
        };
        assert!(error.to_string().contains("Tokio runtime"), "{error}");
    }
}
