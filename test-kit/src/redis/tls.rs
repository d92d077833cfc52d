//! [`RedisTlsServer`]: a real `redis-server` that serves TLS on a loopback
//! port, with a certificate of its own test CA.

use std::fmt;
use std::io;

use super::certs::TestCa;
use super::server::{Launch, RedisServer};

/// A `redis-server` of its own that serves TLS (feature `redis`; Debian's `redis-server` is built with TLS).
///
/// [`RedisTlsServer::start`] makes a new [`TestCa`], a server certificate
/// for `localhost` and `127.0.0.1` signed by it, and a client certificate;
/// then runs `redis-server` as [`RedisServer::start`] does, with TLS on a
/// free port of `127.0.0.1` (`--port 0 --tls-port N`): [`url`] is
/// `rediss://127.0.0.1:N`. Nothing trusts the CA until the test does, with
/// [`ca_pem`]; [`RedisTlsServer::start_mutual`] also requires clients to
/// present a certificate of that CA (`--tls-auth-clients yes`), such as
/// [`client_certificate`].
///
/// The server also listens on a unix socket without TLS, for the kit's own
/// commands: [`server`](RedisTlsServer::server) breaks it (kill, restart,
/// freeze) and reads it back as for any [`RedisServer`].
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use routera_auth::store::RedisStore;
/// use routera_auth_test::RedisTlsServer;
///
/// let redis = RedisTlsServer::start_mutual().await?;
/// let (certificate, key) = redis.client_certificate();
/// let store = RedisStore::builder(&redis.url())
///     .add_root_certificates(redis.ca_pem())
///     .client_certificate(certificate, key)
///     .connect()
///     .await?;
/// # let _ = store;
/// # Ok(())
/// # }
/// ```
///
/// [`url`]: RedisTlsServer::url
/// [`ca_pem`]: RedisTlsServer::ca_pem
/// [`client_certificate`]: RedisTlsServer::client_certificate
pub struct RedisTlsServer {
    server: RedisServer,
    ca: TestCa,
    client: (String, String),
}

impl RedisTlsServer {
    /// Starts a server that serves TLS to any client (no client
    /// certificate asked), and waits (up to 10 s) until it answers.
    ///
    /// # Errors
    ///
    /// As [`RedisServer::start`], or the certificates could not be made.
    pub async fn start() -> io::Result<RedisTlsServer> {
        Self::launch(|ports| tls_args(ports, "no")).await
    }

    /// Starts a server that requires a client certificate signed by its CA
    /// (mutual TLS), and waits until it answers.
    ///
    /// # Errors
    ///
    /// As [`RedisTlsServer::start`].
    pub async fn start_mutual() -> io::Result<RedisTlsServer> {
        Self::launch(|ports| tls_args(ports, "yes")).await
    }

    async fn launch(args: fn(&[u16]) -> Vec<String>) -> io::Result<RedisTlsServer> {
        let ca = TestCa::new("routera-auth test CA")?;
        let (certificate, key) = ca.server_certificate()?;
        let client = ca.client_certificate("routera-auth test client")?;
        let server = RedisServer::start_with(Launch {
            files: vec![
                ("ca.crt", ca.certificate_pem().as_bytes().to_vec()),
                ("server.crt", certificate.into_bytes()),
                ("server.key", key.into_bytes()),
            ],
            ports: 1,
            args: Box::new(args),
        })
        .await
        .map_err(|error| {
            io::Error::new(
                error.kind(),
                format!(
                    "{error} (a TLS redis-server needs Redis 6 or later built with TLS, as \
                     Debian's redis-server is)"
                ),
            )
        })?;
        Ok(RedisTlsServer { server, ca, client })
    }

    /// `rediss://127.0.0.1:N`, for `RedisStore::builder`.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port())
    }

    /// The TLS port on `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.server.ports().first().copied().unwrap_or(0)
    }

    /// The certificate of the CA that signed the server's certificate,
    /// PEM: what a client adds to its roots to trust the server.
    pub fn ca_pem(&self) -> &str {
        self.ca.certificate_pem()
    }

    /// The CA, to sign other certificates.
    pub fn ca(&self) -> &TestCa {
        &self.ca
    }

    /// A client certificate signed by the server's CA, and its key (PEM,
    /// PKCS#8): `(certificate, key)`.
    pub fn client_certificate(&self) -> (&str, &str) {
        (&self.client.0, &self.client.1)
    }

    /// The server itself: to kill, restart, freeze or read it back (over
    /// its unix socket, without TLS).
    pub fn server(&self) -> &RedisServer {
        &self.server
    }
}

/// The TLS arguments: TLS on the port picked, the files written by
/// [`RedisTlsServer::launch`], clients authenticated or not.
fn tls_args(ports: &[u16], auth_clients: &str) -> Vec<String> {
    let port = ports.first().copied().unwrap_or(0);
    [
        "--tls-port",
        &port.to_string(),
        "--tls-cert-file",
        "server.crt",
        "--tls-key-file",
        "server.key",
        "--tls-ca-cert-file",
        "ca.crt",
        "--tls-auth-clients",
        auth_clients,
    ]
    .map(String::from)
    .to_vec()
}

impl fmt::Debug for RedisTlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTlsServer")
            .field("port", &self.port())
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}
