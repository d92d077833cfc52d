//! What `RouteraAuth` costs a request, beside the floor (tower-http's static
//! `AddAuthorization`) and a naive hand-written provider, and how it behaves
//! under contention, a cold herd and a token refresh.
//!
//! Run with `cargo bench` from the `benches/` folder. Absolute times depend
//! on the machine; the ratios inside one run are what matter.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use routera_auth::{ClientCredentials, RouteraAuthLayer, Token, TokenProvider};
use routera_auth_benches::{
    Noop, TOKEN, exchange, key_of, looped, looped_keys, on_threads, on_threads_keyed, request,
    runtime, warm_provider, warm_providers,
};
use tower::{Layer, Service, ServiceExt};
use tower_http::auth::AddAuthorizationLayer;

/// The naive design: a token behind an async `RwLock`, and a header
/// formatted and validated on every request, in a boxed future.
#[derive(Clone)]
struct Naive<S> {
    inner: S,
    token: Arc<tokio::sync::RwLock<Option<Token>>>,
}

impl<S> Service<Request<()>> for Naive<S>
where
    S: Service<Request<()>, Response = Response<()>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<()>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<()>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let token = Arc::clone(&self.token);
        Box::pin(async move {
            let guard = token.read().await;
            if let Some(token) = guard.as_ref() {
                let value = format!("Bearer {}", token.access_token().secret());
                if let Ok(value) = HeaderValue::from_str(&value) {
                    request.headers_mut().insert(AUTHORIZATION, value);
                }
            }
            drop(guard);
            inner.call(request).await
        })
    }
}

fn hot_path(c: &mut Criterion) {
    let runtime = runtime(1);
    let provider = warm_provider(&runtime);

    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(1));

    let mut floor = AddAuthorizationLayer::bearer(TOKEN).layer(Noop);
    group.bench_function("add_authorization", |b| b.iter(looped(&mut floor)));

    let mut auth = RouteraAuthLayer::new(provider.clone()).layer(Noop);
    group.bench_function("routera_auth", |b| b.iter(looped(&mut auth)));

    let mut naive = Naive {
        inner: Noop,
        token: Arc::new(tokio::sync::RwLock::new(Some(Token::new(
            TOKEN,
            Duration::from_secs(3600),
        )))),
    };
    group.bench_function("naive", |b| b.iter(looped(&mut naive)));
    group.finish();
}

/// The per-client layer over the single-provider one: every request is for
/// the next of 1,000 clients (an extension, which both pay for), each with
/// a fresh token; the difference is the key lookup.
fn per_client(c: &mut Criterion) {
    const KEYS: u32 = 1_000;
    let runtime = runtime(1);
    let provider = warm_provider(&runtime);
    let providers = warm_providers(&runtime, KEYS);

    let mut group = c.benchmark_group("per_client");
    group.throughput(Throughput::Elements(1));
    let mut single = RouteraAuthLayer::new(provider).layer(Noop);
    group.bench_function("routera_auth", |b| {
        b.iter(looped_keys(&mut single, KEYS, 0))
    });
    let mut keyed = RouteraAuthLayer::per_client(providers.clone(), key_of).layer(Noop);
    group.bench_function("per_client_1000_keys", |b| {
        b.iter(looped_keys(&mut keyed, KEYS, 0))
    });
    group.bench_function("per_client_1_key", |b| {
        b.iter(looped_keys(&mut keyed, 1, 0))
    });
    group.finish();

    let single = RouteraAuthLayer::new(warm_provider(&runtime)).layer(Noop);
    let keyed = RouteraAuthLayer::per_client(providers, key_of).layer(Noop);
    let mut group = c.benchmark_group("per_client_contention");
    for threads in [1usize, 2] {
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function(format!("routera_auth/{threads}_threads"), |b| {
            b.iter_custom(|iters| on_threads_keyed(&single, threads, KEYS, iters))
        });
        group.bench_function(format!("per_client_1000_keys/{threads}_threads"), |b| {
            b.iter_custom(|iters| on_threads_keyed(&keyed, threads, KEYS, iters))
        });
    }
    group.finish();
}

fn contention(c: &mut Criterion) {
    let runtime = runtime(1);
    let provider = warm_provider(&runtime);
    let auth = RouteraAuthLayer::new(provider).layer(Noop);
    let floor = AddAuthorizationLayer::bearer(TOKEN).layer(Noop);

    let mut group = c.benchmark_group("contention");
    for threads in [1usize, 2] {
        group.throughput(Throughput::Elements(threads as u64));
        group.bench_function(format!("routera_auth/{threads}_threads"), |b| {
            b.iter_custom(|iters| on_threads(&auth, threads, 0, iters))
        });
        group.bench_function(format!("add_authorization/{threads}_threads"), |b| {
            b.iter_custom(|iters| on_threads(&floor, threads, 0, iters))
        });
    }
    group.finish();
}

fn cold_herd(c: &mut Criterion) {
    const CALLERS: usize = 10_000;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("cold_herd");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements(CALLERS as u64));
    group.bench_function("10000_callers_1ms_exchange", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let calls = Arc::new(AtomicUsize::new(0));
                let provider = TokenProvider::new(
                    exchange(
                        Duration::from_millis(1),
                        Duration::from_secs(3600),
                        Arc::clone(&calls),
                    ),
                    ClientCredentials::new("bench", "bench-secret"),
                );
                let service = RouteraAuthLayer::new(provider).layer(tower::service_fn(
                    |_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) },
                ));
                total += runtime.block_on(async {
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..CALLERS)
                        .map(|_| tokio::spawn(service.clone().oneshot(request())))
                        .collect();
                    for task in tasks {
                        task.await.expect("task").expect("request");
                    }
                    start.elapsed()
                });
                assert_eq!(calls.load(Ordering::SeqCst), 1, "one exchange for the herd");
            }
            total
        })
    });
    group.finish();
}

/// Steady load across background refreshes whose exchange takes 50 ms; the
/// measured value is the worst latency any request saw.
fn refresh_boundary(c: &mut Criterion) {
    let runtime = runtime(2);
    let mut group = c.benchmark_group("refresh_boundary");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    group.bench_function("worst_request_latency_50ms_exchange", |b| {
        b.iter_custom(|iters| {
            let mut worst = Duration::ZERO;
            for _ in 0..iters {
                let calls = Arc::new(AtomicUsize::new(0));
                // A 1 s token: served for 750 ms (the 30 s skew is capped at
                // a quarter of the lifetime), refreshed from 650 to 670 ms.
                let provider = TokenProvider::builder(
                    exchange(
                        Duration::from_millis(50),
                        Duration::from_secs(1),
                        Arc::clone(&calls),
                    ),
                    ClientCredentials::new("bench", "bench-secret"),
                )
                .refresh_ahead(Duration::from_millis(100))
                .build();
                let (seen, refreshed) = runtime.block_on(async {
                    provider.token().await.expect("token");
                    let mut service = RouteraAuthLayer::new(provider.clone()).layer(Noop);
                    let mut seen = Duration::ZERO;
                    let start = Instant::now();
                    // Load from 0 to 740 ms, across the refresh.
                    while start.elapsed() < Duration::from_millis(740) {
                        let sent = Instant::now();
                        let response = ServiceExt::ready(&mut service)
                            .await
                            .expect("ready")
                            .call(request())
                            .await;
                        black_box(response.expect("request"));
                        seen = seen.max(sent.elapsed());
                        tokio::task::yield_now().await;
                    }
                    (seen, calls.load(Ordering::SeqCst))
                });
                assert_eq!(refreshed, 2, "one background refresh happened under load");
                worst = worst.max(seen);
            }
            worst * iters as u32
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    hot_path(c);
    per_client(c);
    contention(c);
    cold_herd(c);
    refresh_boundary(c);
}

criterion_group!(all, benches);
criterion_main!(all);
