//! [`EmulatorBuilder`]: the clients, the token lifetime, plain HTTP or
//! HTTPS, and starting the server.

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use super::server::{self, Transport};
use super::state::{State, set_client};
use super::tls::{self, ServerCert};
use super::{DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET, DEFAULT_EXPIRES_IN, Emulator};

/// Configures and starts an [`Emulator`]; see [`Emulator::builder`].
///
/// `Debug` shows the client ids, never the secrets.
#[derive(Clone)]
pub struct EmulatorBuilder {
    clients: Vec<(String, String)>,
    expires_in: Duration,
    scheme: Scheme,
}

/// Plain HTTP, or HTTPS with a certificate of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https(ServerCert),
}

impl Emulator {
    /// A builder to register clients, set the token lifetime or serve HTTPS
    /// before starting.
    pub fn builder() -> EmulatorBuilder {
        EmulatorBuilder {
            clients: Vec::new(),
            expires_in: DEFAULT_EXPIRES_IN,
            scheme: Scheme::Http,
        }
    }
}

impl Default for EmulatorBuilder {
    fn default() -> Self {
        Emulator::builder()
    }
}

impl EmulatorBuilder {
    /// Registers a client. May be called several times; registering an id
    /// again replaces its secret. Without any call, one client
    /// `routera-test-client` / `routera-test-secret` is registered.
    /// [`Emulator::credentials`] returns the first client registered.
    pub fn client(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        set_client(&mut self.clients, id.into(), secret.into());
        self
    }

    /// The lifetime of issued tokens (default one hour); see
    /// [`Emulator::set_expires_in`].
    pub fn expires_in(mut self, lifetime: Duration) -> Self {
        self.expires_in = lifetime;
        self
    }

    /// Serves HTTPS instead of plain HTTP, for tests of a real TLS
    /// handshake.
    ///
    /// At start the emulator generates a CA of its own (an ECDSA P-256 key
    /// that lives only in memory) and a server certificate it issues for
    /// `localhost` and `127.0.0.1`. [`Emulator::ca_pem`] hands out the CA
    /// certificate: trust it in the client under test as a private CA would
    /// be trusted (`reqwest::ClientBuilder::tls_certs_merge`, tonic's
    /// `ClientTlsConfig::ca_certificate`, or the `SSL_CERT_FILE` environment
    /// variable of a child process). [`Emulator::token_url`] and
    /// [`Emulator::resource_url`] are then `https://127.0.0.1:PORT/...`.
    ///
    /// The server offers HTTP/2 and HTTP/1.1 through ALPN, so a gRPC client
    /// such as tonic can call the emulator's health service (see
    /// [`Emulator`]). TLS runs on rustls with the crypto provider of the
    /// crate's features (aws-lc-rs with `rustls`, ring with `rustls-ring`
    /// only), passed explicitly: no process-wide provider is needed or
    /// installed.
    ///
    /// [`Emulator::exchange`] and [`Emulator::provider`] speak plain HTTP and
    /// fail against an HTTPS emulator: build the exchange over a client that
    /// trusts the CA instead.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use routera_auth::{HttpTokenExchange, ReqwestService, TokenRequest};
    /// use routera_auth_test::Emulator;
    /// use tower::ServiceExt as _;
    ///
    /// let emulator = Emulator::builder().https().start().await?;
    /// let ca_pem = emulator.ca_pem().ok_or("an HTTPS emulator has a CA")?;
    /// let client = reqwest::Client::builder()
    ///     .redirect(reqwest::redirect::Policy::none())
    ///     .tls_certs_merge([reqwest::Certificate::from_pem(ca_pem.as_bytes())?])
    ///     .build()?;
    /// let exchange = HttpTokenExchange::new(ReqwestService::new(client))
    ///     .with_token_url(&emulator.token_url())?;
    /// let token = exchange.oneshot(TokenRequest::new(emulator.credentials())).await?;
    /// assert!(emulator.token_validator().is_valid(token.access_token().secret()));
    /// # Ok(())
    /// # }
    /// ```
    pub fn https(mut self) -> Self {
        self.scheme = Scheme::Https(ServerCert::IssuedByCa);
        self
    }

    /// Serves HTTPS, like [`EmulatorBuilder::https`], but with a
    /// self-signed server certificate that the CA of [`Emulator::ca_pem`]
    /// did not issue: for tests of a client that must refuse a server it
    /// does not trust, even when it trusts that CA.
    pub fn https_self_signed(mut self) -> Self {
        self.scheme = Scheme::Https(ServerCert::SelfSigned);
        self
    }

    /// Binds `127.0.0.1:0` and starts serving on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// The I/O error if binding fails; for HTTPS, an error of kind
    /// [`Other`](std::io::ErrorKind::Other) if the certificates or the TLS
    /// configuration could not be built.
    pub async fn start(self) -> std::io::Result<Emulator> {
        let mut clients = self.clients;
        if clients.is_empty() {
            clients.push((
                DEFAULT_CLIENT_ID.to_owned(),
                DEFAULT_CLIENT_SECRET.to_owned(),
            ));
        }
        let (transport, ca_pem) = match self.scheme {
            Scheme::Http => (Transport::Http, None),
            Scheme::Https(cert) => {
                let tls = tls::generate(cert)?;
                (Transport::Https(tls.acceptor), Some(tls.ca_pem))
            }
        };
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (shutdown_sender, shutdown) = watch::channel(());
        let state = Arc::new(State::new(clients, self.expires_in, shutdown));
        let accept_loop =
            tokio::spawn(server::accept_loop(listener, transport, Arc::clone(&state)));
        Ok(Emulator {
            addr,
            ca_pem,
            state,
            accept_loop,
            _shutdown: shutdown_sender,
        })
    }
}

impl fmt::Debug for EmulatorBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let client_ids: Vec<&str> = self.clients.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("EmulatorBuilder")
            .field("client_ids", &client_ids)
            .field("expires_in", &self.expires_in)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}
