//! [`RedisStoreBuilder`]: a [`RedisStore`] on one server or a cluster,
//! over TLS with the certificates given, and its timeouts.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use redis::{Client, ConnectionAddr};

use super::error::RedisStoreError;
use super::link::{Link, Timeouts};
use super::tls::{Connector, RedisTls, TlsSettings};
use super::tls_link::TlsLink;
use super::{Inner, RedisStore};
use crate::store::StoreError;

/// What the error says of a URL that did not parse.
const URL_FORMS: &str = "expected redis://[[user]:password@]host[:port][/db], \
                         rediss://… (TLS) or redis+unix:///path/to/redis.sock";

/// Builds a [`RedisStore`]: [`RedisStore::builder`] for one server,
/// `RedisStore::cluster_builder` for a Redis Cluster (feature
/// `redis-cluster`).
///
/// ```no_run
/// # fn run(ca_pem: &[u8]) -> Result<(), routera_auth::store::StoreError> {
/// use std::time::Duration;
/// use routera_auth::store::RedisStore;
///
/// let store = RedisStore::builder("rediss://:password@redis.internal:6380")
///     // Trusted besides the platform's roots.
///     .add_root_certificates(ca_pem)
///     .response_timeout(Duration::from_millis(100))
///     .build()?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
///
/// Its `Debug` output shows neither the URL (which may hold a password)
/// nor the certificates and key.
pub struct RedisStoreBuilder {
    target: Target,
    tls: TlsSettings,
    timeouts: Timeouts,
}

/// One server, or the seed nodes of a cluster.
enum Target {
    Server(String),
    #[cfg(feature = "redis-cluster")]
    Cluster(Vec<String>),
}

impl RedisStoreBuilder {
    pub(super) fn server(url: &str) -> Self {
        Self::new(Target::Server(url.to_owned()))
    }

    #[cfg(feature = "redis-cluster")]
    pub(super) fn cluster(nodes: Vec<String>) -> Self {
        Self::new(Target::Cluster(nodes))
    }

    fn new(target: Target) -> Self {
        Self {
            target,
            tls: TlsSettings::default(),
            timeouts: Timeouts {
                connection: RedisStore::CONNECTION_TIMEOUT,
                response: RedisStore::RESPONSE_TIMEOUT,
            },
        }
    }

    /// Trusts the certificates in `pem` (PEM text, one or more
    /// `-----BEGIN CERTIFICATE-----` blocks) as roots for the server's
    /// certificate, besides the platform's roots: for a Redis whose
    /// certificate comes from a private CA. May be called more than once.
    /// Only for a `rediss://` URL. For a cluster (`rediss://` node URLs),
    /// the roots given replace the platform's roots (see [a cluster over
    /// TLS](RedisStore#a-cluster-over-tls)).
    pub fn add_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.roots.push(pem.into());
        self
    }

    /// Presents a client certificate in the TLS handshake, for a Redis
    /// that requires one (mutual TLS, `tls-auth-clients yes`):
    /// `certificate_chain` is PEM text, the client's certificate first;
    /// `private_key` its key as PEM (PKCS#8, `-----BEGIN PRIVATE KEY-----`,
    /// which every stack takes; rustls also takes PKCS#1 and SEC1 keys).
    /// Only for a `rediss://` URL.
    pub fn client_certificate(
        mut self,
        certificate_chain: impl Into<Vec<u8>>,
        private_key: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.identity = Some((certificate_chain.into(), private_key.into()));
        self
    }

    /// The TLS stack of `rediss://` connections, when several are compiled
    /// in; by default [`RedisTls::from_features`]. A cluster's connections
    /// are on the `redis` crate's TLS, rustls in a build with a rustls
    /// feature: there only a rustls stack may be named (which changes
    /// nothing: the provider is the process-wide one), and any other is an
    /// error at build.
    pub fn tls(mut self, stack: RedisTls) -> Self {
        self.tls.stack = Some(stack);
        self
    }

    /// How long opening a connection may take: TCP, the TLS handshake and
    /// the authentication together ([`RedisStore::CONNECTION_TIMEOUT`] by
    /// default).
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.connection = timeout;
        self
    }

    /// How long a command may wait for its answer
    /// ([`RedisStore::RESPONSE_TIMEOUT`] by default).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.response = timeout;
        self
    }

    /// The store, connected on its first operation: it does not need Redis
    /// to be up.
    ///
    /// # Errors
    ///
    /// A malformed or unsupported URL (the error does not repeat it, as it
    /// may hold a password); a `rediss://` URL without a TLS feature;
    /// certificates that are not valid PEM, or given for a URL without
    /// TLS. For a cluster: node URLs that mix `redis://` and `rediss://`;
    /// certificates in a build with native-tls alone; no root in a build
    /// with both native-tls and rustls; a stack the cluster cannot use
    /// (see [a cluster over TLS](RedisStore#a-cluster-over-tls)).
    pub fn build(self) -> Result<RedisStore, StoreError> {
        let (server, link) = match &self.target {
            Target::Server(url) => match tls_url(url) {
                Some(plain) => self.tls_link(&plain)?,
                None => self.manager_link(url)?,
            },
            #[cfg(feature = "redis-cluster")]
            Target::Cluster(nodes) => self.cluster_link(nodes)?,
        };
        Ok(RedisStore {
            inner: Arc::new(Inner {
                server: Some(server),
                link,
            }),
        })
    }

    /// The store, once it has connected and Redis has answered a `PING`
    /// (every master, for a cluster).
    ///
    /// # Errors
    ///
    /// As [`build`](RedisStoreBuilder::build), or a server that could not
    /// be reached, refused the TLS handshake or the credentials, or did not
    /// answer within the timeouts.
    pub async fn connect(self) -> Result<RedisStore, StoreError> {
        let store = self.build()?;
        store.check().await?;
        Ok(store)
    }

    fn manager_link(&self, url: &str) -> Result<(String, Link), RedisStoreError> {
        if self.tls.has_certificates() {
            return Err(RedisStoreError::new(
                "certificates were given for Redis, but its URL does not ask for TLS: use a \
                 rediss:// URL",
            ));
        }
        let client = Client::open(url).map_err(|source| {
            RedisStoreError::with_source(format!("invalid Redis URL: {URL_FORMS}"), source)
        })?;
        let server = client.get_connection_info().addr().to_string();
        let config = RedisStore::manager_config()
            .set_connection_timeout(Some(self.timeouts.connection))
            .set_response_timeout(Some(self.timeouts.response));
        let link = Link::Manager {
            client: Some(Box::new((client, config))),
            manager: OnceLock::new(),
        };
        Ok((server, link))
    }

    /// `plain` is the URL with its scheme made `redis://`, for redis'
    /// parser, which takes `rediss://` only with a TLS feature of its own.
    fn tls_link(&self, plain: &str) -> Result<(String, Link), RedisStoreError> {
        if plain.contains('#') {
            return Err(RedisStoreError::new(
                "a rediss:// URL takes no #fragment: the server's certificate is always \
                 checked; for a private CA, give it with add_root_certificates",
            ));
        }
        let info = Client::open(plain)
            .map_err(|source| {
                RedisStoreError::with_source(format!("invalid Redis URL: {URL_FORMS}"), source)
            })?
            .get_connection_info()
            .clone();
        let ConnectionAddr::Tcp(host, port) = info.addr().clone() else {
            return Err(RedisStoreError::new(format!(
                "invalid Redis URL: {URL_FORMS}"
            )));
        };
        let connector = Connector::new(&self.tls)?;
        let link = TlsLink::new(
            host,
            port,
            info.redis_settings().clone(),
            connector,
            self.timeouts.connection,
            self.timeouts.response,
        );
        let server = format!("{} (TLS)", link.server());
        Ok((server, Link::Tls(Arc::new(link))))
    }

    #[cfg(feature = "redis-cluster")]
    fn cluster_link(&self, nodes: &[String]) -> Result<(String, Link), RedisStoreError> {
        if nodes.is_empty() {
            return Err(RedisStoreError::new(
                "no Redis Cluster node was given: give the URL of one node at least",
            ));
        }
        let tls_nodes = nodes.iter().filter(|url| tls_url(url).is_some()).count();
        let tls = if tls_nodes == 0 {
            if self.tls.has_certificates() {
                return Err(RedisStoreError::new(
                    "certificates were given for a Redis Cluster, but its node URLs do not ask \
                     for TLS: use rediss:// URLs",
                ));
            }
            None
        } else if tls_nodes < nodes.len() {
            return Err(RedisStoreError::new(
                "the Redis Cluster node URLs mix redis:// and rediss://: give every node with \
                 rediss:// for TLS, or every node with redis://",
            ));
        } else {
            if nodes.iter().any(|url| url.contains('#')) {
                return Err(RedisStoreError::new(
                    "a rediss:// URL takes no #fragment: the server's certificate is always \
                     checked; for a private CA, give it with add_root_certificates",
                ));
            }
            Some(super::tls::cluster_certificates(&self.tls)?)
        };
        let mut addresses = Vec::with_capacity(nodes.len());
        for url in nodes {
            // Parsed as plain: redis' parser takes rediss:// only with a TLS
            // feature of its own.
            let plain = tls_url(url);
            let client = Client::open(plain.as_deref().unwrap_or(url)).map_err(|source| {
                RedisStoreError::with_source(
                    format!("invalid Redis Cluster node URL: {URL_FORMS}"),
                    source,
                )
            })?;
            addresses.push(client.get_connection_info().addr().to_string());
        }
        let Timeouts {
            connection,
            response,
        } = self.timeouts;
        let client = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
            .connection_timeout(connection)
            .response_timeout(response)
            // A redirection or a reconnection within a command may take
            // one connection and one answer, not more.
            .overall_response_timeout(Some(connection.saturating_add(response)));
        #[cfg(any(feature = "rustls", feature = "rustls-ring"))]
        let client = match tls.clone().flatten() {
            Some(certificates) => client.certs(certificates),
            None => client,
        };
        let client = client.build().map_err(|source| {
            RedisStoreError::with_source(
                format!("invalid Redis Cluster nodes: {URL_FORMS}"),
                source,
            )
        })?;
        let link = Link::Cluster {
            client: Box::new(client),
            connection_timeout: connection,
            response_timeout: response,
            connection: OnceLock::new(),
            tls: tls.is_some(),
        };
        let tls = if tls.is_some() { " (TLS)" } else { "" };
        Ok((format!("cluster {}{tls}", addresses.join(", ")), link))
    }
}

/// `url` with the scheme `redis://` if it is `rediss://` or `valkeys://`.
fn tls_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    (scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys"))
        .then(|| format!("redis://{rest}"))
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = match &self.target {
            Target::Server(_) => "server",
            #[cfg(feature = "redis-cluster")]
            Target::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStoreBuilder")
            .field("target", &target)
            .field("root_certificates", &self.tls.roots.len())
            .field("client_certificate", &self.tls.identity.is_some())
            .field("tls", &self.tls.stack)
            .field("connection_timeout", &self.timeouts.connection)
            .field("response_timeout", &self.timeouts.response)
            .finish()
    }
}
