//! How a [`RedisStore`](super::RedisStore) reaches Redis: its [`Link`],
//! and the [`Connection`] each operation runs on.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Cmd, Pipeline, RedisFuture, Value};

use super::error::RedisStoreError;
use super::tls::redis_tls_ready;
use super::tls_link::{TlsConnection, TlsLink};

/// Where a store's operations go.
pub(super) enum Link {
    /// One server over TCP or a unix socket: redis' connection manager,
    /// built on the first operation (from `client`, with `config`), or
    /// given as is.
    Manager {
        client: Option<Box<(Client, ConnectionManagerConfig)>>,
        manager: OnceLock<ConnectionManager>,
    },
    /// One server over TLS (`rediss://`), on the crate's own handshake.
    Tls(Arc<TlsLink>),
    /// A Redis Cluster, through redis' async cluster client, set up on the
    /// first operation.
    #[cfg(feature = "redis-cluster")]
    Cluster {
        client: Box<redis::cluster::ClusterClient>,
        connection_timeout: Duration,
        response_timeout: Duration,
        connection: OnceLock<redis::cluster_async::ClusterConnection>,
        /// Over TLS, whose handshakes the `redis` crate makes.
        tls: bool,
    },
}

impl Link {
    /// A connection manager given as is.
    pub(super) fn manager(manager: ConnectionManager) -> Self {
        Link::Manager {
            client: None,
            manager: OnceLock::from(manager),
        }
    }

    /// Whether it is a Redis Cluster reached over TLS.
    pub(super) fn is_tls_cluster(&self) -> bool {
        match self {
            #[cfg(feature = "redis-cluster")]
            Link::Cluster { tls, .. } => *tls,
            _ => false,
        }
    }

    /// The connection of an operation, set up the first time (lazily: that
    /// connects nothing, but it spawns a task, so it needs a Tokio
    /// runtime).
    pub(super) fn connection(&self) -> Result<Connection, RedisStoreError> {
        match self {
            Link::Manager { client, manager } => {
                if let Some(manager) = manager.get() {
                    return Ok(Connection::Manager(manager.clone()));
                }
                let Some((client, config)) = client.as_deref() else {
                    return Err(RedisStoreError::new("the store has no connection manager"));
                };
                runtime()?;
                if matches!(
                    client.get_connection_info().addr(),
                    redis::ConnectionAddr::TcpTls { .. }
                ) {
                    redis_tls_ready()?;
                }
                let built = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                    .map_err(|source| {
                        RedisStoreError::with_source(
                            "could not set up the Redis connection manager",
                            source,
                        )
                    })?;
                // Two first operations at once may both build one; the
                // second is dropped before it connects.
                Ok(Connection::Manager(manager.get_or_init(|| built).clone()))
            }
            Link::Tls(link) => Ok(Connection::Tls(TlsConnection(link.clone()))),
            #[cfg(feature = "redis-cluster")]
            Link::Cluster {
                client,
                connection_timeout,
                response_timeout,
                connection,
                tls,
            } => {
                if let Some(connection) = connection.get() {
                    return Ok(Connection::Cluster(connection.clone()));
                }
                runtime()?;
                if *tls {
                    redis_tls_ready()?;
                }
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(*connection_timeout)
                    .set_response_timeout(*response_timeout);
                let built = client.get_pending_async_connection_with_config(config);
                Ok(Connection::Cluster(
                    connection.get_or_init(|| built).clone(),
                ))
            }
        }
    }
}

/// An error unless the caller runs on a Tokio runtime.
fn runtime() -> Result<(), RedisStoreError> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => Ok(()),
        Err(_) => Err(RedisStoreError::new(
            "RedisStore needs a Tokio runtime: run its operations on one",
        )),
    }
}

/// The connection one operation runs on.
#[derive(Clone)]
pub(super) enum Connection {
    Manager(ConnectionManager),
    Tls(TlsConnection),
    #[cfg(feature = "redis-cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Manager(connection) => connection.req_packed_command(cmd),
            Connection::Tls(connection) => connection.req_packed_command(cmd),
            #[cfg(feature = "redis-cluster")]
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Manager(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            Connection::Tls(connection) => connection.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "redis-cluster")]
            Connection::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Manager(connection) => connection.get_db(),
            Connection::Tls(connection) => connection.get_db(),
            #[cfg(feature = "redis-cluster")]
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

/// The timeouts of a store's connections (see the store's documentation).
#[derive(Clone, Copy, Debug)]
pub(super) struct Timeouts {
    pub(super) connection: Duration,
    pub(super) response: Duration,
}
