//! What `RouteraAuth` costs a request on a real stack: a hyper-util legacy
//! `Client` (HTTP/1.1, keep-alive) sending GET requests to a hyper server on
//! `127.0.0.1`, 64 requests in flight per batch, on a multi-thread tokio
//! runtime with 2 worker threads (the server runs on the same runtime).
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

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use routera_auth::{ClientCredentials, RouteraAuthLayer, Token, TokenError, TokenProvider};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::{Layer, Service, ServiceExt};
use tower_http::auth::AddAuthorizationLayer;

const TOKEN: &str =
    "eyJraWQiOiJiZW5jaCIsImFsZyI6IlJTMjU2In0.eyJzdWIiOiJiZW5jaC1jbGllbnQifQ.c2lnbmF0dXJl";

/// Requests in flight in one batch; one iteration is one batch.
const IN_FLIGHT: usize = 64;

/// The path on which the server requires an `Authorization` header.
const AUTH_PATH: &str = "/auth";

/// The server's handler: 200 with an empty body; 401 on `AUTH_PATH` when the
/// request carries no `Authorization` header.
async fn handle(request: Request<Incoming>) -> Result<Response<Empty<Bytes>>, Infallible> {
    let mut response = Response::new(Empty::new());
    if request.uri().path() == AUTH_PATH && !request.headers().contains_key(AUTHORIZATION) {
        *response.status_mut() = StatusCode::UNAUTHORIZED;
    }
    Ok(response)
}

/// Starts a hyper HTTP/1.1 server on `127.0.0.1`, on an ephemeral port, on
/// the current runtime; returns its address.
async fn start_server() -> SocketAddr {
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

/// A provider with a fresh token (one hour), warmed on `runtime`, as in
/// `hot_path.rs`: its token arms a timer there, which keeps the clock out of
/// the request path until the refresh is due. The runtime must outlive the
/// benchmark.
fn warm_provider(runtime: &tokio::runtime::Runtime) -> TokenProvider {
    let exchange = tower::service_fn(|_| async {
        Ok::<_, TokenError>(Token::new(TOKEN, Duration::from_secs(3600)))
    });
    let provider = TokenProvider::new(
        exchange,
        ClientCredentials::new("bench-client", "bench-secret"),
    );
    runtime.block_on(provider.token()).expect("token");
    provider
}

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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let addr = runtime.block_on(start_server());
    let plain: Uri = format!("http://{addr}/").parse().expect("uri");
    let authed: Uri = format!("http://{addr}{AUTH_PATH}").parse().expect("uri");
    let provider = warm_provider(&runtime);

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let add_authorization = AddAuthorizationLayer::bearer(TOKEN).layer(client.clone());
    let routera_auth = RouteraAuthLayer::new(provider).layer(client.clone());

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
