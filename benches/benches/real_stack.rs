//! What `RouteraAuth` costs a request on a real stack: a hyper-util legacy
//! `Client` (HTTP/1.1, keep-alive) sending GET requests to a hyper server on
//! `127.0.0.1`, 64 requests in flight per batch. The client runs on a
//! current-thread runtime, the server on a runtime and thread of its own.
//!
//! Three variants of the client stack, measured in one run:
//! - `no_auth`: the bare hyper-util client;
//! - `add_authorization`: behind tower-http's static `AddAuthorization`;
//! - `routera_auth`: behind `RouteraAuth` with a warm provider.
//!
//! The target: `routera_auth` / `add_authorization` <= 1.02, i.e. within
//! noise. Absolute figures depend on the machine; the ratios inside one run
//! are what matter.
//!
//! Run with `cd benches && cargo bench --bench real_stack`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use routera_auth::RouteraAuthLayer;
use routera_auth_benches::{AUTH_PATH, TOKEN, start_server, warm_provider};
use tokio::task::JoinSet;
use tower::{Layer, Service, ServiceExt};
use tower_http::auth::AddAuthorizationLayer;

/// Requests in flight in one batch; one iteration is one batch.
const IN_FLIGHT: usize = 64;

/// One batch: `IN_FLIGHT` GET requests to `uri`, each on its own task through
/// a clone of `service`, each response checked and its body read to the end
/// (so that the connection goes back to the pool).
async fn batch<S, B>(service: &S, uri: &Uri)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug + Send,
    S::Future: Send,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::fmt::Debug,
{
    let mut tasks = JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let request = Request::get(uri.clone())
            .body(Empty::new())
            .expect("request");
        let service = service.clone();
        tasks.spawn(async move {
            let response = service.oneshot(request).await.expect("response");
            assert_eq!(response.status(), StatusCode::OK);
            response.into_body().collect().await.expect("body");
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
}

/// `iters` batches, one after the other, on `runtime`; the time they took.
fn run<S, B>(runtime: &tokio::runtime::Runtime, service: &S, uri: &Uri, iters: u64) -> Duration
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug + Send,
    S::Future: Send,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::fmt::Debug,
{
    runtime.block_on(async {
        let start = Instant::now();
        for _ in 0..iters {
            batch(service, uri).await;
        }
        start.elapsed()
    })
}

fn real_stack(c: &mut Criterion) {
    // The server has a runtime and a thread of its own; the client runs on a
    // current-thread runtime in the benchmark's thread. One core each, and
    // no work stealing between them: steadier figures on 2 cores.
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("server runtime");
    let addr = server.block_on(start_server());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    let plain: Uri = format!("http://{addr}/").parse().expect("uri");
    let authed: Uri = format!("http://{addr}{AUTH_PATH}").parse().expect("uri");
    let provider = warm_provider(&runtime);

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let add_authorization = AddAuthorizationLayer::bearer(TOKEN).layer(client.clone());
    let routera_auth = RouteraAuthLayer::new(provider).layer(client.clone());
    // Every variant finds a full pool of open connections.
    run(&runtime, &client, &plain, 10);

    let mut group = c.benchmark_group("real_stack");
    group
        .throughput(Throughput::Elements(IN_FLIGHT as u64))
        .sample_size(20)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("no_auth", |b| {
        b.iter_custom(|iters| run(&runtime, &client, &plain, iters))
    });
    group.bench_function("add_authorization", |b| {
        b.iter_custom(|iters| run(&runtime, &add_authorization, &authed, iters))
    });
    group.bench_function("routera_auth", |b| {
        b.iter_custom(|iters| run(&runtime, &routera_auth, &authed, iters))
    });
    group.finish();
}

criterion_group!(benches, real_stack);
criterion_main!(benches);
