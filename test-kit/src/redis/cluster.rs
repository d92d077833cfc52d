//! [`RedisCluster`]: a real Redis Cluster of three masters on loopback
//! ports, over TCP or TLS.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::certs::TestCa;
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
/// `RedisStore::cluster`. [`RedisCluster::start_tls`] starts one that
/// serves TLS only (`rediss://` URLs, certificates of a [`TestCa`]), and
/// [`RedisCluster::start_tls_with`] one that requires client
/// certificates, or whose certificates and announced endpoints name a
/// host rather than an address, as managed services' do. A master can be killed and restarted through
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
    /// Its TLS, if it serves TLS.
    tls: Option<Tls>,
}

/// The TLS of a cluster started by [`RedisCluster::start_tls_with`].
struct Tls {
    ca: TestCa,
    /// A client certificate of the CA and its key.
    client: (String, String),
    /// The host of [`RedisCluster::urls`].
    host: &'static str,
}

/// How [`RedisCluster::start_tls_with`] starts a cluster over TLS; the
/// default is that of [`RedisCluster::start_tls`]: the nodes' certificate
/// names `localhost` and `127.0.0.1`, the nodes announce their address
/// `127.0.0.1`, and no client certificate is asked for.
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use routera_auth_test::{ClusterTlsOptions, RedisCluster};
///
/// // As a managed service may: certificates that name a host, nodes that
/// // announce that host name rather than their address.
/// let mut options = ClusterTlsOptions::default();
/// options.certificate_names_localhost_only = true;
/// options.announce_localhost = true;
/// let cluster = RedisCluster::start_tls_with(options).await?;
/// # let _ = cluster;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterTlsOptions {
    /// Clients must present a certificate of the cluster's CA
    /// (`--tls-auth-clients yes`), such as
    /// [`RedisCluster::client_certificate`].
    pub mutual: bool,
    /// The nodes' certificate names the host `localhost` only, not the
    /// address `127.0.0.1`; [`RedisCluster::urls`] then name `localhost`.
    pub certificate_names_localhost_only: bool,
    /// The nodes announce the host name `localhost` to clients rather than
    /// their address (`--cluster-announce-hostname localhost
    /// --cluster-preferred-endpoint-type hostname`, Redis 7 or later), so
    /// that clients verify their certificate against that name.
    pub announce_localhost: bool,
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
        check_cli()?;
        let mut nodes = Vec::with_capacity(MASTERS);
        for _ in 0..MASTERS {
            nodes.push(
                RedisServer::start_with(Launch {
                    files: Vec::new(),
                    ports: 2,
                    args: Box::new(node_args),
                })
                .await?,
            );
        }
        let cluster = RedisCluster { nodes, tls: None };
        cluster.create().await?;
        cluster.wait_until_ok().await?;
        Ok(cluster)
    }

    /// Starts three masters that serve TLS only, as
    /// [`RedisCluster::start`] does otherwise: a new [`TestCa`] signs one
    /// certificate for the nodes (naming `localhost` and `127.0.0.1`);
    /// each node serves TLS on its port (`--port 0 --tls-port N`), and on
    /// its cluster bus (`--tls-cluster yes`, `--tls-replication yes`);
    /// `redis-cli --tls --cacert … --cluster create` joins them.
    /// [`urls`](RedisCluster::urls) are then `rediss://127.0.0.1:N`, and a
    /// client trusts the nodes with [`ca_pem`](RedisCluster::ca_pem).
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use routera_auth::store::RedisStore;
    /// use routera_auth_test::RedisCluster;
    ///
    /// let cluster = RedisCluster::start_tls().await?;
    /// let store = RedisStore::cluster_builder(cluster.urls())
    ///     .add_root_certificates(cluster.ca_pem().unwrap_or_default())
    ///     .build()?;
    /// # let _ = store;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// As [`RedisCluster::start`], or the certificates could not be made
    /// (Redis must be built with TLS, as Debian's `redis-server` is).
    pub async fn start_tls() -> io::Result<RedisCluster> {
        Self::start_tls_with(ClusterTlsOptions::default()).await
    }

    /// Starts three masters that serve TLS only, as
    /// [`RedisCluster::start_tls`] does, with `options`: client
    /// certificates required, certificates that name a host only, nodes
    /// that announce that host name.
    ///
    /// # Errors
    ///
    /// As [`RedisCluster::start_tls`].
    pub async fn start_tls_with(options: ClusterTlsOptions) -> io::Result<RedisCluster> {
        check_cli()?;
        let ca = TestCa::new("routera-auth test cluster CA")?;
        let addresses: &[IpAddr] = if options.certificate_names_localhost_only {
            &[]
        } else {
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)]
        };
        let (certificate, key) = ca.node_certificate(&["localhost"], addresses)?;
        let client = ca.client_certificate("routera-auth test client")?;
        let mut nodes = Vec::with_capacity(MASTERS);
        for _ in 0..MASTERS {
            let node = RedisServer::start_with(Launch {
                files: vec![
                    ("ca.crt", ca.certificate_pem().as_bytes().to_vec()),
                    ("node.crt", certificate.clone().into_bytes()),
                    ("node.key", key.clone().into_bytes()),
                ],
                ports: 2,
                args: Box::new(move |ports| tls_node_args(ports, options)),
            })
            .await
            .map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!(
                        "{error} (a Redis Cluster over TLS needs Redis 7 or later built with \
                         TLS, as Debian's redis-server is)"
                    ),
                )
            })?;
            nodes.push(node);
        }
        let host = if options.certificate_names_localhost_only {
            "localhost"
        } else {
            "127.0.0.1"
        };
        let cluster = RedisCluster {
            nodes,
            tls: Some(Tls { ca, client, host }),
        };
        cluster.create().await?;
        cluster.wait_until_ok().await?;
        Ok(cluster)
    }

    /// The certificate of the CA that signed the nodes' certificate, PEM,
    /// for `RedisStoreBuilder::add_root_certificates`; `None` for a
    /// cluster without TLS.
    pub fn ca_pem(&self) -> Option<&str> {
        self.tls.as_ref().map(|tls| tls.ca.certificate_pem())
    }

    /// The CA of a cluster over TLS, to sign other certificates.
    pub fn ca(&self) -> Option<&TestCa> {
        self.tls.as_ref().map(|tls| &tls.ca)
    }

    /// A client certificate signed by the cluster's CA, and its key (PEM,
    /// PKCS#8): `(certificate, key)`, for
    /// `RedisStoreBuilder::client_certificate`; `None` for a cluster
    /// without TLS.
    pub fn client_certificate(&self) -> Option<(&str, &str)> {
        self.tls
            .as_ref()
            .map(|tls| (tls.client.0.as_str(), tls.client.1.as_str()))
    }

    /// The masters' URLs: `redis://127.0.0.1:N`; over TLS
    /// `rediss://127.0.0.1:N`, or `rediss://localhost:N` when the nodes'
    /// certificate names `localhost` only.
    pub fn urls(&self) -> Vec<String> {
        let (scheme, host) = match &self.tls {
            Some(tls) => ("rediss", tls.host),
            None => ("redis", "127.0.0.1"),
        };
        self.nodes
            .iter()
            .map(|node| format!("{scheme}://{host}:{}", port(node)))
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
        if self.tls.is_some() {
            let dir = self
                .nodes
                .first()
                .map(|node| node.dir().to_path_buf())
                .unwrap_or_default();
            command
                .arg("--tls")
                .arg("--cacert")
                .arg(dir.join("ca.crt"))
                .arg("--cert")
                .arg(dir.join("node.crt"))
                .arg("--key")
                .arg(dir.join("node.key"));
        }
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

/// The arguments of a cluster node over TLS: TLS only on its port and its
/// cluster bus, the files written by [`RedisCluster::start_tls_with`].
fn tls_node_args(ports: &[u16], options: ClusterTlsOptions) -> Vec<String> {
    let port = ports.first().copied().unwrap_or(0);
    let mut args = node_args(&[0, ports.get(1).copied().unwrap_or(0)]);
    args.extend(
        [
            "--tls-port",
            &port.to_string(),
            "--tls-cluster",
            "yes",
            "--tls-replication",
            "yes",
            "--tls-cert-file",
            "node.crt",
            "--tls-key-file",
            "node.key",
            "--tls-ca-cert-file",
            "ca.crt",
            "--tls-auth-clients",
            if options.mutual { "yes" } else { "no" },
        ]
        .map(String::from),
    );
    if options.announce_localhost {
        args.extend(
            [
                "--cluster-announce-hostname",
                "localhost",
                "--cluster-preferred-endpoint-type",
                "hostname",
            ]
            .map(String::from),
        );
    }
    args
}

/// An error naming the Debian package unless `redis-cli` runs.
fn check_cli() -> io::Result<()> {
    let version = Command::new("redis-cli")
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    match version {
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            Err(io::Error::new(io::ErrorKind::NotFound, CLI_NOT_FOUND))
        }
        Err(error) => Err(io::Error::new(
            error.kind(),
            format!("could not run redis-cli: {error}"),
        )),
        Ok(_) => Ok(()),
    }
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
            .field("tls", &self.tls.is_some())
            .finish()
    }
}
