//! [`RedisCluster`]: a real Redis Cluster of three masters on loopback
//! ports.

use std::fmt;
use std::io;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::server::{Launch, RedisServer};

/// What the error says when `redis-cli` cannot be run.
const CLI_NOT_FOUND: &str = "redis-cli not found on PATH: install the Debian package \
                             `redis-tools` (apt-get install -y redis-tools)";
/// How long [`RedisCluster::start`] and [`RedisCluster::wait_until_ok`]
/// wait for the cluster to be whole.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(20);
/// The number of masters.
const MASTERS: usize = 3;

/// A Redis Cluster of its own (feature `redis-cluster`):
/// three masters, no replicas, each a [`RedisServer`] with a port of
/// `127.0.0.1` (`--cluster-enabled yes`, a cluster bus port of its own,
/// `--cluster-node-timeout 1000`), joined by
/// `redis-cli --cluster create` (Debian package `redis-tools`).
///
/// [`urls`](RedisCluster::urls) are the masters' `redis://` URLs for
/// `RedisStore::cluster`. A master can be killed and restarted through
/// [`nodes`](RedisCluster::nodes): a restarted master comes back with
/// its slots (its cluster configuration is kept in its directory) and no
/// data, as after a crash without persistence; the others keep serving
/// their slots meanwhile (`--cluster-require-full-coverage no`).
/// [`wait_until_ok`](RedisCluster::wait_until_ok) waits until every node
/// sees every slot served again.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use routera_auth::store::RedisStore;
/// use routera_auth_test::RedisCluster;
///
/// let cluster = RedisCluster::start().await?;
/// let store = RedisStore::cluster(cluster.urls())?;
/// cluster.nodes()[0].kill()?;
/// // … the slots of node 0 fail, the others serve …
/// cluster.nodes()[0].restart().await?;
/// cluster.wait_until_ok().await?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three masters, joins them into a cluster that covers every
    /// slot, and waits (up to 20 s) until every node says so.
    ///
    /// # Errors
    ///
    /// `redis-server` or `redis-cli` is not on `PATH` (the error names the
    /// Debian package to install), a node does not start, the cluster
    /// cannot be created, or it is not whole in time.
    pub async fn start() -> io::Result<RedisCluster> {
        let version = Command::new("redis-cli")
            .arg("--version")
            .stdin(Stdio::null())
            .output();
        match version {
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(io::Error::new(io::ErrorKind::NotFound, CLI_NOT_FOUND));
            }
            Err(error) => {
                return Err(io::Error::new(
                    error.kind(),
                    format!("could not run redis-cli: {error}"),
                ));
            }
            Ok(_) => {}
        }
        let mut nodes = Vec::with_capacity(MASTERS);
        for _ in 0..MASTERS {
            nodes.push(
                RedisServer::start_with(Launch {
                    files: Vec::new(),
                    ports: 2,
                    args: node_args,
                })
                .await?,
            );
        }
        let cluster = RedisCluster { nodes };
        cluster.create().await?;
        cluster.wait_until_ok().await?;
        Ok(cluster)
    }

    /// The masters' URLs, `redis://127.0.0.1:N`.
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("redis://127.0.0.1:{}", port(node)))
            .collect()
    }

    /// The masters, to kill, restart, freeze or read back (each over its
    /// own unix socket, which answers for that node only).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Waits (up to 20 s) until every running node reports the cluster
    /// whole: `cluster_state:ok` and all 16384 slots served.
    ///
    /// # Errors
    ///
    /// No node runs, or the cluster is not whole in time (the error quotes
    /// what a node reported last).
    pub async fn wait_until_ok(&self) -> io::Result<()> {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        loop {
            let mut last = String::new();
            let mut whole = true;
            let mut running = 0;
            for node in &self.nodes {
                if node.pid().is_none() {
                    continue;
                }
                running += 1;
                let info = cluster_info(node)
                    .await
                    .unwrap_or_else(|error| error.to_string());
                if !(info.contains("cluster_state:ok") && info.contains("cluster_slots_ok:16384")) {
                    whole = false;
                    last = info;
                }
            }
            if running == 0 {
                return Err(io::Error::other("no node of the cluster is running"));
            }
            if whole {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the Redis Cluster was not whole within {} s; a node reported: {}",
                        CLUSTER_TIMEOUT.as_secs(),
                        last.trim()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `redis-cli --cluster create` over the masters.
    async fn create(&self) -> io::Result<()> {
        let mut command = Command::new("redis-cli");
        command.arg("--cluster").arg("create");
        for node in &self.nodes {
            command.arg(format!("127.0.0.1:{}", port(node)));
        }
        command
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null());
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .map_err(io::Error::other)??;
        if output.status.success() {
            return Ok(());
        }
        let mut logs = String::from_utf8_lossy(&output.stdout).into_owned();
        logs.push_str(&String::from_utf8_lossy(&output.stderr));
        for node in &self.nodes {
            logs.push_str(&node.logs());
        }
        Err(io::Error::other(format!(
            "redis-cli --cluster create failed ({}): {}",
            output.status,
            logs.trim()
        )))
    }
}

/// The arguments of a cluster node: its port, its cluster bus port, its
/// cluster configuration in its directory (kept across restarts).
fn node_args(ports: &[u16]) -> Vec<String> {
    let port = ports.first().copied().unwrap_or(0);
    let bus = ports.get(1).copied().unwrap_or(0);
    [
        "--port",
        &port.to_string(),
        "--cluster-enabled",
        "yes",
        "--cluster-port",
        &bus.to_string(),
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "1000",
        "--cluster-require-full-coverage",
        "no",
    ]
    .map(String::from)
    .to_vec()
}

/// The TCP port of a node.
fn port(node: &RedisServer) -> u16 {
    node.ports().first().copied().unwrap_or(0)
}

/// What `CLUSTER INFO` says on `node`.
async fn cluster_info(node: &RedisServer) -> io::Result<String> {
    let mut connection = node.connection().await?;
    redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut connection)
        .await
        .map_err(|error| io::Error::other(format!("CLUSTER INFO failed: {error}")))
}

impl fmt::Debug for RedisCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCluster")
            .field("nodes", &self.nodes)
            .finish()
    }
}
