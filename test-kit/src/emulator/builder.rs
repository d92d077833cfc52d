//! [`EmulatorBuilder`]: the clients, the token lifetime, plain HTTP or
//! HTTPS, the port, the control API, and starting the server.

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
    port: u16,
    control_api: bool,
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
            port: 0,
            control_api: false,
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

    /// Listens on `127.0.0.1:port`. The default, 0, lets the system choose
    /// a free port, which [`Emulator::addr`] then tells: what tests want,
    /// since they may run side by side. A fixed port is for an emulator
    /// that other programs are configured to find, as the
    /// `routera-emulator` binary does (port 7357 unless told otherwise).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Turns on the control API (off by default): three more routes on the
    /// same server, so that a process other than the test (a shell, a
    /// script, a program under test) can steer the emulator over HTTP.
    ///
    /// * `POST /emulator/revoke`: revokes every token issued so far, as
    ///   [`Emulator::revoke_all`]; answers `204 No Content`.
    /// * `POST /emulator/fault` with a form body
    ///   (`application/x-www-form-urlencoded`, as `curl -d` sends):
    ///   - `status=503` answers every token request with that status and no
    ///     body ([`Fault::status`](super::Fault::status)); with
    ///     `retry_after=5`, with `Retry-After: 5` and a JSON error body
    ///     ([`Fault::retry_after`](super::Fault::retry_after)). The status
    ///     is from 200 to 599.
    ///   - `delay_ms=2000` answers them normally, that many milliseconds
    ///     late ([`Fault::slow`](super::Fault::slow)).
    ///   - either with `times=2`: only the next two token requests, as
    ///     [`Emulator::inject_times`]; without it, until the fault is
    ///     cleared, as [`Emulator::inject`].
    ///
    ///   It replaces any fault armed before and answers `204 No Content`. A
    ///   form it cannot read (no `status` nor `delay_ms`, both, an unknown
    ///   or repeated field, a value that is not a number in range) is a
    ///   `400` with a JSON body `{"error":"invalid_request",
    ///   "error_description":…}` saying what was wrong and what to send;
    ///   nothing is armed then.
    /// * `DELETE /emulator/fault`: clears the fault, as
    ///   [`Emulator::clear_fault`]; answers `204 No Content`.
    ///
    /// Another method on these paths is a `405` with `Allow`. Requests to
    /// the control API are not counted in [`Emulator::token_requests`] or
    /// [`Emulator::resource_requests`], and no fault applies to them.
    /// Without this option, the paths are a `404`, like any unknown path.
    ///
    /// The control API has no authentication: anything that can reach
    /// `127.0.0.1` can use it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use routera_auth_test::Emulator;
    ///
    /// let emulator = Emulator::builder().control_api().start().await?;
    /// let client = reqwest::Client::builder().no_proxy().build()?;
    /// let fault_url = format!("{}/emulator/fault", emulator.base_url());
    /// let armed = client
    ///     .post(&fault_url)
    ///     .header("content-type", "application/x-www-form-urlencoded")
    ///     .body("status=503&retry_after=5&times=1")
    ///     .send()
    ///     .await?;
    /// assert_eq!(armed.status(), 204);
    ///
    /// let provider = emulator.provider();
    /// let error = provider.token().await.unwrap_err();
    /// assert_eq!(error.status().map(|status| status.as_u16()), Some(503));
    /// assert_eq!(error.retry_after(), Some(std::time::Duration::from_secs(5)));
    /// # Ok(())
    /// # }
    /// ```
    pub fn control_api(mut self) -> Self {
        self.control_api = true;
        self
    }

    /// Binds `127.0.0.1` on the [port](EmulatorBuilder::port) (by default
    /// one the system chooses) and starts serving on the current Tokio
    /// runtime.
    ///
    /// # Errors
    ///
    /// The I/O error if binding fails (for a fixed port, of kind
    /// [`AddrInUse`](std::io::ErrorKind::AddrInUse) when another socket
    /// holds it); for HTTPS, an error of kind
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
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, self.port)).await?;
        let addr = listener.local_addr()?;
        let (shutdown_sender, shutdown) = watch::channel(());
        let state = Arc::new(State::new(
            clients,
            self.expires_in,
            shutdown,
            self.control_api,
        ));
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
            .field("port", &self.port)
            .field("control_api", &self.control_api)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::super::test_client::{issue_token, ping};
    use super::*;

    #[tokio::test]
    async fn port_binds_that_port_on_loopback() {
        // A port the system just handed out, free again once released.
        let probe = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);

        let emulator = Emulator::builder().port(port).start().await.unwrap();
        assert_eq!(emulator.addr(), (Ipv4Addr::LOCALHOST, port).into());
        assert_eq!(
            emulator.token_url(),
            format!("http://127.0.0.1:{port}/oauth2/token")
        );
        let token = issue_token(&emulator).await;
        let answer = ping(&emulator, Some(&format!("Bearer {token}"))).await;
        assert_eq!(answer.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn a_port_held_by_another_socket_is_an_addr_in_use_error() {
        let holder = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = holder.local_addr().unwrap().port();
        let error = Emulator::builder().port(port).start().await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AddrInUse, "{error}");

        // Port 0, the default, always finds one.
        let first = Emulator::builder().port(0).start().await.unwrap();
        let second = Emulator::builder().start().await.unwrap();
        assert_ne!(first.addr().port(), 0);
        assert_ne!(first.addr(), second.addr());
    }

    #[test]
    fn debug_shows_the_port_and_the_control_api() {
        let builder = Emulator::builder();
        let debug = format!("{builder:?}");
        assert!(debug.contains("port: 0"), "{debug}");
        assert!(debug.contains("control_api: false"), "{debug}");
        let builder = builder.port(7357).control_api();
        let debug = format!("{builder:?}");
        assert!(debug.contains("port: 7357"), "{debug}");
        assert!(debug.contains("control_api: true"), "{debug}");
    }
}
