//! The TLS of `rediss://` connections: [`RedisTls`] (which stack), the
//! certificates a builder was given, and the handshake.
//!
//! The handshake is made here, not by the `redis` crate: its rustls path
//! builds its `ClientConfig` on rustls' process-wide default provider (and
//! installs one from rustls' features, or panics when both ring and
//! aws-lc-rs are in the build). Here each connection is given its provider
//! explicitly, as `HttpTokenExchange::reqwest()` is, and the stream is
//! handed to redis' multiplexed connection.

#[cfg(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls"))]
use std::io;

#[cfg(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls"))]
use redis::aio::MultiplexedConnection;
#[cfg(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls"))]
use redis::{AsyncConnectionConfig, RedisConnectionInfo};
#[cfg(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls"))]
use rustls_pki_types::pem::PemObject as _;
#[cfg(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls"))]
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
#[cfg(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls"))]
use tokio::net::TcpStream;

use super::error::RedisStoreError;

/// The TLS stack of a [`RedisStore`](super::RedisStore)'s `rediss://`
/// connections, one variant for each TLS feature compiled in.
///
/// By default ([`RedisTls::from_features`]) the store uses the same stack
/// as `HttpTokenExchange::reqwest()`: `native-tls` if that feature is on,
/// else `rustls-ring`, else `rustls`.
/// [`RedisStoreBuilder::tls`](super::RedisStoreBuilder::tls) chooses
/// another one that is compiled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RedisTls {
    /// rustls with the aws-lc-rs provider (feature `rustls`), verifying
    /// the server against the platform's roots
    /// (`rustls-platform-verifier`) and the extra roots given.
    #[cfg(feature = "rustls")]
    RustlsAwsLc,
    /// rustls with the ring provider (feature `rustls-ring`), verifying
    /// as [`RedisTls::RustlsAwsLc`] does.
    #[cfg(feature = "rustls-ring")]
    RustlsRing,
    /// The platform's TLS library (feature `native-tls`): OpenSSL on
    /// Linux, with its roots and the extra roots given.
    #[cfg(feature = "native-tls")]
    NativeTls,
}

impl RedisTls {
    /// The stack the crate's features choose: `native-tls`, else
    /// `rustls-ring`, else `rustls`; `None` without a TLS feature.
    pub fn from_features() -> Option<RedisTls> {
        Self::available().first().copied()
    }

    /// Every stack compiled in, in the order of preference of
    /// [`RedisTls::from_features`].
    pub fn available() -> &'static [RedisTls] {
        &[
            #[cfg(feature = "native-tls")]
            RedisTls::NativeTls,
            #[cfg(feature = "rustls-ring")]
            RedisTls::RustlsRing,
            #[cfg(feature = "rustls")]
            RedisTls::RustlsAwsLc,
        ]
    }
}

/// The certificates given to a builder, as PEM, checked when it builds.
#[derive(Clone, Default)]
pub(super) struct TlsSettings {
    /// Extra trusted roots, each a PEM text of one or more certificates.
    pub(super) roots: Vec<Vec<u8>>,
    /// The client's certificate chain and private key, PEM.
    pub(super) identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The stack chosen, if any.
    pub(super) stack: Option<RedisTls>,
}

impl TlsSettings {
    /// Whether certificates were given (which only a TLS URL can use).
    pub(super) fn has_certificates(&self) -> bool {
        !self.roots.is_empty() || self.identity.is_some()
    }
}

/// What makes the TLS handshake of every connection of one store.
#[derive(Clone)]
pub(super) enum Connector {
    /// rustls, on the provider of its configuration.
    #[cfg(any(feature = "rustls", feature = "rustls-ring"))]
    Rustls(tokio_rustls::TlsConnector),
    /// The platform's TLS.
    #[cfg(feature = "native-tls")]
    Native(tokio_native_tls::TlsConnector),
}

#[cfg(not(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls")))]
impl Connector {
    /// Without a TLS feature there is none.
    pub(super) fn new(_settings: &TlsSettings) -> Result<Self, RedisStoreError> {
        Err(RedisStoreError::new(
            "a rediss:// URL needs TLS, which this build of routera-auth does not have: turn \
             on its feature rustls, rustls-ring or native-tls",
        ))
    }

    /// Never called: there is no connector.
    pub(super) async fn open(
        &self,
        _host: &str,
        _server: &str,
        _tcp: tokio::net::TcpStream,
        _connection: &redis::RedisConnectionInfo,
        _config: redis::AsyncConnectionConfig,
    ) -> redis::RedisResult<(
        redis::aio::MultiplexedConnection,
        tokio::task::JoinHandle<()>,
    )> {
        match *self {}
    }
}

#[cfg(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls"))]
impl Connector {
    /// A connector on the chosen stack (or the features' one), trusting the
    /// extra roots and presenting the client certificate, if given.
    ///
    /// # Errors
    ///
    /// Malformed PEM, a key that does not suit the stack, or a stack that
    /// cannot start (no platform roots).
    pub(super) fn new(settings: &TlsSettings) -> Result<Self, RedisStoreError> {
        let roots = parse_roots(&settings.roots)?;
        let identity = match &settings.identity {
            Some((chain, key)) => Some(parse_identity(chain, key)?),
            None => None,
        };
        let stack = settings
            .stack
            .or_else(RedisTls::from_features)
            .ok_or_else(|| RedisStoreError::new("no TLS stack is compiled in"))?;
        match stack {
            #[cfg(feature = "rustls")]
            RedisTls::RustlsAwsLc => rustls_connector(
                std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
                roots,
                identity,
            ),
            #[cfg(feature = "rustls-ring")]
            RedisTls::RustlsRing => rustls_connector(
                std::sync::Arc::new(rustls::crypto::ring::default_provider()),
                roots,
                identity,
            ),
            #[cfg(feature = "native-tls")]
            RedisTls::NativeTls => {
                // Checked above for a clear error; the platform's TLS
                // reads the PEM itself.
                let _checked = identity;
                native_connector(settings, roots)
            }
        }
    }

    /// Makes the TLS handshake on `tcp` with `host` and opens a multiplexed
    /// connection on it (authenticated and on its database, as
    /// `connection` says), with the task that drives it, which ends when
    /// the connection closes.
    ///
    /// # Errors
    ///
    /// The handshake failed (the error says why: an untrusted certificate,
    /// a client certificate refused), or Redis refused the connection.
    pub(super) async fn open(
        &self,
        host: &str,
        server: &str,
        tcp: TcpStream,
        connection: &RedisConnectionInfo,
        config: AsyncConnectionConfig,
    ) -> redis::RedisResult<(MultiplexedConnection, tokio::task::JoinHandle<()>)> {
        match self {
            #[cfg(any(feature = "rustls", feature = "rustls-ring"))]
            Connector::Rustls(connector) => {
                let name =
                    rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(|_| {
                        handshake_error(server, io::Error::other("not a valid host name"))
                    })?;
                let stream = connector
                    .connect(name, tcp)
                    .await
                    .map_err(|error| handshake_error(server, error))?;
                spawn(
                    server,
                    MultiplexedConnection::new_with_config(connection, stream, config).await,
                )
            }
            #[cfg(feature = "native-tls")]
            Connector::Native(connector) => {
                let stream = connector
                    .connect(host, tcp)
                    .await
                    .map_err(|error| handshake_error(server, io::Error::other(error)))?;
                spawn(
                    server,
                    MultiplexedConnection::new_with_config(connection, stream, config).await,
                )
            }
        }
    }
}

/// The connection of `opened`, and its driver spawned on the runtime: the
/// task ends when the connection closes (the server closed it, or it
/// broke).
///
/// A connection closed while it was set up, right after the handshake, is
/// most often a server that wanted a client certificate: with TLS 1.3 the
/// client learns it only then.
#[cfg(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls"))]
fn spawn<F>(
    server: &str,
    opened: redis::RedisResult<(MultiplexedConnection, F)>,
) -> redis::RedisResult<(MultiplexedConnection, tokio::task::JoinHandle<()>)>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let (connection, driver) = opened.map_err(|error| {
        if !error.is_io_error() {
            return error;
        }
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!(
                "Redis at {server} closed the TLS connection right after the handshake \
                 ({error}); if it requires a client certificate (tls-auth-clients), give one \
                 that its CA signed with RedisStoreBuilder::client_certificate"
            ),
        )
        .into()
    })?;
    let driver = tokio::spawn(driver);
    Ok((connection, driver))
}

/// A failed handshake as redis' I/O error, saying with whom, why, and what
/// to check.
#[cfg(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls"))]
fn handshake_error(server: &str, error: io::Error) -> redis::RedisError {
    let text = error.to_string();
    let hint = if text.contains("certificate") || text.contains("Certificate") {
        "if Redis's certificate is from a private CA, give that CA with \
         RedisStoreBuilder::add_root_certificates; if Redis asks for a client certificate, \
         give it with RedisStoreBuilder::client_certificate"
    } else {
        "check that the port serves TLS (rediss://) and that the host name matches the \
         server's certificate"
    };
    io::Error::new(
        error.kind(),
        format!("TLS handshake with Redis at {server} failed: {text}; {hint}"),
    )
    .into()
}

/// The extra roots, parsed.
#[cfg(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls"))]
fn parse_roots(pems: &[Vec<u8>]) -> Result<Vec<CertificateDer<'static>>, RedisStoreError> {
    let mut roots = Vec::new();
    for pem in pems {
        let before = roots.len();
        for certificate in CertificateDer::pem_slice_iter(pem) {
            roots.push(certificate.map_err(|error| {
                RedisStoreError::new(format!(
                    "the root certificates given for Redis are not valid PEM ({error}): give \
                     the CA's certificate as PEM text (-----BEGIN CERTIFICATE-----)"
                ))
            })?);
        }
        if roots.len() == before {
            return Err(RedisStoreError::new(
                "the root certificates given for Redis hold no certificate: give the CA's \
                 certificate as PEM text (-----BEGIN CERTIFICATE-----)",
            ));
        }
    }
    Ok(roots)
}

/// The client's certificate chain and key, parsed.
#[cfg(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls"))]
fn parse_identity(
    chain: &[u8],
    key: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), RedisStoreError> {
    let certificates = CertificateDer::pem_slice_iter(chain)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            RedisStoreError::new(format!(
                "the client certificate given for Redis is not valid PEM ({error}): give its \
                 chain as PEM text (-----BEGIN CERTIFICATE-----), the client's first"
            ))
        })?;
    if certificates.is_empty() {
        return Err(RedisStoreError::new(
            "the client certificate given for Redis holds no certificate: give its chain as \
             PEM text (-----BEGIN CERTIFICATE-----), the client's first",
        ));
    }
    // The parser's error does not quote the key.
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|error| {
        RedisStoreError::new(format!(
            "the client key given for Redis is not a PEM private key ({error}): give it as \
             PEM text (-----BEGIN PRIVATE KEY-----)"
        ))
    })?;
    Ok((certificates, key))
}

/// rustls on `provider`, never on a process-wide default.
#[cfg(any(feature = "rustls", feature = "rustls-ring"))]
fn rustls_connector(
    provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
    roots: Vec<CertificateDer<'static>>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Connector, RedisStoreError> {
    use rustls_platform_verifier::Verifier;

    let verifier = if roots.is_empty() {
        Verifier::new(provider.clone())
    } else {
        extra_roots(roots, provider.clone())
    }
    .map_err(|error| {
        RedisStoreError::new(format!(
            "the platform's root certificates could not be loaded for rustls ({error})"
        ))
    })?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| {
            RedisStoreError::new(format!(
                "the rustls crypto provider supports no safe TLS version ({error})"
            ))
        })?
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier));
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|error| {
            RedisStoreError::new(format!(
                "the client certificate and key given for Redis were refused by rustls \
                 ({error}): give the key that matches the certificate"
            ))
        })?,
    };
    Ok(Connector::Rustls(tokio_rustls::TlsConnector::from(
        std::sync::Arc::new(config),
    )))
}

/// A verifier on the platform's roots and `roots`.
#[cfg(all(
    any(feature = "rustls", feature = "rustls-ring"),
    not(target_os = "android")
))]
fn extra_roots(
    roots: Vec<CertificateDer<'static>>,
    provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
) -> Result<rustls_platform_verifier::Verifier, rustls::Error> {
    rustls_platform_verifier::Verifier::new_with_extra_roots(roots, provider)
}

/// Android's verifier takes no extra roots.
#[cfg(all(
    any(feature = "rustls", feature = "rustls-ring"),
    target_os = "android"
))]
fn extra_roots(
    _roots: Vec<CertificateDer<'static>>,
    _provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
) -> Result<rustls_platform_verifier::Verifier, rustls::Error> {
    Err(rustls::Error::General(String::from(
        "extra root certificates are not supported on Android: install the CA on the device",
    )))
}

/// The platform's TLS, with the extra roots and the client's identity.
#[cfg(feature = "native-tls")]
fn native_connector(
    settings: &TlsSettings,
    roots: Vec<CertificateDer<'static>>,
) -> Result<Connector, RedisStoreError> {
    let mut builder = native_tls::TlsConnector::builder();
    for root in roots {
        let certificate = native_tls::Certificate::from_der(&root).map_err(|error| {
            RedisStoreError::new(format!(
                "a root certificate given for Redis was refused by the platform's TLS \
                 ({error}): give a valid X.509 CA certificate"
            ))
        })?;
        builder.add_root_certificate(certificate);
    }
    if let Some((chain, key)) = &settings.identity {
        let identity = native_tls::Identity::from_pkcs8(chain, key).map_err(|error| {
            RedisStoreError::new(format!(
                "the client certificate and key given for Redis were refused by the \
                 platform's TLS ({error}): it needs the key as unencrypted PKCS#8 PEM \
                 (-----BEGIN PRIVATE KEY-----; `openssl pkcs8 -topk8 -nocrypt` converts \
                 one) that matches the certificate"
            ))
        })?;
        builder.identity(identity);
    }
    let connector = builder.build().map_err(|error| {
        RedisStoreError::new(format!("the platform's TLS could not start ({error})"))
    })?;
    Ok(Connector::Native(tokio_native_tls::TlsConnector::from(
        connector,
    )))
}

/// What an application on rustls must do before a store reaches a Redis
/// Cluster over TLS, or a `redis::Client` given as is over TLS.
#[cfg(any(feature = "rustls", feature = "rustls-ring"))]
pub(super) const NO_PROVIDER: &str = "Redis over TLS through the redis crate's own TLS (a Redis \
     Cluster, or a redis::Client given to RedisStore::new) needs rustls' process-wide default \
     CryptoProvider, and the application has installed none (routera-auth never installs one): \
     install one when the application starts, before the store's first operation, e.g. \
     `rustls::crypto::aws_lc_rs::default_provider().install_default()` (or \
     `rustls::crypto::ring::default_provider().install_default()` on ring)";

/// An error unless the `redis` crate's own TLS can connect: with rustls, it
/// builds each connection's `ClientConfig` with `ClientConfig::builder()`,
/// on rustls' process-wide default provider, which panics (or, with one
/// provider in rustls' features, installs one for the whole process) when
/// none is installed. The store never lets it get there.
#[cfg(any(feature = "rustls", feature = "rustls-ring"))]
pub(super) fn redis_tls_ready() -> Result<(), RedisStoreError> {
    match rustls::crypto::CryptoProvider::get_default() {
        Some(_) => Ok(()),
        None => Err(RedisStoreError::new(NO_PROVIDER)),
    }
}

/// The `redis` crate's own TLS needs nothing process-wide on native-tls.
#[cfg(not(any(feature = "rustls", feature = "rustls-ring")))]
pub(super) fn redis_tls_ready() -> Result<(), RedisStoreError> {
    Ok(())
}

/// What the `redis` crate's cluster client is given of the certificates:
/// they go to its rustls only.
#[cfg(all(
    feature = "redis-cluster",
    any(feature = "rustls", feature = "rustls-ring")
))]
pub(super) type ClusterCertificates = Option<redis::TlsCertificates>;

/// What the `redis` crate's cluster client is given of the certificates:
/// nothing, without rustls.
#[cfg(all(
    feature = "redis-cluster",
    not(any(feature = "rustls", feature = "rustls-ring"))
))]
pub(super) type ClusterCertificates = ();

/// The certificates of a Redis Cluster's TLS connections, for the `redis`
/// crate's cluster client, which makes their handshakes itself: on rustls
/// (a rustls feature is on; on the process-wide default provider), else on
/// native-tls.
///
/// # Errors
///
/// No TLS feature; a stack chosen that the cluster client does not use;
/// malformed PEM; certificates given to a build that has only native-tls
/// (the `redis` crate takes a cluster's certificates on rustls only); no
/// root given to a build with both native-tls and rustls (the `redis`
/// crate's rustls then loads no platform roots).
#[cfg(feature = "redis-cluster")]
pub(super) fn cluster_certificates(
    settings: &TlsSettings,
) -> Result<ClusterCertificates, RedisStoreError> {
    #[cfg(not(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls")))]
    {
        let _ = settings;
        Err(RedisStoreError::new(
            "a rediss:// URL needs TLS, which this build of routera-auth does not have: turn \
             on its feature rustls, rustls-ring or native-tls",
        ))
    }
    #[cfg(any(feature = "rustls", feature = "rustls-ring"))]
    {
        if settings.stack.is_some_and(|stack| !stack.is_rustls()) {
            return Err(RedisStoreError::new(
                "a Redis Cluster over TLS connects through the redis crate's own TLS, which is \
                 rustls in this build (a rustls feature is on): choose a rustls stack for it, or \
                 none",
            ));
        }
        // Checked here for a clear error; the redis crate parses them again.
        let _roots = parse_roots(&settings.roots)?;
        if let Some((chain, key)) = &settings.identity {
            let _identity = parse_identity(chain, key)?;
        }
        if settings.roots.is_empty() && cfg!(feature = "native-tls") {
            return Err(RedisStoreError::new(
                "with both native-tls and a rustls feature on, the redis crate's rustls loads no \
                 platform root certificates for a Redis Cluster: give the CA of the cluster's \
                 certificates with RedisStoreBuilder::add_root_certificates",
            ));
        }
        if !settings.has_certificates() {
            return Ok(None);
        }
        let mut roots = Vec::new();
        for pem in &settings.roots {
            roots.extend_from_slice(pem);
            roots.push(b'\n');
        }
        Ok(Some(redis::TlsCertificates {
            client_tls: settings
                .identity
                .as_ref()
                .map(|(chain, key)| redis::ClientTlsConfig {
                    client_cert: chain.clone(),
                    client_key: key.clone(),
                }),
            root_cert: (!roots.is_empty()).then_some(roots),
        }))
    }
    #[cfg(all(
        feature = "native-tls",
        not(any(feature = "rustls", feature = "rustls-ring"))
    ))]
    {
        if settings.has_certificates() {
            return Err(RedisStoreError::new(
                "the redis crate takes the certificates of a Redis Cluster over TLS only on \
                 rustls, and this build has native-tls alone: turn on routera-auth's feature \
                 rustls or rustls-ring, or trust the cluster's CA in the platform's store",
            ));
        }
        Ok(())
    }
}

impl RedisTls {
    /// Whether it is one of the rustls stacks.
    #[cfg(all(
        feature = "redis-cluster",
        any(feature = "rustls", feature = "rustls-ring")
    ))]
    fn is_rustls(self) -> bool {
        match self {
            #[cfg(feature = "rustls")]
            RedisTls::RustlsAwsLc => true,
            #[cfg(feature = "rustls-ring")]
            RedisTls::RustlsRing => true,
            #[cfg(feature = "native-tls")]
            RedisTls::NativeTls => false,
        }
    }
}
