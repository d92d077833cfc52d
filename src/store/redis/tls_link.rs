//! [`TlsLink`]: the connection of a store on a `rediss://` URL, opened over
//! the crate's own TLS handshake and reopened after it breaks.

use std::io;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Cmd, Pipeline, RedisConnectionInfo, RedisFuture, Value};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::tls::Connector;

/// The wait after the first failed attempt to connect before the next
/// one; each further failure doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// The longest wait between two failed attempts to connect.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// One multiplexed connection over TLS, shared by every operation of a
/// store, as redis' `ConnectionManager` is for plain ones: opened on the
/// first command, and again on the next command after it broke or the
/// server closed it (noticed as the task that drives it ends, so the
/// command after a restart of Redis does not fail on the dead connection).
///
/// While Redis cannot be reached, attempts to connect are spaced out: after
/// `n` failed attempts in a row, none is made for [`backoff`]`(n)` (10 ms,
/// doubling, at most 1 s), and the operations in that time fail at once
/// without connecting. No operation waits for a backoff to end: each
/// either connects or fails at once, within the store's timeouts.
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

/// The open connection, if any, the number of the next one, and the
/// failed attempts since the last that succeeded.
#[derive(Default)]
struct State {
    current: Option<Open>,
    opened: u64,
    /// Failed attempts to connect in a row.
    failures: u32,
    /// No attempt to connect before this instant.
    retry_at: Option<Instant>,
    /// Attempts to connect so far.
    attempts: u64,
}

/// An open connection, its number, and the task that drives it.
struct Open {
    number: u64,
    connection: MultiplexedConnection,
    driver: JoinHandle<()>,
}

/// How long no attempt to connect is made after `failures` failed ones in
/// a row: 10 ms after the first, doubling, at most 1 s.
fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
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

    /// The open connection and its number, opening one if there is none
    /// (or the one there was has closed), unless the last attempts failed
    /// and the backoff after them has not passed. One caller opens it while
    /// the others wait for it.
    async fn connection(&self) -> redis::RedisResult<(u64, MultiplexedConnection)> {
        let mut state = self.state.lock().await;
        if let Some(open) = &state.current {
            if !open.driver.is_finished() {
                return Ok((open.number, open.connection.clone()));
            }
            // The server closed it, or it broke: its driver has ended.
            state.current = None;
        }
        let now = Instant::now();
        if let Some(retry_at) = state.retry_at
            && now < retry_at
        {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                format!(
                    "not connected to Redis at {} over TLS: the last {} attempts to connect \
                     failed, and the next is in {} ms",
                    self.server,
                    state.failures,
                    retry_at.duration_since(now).as_millis().max(1)
                ),
            )
            .into());
        }
        state.attempts += 1;
        let opened = match tokio::time::timeout(self.connection_timeout, self.open()).await {
            Ok(opened) => opened,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "could not connect to Redis at {} over TLS within {} ms",
                    self.server,
                    self.connection_timeout.as_millis()
                ),
            )
            .into()),
        };
        let (connection, driver) = match opened {
            Ok(opened) => opened,
            Err(error) => {
                state.failures = state.failures.saturating_add(1);
                state.retry_at = Some(Instant::now() + backoff(state.failures));
                return Err(error);
            }
        };
        state.failures = 0;
        state.retry_at = None;
        state.opened += 1;
        let number = state.opened;
        state.current = Some(Open {
            number,
            connection: connection.clone(),
            driver,
        });
        Ok((number, connection))
    }

    /// Attempts to connect so far.
    #[cfg(all(test, any(feature = "rustls", feature = "rustls-ring")))]
    async fn attempts(&self) -> u64 {
        self.state.lock().await.attempts
    }

    /// Connects, makes the handshake and sets the connection up (`AUTH`,
    /// `SELECT`): the connection and the task that drives it.
    async fn open(&self) -> redis::RedisResult<(MultiplexedConnection, JoinHandle<()>)> {
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
            .is_some_and(|open| open.number == number)
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

#[cfg(all(test, any(feature = "rustls", feature = "rustls-ring")))]
mod tests {
    use super::*;
    use crate::store::redis::tls::TlsSettings;

    #[test]
    fn the_backoff_doubles_from_10_ms_up_to_1_s() {
        let waits: Vec<u128> = (1..=9).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    /// A link to a loopback port where nothing listens: every attempt to
    /// connect is refused.
    fn refused_link() -> TlsLink {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .unwrap_or(1);
        TlsLink::new(
            String::from("127.0.0.1"),
            port,
            RedisConnectionInfo::default(),
            Connector::new(&TlsSettings::default()).unwrap(),
            Duration::from_millis(100),
            Duration::from_millis(125),
        )
    }

    /// Failed attempts to connect are spaced by the backoff, measured on
    /// paused time: the operations within it fail at once, without an
    /// attempt; the first after it makes one.
    #[tokio::test(start_paused = true)]
    async fn failed_attempts_to_connect_are_spaced_out() {
        let link = refused_link();
        assert!(link.connection().await.is_err());
        assert_eq!(link.attempts().await, 1);
        for failures in 1..=9 {
            let wait = backoff(failures);
            for _ in 0..3 {
                let error = link.connection().await.unwrap_err();
                assert!(error.to_string().contains("the next is in"), "{error}");
            }
            tokio::time::advance(wait - Duration::from_millis(1)).await;
            assert!(link.connection().await.is_err());
            assert_eq!(link.attempts().await, u64::from(failures));
            tokio::time::advance(Duration::from_millis(1)).await;
            let error = link.connection().await.unwrap_err();
            assert!(!error.to_string().contains("the next is in"), "{error}");
            assert_eq!(link.attempts().await, u64::from(failures) + 1);
        }
    }
}
