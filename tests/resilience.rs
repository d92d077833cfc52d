//! Refresh ahead, backoff, outages, timeouts, rotation and lifecycle of
//! `TokenProvider`, on paused tokio time over a mocked exchange.

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::{credentials, status_error};
use routera_auth::{
    AccessToken, ClientCredentials, ProviderStats, Token, TokenErrorKind, TokenProvider,
};
use routera_auth_test::{MockAnswer, MockExchange};
use tokio::time::{Instant, advance};
use tower::Layer as _;

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);
const SECOND: Duration = Duration::from_secs(1);

/// Polls once: the answer a caller gets without waiting, if there is one.
fn poll_once<F: Future>(future: F) -> Poll<F::Output> {
    let mut future = pin!(future);
    future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
}

/// Lets spawned tasks and due timers run.
async fn settle() {
    for _ in 0..5 {
        tokio::task::yield_now().await;
        advance(Duration::from_millis(1)).await;
    }
}

/// Lets `duration` pass in one-second steps, letting tasks run at each.
async fn run_for(duration: Duration) {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        advance(SECOND).await;
        settle().await;
    }
}

/// One request through `service`; the `Authorization` header it carried.
async fn call<S>(service: &S) -> http::HeaderValue
where
    S: tower::Service<http::Request<()>, Response = http::Response<http::HeaderValue>> + Clone,
    S::Error: std::fmt::Debug,
{
    use tower::ServiceExt;
    service
        .clone()
        .oneshot(http::Request::new(()))
        .await
        .unwrap()
        .into_body()
}

/// What the service under the layer answers in these tests: the
/// `Authorization` header the request carried.
fn echo_authorization(request: http::Request<()>) -> http::Response<http::HeaderValue> {
    http::Response::new(request.headers()[http::header::AUTHORIZATION].clone())
}

fn stats(provider: &TokenProvider) -> ProviderStats {
    provider.stats()
}

#[tokio::test(start_paused = true)]
async fn no_caller_waits_across_healthy_refreshes() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::from_millis(200));
    let provider = exchange.provider();
    provider.token().await.unwrap();
    let mut seen = vec![provider.token().await.unwrap()];

    // Three hours of ten requests a second: every one answered on its first poll.
    for _ in 0..3 * 3600 {
        advance(SECOND).await;
        for _ in 0..10 {
            match poll_once(provider.token()) {
                Poll::Ready(Ok(token)) => {
                    if seen.last() != Some(&token) {
                        seen.push(token);
                    }
                }
                Poll::Ready(Err(err)) => panic!("request failed: {err}"),
                Poll::Pending => panic!("a request waited for the token"),
            }
        }
        tokio::task::yield_now().await;
    }
    let stats = stats(&provider);
    assert_eq!(stats.waits, 1, "only the very first caller waited");
    assert_eq!(stats.failures, 0);
    assert_eq!(stats.background_refreshes, 3, "{stats:?}");
    assert_eq!(exchange.calls(), 4);
    assert_eq!(seen.len(), 4, "each refreshed token was served");
}

#[tokio::test(start_paused = true)]
async fn a_ten_minute_outage_with_a_valid_token_fails_no_request() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::from_millis(50));
    let provider = TokenProvider::builder(exchange.clone(), credentials())
        .refresh_ahead(20 * MINUTE)
        .build();
    let first = provider.token().await.unwrap();

    // The endpoint goes down for 10 minutes just before the refresh window.
    advance(HOUR - 21 * MINUTE).await;
    let outage_start = Instant::now();
    exchange.fail_until(outage_start + 10 * MINUTE, status_error(503, "").await);

    let mut failed = 0;
    for _ in 0..600 {
        advance(SECOND).await;
        for _ in 0..1000 {
            match poll_once(provider.token()) {
                Poll::Ready(Ok(token)) => assert_eq!(token, first),
                _ => failed += 1,
            }
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(failed, 0, "no request failed during the outage");
    let attempts = exchange.calls() - 1;
    assert!(
        (2..=20).contains(&attempts),
        "{attempts} exchange attempts in 10 minutes"
    );
    // Every attempt failed, but for one that may still be under way.
    let failures = stats(&provider).failures as usize;
    assert!(
        failures == attempts || failures + 1 == attempts,
        "{failures} of {attempts}"
    );

    // After the outage the next attempt succeeds and its token is served.
    run_for(2 * MINUTE).await;
    let renewed = provider.token().await.unwrap();
    assert_ne!(renewed, first);
}

#[tokio::test(start_paused = true)]
async fn an_outage_longer_than_the_lifetime_fails_fast_with_the_last_error_then_recovers() {
    let lifetime = 10 * MINUTE;
    let exchange = MockExchange::new(lifetime).with_delay(Duration::from_millis(50));
    let provider = exchange.provider();
    provider.token().await.unwrap();
    let outage_end = Instant::now() + 40 * MINUTE;
    exchange.fail_until(
        outage_end,
        status_error(502, "<html>bad gateway</html>").await,
    );

    let mut failed_fast = 0;
    let mut waited = 0;
    while Instant::now() < outage_end {
        advance(SECOND).await;
        for _ in 0..10 {
            match poll_once(provider.token()) {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(err)) => {
                    assert_eq!(err.kind(), TokenErrorKind::ServerError);
                    assert_eq!(err.status().map(|s| s.as_u16()), Some(502));
                    failed_fast += 1;
                }
                Poll::Pending => waited += 1,
            }
        }
        tokio::task::yield_now().await;
    }
    // From expiry (9.5 min) to the end of the outage (40 min), ten a second.
    assert!(
        failed_fast > 17_000,
        "requests failed with the last error: {failed_fast}"
    );
    let attempts = exchange.calls() - 1;
    assert!(attempts <= 50, "{attempts} attempts in 40 minutes");
    // Only callers that came while an attempt was due or under way waited
    // (for that attempt, at most two polling rounds of ten each).
    assert!(
        waited <= 20 * attempts,
        "{waited} callers waited, {attempts} attempts"
    );

    // Recovery: within one backoff period of the endpoint's return, every
    // request succeeds again.
    let mut recovered_after = None;
    for second in 1..=70 {
        advance(SECOND).await;
        settle().await;
        if let Poll::Ready(Ok(_)) = poll_once(provider.token()) {
            recovered_after = Some(second);
            break;
        }
    }
    let recovered_after = recovered_after.expect("recovered");
    assert!(
        recovered_after <= 61,
        "recovered {recovered_after} s after the outage"
    );
    for _ in 0..100 {
        assert!(matches!(poll_once(provider.token()), Poll::Ready(Ok(_))));
    }
}

#[tokio::test(start_paused = true)]
async fn the_background_task_survives_any_number_of_failures() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::ZERO);
    let errors = [
        status_error(500, "").await,
        status_error(401, r#"{"error":"invalid_client"}"#).await,
        status_error(400, r#"{"error":"invalid_request"}"#).await,
        status_error(429, "").await,
        status_error(200, "not json").await,
        common::transport_error().await,
    ];
    for i in 0..60 {
        exchange.fail_next(errors[i % errors.len()].clone());
    }
    let provider = exchange.provider();
    let err = provider.token().await.unwrap_err();
    assert_eq!(err.kind(), TokenErrorKind::ServerError);

    // Nobody asks again; the task keeps trying on its own.
    for _ in 0..70 {
        advance(MINUTE).await;
        settle().await;
    }
    assert_eq!(exchange.calls(), 61);
    let stats = stats(&provider);
    assert_eq!((stats.exchanges, stats.failures), (61, 60));
    assert_eq!(provider.token().await.unwrap().secret(), "token-61");
}

#[tokio::test(start_paused = true)]
async fn backoff_doubles_and_permanent_errors_back_off_too() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::ZERO);
    exchange.fail_until(
        Instant::now() + HOUR,
        status_error(401, r#"{"error":"invalid_client"}"#).await,
    );
    let provider = exchange.provider();
    let err = provider.token().await.unwrap_err();
    assert_eq!(err.kind(), TokenErrorKind::InvalidClient);

    // Attempt times: 0, then delays of 1, 2, 4, 8 s (each 0 to 20 % shorter).
    let mut attempts_at = vec![0u64];
    for second in 1..=20 {
        advance(SECOND).await;
        settle().await;
        while attempts_at.len() < exchange.calls() {
            attempts_at.push(second);
        }
    }
    assert_eq!(attempts_at.len(), 5, "{attempts_at:?}");
    let gaps: Vec<u64> = attempts_at.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, nominal) in gaps.iter().zip([1u64, 2, 4, 8]) {
        assert!(*gap <= nominal && *gap + 2 >= nominal, "gaps {gaps:?}");
    }
    // Callers in between get the last error at once.
    assert!(
        matches!(poll_once(provider.token()), Poll::Ready(Err(e)) if e.kind() == TokenErrorKind::InvalidClient)
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::ZERO);
    let rate_limited = common::exchange_error(Ok(http::Response::builder()
        .status(429)
        .header("retry-after", "120")
        .body(bytes::Bytes::new())
        .unwrap()))
    .await;
    assert_eq!(rate_limited.retry_after(), Some(Duration::from_secs(120)));
    exchange.fail_next(rate_limited);
    let provider = exchange.provider();
    assert_eq!(
        provider.token().await.unwrap_err().kind(),
        TokenErrorKind::RateLimited
    );

    advance(Duration::from_secs(119)).await;
    settle().await;
    assert_eq!(exchange.calls(), 1, "no attempt before Retry-After");
    advance(SECOND).await;
    settle().await;
    assert_eq!(exchange.calls(), 2);
    assert_eq!(provider.token().await.unwrap().secret(), "token-2");
}

#[tokio::test(start_paused = true)]
async fn a_hanging_endpoint_times_out_and_releases_every_waiter() {
    let exchange = MockExchange::new(HOUR).gated();
    let provider = exchange.provider();
    let callers: Vec<_> = (0..100)
        .map(|_| {
            let provider = provider.clone();
            tokio::spawn(async move { provider.token().await })
        })
        .collect();
    let started = Instant::now();
    for caller in callers {
        let err = caller.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), TokenErrorKind::Timeout);
        assert!(err.is_retryable());
    }
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(10),
        "the default exchange timeout"
    );
    assert_eq!(exchange.calls(), 1);
    assert_eq!(stats(&provider).failures, 1);
}

#[tokio::test(start_paused = true)]
async fn the_exchange_timeout_is_configurable() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::from_secs(3));
    let provider = TokenProvider::builder(exchange.clone(), credentials())
        .exchange_timeout(Duration::from_secs(2))
        .build();
    let started = Instant::now();
    assert_eq!(
        provider.token().await.unwrap_err().kind(),
        TokenErrorKind::Timeout
    );
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn refresh_ahead_is_jittered_across_a_fleet() {
    let mut refreshed_at = Vec::new();
    let mut providers = Vec::new();
    for _ in 0..40 {
        let exchange = MockExchange::new(HOUR).with_delay(Duration::ZERO);
        let provider = exchange.provider();
        provider.token().await.unwrap();
        providers.push((exchange, provider, None));
    }
    // Fresh until 59:30; the window is 5 min shortened by up to 20 %.
    advance(HOUR - 30 * SECOND - 5 * MINUTE - SECOND).await;
    for second in 0..=62u64 {
        for (_, provider, at) in providers.iter_mut() {
            provider.token().await.unwrap();
            if at.is_none() && provider.stats().background_refreshes == 1 {
                *at = Some(second);
            }
        }
        advance(SECOND).await;
    }
    for (_, _, at) in &providers {
        let at = at.expect("every provider refreshed in the window");
        assert!((1..=62).contains(&at), "{at}");
        refreshed_at.push(at);
    }
    refreshed_at.sort_unstable();
    refreshed_at.dedup();
    assert!(
        refreshed_at.len() >= 10,
        "refreshes spread over {} distinct seconds",
        refreshed_at.len()
    );
}

#[tokio::test(start_paused = true)]
async fn new_credentials_are_used_and_an_old_exchange_never_overwrites_their_token() {
    let exchange = MockExchange::new(HOUR).gated();
    let provider = exchange.provider();
    let waiting = tokio::spawn({
        let provider = provider.clone();
        async move { provider.token().await }
    });
    settle().await;
    assert_eq!(
        exchange.calls(),
        1,
        "an exchange with the old credentials is in flight"
    );

    let rotated = ClientCredentials::new("mock-client", "rotated-secret");
    provider.set_credentials(rotated.clone());
    exchange.open_gate();

    let token = waiting.await.unwrap().unwrap();
    assert_eq!(
        token.secret(),
        "token-2",
        "the token of the new credentials"
    );
    let seen = exchange.credentials_seen();
    assert_eq!(seen[0], credentials());
    assert_eq!(seen[1], rotated);
    assert_eq!(provider.token().await.unwrap(), token);
    assert_eq!(exchange.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn rotation_keeps_the_token_for_the_same_client_and_drops_it_for_another() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::ZERO);
    let provider = exchange.provider();
    let first = provider.token().await.unwrap();

    provider.set_credentials(ClientCredentials::new("mock-client", "new-secret"));
    assert_eq!(provider.token().await.unwrap(), first);
    assert_eq!(exchange.calls(), 1);

    provider.set_credentials(ClientCredentials::new("other-client", "other-secret"));
    let second = provider.token().await.unwrap();
    assert_ne!(second, first);
    assert_eq!(exchange.credentials_seen()[1].client_id(), "other-client");
    assert_eq!(provider.client_id(), "other-client");
}

#[tokio::test(start_paused = true)]
async fn new_credentials_cut_a_backoff_short() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::ZERO);
    exchange.fail_until(Instant::now() + HOUR, status_error(401, "").await);
    let provider = exchange.provider();
    provider.token().await.unwrap_err();
    for _ in 0..6 {
        advance(MINUTE).await;
        settle().await;
    }
    let before = exchange.calls();
    exchange.fail_until(Instant::now(), status_error(401, "").await);
    provider.set_credentials(ClientCredentials::new("mock-client", "fixed-secret"));
    let token = provider.token().await.unwrap();
    assert_eq!(exchange.calls(), before + 1, "one attempt, right away");
    assert_eq!(
        exchange.credentials_seen().last().unwrap().client_secret(),
        "fixed-secret"
    );
    assert_eq!(provider.token().await.unwrap(), token);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_ends_the_background_task() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let exchange = MockExchange::new(HOUR).with_delay(Duration::ZERO);
    exchange.fail_until(Instant::now() + HOUR, status_error(503, "").await);
    let provider = exchange.provider();
    provider.token().await.unwrap_err();
    settle().await;
    assert_eq!(
        metrics.num_alive_tasks(),
        1,
        "the task backs off, waiting to retry"
    );

    let clone = provider.clone();
    drop(provider);
    settle().await;
    assert_eq!(metrics.num_alive_tasks(), 1, "a clone keeps it alive");
    drop(clone);
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    assert_eq!(
        metrics.num_alive_tasks(),
        0,
        "gone without waiting out its backoff"
    );
    let calls = exchange.calls();
    advance(HOUR).await;
    assert_eq!(exchange.calls(), calls, "no attempt after the drop");
}

/// Yields until `done` holds, for at most 10 s: for work that other worker
/// threads do at once, not for time to pass.
async fn until(done: impl Fn() -> bool) -> bool {
    let wait = async {
        while !done() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_provider_with_a_token_leaves_no_task_behind() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let exchange = MockExchange::new(HOUR).with_delay(Duration::ZERO);
    let provider = exchange.provider();
    // The service under the layer is never called; its handle stays open.
    let (inner, _api) = tower_test::mock::pair::<http::Request<()>, http::Response<()>>();
    let service = routera_auth::RouteraAuthLayer::new(provider.clone()).layer(inner);
    provider.token().await.unwrap();
    // No task while the token is fresh: the worker left once it had
    // nothing to do, not at the token's refresh time (55 minutes away).
    assert!(
        until(|| metrics.num_alive_tasks() == 0).await,
        "the worker left"
    );
    // A refresh starts one; it leaves with the new token.
    provider.refresh().await.unwrap();
    assert!(until(|| metrics.num_alive_tasks() == 0).await);
    drop(service);
    drop(provider);
    assert_eq!(metrics.num_alive_tasks(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_first_request_past_the_refresh_time_starts_a_background_refresh() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::ZERO);
    let provider = exchange.provider();
    let (inner, _) = common::answering(echo_authorization);
    let service = routera_auth::RouteraAuthLayer::new(provider.clone()).layer(inner);
    assert_eq!(call(&service).await, "Bearer token-1");
    // Past the refresh time (54:30 to 55:30 in, with jitter), before expiry
    // (59:30): the token is still served and a background refresh starts.
    advance(56 * MINUTE).await;
    settle().await;
    assert_eq!(call(&service).await, "Bearer token-1");
    settle().await;
    assert_eq!(provider.stats().background_refreshes, 1);
    assert_eq!(call(&service).await, "Bearer token-2");
}

#[test]
fn a_worker_lost_with_its_runtime_is_replaced_and_the_token_still_expires_on_time() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::ZERO);
    let provider = TokenProvider::builder(exchange.clone(), credentials())
        .refresh_ahead(Duration::ZERO)
        .build();
    let first = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let armed = first.block_on(async {
        provider.token().await.unwrap();
        // A refresh that fails keeps the worker at work (it retries), so
        // that there is a worker to lose.
        let failure = routera_auth::TokenError::new(TokenErrorKind::ServerError);
        exchange.fail_until(Instant::now() + MINUTE, failure);
        assert!(provider.refresh().await.is_err());
        let metrics = tokio::runtime::Handle::current().metrics();
        until(|| metrics.num_alive_tasks() == 1).await
    });
    assert!(armed, "the worker runs on the multi-thread runtime");
    // The runtime that ran the worker goes away; the worker with it.
    drop(first);

    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let seen = second.block_on(async {
        let (inner, _) = common::answering(echo_authorization);
        let service = routera_auth::RouteraAuthLayer::new(provider.clone()).layer(inner);
        let before = call(&service).await;
        // Past the token's time, checked by the clock on the request path; a
        // new worker on this runtime fetches the next token.
        advance(HOUR).await;
        let after = call(&service).await;
        (before, after)
    });
    assert_eq!(seen.0, "Bearer token-1");
    // Exchange 2 was the failed refresh.
    assert_eq!(seen.1, "Bearer token-3");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_provider_mid_exchange_ends_the_task_after_it() {
    let metrics = tokio::runtime::Handle::current().metrics();
    let exchange = MockExchange::new(HOUR).with_delay(Duration::from_secs(1));
    let provider = exchange.provider();
    let mut caller = tokio_test::task::spawn(provider.token());
    assert!(caller.poll().is_pending());
    tokio::task::yield_now().await;
    assert_eq!(exchange.calls(), 1, "the exchange is under way");
    drop(caller);
    drop(provider);
    settle().await;
    advance(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(metrics.num_alive_tasks(), 0);
    assert_eq!(exchange.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn refresh_fetches_a_new_token_and_keeps_the_old_one_on_failure() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::ZERO);
    let provider = exchange.provider();
    let first = provider.token().await.unwrap();
    let second = provider.refresh().await.unwrap();
    assert_ne!(first, second);
    assert_eq!(provider.token().await.unwrap(), second);

    exchange.fail_next(status_error(500, "").await);
    assert_eq!(
        provider.refresh().await.unwrap_err().kind(),
        TokenErrorKind::ServerError
    );
    assert_eq!(
        provider.token().await.unwrap(),
        second,
        "the valid token is kept"
    );
    assert_eq!(exchange.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn stats_count_the_slow_path_exactly() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::from_millis(10));
    let provider = exchange.provider();
    let callers: Vec<_> = (0..5)
        .map(|_| {
            let provider = provider.clone();
            tokio::spawn(async move { provider.token().await })
        })
        .collect();
    let mut token = None;
    for caller in callers {
        token = Some(caller.await.unwrap().unwrap());
    }
    for _ in 0..1000 {
        provider.token().await.unwrap();
    }
    assert!(provider.invalidate(&token.unwrap()));
    assert!(!provider.invalidate(&AccessToken::new("not-cached")));
    provider.token().await.unwrap();
    let stats = provider.stats();
    assert_eq!(
        (
            stats.exchanges,
            stats.failures,
            stats.waits,
            stats.invalidations,
            stats.background_refreshes
        ),
        (2, 0, 6, 1, 0),
        "{stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_exchange_service_is_one_more_failure() {
    let exchange = MockExchange::new(HOUR);
    exchange
        .queue(MockAnswer::Panic)
        .queue(MockAnswer::Token(Token::new("after-panic", HOUR)));
    let provider = exchange.provider();
    let err = provider.token().await.unwrap_err();
    assert_eq!(err.kind(), TokenErrorKind::Internal);
    assert!(err.to_string().contains("panicked"), "{err}");

    run_for(2 * SECOND).await;
    assert_eq!(provider.token().await.unwrap().secret(), "after-panic");
    assert_eq!(exchange.calls(), 2);
}

/// An endpoint failing for an hour under `backoff(min, max)`: the first
/// caller's answer, and the exchanges made in the first second.
async fn outage_under_backoff(min: Duration, max: Duration) -> (TokenErrorKind, usize) {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::from_millis(1));
    let outage = routera_auth::TokenError::new(TokenErrorKind::ServerError);
    exchange.fail_until(Instant::now() + HOUR, outage);
    let provider = TokenProvider::builder(exchange.clone(), credentials())
        .backoff(min, max)
        .build();
    let first = tokio::time::timeout(5 * SECOND, provider.token())
        .await
        .expect("the caller got the failure, not a wait through the outage");
    tokio::time::sleep(SECOND).await;
    (first.unwrap_err().kind(), exchange.calls())
}

#[tokio::test(start_paused = true)]
async fn a_zero_backoff_still_answers_the_caller_and_paces_retries() {
    // Retrying at once used to replace the failure before its waiter read
    // it, and the waiter waited through the whole outage.
    let (kind, calls) = outage_under_backoff(Duration::ZERO, Duration::ZERO).await;
    assert_eq!(kind, TokenErrorKind::ServerError);
    // Kept at 10 ms at least: retries at about 10, 20, 30, … ms, never a
    // tight loop.
    assert!(
        (2..=101).contains(&calls),
        "{calls} exchanges in the first second"
    );
}

#[tokio::test(start_paused = true)]
async fn a_backoff_too_long_to_represent_waits_instead_of_retrying_at_once() {
    // `Duration::MAX` used to overflow into "retry now", in a loop.
    let (kind, calls) = outage_under_backoff(Duration::MAX, Duration::MAX).await;
    assert_eq!(kind, TokenErrorKind::ServerError);
    assert_eq!(calls, 1, "the next attempt waits for the backoff");
}

#[test]
fn a_refresh_asked_of_a_worker_lost_with_its_runtime_is_asked_again() {
    let exchange = MockExchange::new(HOUR);
    let provider = exchange.provider();
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let first = paused();
    first.block_on(async {
        provider.token().await.unwrap();
        let timing = provider.timing().unwrap();
        advance(timing.refresh_at - timing.fetched_at).await;
        // Asks for the refresh and wakes the worker, which does not run
        // before its runtime goes.
        assert_eq!(provider.token().await.unwrap().secret(), "token-1");
    });
    drop(first);
    let second = paused();
    second.block_on(async {
        // This runtime's paused clock starts afresh: bring it to the
        // refresh time, and past the exchange timeout after which an ask
        // that was never answered is made again.
        let timing = provider.timing().unwrap();
        let again = timing.refresh_at + Duration::from_secs(10);
        advance(again.saturating_duration_since(Instant::now())).await;
        assert_eq!(provider.token().await.unwrap().secret(), "token-1");
        settle().await;
        assert_eq!(provider.stats().background_refreshes, 1);
        assert_eq!(exchange.calls(), 2);
        assert_eq!(provider.token().await.unwrap().secret(), "token-2");
    });
}

#[test]
fn a_runtime_without_timers_gets_an_error_that_says_so() {
    let provider = MockExchange::new(HOUR).provider();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let err = runtime.block_on(provider.token()).unwrap_err();
    assert_eq!(err.kind(), TokenErrorKind::Internal);
    assert!(err.to_string().contains("enable_time"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_gets_its_exchanges_token_even_if_a_later_refresh_failed_first() {
    let exchange = MockExchange::new(HOUR).gated();
    exchange.queue(MockAnswer::Token(Token::new("mine", HOUR)));
    exchange.fail_next(routera_auth::TokenError::new(TokenErrorKind::RateLimited));
    let provider = exchange.provider();
    // Polled by hand, and not again until the end: a caller on a busy
    // thread.
    let mut waiter = tokio_test::task::spawn(provider.token());
    tokio_test::assert_pending!(waiter.poll());
    exchange.wait_for_calls(1).await;
    exchange.open_gate();
    settle().await;
    assert!(provider.timing().is_some(), "exchange 1 stored its token");
    let refreshed = provider.refresh().await;
    assert_eq!(refreshed.unwrap_err().kind(), TokenErrorKind::RateLimited);
    assert_eq!(
        provider.token().await.unwrap().secret(),
        "mine",
        "still served"
    );

    assert!(waiter.is_woken());
    let answer = tokio_test::assert_ready!(waiter.poll());
    assert_eq!(answer.expect("its own exchange succeeded").secret(), "mine");
}

#[tokio::test(start_paused = true)]
async fn a_refresh_gets_its_token_even_if_a_later_refresh_failed_first() {
    let exchange = MockExchange::new(HOUR).with_delay(SECOND);
    exchange.queue(MockAnswer::Token(Token::new("first", HOUR)));
    exchange.queue(MockAnswer::Token(Token::new("refreshed", HOUR)));
    exchange.fail_next(routera_auth::TokenError::new(TokenErrorKind::RateLimited));
    let provider = exchange.provider();
    provider.token().await.unwrap();

    let mut refreshing = tokio_test::task::spawn(provider.refresh());
    tokio_test::assert_pending!(refreshing.poll());
    settle().await;
    advance(SECOND).await;
    settle().await;
    assert_eq!(provider.token().await.unwrap().secret(), "refreshed");
    let later = provider.refresh().await;
    assert_eq!(later.unwrap_err().kind(), TokenErrorKind::RateLimited);

    let answer = tokio_test::assert_ready!(refreshing.poll());
    assert_eq!(answer.expect("its refresh succeeded").secret(), "refreshed");
}
