//! Exact allocation counts on the request path (counted per thread by
//! `allocation-counter`, so only this test's own work is measured).

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::{Request, Response};
use routera_auth::{RouteraAuthLayer, TokenProvider};
use routera_auth_test::MockExchange;
use tower::{Layer, service_fn};

#[test]
fn a_request_with_a_fresh_token_allocates_nothing_and_starts_no_exchange() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let exchange = MockExchange::new(Duration::from_secs(3600));
    let provider = exchange.provider();
    runtime.block_on(provider.token()).unwrap();
    let _context = runtime.enter();

    // The no-op inner service of the measurement, not a double of a
    // collaborator: it answers at once without allocating (a `tower_test`
    // mock allocates per call, for its channels).
    let inner = service_fn(|request: Request<()>| {
        assert!(request.headers()[AUTHORIZATION].is_sensitive());
        std::future::ready(Ok::<_, Infallible>(Response::new(())))
    });
    let mut service = RouteraAuthLayer::new(provider).layer(inner);
    let mut cx = Context::from_waker(Waker::noop());

    // Requests are built outside the measurement, with room for the header,
    // as a client's request builder leaves them.
    let mut requests: Vec<_> = (0..1_001)
        .map(|_| {
            let mut request = Request::new(());
            request.headers_mut().reserve(4);
            request
        })
        .collect();

    let mut send = |request: Request<()>| common::call_now(&mut service, request);
    // Warm-up: thread-local state of the cache read is set up on first use.
    if let Some(request) = requests.pop() {
        send(request);
    }

    let measured = allocation_counter::measure(|| {
        for request in requests {
            send(request);
        }
    });
    assert_eq!(measured.count_total, 0, "{measured:?}");
    assert_eq!(exchange.calls(), 1);

    // The provider's own read of a fresh token allocates nothing either.
    let provider = service.provider().clone();
    let measured = allocation_counter::measure(|| {
        for _ in 0..1_000 {
            let future = pin!(provider.token());
            match future.poll(&mut cx) {
                Poll::Ready(Ok(token)) => drop(std::hint::black_box(token)),
                other => panic!("expected the cached token at once, got {other:?}"),
            }
        }
    });
    assert_eq!(measured.count_total, 0, "{measured:?}");
    assert_eq!(exchange.calls(), 1);

    // The counter does see allocations: the naive per-request header would.
    let naive = allocation_counter::measure(|| {
        let value = format!("Bearer {}", "token-1");
        std::hint::black_box(http::HeaderValue::from_str(&value).unwrap());
    });
    assert!(naive.count_total >= 2, "{naive:?}");
}

#[test]
fn an_idle_provider_holding_a_token_retains_at_most_768_bytes_and_no_task() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = runtime.metrics();
    let exchange = MockExchange::new(Duration::from_secs(3600)).with_delay(Duration::ZERO);
    // Everything the runtime and the mock set up once is made outside the
    // measurement: a first provider, dropped.
    runtime.block_on(async {
        let warm_up = exchange.provider();
        warm_up.token().await.unwrap();
        drop(warm_up);
        // Its worker ends and its task is freed.
        while tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
            > 0
        {
            tokio::task::yield_now().await;
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    });
    let _context = runtime.enter();

    // The credentials and the exchange are the caller's; the provider keeps
    // a reference to each.
    let credentials = common::credentials();
    let mut kept = None;
    let measured = allocation_counter::measure(|| {
        let provider = TokenProvider::new(exchange.clone(), credentials.clone());
        let token = runtime.block_on(async {
            let token = provider.token().await;
            // The worker has nothing left to do: it leaves, and frees its
            // task and its channel.
            while tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
                > 0
            {
                tokio::task::yield_now().await;
            }
            token
        });
        assert_eq!(token.unwrap().secret(), "token-2");
        kept = Some(provider);
    });
    let retained = measured.bytes_current;
    // The token's own bytes are kept twice (the token, and its header).
    let token_bytes = 2 * "token-2".len() as i64;
    println!(
        "a provider holding a token retains {retained} bytes in {} allocations, \
         {token_bytes} of them the token's ({measured:?})",
        measured.count_current
    );
    assert!(
        retained <= 768,
        "a provider holding a token retains {retained} bytes"
    );
    assert_eq!(metrics.num_alive_tasks(), 0, "no task: the worker left");
    drop(kept);
}
