//! [`TlsLink`]: the connection of a store on a `rediss://` URL, opened over
//! the crate's own TLS handshake and reopened after it breaks.

use std::io;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisConnectionInfo, RedisFuture, Value};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::tls::Connector;

/// One multiplexed connection over TLS, shared by every operation of a
/// store, as redis' `ConnectionManager` is for plain ones: opened on the
/// first command, and again on the next command after it broke.
pub(super) struct TlsLink {
    host: String,
    port: u16,
    /// `host:port`, for errors.
    server: String,
    connection_info: RedisConnectionInfo,
    connector: Connector,
    connection_timeout: Duration,
    response_timeout: Duration,
    state: Mutex<State>,
}

/// The open connection, if any, and the number of the next one.
#[derive(Default)]
struct State {
    current: Option<(u64, MultiplexedConnection)>,
    opened: u64,
}

impl TlsLink {
    pub(super) fn new(
        host: String,
        port: u16,
        connection_info: RedisConnectionInfo,
        connector: Connector,
        connection_timeout: Duration,
        response_timeout: Duration,
    ) -> Self {
        let server = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Self {
            host,
            port,
            server,
            connection_info,
            connector,
            connection_timeout,
            response_timeout,
            state: Mutex::new(State::default()),
        }
    }

    /// `host:port`.
    pub(super) fn server(&self) -> &str {
        &self.server
    }

    /// The open connection and its number, opening one if there is none.
    /// One caller opens it while the others wait for it.
    async fn connection(&self) -> redis::RedisResult<(u64, MultiplexedConnection)> {
        let mut state = self.state.lock().await;
        if let Some((number, connection)) = &state.current {
            return Ok((*number, connection.clone()));
        }
        let connection = match tokio::time::timeout(self.connection_timeout, self.open()).await {
            Ok(opened) => opened?,
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "could not connect to Redis at {} over TLS within {} ms",
                        self.server,
                        self.connection_timeout.as_millis()
                    ),
                )
                .into());
            }
        };
        state.opened += 1;
        let number = state.opened;
        state.current = Some((number, connection.clone()));
        Ok((number, connection))
    }

    /// Connects, makes the handshake and sets the connection up (`AUTH`,
    /// `SELECT`).
    async fn open(&self) -> redis::RedisResult<MultiplexedConnection> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        let config = AsyncConnectionConfig::new().set_response_timeout(Some(self.response_timeout));
        self.connector
            .open(&self.host, &self.server, tcp, &self.connection_info, config)
            .await
    }

    /// Drops connection `number` if it is still the open one, so that the
    /// next command opens a new one.
    async fn forget(&self, number: u64) {
        let mut state = self.state.lock().await;
        if state
            .current
            .as_ref()
            .is_some_and(|(current, _)| *current == number)
        {
            state.current = None;
        }
    }

    /// Sends `cmd` on the open connection.
    async fn send(&self, cmd: &Cmd) -> redis::RedisResult<Value> {
        let (number, mut connection) = self.connection().await?;
        let result = connection.req_packed_command(cmd).await;
        self.check(number, &result).await;
        result
    }

    /// Sends `pipeline` on the open connection.
    async fn send_pipeline(
        &self,
        pipeline: &Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisResult<Vec<Value>> {
        let (number, mut connection) = self.connection().await?;
        let result = connection
            .req_packed_commands(pipeline, offset, count)
            .await;
        self.check(number, &result).await;
        result
    }

    /// After a failure that leaves connection `number` unusable (dropped,
    /// reset, a broken stream), makes the next command open a new one.
    async fn check<T>(&self, number: u64, result: &redis::RedisResult<T>) {
        if let Err(error) = result
            && (error.is_unrecoverable_error() || error.is_connection_dropped())
        {
            self.forget(number).await;
        }
    }
}

/// A handle on a [`TlsLink`], for redis' commands, scripts and pipelines.
#[derive(Clone)]
pub(super) struct TlsConnection(pub(super) std::sync::Arc<TlsLink>);

impl ConnectionLike for TlsConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.0.send(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(self.0.send_pipeline(pipeline, offset, count))
    }

    fn get_db(&self) -> i64 {
        self.0.connection_info.db()
    }
}
