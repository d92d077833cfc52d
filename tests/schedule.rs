//! When tokens are served and renewed: the request path's own deadline check
//! (never a timer), the schedule of short and long tokens under steady
//! traffic, and an idle provider.

mod common;

use std::time::Duration;

use common::credentials;
use http::header::AUTHORIZATION;
use http::{Request, Response};
use routera_auth::{RouteraAuthLayer, Token, TokenError, TokenErrorKind, TokenProvider};
use routera_auth_test::{MockAnswer, MockExchange};
use tokio::time::{Instant, advance};
use tokio_test::{assert_pending, assert_ready, task};
use tower::{Layer, Service, ServiceExt};

/// Sends one request through `service` and answers it from `api`, in this
/// task (no responder task: tests here count the runtime's tasks).
async fn send<S>(service: &S, api: &mut tower_test::mock::Handle<Request<()>, Response<()>>)
where
    S: Service<Request<()>, Response = Response<()>> + Clone,
    S::Error: std::fmt::Debug,
{
    let answer = async {
        let (_, respond) = api.next_request().await.expect("a request");
        respond.send_response(Response::new(()));
    };
    let (response, ()) = tokio::join!(service.clone().oneshot(Request::new(())), answer);
    response.unwrap();
}

/// The runtime's only worker thread is stuck in a blocking call past the
/// token's deadline: a request from another thread must not carry the
/// token, whatever the provider's tasks and timers are doing. The token
/// lives 200 ms, and the test spins until they have passed.
#[test]
fn a_busy_runtime_never_lets_a_request_carry_a_token_past_its_deadline() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    // The first token lives 200 ms (long enough to be stored and handed
    // out on a slow machine); the next ones an hour.
    let exchange = MockExchange::new(Duration::from_secs(3600)).with_delay(Duration::ZERO);
    let first = Token::new("token-1", Duration::from_millis(200));
    exchange.queue(MockAnswer::Token(first));
    let provider = TokenProvider::builder(exchange.clone(), credentials())
        .refresh_ahead(Duration::ZERO)
        .expiry_skew(Duration::ZERO)
        .build();
    runtime.block_on(provider.token()).unwrap();
    let timing = provider.timing().unwrap();
    assert_eq!(
        timing.served_until - timing.fetched_at,
        Duration::from_millis(200)
    );
    assert_eq!(timing.refresh_at, timing.served_until, "no refresh ahead");

    // Block the runtime's only worker thread until released.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (blocked, is_blocked) = std::sync::mpsc::channel::<()>();
    runtime.spawn(async move {
        blocked.send(()).unwrap();
        released.recv().unwrap();
    });
    is_blocked.recv().unwrap();
    while Instant::now() < timing.served_until {
        std::hint::spin_loop();
    }

    let _context = runtime.enter();
    let (inner, mut api) = tower_test::mock::pair::<Request<()>, Response<()>>();
    api.allow(2);
    let mut service = RouteraAuthLayer::new(provider.clone()).layer(inner);
    let mut ready = task::spawn(service.ready());
    assert_ready!(ready.poll()).unwrap();
    drop(ready);
    let mut request = task::spawn(service.call(Request::new(())));
    assert_pending!(request.poll(), "the request waits for a new token");
    let mut token = task::spawn(provider.token());
    assert_pending!(token.poll(), "so does the provider's own caller");
    let mut sent = task::spawn(api.next_request());
    assert_pending!(sent.poll(), "no request went out with the old token");
    assert_eq!(
        exchange.calls(),
        1,
        "the blocked runtime has not fetched yet"
    );

    release.send(()).unwrap();
    assert_eq!(runtime.block_on(token).unwrap().secret(), "token-2");
    assert_pending!(
        request.poll(),
        "sent with the new token, awaiting the answer"
    );
    let (sent, respond) = runtime.block_on(sent).unwrap();
    assert_eq!(sent.headers()[AUTHORIZATION], "Bearer token-2");
    respond.send_response(Response::new(()));
    assert_ready!(request.poll()).unwrap();
}

/// With default options and a request every 1/50 of the lifetime for ten
/// lifetimes, each lifetime's tokens are renewed at most once per half
/// lifetime (plus the first fetch), always in the background: only the
/// first request ever waits, and no request carries a token past its time.
#[tokio::test(start_paused = true)]
async fn steady_traffic_renews_at_most_once_per_half_lifetime_without_waiting() {
    for secs in [3, 60, 120, 3600] {
        let lifetime = Duration::from_secs(secs);
        let exchange = MockExchange::new(lifetime).with_delay(Duration::from_millis(20));
        let provider = exchange.provider();
        let (inner, mut api) = tower_test::mock::pair::<Request<()>, Response<()>>();
        let service = RouteraAuthLayer::new(provider.clone()).layer(inner);
        send(&service, &mut api).await;

        let start = Instant::now();
        let mut fetches = vec![provider.timing().unwrap()];
        let mut record = |timing: routera_auth::TokenTiming| {
            if fetches.last() != Some(&timing) {
                fetches.push(timing);
            }
        };
        while Instant::now() < start + 10 * lifetime {
            advance(lifetime / 50).await;
            let timing = provider.timing().unwrap();
            record(timing);
            assert!(
                Instant::now() < timing.served_until,
                "{secs} s: a token is fresh"
            );
            // The current token is the last one an exchange answered with.
            let current = format!("Bearer token-{}", exchange.finished());
            let mut request = task::spawn(service.clone().oneshot(Request::new(())));
            assert_pending!(request.poll(), "{secs} s: awaiting the answer");
            // It reached the service under the layer on its first poll.
            let (sent, respond) = assert_ready!(api.poll_request(), "{secs} s: a request waited")
                .expect("the mock's handle is open");
            assert_eq!(sent.headers()[AUTHORIZATION], current, "{secs} s");
            respond.send_response(Response::new(()));
            assert_ready!(request.poll(), "{secs} s: answered").unwrap();
            // Lets a background refresh, if one started, complete.
            advance(Duration::from_millis(21)).await;
            record(provider.timing().unwrap());
        }
        // The last refresh, if one is under way, completes.
        for _ in 0..3 {
            advance(Duration::from_millis(21)).await;
        }
        record(provider.timing().unwrap());
        assert_eq!(
            exchange.finished(),
            exchange.calls(),
            "{secs} s: none in flight"
        );

        for pair in fetches.windows(2) {
            let gap = pair[1].fetched_at - pair[0].fetched_at;
            assert!(
                gap >= lifetime / 2,
                "{secs} s tokens: renewed after {gap:?}"
            );
        }
        let exchanges = exchange.calls();
        assert!(
            exchanges <= 1 + 20,
            "{secs} s tokens: {exchanges} exchanges in 10 lifetimes"
        );
        assert!(
            exchanges >= 10,
            "{secs} s tokens: {exchanges} exchanges in 10 lifetimes"
        );
        assert_eq!(exchanges, fetches.len());
        let stats = provider.stats();
        assert_eq!(stats.waits, 1, "{secs} s tokens: {stats:?}");
        assert_eq!(stats.background_refreshes as usize, exchanges - 1);
    }
}

/// Nobody uses the provider for ten hours: its worker left once it had
/// nothing to do, the token lapses, and the next caller waits for a new one.
#[tokio::test(start_paused = true)]
async fn an_idle_provider_lets_its_token_lapse_and_fetches_on_the_next_call() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let exchange = MockExchange::new(Duration::from_secs(3600)).with_delay(Duration::ZERO);
    let provider = exchange.provider();
    assert_eq!(provider.token().await.unwrap().secret(), "token-1");
    tokio::task::yield_now().await;
    assert_eq!(metrics.num_alive_tasks(), 0, "the worker left");
    let timing = provider.timing().unwrap();

    // The runtime jumps straight to the end of a ten-hour sleep unless a
    // timer is due before it; nothing of the provider's wakes up meanwhile.
    tokio::time::sleep(Duration::from_secs(10 * 3600)).await;
    assert_eq!(exchange.calls(), 1);
    assert_eq!(provider.timing(), Some(timing), "the same token, lapsed");
    assert_eq!(provider.stats().background_refreshes, 0);

    assert_eq!(provider.token().await.unwrap().secret(), "token-2");
    assert_eq!(provider.stats().waits, 2);
}

/// A dropped provider ends its worker at once, even one that has work: here
/// retrying an endpoint that fails, with a token still served.
#[tokio::test(start_paused = true)]
async fn dropping_every_handle_ends_the_worker() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let exchange = MockExchange::new(Duration::from_secs(3600)).with_delay(Duration::ZERO);
    let provider = exchange.provider();
    let (inner, mut api) = tower_test::mock::pair::<Request<()>, Response<()>>();
    let service = RouteraAuthLayer::new(provider.clone()).layer(inner);
    send(&service, &mut api).await;
    let failure = TokenError::new(TokenErrorKind::ServerError);
    exchange.fail_until(Instant::now() + Duration::from_secs(100 * 3600), failure);
    assert!(provider.refresh().await.is_err());
    assert_eq!(metrics.num_alive_tasks(), 1, "the worker retries");
    drop(provider);
    tokio::task::yield_now().await;
    assert_eq!(
        metrics.num_alive_tasks(),
        1,
        "the layer still holds a handle"
    );
    drop(service);
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    assert_eq!(metrics.num_alive_tasks(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_token_that_arrives_past_its_serving_time_is_a_failure_and_never_sent() {
    // 8 s tokens (served for 6 s) from an endpoint that takes 9 s, under
    // the 10 s exchange timeout.
    let exchange = MockExchange::new(Duration::from_secs(8)).with_delay(Duration::from_secs(9));
    let provider = exchange.provider();

    let answer = tokio::time::timeout(Duration::from_secs(60), provider.token()).await;
    let err = answer.expect("an answer, not a wait").unwrap_err();
    assert_eq!(err.kind(), routera_auth::TokenErrorKind::Timeout, "{err}");
    assert!(err.to_string().contains("may be served"), "{err}");
    assert!(!err.to_string().contains("token-1"), "{err}");
    assert_eq!(provider.timing(), None, "nothing was stored");
    assert_eq!(provider.stats().failures, 1);

    // Through the layer: fails closed, the API never sees a request.
    let (api, mut handle) = tower_test::mock::pair::<Request<()>, Response<()>>();
    let service = RouteraAuthLayer::new(provider.clone()).layer(api);
    advance(Duration::from_secs(2)).await; // past the backoff
    let sent = service.oneshot(Request::new(())).await;
    assert!(sent.is_err());
    // The layer, and the mock API with it, is gone: the API saw no request.
    let seen = tokio_test::task::spawn(handle.next_request()).poll();
    assert!(matches!(seen, std::task::Poll::Ready(None)), "{seen:?}");
    assert_eq!(exchange.calls(), 2);
}
