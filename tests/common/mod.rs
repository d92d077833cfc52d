//! Helpers shared by the integration tests, on `tower_test` mocks and the
//! public `MockExchange`.
#![allow(dead_code)]

use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use bytes::Bytes;
use http_body_util::Full;
use routera_auth::{
    BoxError, ClientCredentials, HttpTokenExchange, Token, TokenError, TokenRequest,
};
use routera_auth_test::MockExchange;
use tower::ServiceExt;
use tower_test::mock;

#[cfg(feature = "redis-cluster")]
pub mod cluster;

/// The credentials of `MockExchange::provider`.
pub fn credentials() -> ClientCredentials {
    MockExchange::credentials()
}

/// The HTTP client under an `HttpTokenExchange` in these tests: a
/// `tower_test` mock.
pub type MockHttp = mock::Mock<http::Request<Full<Bytes>>, http::Response<Full<Bytes>>>;

/// The service under the layer: a `tower_test` mock whose requests a
/// spawned task answers with `answer`, and the number of requests it has
/// answered so far. If `answer` panics, that request fails with an error
/// saying so, with the panic's message (rather than the mock closing).
/// (A test that counts the runtime's tasks uses `tower_test::mock::pair`
/// and answers in the test instead.)
pub fn answering<B, R>(
    mut answer: impl FnMut(http::Request<B>) -> http::Response<R> + Send + 'static,
) -> (
    mock::Mock<http::Request<B>, http::Response<R>>,
    Arc<AtomicUsize>,
)
where
    B: Send + 'static,
    R: Send + 'static,
{
    let (service, mut handle) = mock::pair();
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = answered.clone();
    tokio::spawn(async move {
        // Ends when every clone of the mock is gone.
        while let Some((request, respond)) = handle.next_request().await {
            match std::panic::catch_unwind(AssertUnwindSafe(|| answer(request))) {
                Ok(response) => {
                    counter.fetch_add(1, Ordering::SeqCst);
                    respond.send_response(response);
                }
                Err(panic) => respond.send_error(panic_error(panic.as_ref())),
            }
        }
    });
    (service, answered)
}

/// The error a request to `answering`'s mock fails with when the test's
/// closure panicked: the panic's message.
fn panic_error(panic: &(dyn std::any::Any + Send)) -> BoxError {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic without a message)");
    format!("the test's responder panicked: {message}").into()
}

/// Runs one exchange of `request` through `configure(HttpTokenExchange::new(mock))`,
/// answering its HTTP request with `answer` (a response, or a transport
/// error): the result, and the request it sent, checked to be the only one.
pub async fn exchange_once(
    configure: impl FnOnce(HttpTokenExchange<MockHttp>) -> HttpTokenExchange<MockHttp>,
    request: TokenRequest,
    answer: Result<http::Response<Full<Bytes>>, BoxError>,
) -> (Result<Token, TokenError>, http::Request<Full<Bytes>>) {
    let (http, mut handle) = mock::pair();
    let exchange = configure(HttpTokenExchange::new(http));
    let respond = async {
        let (sent, respond) = handle
            .next_request()
            .await
            .expect("the exchange sends a request");
        match answer {
            Ok(response) => respond.send_response(response),
            Err(err) => respond.send_error(err),
        }
        sent
    };
    let (result, sent) = tokio::join!(exchange.oneshot(request), respond);
    assert!(
        matches!(handle.poll_request(), Poll::Ready(None)),
        "the exchange sent more than one HTTP request"
    );
    (result, sent)
}

/// The error a real `HttpTokenExchange` makes of one canned HTTP answer
/// (a response, or a transport error).
pub async fn exchange_error(answer: Result<http::Response<Bytes>, std::io::Error>) -> TokenError {
    let answer = answer
        .map(|response| response.map(Full::new))
        .map_err(BoxError::from);
    let (result, _) = exchange_once(
        |exchange| exchange,
        TokenRequest::new(credentials()),
        answer,
    )
    .await;
    result.unwrap_err()
}

/// A `TokenError` of the given status, as the HTTP exchange makes it.
pub async fn status_error(status: u16, body: &str) -> TokenError {
    let response = http::Response::builder()
        .status(status)
        .body(Bytes::from(body.to_owned()))
        .unwrap();
    exchange_error(Ok(response)).await
}

/// A transport `TokenError`, as the HTTP exchange makes it when the
/// connection fails.
pub async fn transport_error() -> TokenError {
    let reset = std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset by peer",
    );
    exchange_error(Err(reset)).await
}

/// A replica of a fleet: a provider over an exchange under a shared cache,
/// and that cache (whose `stats()` count what the replica did with the
/// store). Derefs to the provider.
#[cfg(feature = "shared-store")]
#[derive(Clone)]
pub struct Replica {
    pub provider: routera_auth::TokenProvider,
    pub cache: routera_auth::store::SharedCache,
}

#[cfg(feature = "shared-store")]
impl std::ops::Deref for Replica {
    type Target = routera_auth::TokenProvider;

    fn deref(&self) -> &routera_auth::TokenProvider {
        &self.provider
    }
}

/// A replica over `exchange` under `cache`, with `exchange_timeout`.
#[cfg(feature = "shared-store")]
pub fn layered<S>(
    cache: routera_auth::store::SharedCache,
    exchange: S,
    credentials: ClientCredentials,
    exchange_timeout: std::time::Duration,
) -> Replica
where
    S: tower::Service<TokenRequest, Response = Token, Error = TokenError> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    let layered = tower::ServiceBuilder::new()
        .layer(cache.clone())
        .service(exchange);
    let provider = routera_auth::TokenProvider::builder(layered, credentials)
        .exchange_timeout(exchange_timeout)
        .build();
    Replica { provider, cache }
}

/// What the crate logs on this thread, at every level, with span events:
/// from [`Capture::install`] until its guard is dropped.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// Captures this thread's tracing events (a current-thread runtime's
    /// tasks run on it) while the guard lives.
    pub fn install() -> (Self, tracing::subscriber::DefaultGuard) {
        let capture = Self::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (capture, tracing::subscriber::set_default(subscriber))
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An error and its sources, on one line.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Calls `service` with `request` and polls the call once, on a no-op
/// waker: the response of a service that answers at once (a fresh token
/// over an inner service that is always ready). Panics if it is not ready.
pub fn call_now<S, R>(service: &mut S, request: R) -> S::Response
where
    S: tower::Service<R>,
    S::Error: std::fmt::Debug,
{
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(service.poll_ready(&mut cx).is_ready());
    let future = std::pin::pin!(service.call(request));
    match std::future::Future::poll(future, &mut cx) {
        Poll::Ready(Ok(response)) => response,
        Poll::Ready(Err(error)) => panic!("expected a response, got {error:?}"),
        Poll::Pending => panic!("expected an immediate response"),
    }
}

/// The sum of a count of the replicas' shared caches.
#[cfg(feature = "shared-store")]
pub fn total(replicas: &[Replica], field: fn(&routera_auth::store::StoreStats) -> u64) -> u64 {
    replicas
        .iter()
        .map(|replica| field(&replica.cache.stats()))
        .sum()
}
