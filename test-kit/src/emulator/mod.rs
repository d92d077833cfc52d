//! The emulator itself. This file holds the [`Emulator`] handle and its
//! builder; the rest is split by concern:
//!
//! * `builder`: [`EmulatorBuilder`] and starting the server;
//! * `state`: what the handle and the server tasks share, and
//!   [`RecordedRequest`];
//! * `server`: the accept loop, connections over plain HTTP or TLS, and
//!   routing;
//! * `control`: the control API, `/emulator/...`
//!   ([`EmulatorBuilder::control_api`]);
//! * `response`: the body of every response, and JSON answers;
//! * `tls`: the generated CA and server certificate (features `rustls` or
//!   `rustls-ring`);
//! * `grpc`: the gRPC health service;
//! * `token_endpoint`: `POST /oauth2/token`;
//! * `resource`: the protected resource and [`TokenValidator`];
//! * `fault`: [`Fault`] and the answers given under one;
//! * `fault_body`: the bodies of the faults that stream or break;
//! * `exchange`: the client side, [`EmulatorExchange`],
//!   [`Emulator::exchange`] and [`Emulator::provider`].

mod builder;
mod control;
mod exchange;
mod fault;
mod fault_body;
mod grpc;
mod resource;
mod response;
mod server;
mod state;
#[cfg(test)]
mod test_client;
mod tls;
mod token_endpoint;

pub use builder::EmulatorBuilder;
pub use exchange::EmulatorExchange;
pub use fault::Fault;
pub use resource::TokenValidator;
pub use state::RecordedRequest;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use self::resource::RESOURCE_PATH;
use self::state::{State, lock, set_client};
use self::token_endpoint::TOKEN_PATH;

/// Client registered when the builder is given none.
const DEFAULT_CLIENT_ID: &str = "routera-test-client";
/// Secret of the default client.
const DEFAULT_CLIENT_SECRET: &str = "routera-test-secret";
/// Default token lifetime.
const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(3600);

/// An in-process Routera server for tests and examples.
///
/// It listens on `127.0.0.1`, on a port chosen by the system unless
/// [`EmulatorBuilder::port`] chose one, and serves:
///
/// * `POST /oauth2/token`: the client-credentials token endpoint. The client
///   authenticates with `client_id` and `client_secret` form fields or with
///   `Authorization: Basic` (each part form-urlencoded, per RFC 6749 §2.3.1).
///   Success is a 200 with `{"access_token", "expires_in", "token_type":
///   "Bearer"}`; errors are RFC 6749 §5.2 JSON bodies (400 for a missing,
///   repeated or wrong parameter, a wrong content type or two authentication
///   methods, 401 `invalid_client` for missing or wrong credentials, 405 for
///   another method).
/// * any method on `/v1/ping`: 200 `{"ok":true}` with
///   `Authorization: Bearer <token>` carrying a token this emulator issued
///   that is neither revoked nor expired, 401 with a `WWW-Authenticate:
///   Bearer` challenge otherwise.
/// * `POST /grpc.health.v1.Health/Check` over HTTP/2, which an HTTPS
///   emulator offers through ALPN ([`EmulatorBuilder::https`]): the gRPC
///   health check, `SERVING` with a bearer token that `/v1/ping` would
///   accept, status `UNAUTHENTICATED` otherwise. Counted with the protected
///   resource's requests.
/// * with [`EmulatorBuilder::control_api`], `POST /emulator/revoke`,
///   `POST /emulator/fault` and `DELETE /emulator/fault`: what
///   [`Emulator::revoke_all`], [`Emulator::inject`] and
///   [`Emulator::clear_fault`] do, over HTTP, for a process other than the
///   test.
/// * 404 for every other path.
///
/// The `routera-emulator` binary of this crate runs one from a shell (see
/// the [crate documentation](crate#from-a-shell-the-routera-emulator-binary)).
///
/// [`Emulator::inject`] and [`Emulator::inject_times`] make the token
/// endpoint misbehave (see [`Fault`]); the protected resource is never
/// affected.
///
/// [`Emulator::provider`] and [`Emulator::exchange`] give the client side,
/// wired to it.
///
/// Dropping the handle stops accepting connections and closes, without an
/// answer, every connection held by a [`Fault::Hang`] or waiting on a
/// [`Fault::Slow`]; other connections already open may finish. `Debug`
/// shows the address and the counters, never a secret or a token.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use routera_auth::TokenErrorKind;
/// use routera_auth_test::{Emulator, Fault};
///
/// let emulator = Emulator::builder().client("svc", "s3cr3t").start().await?;
/// let provider = emulator.provider();
///
/// let token = provider.token().await?;
/// assert!(emulator.token_validator().is_valid(token.secret()));
///
/// // The endpoint fails once; a new exchange meets the fault.
/// emulator.inject_times(Fault::status(503), 1);
/// let err = provider.refresh().await.unwrap_err();
/// assert_eq!(err.kind(), TokenErrorKind::ServerError);
/// assert_eq!(emulator.exchange_count(), 1, "only successful exchanges count");
/// # Ok(())
/// # }
/// ```
pub struct Emulator {
    addr: SocketAddr,
    /// The CA certificate (PEM) of an HTTPS emulator.
    ca_pem: Option<String>,
    state: Arc<State>,
    accept_loop: JoinHandle<()>,
    /// Never sent on: dropping it (with the handle) releases hung requests.
    _shutdown: watch::Sender<()>,
}

impl Emulator {
    /// Starts an emulator with the default client (`routera-test-client` /
    /// `routera-test-secret`) and one-hour tokens.
    ///
    /// # Errors
    ///
    /// The I/O error if binding `127.0.0.1:0` fails.
    pub async fn start() -> std::io::Result<Emulator> {
        Self::builder().start().await
    }

    /// The address the emulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The token endpoint URL, `http://127.0.0.1:PORT/oauth2/token`
    /// (`https://` when serving HTTPS).
    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.base_url())
    }

    /// The protected resource URL, `http://127.0.0.1:PORT/v1/ping`
    /// (`https://` when serving HTTPS).
    pub fn resource_url(&self) -> String {
        format!("{}{RESOURCE_PATH}", self.base_url())
    }

    /// The URL of the server itself, `http://127.0.0.1:PORT` or
    /// `https://127.0.0.1:PORT`: for a gRPC channel to the health service.
    pub fn base_url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// The PEM certificate of the CA that issued the server certificate of
    /// an HTTPS emulator ([`EmulatorBuilder::https`]); `None` for plain
    /// HTTP.
    ///
    /// Each emulator generates a CA of its own: a client that trusts this
    /// one trusts this emulator only. With
    /// [`EmulatorBuilder::https_self_signed`], the server certificate is not
    /// issued by this CA.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The credentials of the first registered client, with its current
    /// secret (see [`Emulator::set_client`]).
    pub fn credentials(&self) -> routera_auth::ClientCredentials {
        match lock(&self.state.clients).first() {
            Some((id, secret)) => {
                routera_auth::ClientCredentials::new(id.as_str(), secret.as_str())
            }
            // The builder always registers at least one client.
            None => routera_auth::ClientCredentials::new(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET),
        }
    }

    /// How many tokens were issued (successful exchanges).
    pub fn exchange_count(&self) -> u64 {
        self.state.exchange_count.load(Ordering::SeqCst)
    }

    /// How many requests reached `/oauth2/token`, accepted or not, whatever
    /// their method.
    pub fn token_requests(&self) -> u64 {
        self.state.token_requests.load(Ordering::SeqCst)
    }

    /// How many requests reached the protected resource, accepted or not.
    pub fn resource_requests(&self) -> u64 {
        self.state.resource_requests.load(Ordering::SeqCst)
    }

    /// Registers a client while the emulator runs, or replaces the secret of
    /// a registered one: for secret-rotation tests.
    ///
    /// From now on the token endpoint accepts `id` only with `secret`; the
    /// old secret gets a 401 `invalid_client`. Tokens already issued, to this
    /// client or another, stay valid until they expire or
    /// [`Emulator::revoke_all`] is called, as with a real authorization
    /// server. A request is checked against the clients registered when its
    /// answer is built (after the delay of a [`Fault::Slow`]).
    ///
    /// A new client is registered after the others, so
    /// [`Emulator::credentials`] changes only when `id` is the first client,
    /// and then returns the new secret. Providers already built keep the
    /// credentials they were given: hand them the new ones with
    /// [`TokenProvider::set_credentials`](routera_auth::TokenProvider::set_credentials).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use routera_auth_test::Emulator;
    ///
    /// let emulator = Emulator::start().await?;
    /// let provider = emulator.provider();
    /// let before = provider.token().await?;
    ///
    /// let id = emulator.credentials().client_id().to_owned();
    /// emulator.set_client(id.as_str(), "rotated-secret");
    /// assert!(provider.refresh().await.is_err(), "the old secret is refused");
    /// assert!(emulator.token_validator().is_valid(before.secret()), "old tokens still work");
    ///
    /// provider.set_credentials(emulator.credentials());
    /// assert_ne!(provider.refresh().await?, before);
    /// # Ok(())
    /// # }
    /// ```
    pub fn set_client(&self, id: impl Into<String>, secret: impl Into<String>) {
        set_client(&mut lock(&self.state.clients), id.into(), secret.into());
    }

    /// Revokes every token issued so far: the protected resource rejects them
    /// from now on. Tokens issued later are not affected.
    pub fn revoke_all(&self) {
        self.state.revoke_all();
    }

    /// A cheap, cloneable check of tokens against this emulator, for servers
    /// of a test's own (a tonic interceptor, an axum extractor) that accept
    /// only what the emulator issued. It outlives the emulator (and then
    /// still answers from the tokens issued before the drop).
    pub fn token_validator(&self) -> TokenValidator {
        TokenValidator {
            state: Arc::clone(&self.state),
        }
    }

    /// Every access token issued so far, in the order they were issued,
    /// revoked and expired ones included: for tests asserting that no token
    /// leaks into logs, errors or `Debug` output.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.state.tokens).in_order.clone()
    }

    /// From now on, every request to the token endpoint gets `fault`
    /// instead of its normal answer (for [`Fault::Slow`], its normal answer
    /// late), until [`Emulator::clear_fault`] or another `inject`. Replaces
    /// any fault injected before.
    ///
    /// The request is still read, counted in [`Emulator::token_requests`]
    /// and recorded for [`Emulator::last_token_request`];
    /// [`Emulator::exchange_count`] counts only tokens actually issued, so a
    /// faulty answer does not move it. Requests already being answered are
    /// not affected: a fault is chosen when a request arrives.
    pub fn inject(&self, fault: Fault) {
        self.state.arm(fault, None);
    }

    /// Like [`Emulator::inject`], but only for the next `n` token requests
    /// (counted as they arrive, concurrent ones included); the endpoint then
    /// behaves normally again. `n == 0` is [`Emulator::clear_fault`].
    pub fn inject_times(&self, fault: Fault, n: u64) {
        self.state.arm(fault, Some(n));
    }

    /// Removes any injected fault: token requests arriving from now on are
    /// served normally. Requests already hanging keep hanging.
    pub fn clear_fault(&self) {
        self.state.clear_fault();
    }

    /// Sets the lifetime of the tokens issued from now on.
    ///
    /// `expires_in` in the response is the lifetime in whole seconds, rounded
    /// down; the token stops being accepted once the full `lifetime` has
    /// elapsed on the [`tokio::time`] clock.
    pub fn set_expires_in(&self, lifetime: Duration) {
        *lock(&self.state.expires_in) = lifetime;
    }

    /// The last request that reached `/oauth2/token`, accepted or not; `None`
    /// before the first one.
    pub fn last_token_request(&self) -> Option<RecordedRequest> {
        lock(&self.state.last_token_request).clone()
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

impl fmt::Debug for Emulator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let clients = lock(&self.state.clients);
        let client_ids: Vec<&str> = clients.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .field("https", &self.ca_pem.is_some())
            .field("client_ids", &client_ids)
            .field("exchange_count", &self.exchange_count())
            .field("token_requests", &self.token_requests())
            .field("resource_requests", &self.resource_requests())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;
    use http::header;
    use http_body_util::BodyExt as _;

    use super::test_client::{
        body_auth, exchange_body, exchange_response, issue_token, ping, send, token_request,
    };
    use super::*;

    #[tokio::test]
    async fn inject_times_expires_after_n_requests() {
        let emulator = Emulator::start().await.unwrap();
        emulator.inject_times(Fault::retry_after(503, 1), 2);
        for _ in 0..2 {
            let answer = exchange_body(&emulator).await;
            assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(answer.header(header::RETRY_AFTER), Some("1"));
        }
        let first = issue_token(&emulator).await;
        let second = issue_token(&emulator).await;
        assert_eq!(emulator.token_requests(), 4);
        assert_eq!(emulator.exchange_count(), 2);
        assert_eq!(emulator.issued_tokens(), vec![first, second]);

        // Zero times is no fault at all.
        emulator.inject_times(Fault::status(500), 0);
        assert_eq!(exchange_body(&emulator).await.status, StatusCode::OK);

        // A new injection replaces the previous one, counted or not.
        emulator.inject(Fault::status(500));
        emulator.inject_times(Fault::status(502), 1);
        assert_eq!(
            exchange_body(&emulator).await.status,
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(exchange_body(&emulator).await.status, StatusCode::OK);
        emulator.inject_times(Fault::status(502), 5);
        emulator.inject(Fault::status(500));
        for _ in 0..6 {
            assert_eq!(
                exchange_body(&emulator).await.status,
                StatusCode::INTERNAL_SERVER_ERROR
            );
        }
        assert_eq!(emulator.token_requests(), 13);
        assert_eq!(emulator.exchange_count(), 4);
        assert_eq!(emulator.issued_tokens().len(), 4);
    }

    #[tokio::test]
    async fn clear_fault_restores_normal_service() {
        let emulator = Emulator::start().await.unwrap();
        emulator.inject(Fault::html(502));
        for _ in 0..3 {
            assert_eq!(
                exchange_body(&emulator).await.status,
                StatusCode::BAD_GATEWAY
            );
        }
        emulator.clear_fault();
        let token = issue_token(&emulator).await;
        let bearer = format!("Bearer {token}");
        assert_eq!(ping(&emulator, Some(&bearer)).await.status, StatusCode::OK);

        emulator.inject_times(Fault::status(500), 3);
        assert_eq!(
            exchange_body(&emulator).await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        emulator.clear_fault();
        assert_eq!(exchange_body(&emulator).await.status, StatusCode::OK);
        // Clearing twice, or with nothing injected, is harmless.
        emulator.clear_fault();
        emulator.clear_fault();
        assert_eq!(exchange_body(&emulator).await.status, StatusCode::OK);

        assert_eq!(emulator.token_requests(), 7);
        assert_eq!(emulator.exchange_count(), 3);
        assert_eq!(emulator.resource_requests(), 1);
    }

    #[tokio::test]
    async fn issued_tokens_lists_every_token_in_order() {
        let emulator = Emulator::start().await.unwrap();
        assert!(emulator.issued_tokens().is_empty());
        let mut issued = Vec::new();
        for _ in 0..3 {
            issued.push(issue_token(&emulator).await);
        }
        emulator.revoke_all();
        emulator.inject_times(Fault::ResetMidResponse, 1);
        let response = exchange_response(&emulator).await;
        assert!(response.into_body().collect().await.is_err());
        issued.push(issue_token(&emulator).await);
        let wrong = body_auth("routera-test-client", "wrong");
        let answer = send(&emulator, token_request(&emulator, None, &wrong)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

        assert_eq!(emulator.issued_tokens(), issued);
        assert_eq!(emulator.exchange_count(), 4);
        assert_eq!(emulator.token_requests(), 6);
        let unique: std::collections::HashSet<_> = issued.iter().collect();
        assert_eq!(unique.len(), 4);
        let debug = format!("{emulator:?}");
        for token in &issued {
            assert!(!debug.contains(token.as_str()), "{debug}");
        }
    }

    #[tokio::test]
    async fn set_client_rotates_a_secret_or_adds_a_client_at_run_time() {
        let emulator = Emulator::start().await.unwrap();
        let before = issue_token(&emulator).await;
        let id = emulator.credentials().client_id().to_owned();
        let old = body_auth(&id, "routera-test-secret");

        emulator.set_client(id.as_str(), "rotated");
        let answer = send(&emulator, token_request(&emulator, None, &old)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(emulator.credentials().client_secret(), "rotated");
        let after = issue_token(&emulator).await;
        // Tokens issued before the rotation are still accepted.
        for token in [&before, &after] {
            let answer = ping(&emulator, Some(&format!("Bearer {token}"))).await;
            assert_eq!(answer.status, StatusCode::OK);
        }

        // A new client goes after the others: the first one stays first.
        emulator.set_client("late-client", "late-secret");
        let late = body_auth("late-client", "late-secret");
        let answer = send(&emulator, token_request(&emulator, None, &late)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(emulator.credentials().client_id(), id);
        assert_eq!(emulator.exchange_count(), 3);

        let debug = format!("{emulator:?}");
        assert!(debug.contains("late-client"), "{debug}");
        for secret in ["late-secret", "rotated", "routera-test-secret"] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }

    #[tokio::test]
    async fn debug_never_shows_secrets_or_tokens() {
        let builder = Emulator::builder().client("visible-id", "hidden-secret");
        let debug = format!("{builder:?}");
        assert!(debug.contains("visible-id"), "{debug}");
        assert!(!debug.contains("hidden-secret"), "{debug}");

        let emulator = builder.start().await.unwrap();
        let token = issue_token(&emulator).await;
        let debug = format!("{emulator:?}");
        assert!(debug.contains("visible-id"), "{debug}");
        assert!(!debug.contains("hidden-secret"), "{debug}");
        assert!(!debug.contains(&token), "{debug}");
    }

    #[tokio::test]
    async fn dropping_the_handle_stops_accepting() {
        let emulator = Emulator::start().await.unwrap();
        let addr = emulator.addr();
        drop(emulator);
        // Let the runtime cancel the accept loop and close the listener.
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
