//! The emulator itself: state, HTTP server and the two endpoints.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
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

type Body = Full<Bytes>;

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
/// Dropping the handle stops accepting connections; connections already open
/// may finish. `Debug` shows the address and the counters, never a secret or a
/// token.
pub struct Emulator {
    addr: SocketAddr,
    state: Arc<State>,
    accept_loop: JoinHandle<()>,
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
    /// Every token issued, by value.
    tokens: Mutex<HashMap<String, Issued>>,
    exchange_count: AtomicU64,
    token_requests: AtomicU64,
    resource_requests: AtomicU64,
    last_token_request: Mutex<Option<RecordedRequest>>,
}

/// What the emulator remembers about an issued token.
struct Issued {
    expires_at: Instant,
    revoked: bool,
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
        for issued in lock(&self.state.tokens).values_mut() {
            issued.revoked = true;
        }
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
        let state = Arc::new(State {
            clients,
            expires_in: Mutex::new(self.expires_in),
            tokens: Mutex::new(HashMap::new()),
            exchange_count: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            resource_requests: AtomicU64::new(0),
            last_token_request: Mutex::new(None),
        });
        let accept_loop = tokio::spawn(accept_loop(listener, Arc::clone(&state)));
        Ok(Emulator {
            addr,
            state,
            accept_loop,
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
                async move { Ok::<_, Infallible>(route(&state, request).await) }
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

/// Dispatches on the path.
async fn route(state: &State, request: Request<Incoming>) -> Response<Body> {
    match request.uri().path() {
        TOKEN_PATH => token_endpoint(state, request).await,
        RESOURCE_PATH => resource_endpoint(state, &request),
        _ => json_response(StatusCode::NOT_FOUND, &json!({ "error": "not_found" })),
    }
}

/// `/oauth2/token`: counts and records the request, then answers it with
/// [`token_response`].
async fn token_endpoint(state: &State, request: Request<Incoming>) -> Response<Body> {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            let (status, description) = if error.is::<LengthLimitError>() {
                (StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
            } else {
                (StatusCode::BAD_REQUEST, "could not read the request body")
            };
            return oauth_error(status, "invalid_request", description, false);
        }
    };
    let recorded = RecordedRequest {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
    };
    *lock(&state.last_token_request) = Some(recorded.clone());
    token_response(state, &recorded)
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
    lock(&state.tokens).insert(
        token.clone(),
        Issued {
            expires_at: Instant::now() + lifetime,
            revoked: false,
        },
    );
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
    let problem = match lock(&state.tokens).get(token) {
        None => Some("unknown token"),
        Some(issued) if issued.revoked => Some("token revoked"),
        Some(issued) if Instant::now() >= issued.expires_at => Some("token expired"),
        Some(_) => None,
    };
    match problem {
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
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
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
