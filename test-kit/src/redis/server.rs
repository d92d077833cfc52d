//! [`RedisServer`]: a real `redis-server` for tests, benchmarks and
//! examples of the Redis store.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{AsyncConnectionConfig, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// What the error says when `redis-server` cannot be run.
const NOT_FOUND: &str = "redis-server not found on PATH: install the Debian package \
                         `redis-server` (apt-get install -y redis-server)";
/// How long [`RedisServer::start`] and [`RedisServer::restart`] wait for
/// the server to answer.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one `PING` of the readiness check may take.
const PING_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a command of [`RedisServer::flush_all`] or [`RedisServer::dump`]
/// may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest socket path that fits `sockaddr_un` on Linux and macOS.
const MAX_SOCKET_PATH: usize = 103;

/// Distinguishes the directories of the servers of one process.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A `redis-server` of its own, on a unix socket in a fresh temporary
/// directory (feature `redis`).
///
/// [`RedisServer::start`] runs `redis-server` from `PATH` (Debian package
/// `redis-server`; Redis 6 or later, or Valkey installed under that name)
/// with no TCP port (`--port 0`), no persistence (`--save ""`,
/// `--appendonly no`), its socket and log in a new directory under
/// [`std::env::temp_dir`], and waits until it answers `PING`. Nothing
/// listens beyond that socket.
///
/// It can then be broken the ways a production Redis breaks:
/// [`kill`](RedisServer::kill) (`SIGKILL`), [`restart`](RedisServer::restart)
/// (a new, empty server on the same socket),
/// [`freeze`](RedisServer::freeze) and [`thaw`](RedisServer::thaw)
/// (`SIGSTOP`, `SIGCONT`), [`flush_all`](RedisServer::flush_all); and read
/// back raw with [`dump`](RedisServer::dump), to scan what a store wrote.
///
/// Dropping it kills the server and removes the directory. Its methods take
/// `&self`, so it can be shared (in an `Arc`) with tasks under load. It
/// talks to real sockets: use it on real time, not with Tokio's paused
/// time.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use routera_auth::store::RedisStore;
/// use routera_auth_test::RedisServer;
///
/// let redis = RedisServer::start().await?;
/// let store = RedisStore::connect(&redis.url()).await?;
/// redis.kill()?;
/// // … operations of `store` fail now …
/// redis.restart().await?;
/// // … and succeed again, on an empty server.
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
pub struct RedisServer {
    dir: PathBuf,
    socket: PathBuf,
    /// The loopback TCP ports picked for it (none for a plain server).
    ports: Vec<u16>,
    /// Its arguments after the kit's own.
    args: Vec<String>,
    process: Mutex<Process>,
}

/// How a server of another kit ([`RedisTlsServer`](super::RedisTlsServer),
/// [`RedisCluster`](super::RedisCluster)) starts: files to write in its
/// directory (certificates), free loopback ports to pick, and the
/// arguments that use them.
pub(super) struct Launch {
    /// Written in the server's directory (its working directory) first.
    pub(super) files: Vec<(&'static str, Vec<u8>)>,
    /// How many free loopback TCP ports to pick.
    pub(super) ports: usize,
    /// The arguments after the kit's own, given the ports picked.
    pub(super) args: Arguments,
}

/// A server's arguments after the kit's own, given the ports picked.
pub(super) type Arguments = Box<dyn Fn(&[u16]) -> Vec<String> + Send + Sync>;

/// How many times a server is started on newly picked ports when another
/// process took one between the pick and the start.
const PORT_ATTEMPTS: usize = 5;

/// The running server, if any.
struct Process {
    child: Option<Child>,
    frozen: bool,
}

impl RedisServer {
    /// Starts a server and waits (up to 10 s) until it answers `PING`.
    ///
    /// # Errors
    ///
    /// `redis-server` is not on `PATH` (the error names the Debian package
    /// to install), the temporary directory cannot be made, or the server
    /// exits or does not answer in time (the error quotes its log).
    pub async fn start() -> io::Result<RedisServer> {
        Self::start_with(Launch {
            files: Vec::new(),
            ports: 0,
            args: Box::new(|_| Vec::new()),
        })
        .await
    }

    /// Starts a server as `launch` says, on newly picked ports if one was
    /// taken in between.
    pub(super) async fn start_with(launch: Launch) -> io::Result<RedisServer> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let ports = free_ports(launch.ports)?;
            let dir = make_dir()?;
            for (name, contents) in &launch.files {
                fs::write(dir.join(name), contents)?;
            }
            let socket = dir.join("redis.sock");
            let server = RedisServer {
                dir,
                socket,
                args: (launch.args)(&ports),
                ports,
                process: Mutex::new(Process {
                    child: None,
                    frozen: false,
                }),
            };
            if server.socket.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "the socket path {} is too long for a unix socket: set TMPDIR to a \
                         shorter directory",
                        server.socket.display()
                    ),
                ));
            }
            match server.launch().await {
                Ok(()) => return Ok(server),
                Err(error)
                    if attempt < PORT_ATTEMPTS
                        && !server.ports.is_empty()
                        && error.to_string().contains("already in use") => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// The server's directory, its working directory.
    #[cfg(feature = "redis-cluster")]
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The loopback TCP ports picked for the server.
    pub(super) fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The URL of the server, `redis+unix:///…/redis.sock`, for
    /// `routera_auth::store::RedisStore::open` (feature `redis` of
    /// `routera-auth`) or `redis::Client::open`.
    pub fn url(&self) -> String {
        let mut url = String::from("redis+unix://");
        for &byte in self.socket.as_os_str().as_encoded_bytes() {
            if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
                url.push(char::from(byte));
            } else {
                url.push_str(&format!("%{byte:02X}"));
            }
        }
        url
    }

    /// The path of the server's unix socket.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// The process id of the running server; `None` after
    /// [`kill`](RedisServer::kill).
    pub fn pid(&self) -> Option<u32> {
        self.process().child.as_ref().map(Child::id)
    }

    /// Kills the server with `SIGKILL` and reaps it, like a crash: clients
    /// see their connections drop and new ones refused. Nothing happens if
    /// it is not running.
    ///
    /// # Errors
    ///
    /// The signal could not be sent or the process could not be reaped.
    pub fn kill(&self) -> io::Result<()> {
        let mut process = self.process();
        process.frozen = false;
        match process.child.take() {
            None => Ok(()),
            Some(mut child) => {
                child.kill()?;
                child.wait().map(drop)
            }
        }
    }

    /// Starts a new, empty server on the same socket (killing the running
    /// one first, if any) and waits until it answers, as
    /// [`start`](RedisServer::start) does. Clients that reconnect find no
    /// data and no loaded script.
    ///
    /// # Errors
    ///
    /// As [`start`](RedisServer::start).
    pub async fn restart(&self) -> io::Result<()> {
        self.kill()?;
        self.launch().await
    }

    /// Stops the server with `SIGSTOP`: connections stay open and new ones
    /// are accepted by the system, but nothing is answered until
    /// [`thaw`](RedisServer::thaw).
    ///
    /// # Errors
    ///
    /// The server is not running, or the signal could not be sent.
    pub fn freeze(&self) -> io::Result<()> {
        let mut process = self.process();
        signal(&process, "STOP")?;
        process.frozen = true;
        Ok(())
    }

    /// Resumes a server stopped by [`freeze`](RedisServer::freeze)
    /// (`SIGCONT`).
    ///
    /// # Errors
    ///
    /// The server is not running, or the signal could not be sent.
    pub fn thaw(&self) -> io::Result<()> {
        let mut process = self.process();
        signal(&process, "CONT")?;
        process.frozen = false;
        Ok(())
    }

    /// Runs the server and waits until it answers.
    async fn launch(&self) -> io::Result<()> {
        // A killed server leaves its socket behind.
        match fs::remove_file(&self.socket) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        let stderr = File::create(self.dir.join("stderr.log"))?;
        let port = if self.args.iter().any(|arg| arg == "--port") {
            &[][..]
        } else {
            &["--port", "0"][..]
        };
        let child = Command::new("redis-server")
            .args(port)
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--unixsocket")
            .arg(&self.socket)
            .arg("--unixsocketperm")
            .arg("700")
            .arg("--save")
            .arg("")
            .arg("--appendonly")
            .arg("no")
            .arg("--daemonize")
            .arg("no")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|error| {
                if error.kind() == io::ErrorKind::NotFound {
                    io::Error::new(io::ErrorKind::NotFound, NOT_FOUND)
                } else {
                    io::Error::new(error.kind(), format!("could not run redis-server: {error}"))
                }
            })?;
        self.process().child = Some(child);
        self.wait_until_ready().await
    }

    /// Polls the socket with `PING` until the server answers `PONG`, it
    /// exits, or [`START_TIMEOUT`] passes (on the system's clock, so that
    /// Tokio's paused time cannot cut it short).
    async fn wait_until_ready(&self) -> io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.exited()? {
                return Err(io::Error::other(format!(
                    "redis-server exited at start ({status}): {}",
                    self.logs()
                )));
            }
            if ping(&self.socket).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = self.kill();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "redis-server did not answer PING within {} s: {}",
                        START_TIMEOUT.as_secs(),
                        self.logs()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The exit status of the server, if it has exited (and is reaped).
    fn exited(&self) -> io::Result<Option<std::process::ExitStatus>> {
        let mut process = self.process();
        let Some(child) = process.child.as_mut() else {
            return Err(io::Error::other("redis-server is not running"));
        };
        let status = child.try_wait()?;
        if status.is_some() {
            process.child = None;
        }
        Ok(status)
    }

    /// The end of the server's log and standard error, for errors.
    pub(super) fn logs(&self) -> String {
        let mut text = String::new();
        for name in ["stderr.log", "redis.log"] {
            if let Ok(bytes) = fs::read(self.dir.join(name)) {
                let tail = &bytes[bytes.len().saturating_sub(2000)..];
                text.push_str(&String::from_utf8_lossy(tail));
            }
        }
        if text.trim().is_empty() {
            String::from("(no output)")
        } else {
            text.trim().to_owned()
        }
    }

    fn process(&self) -> MutexGuard<'_, Process> {
        self.process.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A new connection for the harness's own commands.
    pub(super) async fn connection(&self) -> io::Result<redis::aio::MultiplexedConnection> {
        let client = Client::open(self.url())
            .map_err(|error| io::Error::other(format!("the harness's Redis URL: {error}")))?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|error| {
                io::Error::other(format!(
                    "could not connect to the test redis-server: {error}"
                ))
            })
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let process = self
            .process
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(mut child) = process.child.take() {
            // SIGKILL ends a stopped process too.
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let process = self.process();
        f.debug_struct("RedisServer")
            .field("socket", &self.socket)
            .field("pid", &process.child.as_ref().map(Child::id))
            .field("frozen", &process.frozen)
            .finish()
    }
}

/// `count` loopback TCP ports that were free a moment ago.
fn free_ports(count: usize) -> io::Result<Vec<u16>> {
    // Held together, so that they differ.
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|listener| listener.local_addr().map(|address| address.port()))
        .collect()
}

/// A new directory under the system's temporary directory.
fn make_dir() -> io::Result<PathBuf> {
    let base = std::env::temp_dir();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    let mut last_error = None;
    for _ in 0..16 {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let dir = base.join(format!(
            "routera-redis-{}-{id}-{nanos:x}",
            std::process::id()
        ));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => last_error = Some(error),
            Err(error) => {
                return Err(io::Error::new(
                    error.kind(),
                    format!("could not create {}: {error}", dir.display()),
                ));
            }
        }
    }
    Err(last_error.unwrap_or_else(|| io::Error::other("could not create a temporary directory")))
}

/// Sends `SIGSTOP` or `SIGCONT` to the server, with the shell's `kill`.
fn signal(process: &Process, name: &str) -> io::Result<()> {
    let Some(child) = process.child.as_ref() else {
        return Err(io::Error::other("redis-server is not running"));
    };
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{name} {}", child.id()))
        .stdin(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "kill -{name} {} failed ({status})",
            child.id()
        )))
    }
}

/// Whether the server on `socket` answers `PING` with `PONG`.
async fn ping(socket: &Path) -> bool {
    let attempt = async {
        let mut stream = UnixStream::connect(socket).await?;
        stream.write_all(b"PING\r\n").await?;
        let mut reply = Vec::new();
        let mut buffer = [0; 64];
        while !reply.ends_with(b"\r\n") {
            let read = stream.read(&mut buffer).await?;
            if read == 0 {
                break;
            }
            reply.extend_from_slice(&buffer[..read]);
        }
        io::Result::Ok(reply == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(PING_TIMEOUT, attempt).await,
        Ok(Ok(true))
    )
}
