//! What the benchmarks and the instruction-count harness share: the token,
//! a no-op inner service that allocates nothing, a warm provider, and a
//! real loopback stack (a hyper server on 127.0.0.1 and a hyper-util
//! client).

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use routera_auth::clients::{CredentialSource, TokenProviders};
use routera_auth::{ClientCredentials, Token, TokenError, TokenProvider, TokenRequest};
use tokio::net::TcpListener;
use tower::Service;

/// A realistic token (a short JWT).
pub const TOKEN: &str =
    "eyJraWQiOiJiZW5jaCIsImFsZyI6IlJTMjU2In0.eyJzdWIiOiJiZW5jaC1jbGllbnQifQ.c2lnbmF0dXJl";

pub type NoopFuture = Ready<Result<Response<()>, Infallible>>;

thread_local! {
    /// Where `Noop` leaves each request, for the benchmark to send again.
    static RECYCLED: std::cell::Cell<Option<Request<()>>> = const { std::cell::Cell::new(None) };
}

/// The inner service: answers at once with an empty response and leaves the
/// request in a thread-local slot, so the benchmark can send it again.
/// Allocates nothing.
#[derive(Clone, Copy)]
pub struct Noop;

impl Service<Request<()>> for Noop {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = NoopFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> NoopFuture {
        RECYCLED.set(Some(request));
        ready(Ok(Response::new(())))
    }
}

/// A request with room for the header, as a client's builder leaves it.
pub fn request() -> Request<()> {
    let mut request = Request::new(());
    request.headers_mut().reserve(8);
    request
}

/// One request through `service`: ready, call, and the future polled to
/// completion, which for every service here is the first poll. The request
/// comes back from `Noop` and is made ready for the next round (the header
/// taken off), so the loop itself allocates nothing.
#[inline]
pub fn send<S>(service: &mut S, request: Request<()>) -> Request<()>
where
    S: Service<Request<()>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(service.poll_ready(&mut cx).is_ready());
    let future = pin!(service.call(request));
    match future.poll(&mut cx) {
        Poll::Ready(Ok(response)) => drop(black_box(response)),
        Poll::Ready(Err(err)) => panic!("request failed: {err:?}"),
        Poll::Pending => panic!("request did not complete at once"),
    }
    let mut request = RECYCLED.take().expect("Noop keeps the request");
    black_box(request.headers_mut().remove(AUTHORIZATION));
    request
}

/// Runs `send` in a loop with one reused request.
pub fn looped<S>(service: &mut S) -> impl FnMut() + '_
where
    S: Service<Request<()>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    let mut slot = Some(request());
    move || {
        if let Some(request) = slot.take() {
            slot = Some(send(service, request));
        }
    }
}

/// The client key of a request in the per-client benchmarks, in an
/// extension.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub struct Key(pub u32);

/// The key function of the per-client layer: the request's [`Key`].
pub fn key_of(request: &Request<()>) -> Option<Key> {
    request.extensions().get::<Key>().copied()
}

/// Runs `send` in a loop with one reused request, each time for the next
/// of keys `0..keys` (from `first`, round), set as an extension (which replaces the
/// last one without allocating). Services that read no key pay for the
/// extension all the same, so that the difference is the lookup.
pub fn looped_keys<S>(service: &mut S, keys: u32, first: u32) -> impl FnMut() + '_
where
    S: Service<Request<()>, Response = Response<()>>,
    S::Error: std::fmt::Debug,
{
    let mut slot = Some(request());
    let keys = keys.max(1);
    let mut next = first % keys;
    move || {
        if let Some(mut request) = slot.take() {
            request.extensions_mut().insert(Key(next));
            next = (next + 1) % keys;
            slot = Some(send(service, request));
        }
    }
}

/// A set of `keys` providers (keys `0..keys`), each with a fresh token
/// (one hour) over the same exchange, warmed on `runtime`, which runs
/// their workers and must outlive the benchmark.
pub fn warm_providers(runtime: &tokio::runtime::Runtime, keys: u32) -> TokenProviders<Key> {
    let source = CredentialSource::from_fn(|Key(key)| async move {
        Ok::<_, Infallible>(ClientCredentials::new(
            format!("bench-{key}"),
            "bench-secret",
        ))
    });
    let providers = TokenProviders::builder(
        exchange(Duration::ZERO, Duration::from_secs(3600), Arc::default()),
        source,
    )
    // Room for twice `keys`: the cache's shards each hold their share, and
    // keys spread over them unevenly.
    .max_clients(2 * u64::from(keys))
    .build();
    runtime.block_on(async {
        for key in 0..keys {
            let provider = providers.provider(&Key(key)).await.expect("credentials");
            provider.token().await.expect("token");
        }
        providers.run_pending_tasks();
    });
    assert_eq!(providers.len(), u64::from(keys), "every key is kept");
    providers
}

/// Like [`on_threads`], with [`looped_keys`]: every thread sends for all
/// of keys `0..keys` in turn, thread `t` starting at `t * keys / threads`;
/// each first warms every key once.
pub fn on_threads_keyed<S>(service: &S, threads: usize, keys: u32, requests: u64) -> Duration
where
    S: Service<Request<()>, Response = Response<()>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
{
    let barrier = std::sync::Barrier::new(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let mut service = service.clone();
                let barrier = &barrier;
                scope.spawn(move || {
                    let first = u32::try_from(thread * keys as usize / threads).unwrap_or(0);
                    let mut send = looped_keys(&mut service, keys, first);
                    for _ in 0..keys {
                        send();
                    }
                    barrier.wait();
                    let start = std::time::Instant::now();
                    for _ in 0..requests {
                        send();
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("thread"))
            .max()
            .unwrap_or(Duration::ZERO)
    })
}

/// `requests` requests on each of `threads` threads, each through its own
/// clone of `service`, after `warm_up` requests to warm its caches; the
/// slowest thread's time, counted from a common start.
pub fn on_threads<S>(service: &S, threads: usize, warm_up: u64, requests: u64) -> Duration
where
    S: Service<Request<()>, Response = Response<()>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
{
    let barrier = std::sync::Barrier::new(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let mut service = service.clone();
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut send = looped(&mut service);
                    for _ in 0..warm_up {
                        send();
                    }
                    barrier.wait();
                    let start = std::time::Instant::now();
                    for _ in 0..requests {
                        send();
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("thread"))
            .max()
            .unwrap_or(Duration::ZERO)
    })
}

/// A multi-thread runtime with `worker_threads` workers and every driver.
pub fn runtime(worker_threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .enable_all()
        .build()
        .expect("runtime")
}

/// An exchange that answers `TOKEN` after `latency`, counting its calls.
pub fn exchange(
    latency: Duration,
    lifetime: Duration,
    calls: Arc<AtomicUsize>,
) -> impl Service<TokenRequest, Response = Token, Error = TokenError, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |_: TokenRequest| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            Ok(Token::new(TOKEN, lifetime))
        }
    })
}

/// A provider with a fresh token (one hour), warmed on `runtime`, which
/// runs its worker and must outlive the benchmark.
pub fn warm_provider(runtime: &tokio::runtime::Runtime) -> TokenProvider {
    let provider = TokenProvider::new(
        exchange(Duration::ZERO, Duration::from_secs(3600), Arc::default()),
        ClientCredentials::new("bench", "bench-secret"),
    );
    runtime.block_on(provider.token()).expect("token");
    provider
}

/// The path on which the loopback server requires an `Authorization` header.
pub const AUTH_PATH: &str = "/auth";

/// The loopback server's handler: 200 with an empty body; 401 on
/// [`AUTH_PATH`] when the request carries no `Authorization` header.
async fn handle(request: Request<Incoming>) -> Result<Response<Empty<Bytes>>, Infallible> {
    let mut response = Response::new(Empty::new());
    if request.uri().path() == AUTH_PATH && !request.headers().contains_key(AUTHORIZATION) {
        *response.status_mut() = StatusCode::UNAUTHORIZED;
    }
    Ok(response)
}

/// Starts a hyper HTTP/1.1 server on `127.0.0.1`, on an ephemeral port, on
/// the current runtime; returns its address.
pub async fn start_server() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), hyper::service::service_fn(handle))
                    .await;
            });
        }
    });
    addr
}

/// The median of `values` (sorted in place).
pub fn median(values: &mut [f64]) -> f64 {
    quantile(values, 0.5)
}

/// The `q` quantile of `values` (sorted in place), the nearest rank.
pub fn quantile(values: &mut [f64], q: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}
