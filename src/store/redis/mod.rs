//! [`RedisStore`]: the [`TokenStore`](super::TokenStore) on Redis 6+ or Valkey, one server or
//! a Redis Cluster, over TCP, TLS or a unix socket.

mod builder;
mod error;
mod link;
mod operations;
mod scripts;
#[cfg(test)]
mod tests;
mod tls;
mod tls_link;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisResult, Value};

pub use self::builder::RedisStoreBuilder;
use self::error::RedisStoreError;
use self::link::{Connection, Link};
use self::operations::RetryWhen;
pub use self::tls::RedisTls;
use super::StoreError;

/// Attempts to reconnect after the first one fails, within one reconnection:
/// none, so that an operation fails at once while Redis is down (the
/// manager's retries are spaced by sleeps); the next operation starts a new
/// reconnection, and [`RedisStore::run`] gives each operation one more try.
const RECONNECT_RETRIES: usize = 0;

/// The shared token store on Redis 6 or later, or Valkey (feature `redis`):
/// one server, over TCP, TLS (`rediss://`) or a unix socket; or a Redis
/// Cluster (feature `redis-cluster`).
///
/// The public API takes and gives types of the [`redis`](https://docs.rs/redis/1)
/// crate, major version 1 (`redis::Client`,
/// `redis::aio::ConnectionManager`, `redis::aio::ConnectionManagerConfig`):
/// use the same major version in your own `Cargo.toml` to pass them.
///
/// # What it stores
///
/// For each client (see [`StoreKeys`](super::StoreKeys)):
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
/// - `…:backoff`: present while the fleet backs off, holding what the
///   holder's exchange failed with (`server_error`, `timeout`, …); a
///   backoff is never shortened.
///
/// Every operation is one round trip and atomic: those that read and write
/// are Lua scripts (`EVALSHA`, loaded again after a restart of Redis). All
/// keys of a client share one hash tag (`{…}`), so on a Redis Cluster they
/// sit on one slot, on one master: each script and the `MULTI`/`EXEC` of a
/// load run on that master alone.
///
/// # TLS
///
/// A `rediss://` URL (or `valkeys://`) connects over TLS, with the stack of
/// the crate's TLS features ([`RedisTls`]): rustls with aws-lc-rs
/// (`rustls`) or ring (`rustls-ring`), each given its provider explicitly
/// (no process-wide default `CryptoProvider` is needed or installed) and
/// verifying the server against the platform's roots; or the platform's
/// TLS (`native-tls`). The server's certificate is always checked, against
/// its host name or IP address. [`RedisStore::builder`] adds roots (a
/// private CA) and a client certificate (mutual TLS):
///
/// ```no_run
/// # async fn run(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<(), routera_auth::store::StoreError> {
/// use routera_auth::store::RedisStore;
///
/// let store = RedisStore::builder("rediss://:password@redis.internal:6380/0")
///     .add_root_certificates(ca)
///     .client_certificate(cert, key)
///     .connect()
///     .await?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
///
/// A handshake that fails (a certificate not trusted, a client certificate
/// missing or refused) is a failed operation whose error says why and what
/// to give; the provider then exchanges on its own, as for any failure of
/// the store.
///
/// # Redis Cluster
///
/// `RedisStore::cluster` (feature `redis-cluster`) takes the URLs of one or
/// more nodes and follows the cluster's slots, redirections and failovers
/// with the `redis` crate's async cluster client.
///
/// ## A cluster over TLS
///
/// With `rediss://` node URLs (every node's, with a TLS feature of this
/// crate) the cluster is reached over TLS, as managed services with
/// in-transit encryption require (Amazon MemoryDB, ElastiCache in cluster
/// mode, Azure Cache for Redis Enterprise with the OSS cluster policy).
/// `RedisStore::cluster_builder` takes roots and a client certificate as
/// [`RedisStore::builder`] does:
///
/// ```no_run
/// # #[cfg(feature = "redis-cluster")]
/// # fn run(ca_pem: &[u8]) -> Result<(), routera_auth::store::StoreError> {
/// // Features `redis-cluster` and `rustls`.
/// use routera_auth::store::RedisStore;
///
/// // Once, when the application starts (see below).
/// let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
/// let store = RedisStore::cluster_builder(["rediss://:password@cluster.internal:6379"])
///     .add_root_certificates(ca_pem)
///     .build()?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
///
/// The `redis` crate's cluster client opens each node's connection itself
/// and gives no way to pass it a TLS configuration or a handshake of this
/// crate's, so a cluster's TLS is that crate's, and differs from one
/// server's:
///
/// - **Which TLS.** rustls when the `rustls` or `rustls-ring` feature is
///   on, else native-tls (the platform's TLS, which needs nothing
///   process-wide). [`RedisStoreBuilder::tls`] may name a rustls stack in
///   a rustls build, and no other.
/// - **rustls needs a process-wide provider.** The `redis` crate builds
///   each connection's rustls configuration on rustls' process-wide default
///   `CryptoProvider`, which it takes no other way, and rustls panics (or
///   installs one for the whole process, when its features name a single
///   provider) if none is installed. This crate never installs one: until
///   the application has (`rustls::crypto::aws_lc_rs::default_provider()
///   .install_default()`, or `rustls::crypto::ring::default_provider()`
///   with `rustls-ring`, once at start), every operation of a cluster
///   store over TLS fails, without connecting, with a [`StoreError`] that
///   says so; the provider then exchanges on its own. The provider it
///   installs is the one used, whichever rustls [`RedisTls`] is named.
/// - **Roots.** The roots given with
///   [`add_root_certificates`](RedisStoreBuilder::add_root_certificates)
///   replace the platform's roots rather than add to them. Without any,
///   the platform's roots are used, except in a build with both native-tls
///   and a rustls feature, where the `redis` crate's rustls loads none: the
///   builder then asks for the roots.
/// - **native-tls alone takes no certificates.** The `redis` crate gives a
///   cluster's certificates to rustls only: with `native-tls` alone, roots
///   or a client certificate make the builder fail; trust the CA in the
///   platform's store instead, or turn on `rustls`.
/// - **Certificates name what the nodes announce.** The seed URLs are only
///   where the client starts: it connects to each node at the endpoint the
///   cluster announces (`CLUSTER SLOTS`), and verifies that node's
///   certificate against it. A cluster that announces IP addresses (Redis'
///   default) needs certificates that name those addresses; one whose
///   certificates name a host must announce that host name
///   (`cluster-announce-hostname` and `cluster-preferred-endpoint-type
///   hostname`, Redis 7), which is what managed services with TLS do. A
///   seed URL that names the host does not help: verification never uses
///   it for the other nodes, and this crate offers no switch that skips the
///   host name check. When the names do not match, operations fail as for
///   a cluster that cannot be reached.
/// - **Cost of a connection.** On rustls without native-tls, the `redis`
///   crate reads and parses the platform's roots for each connection it
///   opens, roots given or not (a few milliseconds; tens in a debug
///   build): [`RedisStoreBuilder::connect`] opens the connections to every
///   master before the first operation needs them.
/// - **Errors.** The cluster client reports a failed handshake as "no
///   connection to a node", without its cause: [`RedisStoreBuilder::connect`]
///   lists what to check.
/// - **Reconnection** is the cluster client's, over TLS as over TCP.
///
/// # Connections and failures
///
/// One multiplexed connection carries every operation (one per master on a
/// cluster); clones of the store share it. It is opened on the first
/// operation (except with [`RedisStore::connect`]), which must run on a
/// Tokio runtime, and reopened by itself after Redis restarts or the
/// connection drops:
///
/// - a command fails if Redis does not answer it within
///   [`RedisStore::RESPONSE_TIMEOUT`] (125 ms: a frozen or overloaded
///   server), and opening a connection (TCP, the TLS handshake and the
///   authentication) fails after [`RedisStore::CONNECTION_TIMEOUT`]
///   (100 ms); [`RedisStoreBuilder`] sets both;
/// - a lost connection is reopened at once, with a single attempt; while
///   Redis is down each operation fails at once (a refused connection) or
///   after the connection timeout (an unreachable host), and makes a new
///   attempt, so operations succeed again as soon as Redis is back;
/// - over TLS on one server (`rediss://`), whose connection is this
///   crate's own: a connection the server closed (a restart, `CLIENT
///   KILL`, an idle timeout) is noticed as it closes, so the next command
///   goes on a new connection rather than failing on the dead one; and
///   attempts to reconnect are spaced out while Redis cannot be reached:
///   10 ms after a failed attempt, doubling with each failure in a row, at
///   most 1 s. An operation within that backoff fails at once without
///   connecting ("the next is in … ms"); no operation waits for it to
///   end. So a fleet's replicas do not each hammer a Redis that is down,
///   and resume within a second of its return;
/// - an operation that could not be sent because the connection was lost
///   or refused is tried once more, on the new connection, so the first
///   operation after a restart of Redis succeeds. The exchange lock is
///   tried again only if the connection was refused: a `SET NX` that
///   Redis may have applied is not repeated.
///
/// **The timeouts nest.** The provider bounds each store operation with
/// [`SharedCache::operation_timeout`](super::SharedCache::operation_timeout)
/// (250 ms by default) and exchanges on its own when it passes. Inside it,
/// an operation whose connection has just dropped opens a new one (100 ms
/// at most) and waits for the answer (125 ms at most): 225 ms, within the
/// 250 ms, so the store's own error ("did not answer in time", "no
/// connection to Redis") is what the log shows. On a cluster, a command's
/// redirections and reconnections together are bounded by the same
/// 225 ms. If you lower the operation timeout, lower these two with
/// [`RedisStoreBuilder`] so that their sum stays within it. Each failure
/// is a [`StoreError`] with the Redis error as its source.
///
/// # Starting while Redis is down
///
/// [`RedisStore::open`], [`RedisStore::new`] and
/// [`RedisStoreBuilder::build`] do not connect: the application starts
/// whether Redis is up or not, and shares tokens as soon as it is
/// reachable. [`RedisStore::connect`] and [`RedisStoreBuilder::connect`]
/// connect and check the server first, for applications that would rather
/// not start without it.
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
/// Its `Debug` output names the server's host and port (or socket path,
/// or the cluster's nodes), never a user name or password.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Where the store connects, for `Debug` and errors: host and port,
    /// socket path or nodes, without credentials. `None` for a manager
    /// given as is.
    server: Option<String>,
    /// How it reaches Redis.
    link: Link,
}

impl RedisStore {
    /// How long opening a connection may take by default (TCP, the TLS
    /// handshake and the authentication): 100 ms.
    pub const CONNECTION_TIMEOUT: Duration = Duration::from_millis(100);

    /// How long a command may wait for its answer by default: 125 ms. With
    /// [`RedisStore::CONNECTION_TIMEOUT`], 225 ms: within the default
    /// operation timeout of [`SharedCache`](super::SharedCache), 250 ms.
    pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(125);

    /// A store on the server `url` names, connected on its first operation:
    /// it does not need Redis to be up.
    ///
    /// `url` is `redis://[[user]:password@]host[:port][/db]`,
    /// `rediss://…` for TLS (with a TLS feature of this crate: see
    /// [TLS](RedisStore#tls)), or
    /// `redis+unix:///path/to/redis.sock[?db=N&user=U&pass=P]`
    /// (`valkey://`, `valkeys://` and `valkey+unix://` too).
    /// [`RedisStore::builder`] takes the same URLs, with certificates and
    /// timeouts.
    ///
    /// # Errors
    ///
    /// A malformed or unsupported URL, or `rediss://` without a TLS
    /// feature. The error does not repeat the URL, which may hold a
    /// password.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).build()
    }

    /// A builder of a store on the server `url` names (as for
    /// [`RedisStore::open`]), for extra root certificates, a client
    /// certificate, the TLS stack and the timeouts.
    pub fn builder(url: &str) -> RedisStoreBuilder {
        RedisStoreBuilder::server(url)
    }

    /// A store on a Redis Cluster (feature `redis-cluster`), reached
    /// through `nodes` (`redis://` URLs of one or more of its nodes, or
    /// `rediss://` ones for TLS: see [a cluster over
    /// TLS](RedisStore#a-cluster-over-tls); the others are found from
    /// them), connected on its first operation.
    ///
    /// # Errors
    ///
    /// No node, a malformed URL, URLs that mix `redis://` and `rediss://`,
    /// or `rediss://` ones in a build without a TLS feature.
    #[cfg(feature = "redis-cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
    pub fn cluster<I>(nodes: I) -> Result<Self, StoreError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        Self::cluster_builder(nodes).build()
    }

    /// A builder of a store on a Redis Cluster (see
    /// [`RedisStore::cluster`]), for its timeouts, and over TLS its roots
    /// and client certificate.
    #[cfg(feature = "redis-cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
    pub fn cluster_builder<I>(nodes: I) -> RedisStoreBuilder
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        RedisStoreBuilder::cluster(
            nodes
                .into_iter()
                .map(|node| node.as_ref().to_owned())
                .collect(),
        )
    }

    /// A store on the server of `client`, connected on its first operation
    /// with [`RedisStore::manager_config`]: it does not need Redis to be up.
    ///
    /// A `client` for a TLS address connects with the `redis` crate's own
    /// TLS, as a cluster does (see [a cluster over
    /// TLS](RedisStore#a-cluster-over-tls): with rustls, on rustls'
    /// process-wide default provider, which the application must have
    /// installed, or operations fail with an error that says so);
    /// [`RedisStore::open`] and [`RedisStore::builder`] use this crate's.
    pub fn new(client: Client) -> Self {
        Self {
            inner: Arc::new(Inner {
                server: Some(client.get_connection_info().addr().to_string()),
                link: Link::Manager {
                    client: Some(Box::new((client, Self::manager_config()))),
                    manager: std::sync::OnceLock::new(),
                },
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
    /// answer: at once for a refused connection, after the connection
    /// timeout (100 ms) for a host that does not answer.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// A store on `manager`, as it was configured (its timeouts and
    /// reconnection included; [`RedisStore::manager_config`] gives this
    /// store's settings to start from).
    pub fn from_manager(manager: ConnectionManager) -> Self {
        Self {
            inner: Arc::new(Inner {
                server: None,
                link: Link::manager(manager),
            }),
        }
    }

    /// The settings of the connection manager [`RedisStore::open`],
    /// [`RedisStore::new`] and [`RedisStore::connect`] build for a server
    /// over TCP or a unix socket: [`RedisStore::RESPONSE_TIMEOUT`] to answer
    /// a command, [`RedisStore::CONNECTION_TIMEOUT`] to connect, and a lost
    /// connection reopened with a single attempt (the next operation makes
    /// the next one).
    pub fn manager_config() -> ConnectionManagerConfig {
        ConnectionManagerConfig::new()
            .set_response_timeout(Some(Self::RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(Self::CONNECTION_TIMEOUT))
            .set_number_of_retries(RECONNECT_RETRIES)
    }

    /// The connection of the next operation.
    fn connection(&self) -> Result<Connection, StoreError> {
        Ok(self.inner.link.connection()?)
    }

    /// Connects and checks that Redis answers `PING`.
    async fn check(&self) -> Result<(), StoreError> {
        let mut connection = self.connection()?;
        let reply: RedisResult<Value> = redis::cmd("PING").query_async(&mut connection).await;
        let Err(source) = reply else {
            return Ok(());
        };
        let server = self.inner.server.as_deref().unwrap_or("the given address");
        let unreachable = source.is_io_error()
            || source.is_timeout()
            || source.kind() == redis::ErrorKind::ClusterConnectionNotFound;
        let message = if unreachable && self.inner.link.is_tls_cluster() {
            // The cluster client does not say why a handshake failed.
            format!(
                "could not reach Redis at {server}: check that the nodes run and that the URLs \
                 are right, that the nodes' certificates are trusted (add_root_certificates) \
                 and name the endpoints the nodes announce, and the client certificate if they \
                 ask for one (see RedisStore's documentation, a cluster over TLS)"
            )
        } else if source.kind() == redis::ErrorKind::ClusterConnectionNotFound {
            format!(
                "could not reach Redis at {server}: no node answered; check that they run and \
                 that the URLs are right, or use RedisStore::open to start without it"
            )
        } else if source.is_io_error() {
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

    /// Runs `command` on the connection, once more if it could not be sent
    /// (see the type's documentation), and names `operation` in its error.
    async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        again: RetryWhen,
        command: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(Connection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let connection = self.connection()?;
        let error = match command(connection.clone()).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let error = if again.applies(&error) {
            match command(connection).await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            }
        } else {
            error
        };
        Err(RedisStoreError::operation(operation, error).into())
    }
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
