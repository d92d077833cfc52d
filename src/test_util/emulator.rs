//! The emulator itself: state, HTTP server, the two endpoints and fault
//! injection.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::error::Error as StdError;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Path of the token endpoint.
const TOKEN_PATH: &str = "/oauth2/token";
/// Path of the protected resource.
const RESOURCE_PATH: &str = "/v1/ping";
/// Client registered when the builder is given none.
const DEFAULT_CLIENT_ID: &str = "routera-test-client";
/// Secret of the default client.
const DEFAULT_CLIENT_SECRET: &str = "routera-test-secret";
/// Default token lifetime.
const DEFAULT_EXPIRES_IN: Duration = Duration::from_secs(3600);
/// Largest request body the emulator reads.
const MAX_BODY: usize = 64 * 1024;

/// `WWW-Authenticate` of a token-endpoint 401 when Basic was used.
const BASIC_CHALLENGE: &str = r#"Basic realm="routera""#;
/// `WWW-Authenticate` of a resource 401 when no bearer token was sent.
const BEARER_CHALLENGE: &str = r#"Bearer realm="routera""#;
/// `WWW-Authenticate` of a resource 401 for a bad bearer token.
const BEARER_INVALID_TOKEN: &str = r#"Bearer realm="routera", error="invalid_token""#;

/// What [`Fault::ResetMidResponse`] sends of its body before aborting.
const RESET_PREFIX: &[u8] = br#"{"access_token":""#;
/// `Content-Length` that [`Fault::ResetMidResponse`] declares.
const RESET_DECLARED_LENGTH: usize = 1000;
/// Size of the chunks of a [`Fault::Oversized`] body.
const OVERSIZED_CHUNK: usize = 16 * 1024;
/// Start of an [`Fault::Oversized`] body of at least
/// `OVERSIZED_PREFIX.len() + OVERSIZED_SUFFIX.len()` bytes.
const OVERSIZED_PREFIX: &[u8] = br#"{"padding":""#;
/// End of such a body.
const OVERSIZED_SUFFIX: &[u8] = br#""}"#;

/// An in-process Routera server for tests and examples.
///
/// It listens on `127.0.0.1` on a port chosen by the system and serves:
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
/// * 404 for every other path.
///
/// [`Emulator::inject`] and [`Emulator::inject_times`] make the token
/// endpoint misbehave (see [`Fault`]); the protected resource is never
/// affected.
///
/// Dropping the handle stops accepting connections and closes, without an
/// answer, every connection held by a [`Fault::Hang`]; other connections
/// already open may finish. `Debug` shows the address and the counters, never
/// a secret or a token.
pub struct Emulator {
    addr: SocketAddr,
    state: Arc<State>,
    accept_loop: JoinHandle<()>,
    /// Never sent on: dropping it (with the handle) releases hung requests.
    _shutdown: watch::Sender<()>,
}

/// A way for the token endpoint to misbehave; see [`Emulator::inject`].
///
/// A faulty token endpoint still reads the whole request first, counts it in
/// [`Emulator::token_requests`] and records it for
/// [`Emulator::last_token_request`], but issues no token, whatever the
/// credentials: [`Emulator::exchange_count`] does not move. Faults apply to
/// every request to `/oauth2/token`, whatever its method.
///
/// The constructors take the status as a number; a number that is not a
/// valid HTTP status (outside `100..=999`) becomes 500. 1xx statuses cannot
/// be sent as a final answer: hyper replaces them with a 500 (and treats 101
/// as a protocol switch). hyper adds a `Date` header and, unless a
/// `Content-Length` or `Transfer-Encoding` header is given, a `Content-Length`
/// matching the body. It sends no body for 204 and 304, nor to `HEAD`.
///
/// ```
/// use routera_auth::test_util::Fault;
///
/// let unavailable = Fault::retry_after(503, 30);
/// let gateway_page = Fault::html(502);
/// let huge = Fault::Oversized { len: 1 << 20, declare_length: false };
/// # let _ = (unavailable, gateway_page, huge);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Fault {
    /// Answer with this status, exactly these headers (plus those hyper
    /// adds) and this body instead of serving the request.
    Respond {
        /// The status of the answer.
        status: StatusCode,
        /// The headers of the answer.
        headers: HeaderMap,
        /// The body of the answer.
        body: Bytes,
    },
    /// Read the request, then never answer: the connection stays open, with
    /// no byte of response, until the client closes it or the [`Emulator`]
    /// is dropped, which closes it.
    ///
    /// The emulator sets no timer: only a client-side timeout ends the wait.
    /// Under paused Tokio time, such a timeout fires as soon as the runtime
    /// has nothing else to do.
    Hang,
    /// Send a `200` with `Content-Type: application/json` and
    /// `Content-Length: 1000`, then the first 17 bytes of a token response
    /// (`{"access_token":"`), then abort the connection: a reset in the middle
    /// of the body. A client gets the status and headers, then an error
    /// while reading the body, never a clean short body.
    ResetMidResponse,
    /// Answer `200` with `Content-Type: application/json` and a body of
    /// exactly `len` bytes, streamed in chunks of 16 KiB, so that a client
    /// must enforce its own size limit.
    ///
    /// The body is the JSON object `{"padding":"aaa…a"}` (or `len` spaces
    /// when `len` is under 14): valid JSON, but not a token response.
    Oversized {
        /// Size of the body, in bytes.
        len: usize,
        /// `false`: no `Content-Length`, the body is sent with
        /// `Transfer-Encoding: chunked`, so its size is only known by
        /// reading it. `true`: `Content-Length: len` is sent, so a client can
        /// refuse the body before reading it.
        declare_length: bool,
    },
}

impl Fault {
    /// `status` with no body.
    pub fn status(status: u16) -> Self {
        Self::Respond {
            status: status_code(status),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    /// `status` with `body` sent as is, labelled
    /// `Content-Type: application/json` (whether or not it is JSON).
    pub fn json(status: u16, body: &str) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Self::Respond {
            status: status_code(status),
            headers,
            body: Bytes::from(body.to_owned()),
        }
    }

    /// `status` with a small HTML error page, as a proxy or load balancer
    /// in front of the server would send it, with
    /// `Content-Type: text/html; charset=utf-8`.
    pub fn html(status: u16) -> Self {
        let status = status_code(status);
        let title = match status.canonical_reason() {
            Some(reason) => format!("{} {reason}", status.as_u16()),
            None => status.as_u16().to_string(),
        };
        let page = format!(
            "<!DOCTYPE html>\n<html>\n<head><title>{title}</title></head>\n\
             <body>\n<h1>{title}</h1>\n<hr><p>routera-emulator</p>\n</body>\n</html>\n"
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        Self::Respond {
            status,
            headers,
            body: Bytes::from(page),
        }
    }

    /// `status` with `Retry-After: <seconds>` and an RFC 6749 §5.2 style JSON
    /// body, `{"error":"temporarily_unavailable","error_description":…}`,
    /// as for a `429 Too Many Requests` or a `503 Service Unavailable`.
    pub fn retry_after(status: u16, seconds: u64) -> Self {
        let body = json!({
            "error": "temporarily_unavailable",
            "error_description": format!("retry after {seconds} seconds"),
        });
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        Self::Respond {
            status: status_code(status),
            headers,
            body: Bytes::from(body.to_string()),
        }
    }

    /// `status` (meant to be a 3xx such as 302 or 307, used as given) with
    /// `Location: <location>` and no body. Bytes of `location` that cannot
    /// appear in a header value as they are (controls, space, non-ASCII) are
    /// percent-encoded.
    pub fn redirect(status: u16, location: &str) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(header::LOCATION, location_value(location));
        Self::Respond {
            status: status_code(status),
            headers,
            body: Bytes::new(),
        }
    }
}

/// `code` as a status, 500 if it is not a valid one.
fn status_code(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// `location` as a header value, percent-encoding every byte outside visible
/// ASCII.
fn location_value(location: &str) -> HeaderValue {
    let mut encoded = String::with_capacity(location.len());
    for &byte in location.as_bytes() {
        if byte.is_ascii_graphic() {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static("/"))
}

/// Configures and starts an [`Emulator`]; see [`Emulator::builder`].
///
/// `Debug` shows the client ids, never the secrets.
#[derive(Clone)]
pub struct EmulatorBuilder {
    clients: Vec<(String, String)>,
    expires_in: Duration,
}

/// A request as it reached the emulator, for asserting the wire format in
/// tests.
///
/// This is a test helper holding plain data: its `Debug` output shows the
/// headers and the body as they were sent, credentials included.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// The request method.
    pub method: Method,
    /// The request target (path and query).
    pub uri: Uri,
    /// The request headers.
    pub headers: HeaderMap,
    /// The request body, as received.
    pub body: Bytes,
}

impl RecordedRequest {
    /// The body parsed as `application/x-www-form-urlencoded` pairs, decoded,
    /// in the order they were sent.
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body)
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect()
    }
}

/// State shared between the handle and the server tasks.
struct State {
    /// Registered clients, in registration order, ids unique.
    clients: Vec<(String, String)>,
    /// Lifetime of tokens issued from now on.
    expires_in: Mutex<Duration>,
    /// Every token issued.
    tokens: Mutex<Tokens>,
    exchange_count: AtomicU64,
    token_requests: AtomicU64,
    resource_requests: AtomicU64,
    last_token_request: Mutex<Option<RecordedRequest>>,
    /// The fault the token endpoint answers with, if any.
    fault: Mutex<Option<ArmedFault>>,
    /// Closed when the handle is dropped.
    shutdown: watch::Receiver<()>,
}

/// Issued tokens, by value and in the order they were issued.
#[derive(Default)]
struct Tokens {
    by_value: HashMap<String, Issued>,
    in_order: Vec<String>,
}

/// A fault and how many more token requests it applies to (`None`: all).
struct ArmedFault {
    fault: Fault,
    remaining: Option<u64>,
}

impl State {
    /// The fault for a token request that just arrived, if any, using up one
    /// of its remaining uses.
    fn take_fault(&self) -> Option<Fault> {
        let mut armed = lock(&self.fault);
        let current = armed.as_mut()?;
        let fault = current.fault.clone();
        if let Some(remaining) = &mut current.remaining {
            *remaining = remaining.saturating_sub(1);
            if *remaining == 0 {
                *armed = None;
            }
        }
        Some(fault)
    }
}

/// What the emulator remembers about an issued token.
struct Issued {
    expires_at: Instant,
    revoked: bool,
}

/// Checks bearer tokens against an [`Emulator`]; from
/// [`Emulator::token_validator`].
#[derive(Clone)]
pub struct TokenValidator {
    state: Arc<State>,
}

impl TokenValidator {
    /// Whether `token` was issued by the emulator and is neither revoked nor
    /// expired.
    pub fn is_valid(&self, token: &str) -> bool {
        token_problem(&self.state, token).is_none()
    }

    /// Whether an `Authorization` header value is `Bearer <token>` with a
    /// valid token.
    pub fn is_valid_authorization(&self, authorization: &str) -> bool {
        match authorization.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                self.is_valid(token.trim())
            }
            _ => false,
        }
    }
}

impl fmt::Debug for TokenValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenValidator").finish_non_exhaustive()
    }
}

/// Locks a mutex, recovering the data if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Emulator {
    /// A builder to register clients and set the token lifetime before
    /// starting.
    pub fn builder() -> EmulatorBuilder {
        EmulatorBuilder {
            clients: Vec::new(),
            expires_in: DEFAULT_EXPIRES_IN,
        }
    }

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

    /// The token endpoint URL, `http://127.0.0.1:PORT/oauth2/token`.
    pub fn token_url(&self) -> String {
        format!("http://{}{TOKEN_PATH}", self.addr)
    }

    /// The protected resource URL, `http://127.0.0.1:PORT/v1/ping`.
    pub fn resource_url(&self) -> String {
        format!("http://{}{RESOURCE_PATH}", self.addr)
    }

    /// The credentials of the first registered client.
    pub fn credentials(&self) -> crate::ClientCredentials {
        match self.state.clients.first() {
            Some((id, secret)) => crate::ClientCredentials::new(id.as_str(), secret.as_str()),
            // The builder always registers at least one client.
            None => crate::ClientCredentials::new(DEFAULT_CLIENT_ID, DEFAULT_CLIENT_SECRET),
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

    /// Revokes every token issued so far: the protected resource rejects them
    /// from now on. Tokens issued later are not affected.
    pub fn revoke_all(&self) {
        for issued in lock(&self.state.tokens).by_value.values_mut() {
            issued.revoked = true;
        }
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
    /// instead of its normal answer, until [`Emulator::clear_fault`] or
    /// another `inject`. Replaces any fault injected before.
    ///
    /// The request is still read, counted in [`Emulator::token_requests`]
    /// and recorded for [`Emulator::last_token_request`];
    /// [`Emulator::exchange_count`] counts only tokens actually issued, so a
    /// faulty answer does not move it. Requests already being answered are
    /// not affected: a fault is chosen when a request arrives.
    pub fn inject(&self, fault: Fault) {
        *lock(&self.state.fault) = Some(ArmedFault {
            fault,
            remaining: None,
        });
    }

    /// Like [`Emulator::inject`], but only for the next `n` token requests
    /// (counted as they arrive, concurrent ones included); the endpoint then
    /// behaves normally again. `n == 0` is [`Emulator::clear_fault`].
    pub fn inject_times(&self, fault: Fault, n: u64) {
        *lock(&self.state.fault) = (n > 0).then_some(ArmedFault {
            fault,
            remaining: Some(n),
        });
    }

    /// Removes any injected fault: token requests arriving from now on are
    /// served normally. Requests already hanging keep hanging.
    pub fn clear_fault(&self) {
        *lock(&self.state.fault) = None;
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
        let client_ids: Vec<&str> = self
            .state
            .clients
            .iter()
            .map(|(id, _)| id.as_str())
            .collect();
        f.debug_struct("Emulator")
            .field("addr", &self.addr)
            .field("client_ids", &client_ids)
            .field("exchange_count", &self.exchange_count())
            .field("token_requests", &self.token_requests())
            .field("resource_requests", &self.resource_requests())
            .finish_non_exhaustive()
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
        let (id, secret) = (id.into(), secret.into());
        match self.clients.iter_mut().find(|(known, _)| *known == id) {
            Some(entry) => entry.1 = secret,
            None => self.clients.push((id, secret)),
        }
        self
    }

    /// The lifetime of issued tokens (default one hour); see
    /// [`Emulator::set_expires_in`].
    pub fn expires_in(mut self, lifetime: Duration) -> Self {
        self.expires_in = lifetime;
        self
    }

    /// Binds `127.0.0.1:0` and starts serving on the current Tokio runtime.
    ///
    /// # Errors
    ///
    /// The I/O error if binding fails.
    pub async fn start(self) -> std::io::Result<Emulator> {
        let mut clients = self.clients;
        if clients.is_empty() {
            clients.push((
                DEFAULT_CLIENT_ID.to_owned(),
                DEFAULT_CLIENT_SECRET.to_owned(),
            ));
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (shutdown_sender, shutdown) = watch::channel(());
        let state = Arc::new(State {
            clients,
            expires_in: Mutex::new(self.expires_in),
            tokens: Mutex::new(Tokens::default()),
            exchange_count: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            resource_requests: AtomicU64::new(0),
            last_token_request: Mutex::new(None),
            fault: Mutex::new(None),
            shutdown,
        });
        let accept_loop = tokio::spawn(accept_loop(listener, Arc::clone(&state)));
        Ok(Emulator {
            addr,
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
            .finish_non_exhaustive()
    }
}

/// Accepts connections until the task is aborted, one task per connection.
async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                tracing::debug!(%error, "routera emulator: accept failed");
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let state = Arc::clone(&state);
                async move { route(&state, request).await }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%error, "routera emulator: connection error");
            }
        });
    }
}

/// Dispatches on the path. An error closes the connection without an answer.
async fn route(state: &State, request: Request<Incoming>) -> Result<Response<Body>, Aborted> {
    match request.uri().path() {
        TOKEN_PATH => token_endpoint(state, request).await,
        RESOURCE_PATH => Ok(resource_endpoint(state, &request)),
        _ => Ok(json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": "not_found" }),
        )),
    }
}

/// `/oauth2/token`: counts, reads and records the request, then answers it
/// with the injected fault if there is one, with [`token_response`]
/// otherwise.
async fn token_endpoint(
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<Body>, Aborted> {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let fault = state.take_fault();
    let (parts, body) = request.into_parts();
    let recorded = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => {
            let recorded = RecordedRequest {
                method: parts.method,
                uri: parts.uri,
                headers: parts.headers,
                body: collected.to_bytes(),
            };
            *lock(&state.last_token_request) = Some(recorded.clone());
            Ok(recorded)
        }
        Err(error) => Err(error),
    };
    if let Some(fault) = fault {
        return fault_response(state, fault).await;
    }
    Ok(match recorded {
        Ok(recorded) => token_response(state, &recorded),
        Err(error) => {
            let (status, description) = if error.is::<LengthLimitError>() {
                (StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
            } else {
                (StatusCode::BAD_REQUEST, "could not read the request body")
            };
            oauth_error(status, "invalid_request", description, false)
        }
    })
}

/// The answer of the token endpoint under `fault`.
async fn fault_response(state: &State, fault: Fault) -> Result<Response<Body>, Aborted> {
    let response = match fault {
        Fault::Respond {
            status,
            headers,
            body,
        } => {
            let mut response = Response::new(Body::Full(Full::new(body)));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response
        }
        Fault::Hang => {
            // Nothing is ever sent on the channel: `changed` fails once the
            // handle is dropped. If the client closes the connection first,
            // hyper drops this future.
            let mut shutdown = state.shutdown.clone();
            while shutdown.changed().await.is_ok() {}
            return Err(Aborted(
                "hung token request released by dropping the emulator",
            ));
        }
        Fault::ResetMidResponse => {
            let mut response = Response::new(Body::Reset {
                prefix: Some(Bytes::from_static(RESET_PREFIX)),
                paused: false,
            });
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            headers.insert(
                header::CONTENT_LENGTH,
                HeaderValue::from(RESET_DECLARED_LENGTH),
            );
            response
        }
        Fault::Oversized {
            len,
            declare_length,
        } => {
            let mut response = Response::new(Body::Oversized {
                sent: 0,
                len,
                declare_length,
            });
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if declare_length {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            response
        }
    };
    Ok(response)
}

/// The answer of the token endpoint to a complete request. Every token
/// endpoint response is built here.
fn token_response(state: &State, request: &RecordedRequest) -> Response<Body> {
    if request.method != Method::POST {
        let mut response = oauth_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "the token endpoint only accepts POST",
            false,
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    if !is_form_urlencoded(&request.headers) {
        return bad_request(
            "invalid_request",
            "the request body must be application/x-www-form-urlencoded",
        );
    }

    let mut grant_type = None;
    let mut client_id = None;
    let mut client_secret = None;
    for (name, value) in form_urlencoded::parse(&request.body) {
        let slot = match name.as_ref() {
            "grant_type" => &mut grant_type,
            "client_id" => &mut client_id,
            "client_secret" => &mut client_secret,
            _ => continue,
        };
        if slot.is_some() {
            // RFC 6749 §3.2: parameters MUST NOT be included more than once.
            return bad_request("invalid_request", "a request parameter is repeated");
        }
        // RFC 6749 §3.1: parameters without a value are treated as omitted.
        *slot = Some(value.into_owned()).filter(|value| !value.is_empty());
    }

    let authorization = request.headers.get(header::AUTHORIZATION);
    if authorization.is_some() && (client_id.is_some() || client_secret.is_some()) {
        return bad_request(
            "invalid_request",
            "client credentials were sent both in the Authorization header and in the body",
        );
    }

    match grant_type.as_deref() {
        Some("client_credentials") => {}
        Some(_) => {
            return bad_request(
                "unsupported_grant_type",
                "grant_type must be client_credentials",
            );
        }
        None => return bad_request("invalid_request", "grant_type is missing"),
    }

    let basic = authorization.is_some();
    let (id, secret) = match authorization {
        Some(value) => match parse_basic(value) {
            Some(credentials) => credentials,
            None => {
                return unauthorized_client("malformed or unsupported Authorization header", true);
            }
        },
        None => match (client_id, client_secret) {
            (Some(id), Some(secret)) => (id, secret),
            (None, None) => return unauthorized_client("no client authentication included", false),
            _ => {
                return unauthorized_client(
                    "client_id and client_secret must be sent together",
                    false,
                );
            }
        },
    };
    let known = state
        .clients
        .iter()
        .any(|(known_id, known_secret)| *known_id == id && *known_secret == secret);
    if !known {
        return unauthorized_client("client authentication failed", basic);
    }

    let lifetime = *lock(&state.expires_in);
    let token = new_token();
    {
        let mut tokens = lock(&state.tokens);
        tokens.by_value.insert(
            token.clone(),
            Issued {
                expires_at: Instant::now() + lifetime,
                revoked: false,
            },
        );
        tokens.in_order.push(token.clone());
    }
    state.exchange_count.fetch_add(1, Ordering::SeqCst);
    json_response(
        StatusCode::OK,
        &json!({
            "access_token": token,
            "expires_in": lifetime.as_secs(),
            "token_type": "Bearer",
        }),
    )
}

/// Any method on `/v1/ping`.
fn resource_endpoint(state: &State, request: &Request<Incoming>) -> Response<Body> {
    state.resource_requests.fetch_add(1, Ordering::SeqCst);
    let Some(token) = bearer_token(request.headers()) else {
        let mut response = json_response(
            StatusCode::UNAUTHORIZED,
            &json!({ "error": "unauthorized", "error_description": "no bearer token" }),
        );
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(BEARER_CHALLENGE),
        );
        return response;
    };
    match token_problem(state, token) {
        None => json_response(StatusCode::OK, &json!({ "ok": true })),
        Some(description) => {
            let mut response = json_response(
                StatusCode::UNAUTHORIZED,
                &json!({ "error": "invalid_token", "error_description": description }),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(BEARER_INVALID_TOKEN),
            );
            response
        }
    }
}

/// Why `token` is not accepted, if it is not.
fn token_problem(state: &State, token: &str) -> Option<&'static str> {
    match lock(&state.tokens).by_value.get(token) {
        None => Some("unknown token"),
        Some(issued) if issued.revoked => Some("token revoked"),
        Some(issued) if Instant::now() >= issued.expires_at => Some("token expired"),
        Some(_) => None,
    }
}

/// The token of an `Authorization: Bearer <token>` header (scheme in any case).
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("Bearer") && !token.is_empty()).then_some(token)
}

/// Decodes `Authorization: Basic` as RFC 6749 §2.3.1 says: base64, split at
/// the first `:`, then form-urldecode each half. `None` if any step fails.
fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("Basic") {
        return None;
    }
    let decoded = BASE64.decode(encoded.trim()).ok()?;
    let colon = decoded.iter().position(|&byte| byte == b':')?;
    let id = form_urldecode(&decoded[..colon])?;
    let secret = form_urldecode(&decoded[colon + 1..])?;
    Some((id, secret))
}

/// Decodes one `application/x-www-form-urlencoded` value: `+` is a space,
/// `%XX` a byte. Strict: a `%` not followed by two hex digits, or a result
/// that is not UTF-8, is `None`.
fn form_urldecode(input: &[u8]) -> Option<String> {
    let mut output = Vec::with_capacity(input.len());
    let mut bytes = input.iter();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'+' => output.push(b' '),
            b'%' => {
                let high = hex_value(*bytes.next()?)?;
                let low = hex_value(*bytes.next()?)?;
                output.push(high << 4 | low);
            }
            other => output.push(other),
        }
    }
    String::from_utf8(output).ok()
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|value| u8::try_from(value).ok())
}

/// Whether `Content-Type` is `application/x-www-form-urlencoded`, parameters
/// (such as `charset`) allowed.
fn is_form_urlencoded(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// A fresh opaque token: `rt_` then hex digits, unique in the process (a
/// counter) and hard to guess (keyed SipHash from [`RandomState`]).
fn new_token() -> String {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    let random = |salt: u64| {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(serial);
        hasher.write_u64(salt);
        hasher.finish()
    };
    format!("rt_{:016x}{:016x}{serial:x}", random(0), random(1))
}

/// A 400 with an RFC 6749 §5.2 body.
fn bad_request(error: &str, description: &str) -> Response<Body> {
    oauth_error(StatusCode::BAD_REQUEST, error, description, false)
}

/// A 401 `invalid_client`, with the Basic challenge if Basic was used.
fn unauthorized_client(description: &str, basic: bool) -> Response<Body> {
    oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        description,
        basic,
    )
}

/// An RFC 6749 §5.2 error response.
fn oauth_error(
    status: StatusCode,
    error: &str,
    description: &str,
    basic_challenge: bool,
) -> Response<Body> {
    let mut response = json_response(
        status,
        &json!({ "error": error, "error_description": description }),
    );
    if basic_challenge {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(BASIC_CHALLENGE),
        );
    }
    response
}

/// A JSON response that must not be cached.
fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(Body::Full(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// Why the emulator cut a connection: a hung request released, or a
/// response aborted on purpose.
#[derive(Debug)]
struct Aborted(&'static str);

impl fmt::Display for Aborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl StdError for Aborted {}

/// The body of every emulator response.
enum Body {
    /// The whole body at once.
    Full(Full<Bytes>),
    /// [`Fault::ResetMidResponse`]: `prefix`, then one `Pending` so that
    /// hyper flushes what it has, then an error, on which hyper drops the
    /// connection.
    Reset { prefix: Option<Bytes>, paused: bool },
    /// [`Fault::Oversized`]: `len` bytes in chunks, `sent` so far.
    Oversized {
        sent: usize,
        len: usize,
        declare_length: bool,
    },
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        match self.get_mut() {
            Body::Full(full) => match Pin::new(full).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => Poll::Ready(Some(Ok(frame))),
                Poll::Ready(Some(Err(never))) => match never {},
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            Body::Reset { prefix, paused } => {
                if let Some(prefix) = prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(prefix))));
                }
                if !*paused {
                    *paused = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Some(Err(Aborted(
                    "response aborted mid-body by fault injection",
                ))))
            }
            Body::Oversized { sent, len, .. } => {
                if *sent >= *len {
                    return Poll::Ready(None);
                }
                let end = len.saturating_sub(*sent).min(OVERSIZED_CHUNK) + *sent;
                let chunk: Vec<u8> = (*sent..end).map(|at| oversized_byte(at, *len)).collect();
                *sent = end;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(full) => full.is_end_stream(),
            // Never announced in advance: a chunked body stays chunked even
            // when empty.
            Body::Reset { .. } | Body::Oversized { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(full) => full.size_hint(),
            Body::Reset { .. } => SizeHint::new(),
            Body::Oversized {
                sent,
                len,
                declare_length,
            } => {
                let remaining = u64::try_from(len.saturating_sub(*sent)).unwrap_or(u64::MAX);
                if *declare_length {
                    SizeHint::with_exact(remaining)
                } else {
                    // No upper bound, or hyper would send a Content-Length.
                    let mut hint = SizeHint::new();
                    hint.set_lower(remaining);
                    hint
                }
            }
        }
    }
}

/// Byte `at` of an oversized body of `len` bytes: `{"padding":"aaa…a"}`, or
/// spaces when that does not fit.
fn oversized_byte(at: usize, len: usize) -> u8 {
    let frame = OVERSIZED_PREFIX.len() + OVERSIZED_SUFFIX.len();
    if len < frame {
        return b' ';
    }
    let suffix_start = len - OVERSIZED_SUFFIX.len();
    if let Some(&byte) = OVERSIZED_PREFIX.get(at) {
        byte
    } else if at >= suffix_start {
        OVERSIZED_SUFFIX
            .get(at - suffix_start)
            .copied()
            .unwrap_or(b' ')
    } else {
        b'a'
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Status, headers and body of a response.
    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    }

    impl Answer {
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap()
        }

        fn header(&self, name: header::HeaderName) -> Option<&str> {
            self.headers.get(name).map(|value| value.to_str().unwrap())
        }
    }

    /// Sends one request over a fresh connection with a raw hyper client.
    async fn send(emulator: &Emulator, request: Request<Full<Bytes>>) -> Answer {
        let stream = tokio::net::TcpStream::connect(emulator.addr())
            .await
            .unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let response = sender.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    fn host(emulator: &Emulator) -> String {
        emulator.addr().to_string()
    }

    fn token_request(
        emulator: &Emulator,
        authorization: Option<&str>,
        body: &str,
    ) -> Request<Full<Bytes>> {
        let mut builder = Request::post(TOKEN_PATH)
            .header(header::HOST, host(emulator))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(authorization) = authorization {
            builder = builder.header(header::AUTHORIZATION, authorization);
        }
        builder
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap()
    }

    fn form(pairs: &[(&str, &str)]) -> String {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    }

    fn body_auth(id: &str, secret: &str) -> String {
        form(&[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", secret),
        ])
    }

    fn encode(value: &str) -> String {
        form_urlencoded::byte_serialize(value.as_bytes()).collect()
    }

    /// `Basic` as RFC 6749 §2.3.1 specifies.
    fn basic_rfc(id: &str, secret: &str) -> String {
        let joined = format!("{}:{}", encode(id), encode(secret));
        format!("Basic {}", BASE64.encode(joined))
    }

    /// `Basic` as RFC 7617 alone would do it, without form-urlencoding.
    fn basic_raw(id: &str, secret: &str) -> String {
        format!("Basic {}", BASE64.encode(format!("{id}:{secret}")))
    }

    async fn exchange_body(emulator: &Emulator) -> Answer {
        let credentials = emulator.credentials();
        let body = body_auth(credentials.client_id(), credentials.client_secret());
        send(emulator, token_request(emulator, None, &body)).await
    }

    async fn issue_token(emulator: &Emulator) -> String {
        let answer = exchange_body(emulator).await;
        assert_eq!(answer.status, StatusCode::OK);
        answer.json()["access_token"].as_str().unwrap().to_owned()
    }

    async fn ping(emulator: &Emulator, authorization: Option<&str>) -> Answer {
        let mut builder = Request::get(RESOURCE_PATH).header(header::HOST, host(emulator));
        if let Some(authorization) = authorization {
            builder = builder.header(header::AUTHORIZATION, authorization);
        }
        send(emulator, builder.body(Full::new(Bytes::new())).unwrap()).await
    }

    fn assert_oauth_error(answer: &Answer, status: StatusCode, error: &str) {
        assert_eq!(answer.status, status, "{:?}", answer.body);
        assert_eq!(
            answer.header(header::CONTENT_TYPE),
            Some("application/json")
        );
        let json = answer.json();
        assert_eq!(json["error"], error, "{json}");
        assert!(json["error_description"].is_string(), "{json}");
    }

    #[tokio::test]
    async fn body_authentication_issues_a_bearer_token() {
        let emulator = Emulator::start().await.unwrap();
        assert_eq!(
            emulator.token_url(),
            format!("http://127.0.0.1:{}/oauth2/token", emulator.addr().port())
        );
        assert_eq!(
            emulator.resource_url(),
            format!("http://127.0.0.1:{}/v1/ping", emulator.addr().port())
        );
        let credentials = emulator.credentials();
        assert_eq!(credentials.client_id(), "routera-test-client");
        assert_eq!(credentials.client_secret(), "routera-test-secret");

        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.header(header::CONTENT_TYPE),
            Some("application/json")
        );
        assert_eq!(answer.header(header::CACHE_CONTROL), Some("no-store"));
        let json = answer.json();
        let object = json.as_object().unwrap();
        assert_eq!(object.len(), 3, "{json}");
        assert_eq!(json["expires_in"], 3600);
        assert_eq!(json["token_type"], "Bearer");
        let token = json["access_token"].as_str().unwrap();
        assert!(token.starts_with("rt_"), "{token}");
        assert!(token.len() > 32, "{token}");
        assert!(HeaderValue::from_str(&format!("Bearer {token}")).is_ok());

        let second = issue_token(&emulator).await;
        assert_ne!(second, token);
        assert_eq!(emulator.exchange_count(), 2);
        assert_eq!(emulator.token_requests(), 2);
        assert_eq!(emulator.resource_requests(), 0);

        let recorded = emulator.last_token_request().unwrap();
        assert_eq!(recorded.method, Method::POST);
        assert_eq!(recorded.uri.path(), TOKEN_PATH);
        assert_eq!(
            recorded.headers.get(header::CONTENT_TYPE).unwrap(),
            "application/x-www-form-urlencoded"
        );
        assert_eq!(
            recorded.form(),
            vec![
                ("grant_type".to_owned(), "client_credentials".to_owned()),
                ("client_id".to_owned(), "routera-test-client".to_owned()),
                ("client_secret".to_owned(), "routera-test-secret".to_owned()),
            ]
        );
    }

    #[tokio::test]
    async fn basic_authentication_follows_rfc_6749() {
        let id = "svc:1 é";
        let secret = "p: a+b/c&d%e=f é";
        let emulator = Emulator::builder()
            .client("first", "first-secret")
            .client(id, secret)
            .start()
            .await
            .unwrap();
        let grant = form(&[("grant_type", "client_credentials")]);

        let authorization = basic_rfc(id, secret);
        let answer = send(
            &emulator,
            token_request(&emulator, Some(&authorization), &grant),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        assert_eq!(answer.json()["token_type"], "Bearer");
        let recorded = emulator.last_token_request().unwrap();
        assert_eq!(
            recorded.headers.get(header::AUTHORIZATION).unwrap(),
            authorization.as_str()
        );
        assert_eq!(recorded.body, Bytes::from(grant.clone()));

        // The same credentials without form-urlencoding do not match once the
        // secret holds `+` or `%` (the colon in the id also splits wrongly).
        let plain_id = "svc";
        let emulator = Emulator::builder()
            .client(plain_id, "a+b")
            .client("svc2", "x%41y")
            .client("svc3", "50%")
            .client("svc4", "A-z_0.9~")
            .client("svc5", "p:q")
            .start()
            .await
            .unwrap();
        for (client, secret) in [(plain_id, "a+b"), ("svc2", "x%41y"), ("svc3", "50%")] {
            let ok = basic_rfc(client, secret);
            let answer = send(&emulator, token_request(&emulator, Some(&ok), &grant)).await;
            assert_eq!(answer.status, StatusCode::OK, "{secret}");

            let raw = basic_raw(client, secret);
            let answer = send(&emulator, token_request(&emulator, Some(&raw), &grant)).await;
            assert_oauth_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");
            assert_eq!(
                answer.header(header::WWW_AUTHENTICATE),
                Some(r#"Basic realm="routera""#)
            );
            assert!(!String::from_utf8_lossy(&answer.body).contains(secret));
        }

        // Unreserved characters read the same either way.
        let raw = basic_raw("svc4", "A-z_0.9~");
        let answer = send(&emulator, token_request(&emulator, Some(&raw), &grant)).await;
        assert_eq!(answer.status, StatusCode::OK);

        // The split is at the first colon: a raw colon in the secret stays in it.
        let raw = basic_raw("svc5", "p:q");
        let answer = send(&emulator, token_request(&emulator, Some(&raw), &grant)).await;
        assert_eq!(answer.status, StatusCode::OK);

        assert_eq!(emulator.exchange_count(), 5);
        assert_eq!(emulator.token_requests(), 8);
    }

    #[tokio::test]
    async fn missing_or_wrong_grant_type_is_a_400() {
        let emulator = Emulator::start().await.unwrap();
        let credentials = emulator.credentials();
        let (id, secret) = (credentials.client_id(), credentials.client_secret());

        let missing = form(&[("client_id", id), ("client_secret", secret)]);
        let answer = send(&emulator, token_request(&emulator, None, &missing)).await;
        assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");

        let empty = form(&[
            ("grant_type", ""),
            ("client_id", id),
            ("client_secret", secret),
        ]);
        let answer = send(&emulator, token_request(&emulator, None, &empty)).await;
        assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");

        let wrong = form(&[
            ("grant_type", "password"),
            ("client_id", id),
            ("client_secret", secret),
        ]);
        let answer = send(&emulator, token_request(&emulator, None, &wrong)).await;
        assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "unsupported_grant_type");

        let grant = form(&[("grant_type", "client_credentials")]);
        let both = format!("{grant}&{}", form(&[("client_id", id)]));
        let answer = send(
            &emulator,
            token_request(&emulator, Some(&basic_rfc(id, secret)), &both),
        )
        .await;
        assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");

        let repeated = format!("{}&{grant}", body_auth(id, secret));
        let answer = send(&emulator, token_request(&emulator, None, &repeated)).await;
        assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");

        let json = Request::post(TOKEN_PATH)
            .header(header::HOST, host(&emulator))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body_auth(id, secret))))
            .unwrap();
        let answer = send(&emulator, json).await;
        assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");

        assert_eq!(emulator.exchange_count(), 0);
        assert_eq!(emulator.token_requests(), 6);
    }

    #[tokio::test]
    async fn bad_client_credentials_are_a_401() {
        let emulator = Emulator::start().await.unwrap();
        let id = emulator.credentials().client_id().to_owned();

        let wrong_secret = body_auth(&id, "not-the-secret");
        let answer = send(&emulator, token_request(&emulator, None, &wrong_secret)).await;
        assert_oauth_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");
        assert_eq!(answer.header(header::WWW_AUTHENTICATE), None);
        assert!(!String::from_utf8_lossy(&answer.body).contains("not-the-secret"));

        let unknown = body_auth("someone-else", "routera-test-secret");
        let answer = send(&emulator, token_request(&emulator, None, &unknown)).await;
        assert_oauth_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");

        let grant = form(&[("grant_type", "client_credentials")]);
        let answer = send(&emulator, token_request(&emulator, None, &grant)).await;
        assert_oauth_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");

        let basic = basic_rfc(&id, "not-the-secret");
        let answer = send(&emulator, token_request(&emulator, Some(&basic), &grant)).await;
        assert_oauth_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");
        assert_eq!(
            answer.header(header::WWW_AUTHENTICATE),
            Some(r#"Basic realm="routera""#)
        );
        assert!(!String::from_utf8_lossy(&answer.body).contains("not-the-secret"));

        let answer = send(
            &emulator,
            token_request(&emulator, Some("Basic !!not base64!!"), &grant),
        )
        .await;
        assert_oauth_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");

        assert_eq!(emulator.exchange_count(), 0);
        assert_eq!(emulator.token_requests(), 5);
    }

    #[tokio::test]
    async fn wrong_method_and_unknown_path() {
        let emulator = Emulator::start().await.unwrap();
        let get = Request::get(TOKEN_PATH)
            .header(header::HOST, host(&emulator))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = send(&emulator, get).await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(answer.header(header::ALLOW), Some("POST"));
        assert_eq!(emulator.last_token_request().unwrap().method, Method::GET);

        let other = Request::post("/oauth2/token/extra")
            .header(header::HOST, host(&emulator))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = send(&emulator, other).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);

        assert_eq!(emulator.token_requests(), 1);
        assert_eq!(emulator.resource_requests(), 0);
        assert_eq!(emulator.exchange_count(), 0);
    }

    #[tokio::test]
    async fn resource_accepts_only_live_issued_tokens() {
        let emulator = Emulator::start().await.unwrap();

        let answer = ping(&emulator, None).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            answer.header(header::WWW_AUTHENTICATE),
            Some(r#"Bearer realm="routera""#)
        );

        let token = issue_token(&emulator).await;
        let bearer = format!("Bearer {token}");
        let answer = ping(&emulator, Some(&bearer)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.header(header::CONTENT_TYPE),
            Some("application/json")
        );
        assert_eq!(answer.json(), json!({ "ok": true }));

        let answer = ping(&emulator, Some("Bearer rt_forged")).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert!(
            answer
                .header(header::WWW_AUTHENTICATE)
                .unwrap()
                .contains(r#"error="invalid_token""#)
        );

        emulator.revoke_all();
        let answer = ping(&emulator, Some(&bearer)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert!(
            answer
                .header(header::WWW_AUTHENTICATE)
                .unwrap()
                .contains(r#"error="invalid_token""#)
        );

        // Tokens issued after the revocation work.
        let fresh = issue_token(&emulator).await;
        let answer = ping(&emulator, Some(&format!("Bearer {fresh}"))).await;
        assert_eq!(answer.status, StatusCode::OK);

        assert_eq!(emulator.resource_requests(), 5);
        assert_eq!(emulator.exchange_count(), 2);
        assert_eq!(emulator.token_requests(), 2);
    }

    #[tokio::test]
    async fn tokens_expire_on_the_tokio_clock() {
        let emulator = Emulator::builder()
            .expires_in(Duration::from_secs(120))
            .start()
            .await
            .unwrap();
        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.json()["expires_in"], 120);

        // Real I/O still works on paused time: neither side sets a timer, so
        // the clock does not auto-advance while waiting for the socket.
        tokio::time::pause();
        emulator.set_expires_in(Duration::from_secs(60));
        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.json()["expires_in"], 60);
        let bearer = format!("Bearer {}", answer.json()["access_token"].as_str().unwrap());

        tokio::time::advance(Duration::from_millis(59_999)).await;
        assert_eq!(ping(&emulator, Some(&bearer)).await.status, StatusCode::OK);
        tokio::time::advance(Duration::from_millis(1)).await;
        let answer = ping(&emulator, Some(&bearer)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert!(
            answer
                .header(header::WWW_AUTHENTICATE)
                .unwrap()
                .contains(r#"error="invalid_token""#)
        );
        tokio::time::resume();

        assert_eq!(emulator.resource_requests(), 2);
        assert_eq!(emulator.exchange_count(), 2);
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

    /// Opens a connection; the task drives it until it closes or is aborted.
    async fn connect(
        emulator: &Emulator,
    ) -> (
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        JoinHandle<()>,
    ) {
        let stream = tokio::net::TcpStream::connect(emulator.addr())
            .await
            .unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let task = tokio::spawn(async move {
            let _ = connection.await;
        });
        (sender, task)
    }

    /// A valid token request for the default client.
    fn exchange_request(emulator: &Emulator) -> Request<Full<Bytes>> {
        let credentials = emulator.credentials();
        let body = body_auth(credentials.client_id(), credentials.client_secret());
        token_request(emulator, None, &body)
    }

    /// Reads a body frame by frame: the data, the number of data frames and
    /// the error that ended it, if one did.
    async fn read_frames(body: &mut Incoming) -> (Vec<u8>, usize, Option<hyper::Error>) {
        let (mut data, mut frames) = (Vec::new(), 0);
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => {
                    if let Ok(chunk) = frame.into_data() {
                        data.extend_from_slice(&chunk);
                        frames += 1;
                    }
                }
                Err(error) => return (data, frames, Some(error)),
            }
        }
        (data, frames, None)
    }

    /// Waits, on real time, until `done` holds; fails after five seconds.
    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn respond_faults_answer_as_told() {
        let emulator = Emulator::start().await.unwrap();
        let token = issue_token(&emulator).await;
        let bearer = format!("Bearer {token}");

        emulator.inject(Fault::status(502));
        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
        assert!(answer.body.is_empty(), "{:?}", answer.body);
        assert_eq!(answer.header(header::CONTENT_TYPE), None);
        assert_eq!(answer.header(header::CONTENT_LENGTH), Some("0"));

        let body = r#"{"error":"invalid_client","error_description":"nope"}"#;
        emulator.inject(Fault::json(401, body));
        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            answer.header(header::CONTENT_TYPE),
            Some("application/json")
        );
        assert_eq!(answer.body, Bytes::from(body));

        emulator.inject(Fault::html(503));
        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            answer.header(header::CONTENT_TYPE),
            Some("text/html; charset=utf-8")
        );
        let page = String::from_utf8(answer.body.to_vec()).unwrap();
        assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
        assert!(
            page.contains("<title>503 Service Unavailable</title>"),
            "{page}"
        );
        assert!(serde_json::from_slice::<Value>(&answer.body).is_err());

        emulator.inject(Fault::retry_after(429, 7));
        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(answer.header(header::RETRY_AFTER), Some("7"));
        assert_eq!(
            answer.header(header::CONTENT_TYPE),
            Some("application/json")
        );
        assert_eq!(answer.json()["error"], "temporarily_unavailable");
        assert!(answer.json()["error_description"].is_string());

        emulator.inject(Fault::redirect(
            307,
            "http://elsewhere.example/oauth2/token",
        ));
        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.status, StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(
            answer.header(header::LOCATION),
            Some("http://elsewhere.example/oauth2/token")
        );
        assert!(answer.body.is_empty());

        emulator.inject(Fault::redirect(302, "/a b/é"));
        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.status, StatusCode::FOUND);
        assert_eq!(answer.header(header::LOCATION), Some("/a%20b/%C3%A9"));

        // Not a valid status: 500 rather than a panic.
        emulator.inject(Fault::status(1000));
        assert_eq!(
            exchange_body(&emulator).await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );

        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("abc"));
        emulator.inject(Fault::Respond {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"not json"),
        });
        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("x-request-id".parse().unwrap()), Some("abc"));
        assert_eq!(answer.header(header::CONTENT_TYPE), None);
        assert_eq!(answer.body, Bytes::from_static(b"not json"));

        // Requests are still read, counted and recorded; no token is issued.
        assert_eq!(emulator.token_requests(), 9);
        assert_eq!(emulator.exchange_count(), 1);
        assert_eq!(emulator.issued_tokens(), vec![token]);
        let recorded = emulator.last_token_request().unwrap();
        assert_eq!(recorded.method, Method::POST);
        assert_eq!(recorded.form()[0].1, "client_credentials");

        // The protected resource does not care.
        assert_eq!(ping(&emulator, Some(&bearer)).await.status, StatusCode::OK);
        assert_eq!(ping(&emulator, None).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(emulator.resource_requests(), 2);
        let other = Request::get("/elsewhere")
            .header(header::HOST, host(&emulator))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(&emulator, other).await.status, StatusCode::NOT_FOUND);
        assert_eq!(emulator.token_requests(), 9);
    }

    #[tokio::test]
    async fn faults_apply_to_every_token_request_even_invalid_ones() {
        let emulator = Emulator::start().await.unwrap();
        emulator.inject(Fault::status(503));
        let get = Request::get(TOKEN_PATH)
            .header(header::HOST, host(&emulator))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(
            send(&emulator, get).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let wrong = body_auth("someone", "wrong");
        let answer = send(&emulator, token_request(&emulator, None, &wrong)).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(emulator.last_token_request().unwrap().body, wrong);
        assert_eq!(emulator.token_requests(), 2);
        assert_eq!(emulator.exchange_count(), 0);
    }

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
    async fn hang_never_answers_and_is_released_by_drop() {
        let emulator = Emulator::start().await.unwrap();
        let token = issue_token(&emulator).await;
        emulator.inject(Fault::Hang);

        let (mut sender, _connection) = connect(&emulator).await;
        let request = exchange_request(&emulator);
        let mut pending = tokio::spawn(async move { sender.send_request(request).await });
        let waited = tokio::time::timeout(Duration::from_millis(200), &mut pending).await;
        assert!(waited.is_err(), "a hung request got an answer: {waited:?}");

        // The request was read, counted and recorded, but no token issued.
        assert_eq!(emulator.token_requests(), 2);
        assert_eq!(emulator.exchange_count(), 1);
        let recorded = emulator.last_token_request().unwrap();
        assert_eq!(recorded.form()[0].1, "client_credentials");

        // Other connections and the protected resource still work.
        let answer = ping(&emulator, Some(&format!("Bearer {token}"))).await;
        assert_eq!(answer.status, StatusCode::OK);
        emulator.clear_fault();
        issue_token(&emulator).await;
        assert!(!pending.is_finished());

        // Dropping the emulator closes the hung connection without an
        // answer, and every task holding the state ends.
        let state = Arc::downgrade(&emulator.state);
        drop(emulator);
        let outcome = tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .expect("the hung request outlived the emulator")
            .unwrap();
        let error = outcome.expect_err("a hung request got an answer");
        assert!(error.is_incomplete_message(), "{error:?}");
        eventually("the emulator's tasks end", || state.strong_count() == 0).await;
    }

    #[tokio::test]
    async fn hang_ends_when_the_client_gives_up() {
        let emulator = Emulator::start().await.unwrap();
        emulator.inject(Fault::Hang);
        let idle = Arc::strong_count(&emulator.state);

        let (mut sender, connection) = connect(&emulator).await;
        let request = exchange_request(&emulator);
        let pending = tokio::spawn(async move { sender.send_request(request).await });
        eventually("the request is hanging", || emulator.token_requests() == 1).await;
        assert!(Arc::strong_count(&emulator.state) > idle);

        // The client gives up: its connection closes, the server's
        // connection task and the hung request with it.
        pending.abort();
        connection.abort();
        eventually("the hung connection is closed", || {
            Arc::strong_count(&emulator.state) == idle
        })
        .await;
        assert_eq!(emulator.exchange_count(), 0);
    }

    #[tokio::test]
    async fn reset_mid_response_fails_the_body_not_the_head() {
        let emulator = Emulator::start().await.unwrap();
        emulator.inject(Fault::ResetMidResponse);
        let (mut sender, _connection) = connect(&emulator).await;
        let response = sender
            .send_request(exchange_request(&emulator))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "1000");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let mut body = response.into_body();
        let (data, _, error) = read_frames(&mut body).await;
        assert_eq!(data, RESET_PREFIX);
        let error = error.expect("the body ended cleanly");
        // The connection ended before the declared length: an early EOF.
        let cause = StdError::source(&error)
            .and_then(|cause| cause.downcast_ref::<std::io::Error>())
            .unwrap_or_else(|| panic!("{error:?}"));
        assert_eq!(cause.kind(), std::io::ErrorKind::UnexpectedEof, "{error:?}");

        // With a client that collects the body in one go.
        let response = {
            let (mut sender, _connection) = connect(&emulator).await;
            sender
                .send_request(exchange_request(&emulator))
                .await
                .unwrap()
        };
        assert!(response.into_body().collect().await.is_err());

        assert_eq!(emulator.token_requests(), 2);
        assert_eq!(emulator.exchange_count(), 0);
        assert!(emulator.issued_tokens().is_empty());
    }

    #[tokio::test]
    async fn oversized_streams_exactly_len_bytes() {
        let emulator = Emulator::start().await.unwrap();
        let len = (1 << 20) + 5;

        emulator.inject(Fault::Oversized {
            len,
            declare_length: false,
        });
        let (mut sender, _connection) = connect(&emulator).await;
        let response = sender
            .send_request(exchange_request(&emulator))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(response.headers().get(header::CONTENT_LENGTH), None);
        assert_eq!(response.headers()[header::TRANSFER_ENCODING], "chunked");
        let mut body = response.into_body();
        let (data, frames, error) = read_frames(&mut body).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(data.len(), len);
        assert!(frames > 1, "{frames}");
        assert!(data.starts_with(br#"{"padding":"aaa"#));
        assert!(data.ends_with(br#"aaa"}"#));
        let json: Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(json["padding"].as_str().unwrap().len(), len - 14);

        emulator.inject(Fault::Oversized {
            len,
            declare_length: true,
        });
        let (mut sender, _connection) = connect(&emulator).await;
        let response = sender
            .send_request(exchange_request(&emulator))
            .await
            .unwrap();
        assert_eq!(
            response.headers()[header::CONTENT_LENGTH],
            len.to_string().as_str()
        );
        assert_eq!(response.headers().get(header::TRANSFER_ENCODING), None);
        let data = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(data.len(), len);
        assert!(serde_json::from_slice::<Value>(&data).is_ok());

        // Small and empty bodies keep their framing.
        for (len, expected) in [(14, &br#"{"padding":""}"#[..]), (5, b"     "), (0, b"")] {
            emulator.inject(Fault::Oversized {
                len,
                declare_length: false,
            });
            let (mut sender, _connection) = connect(&emulator).await;
            let response = sender
                .send_request(exchange_request(&emulator))
                .await
                .unwrap();
            assert_eq!(response.headers()[header::TRANSFER_ENCODING], "chunked");
            assert_eq!(response.headers().get(header::CONTENT_LENGTH), None);
            let data = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&data[..], expected, "{len}");
        }

        assert_eq!(emulator.token_requests(), 5);
        assert_eq!(emulator.exchange_count(), 0);
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
        let (mut sender, _connection) = connect(&emulator).await;
        let response = sender
            .send_request(exchange_request(&emulator))
            .await
            .unwrap();
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

    #[test]
    fn oversized_bodies_are_valid_json_when_they_can_be() {
        let body = |len| {
            (0..len)
                .map(|at| oversized_byte(at, len))
                .collect::<Vec<u8>>()
        };
        assert_eq!(body(14), br#"{"padding":""}"#);
        assert_eq!(body(15), br#"{"padding":"a"}"#);
        assert_eq!(body(13), b"             ");
        assert!(body(0).is_empty());
        let fault = Fault::Oversized {
            len: 3,
            declare_length: true,
        };
        assert!(format!("{:?}", fault.clone()).contains("Oversized"));
    }

    #[test]
    fn form_urldecode_is_strict_about_percent_escapes() {
        assert_eq!(form_urldecode(b"a+b%2Bc%C3%A9").as_deref(), Some("a b+cé"));
        assert_eq!(form_urldecode(b"50%"), None);
        assert_eq!(form_urldecode(b"%4"), None);
        assert_eq!(form_urldecode(b"%zz"), None);
        assert_eq!(form_urldecode(b"%FF"), None);
    }

    #[test]
    fn tokens_are_unique_and_header_safe() {
        let tokens: std::collections::HashSet<String> = (0..1000).map(|_| new_token()).collect();
        assert_eq!(tokens.len(), 1000);
        for token in &tokens {
            assert!(token.starts_with("rt_"));
            assert!(token[3..].chars().all(|c| c.is_ascii_hexdigit()), "{token}");
        }
    }
}
