//! `TokenProvider` over a mocked exchange, on paused tokio time.

mod common;

use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::{credentials, status_error};
use routera_auth::defaults;
use routera_auth::{
    AccessToken, ClientCredentials, MAX_TOKEN_LIFETIME, Token, TokenErrorKind, TokenProvider,
};
use routera_auth_test::{MockAnswer, MockExchange};
use tokio::time::advance;
use tokio_test::{assert_pending, assert_ready, task};

const HOUR: Duration = Duration::from_secs(3600);

/// A provider without refresh ahead: these tests are about expiry itself.
fn expiry_only(exchange: &MockExchange) -> TokenProvider {
    TokenProvider::builder(exchange.clone(), credentials())
        .refresh_ahead(Duration::ZERO)
        .build()
}

async fn settle() {
    // Lets spawned tasks (the exchange) run on the current-thread runtime.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_fresh_token_is_reused() {
    let exchange = MockExchange::new(HOUR);
    let provider = expiry_only(&exchange);

    let first = provider.token().await.unwrap();
    for _ in 0..100 {
        assert_eq!(provider.token().await.unwrap(), first);
    }
    assert_eq!(exchange.calls(), 1);
    assert_eq!(first.secret(), "token-1");
}

#[tokio::test(start_paused = true)]
async fn the_token_is_renewed_after_expires_in_minus_the_skew() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::ZERO);
    let provider = expiry_only(&exchange);
    let first = provider.token().await.unwrap();

    advance(HOUR - defaults::EXPIRY_SKEW - Duration::from_secs(1)).await;
    assert_eq!(provider.token().await.unwrap(), first);
    assert_eq!(exchange.calls(), 1);

    advance(Duration::from_secs(1)).await;
    let second = provider.token().await.unwrap();
    assert_ne!(second, first);
    assert_eq!(second.secret(), "token-2");
    assert_eq!(exchange.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_skew_is_configurable_and_never_eats_more_than_a_quarter_of_a_lifetime() {
    let exchange = MockExchange::new(Duration::from_secs(2)).with_delay(Duration::ZERO);
    let provider = TokenProvider::builder(exchange.clone(), credentials())
        .refresh_ahead(Duration::ZERO)
        .expiry_skew(Duration::from_secs(300))
        .build();
    provider.token().await.unwrap();
    // The skew is at most a quarter of a lifetime, but 1 s where half the
    // lifetime allows it (OAuth servers count expiry in whole seconds).
    advance(Duration::from_millis(999)).await;
    provider.token().await.unwrap();
    assert_eq!(exchange.calls(), 1, "a 2 s token stays fresh for 1 s");
    advance(Duration::from_millis(1)).await;
    provider.token().await.unwrap();
    assert_eq!(exchange.calls(), 2);

    let exchange = MockExchange::new(HOUR).with_delay(Duration::ZERO);
    let provider = TokenProvider::builder(exchange.clone(), credentials())
        .refresh_ahead(Duration::ZERO)
        .expiry_skew(Duration::from_secs(600))
        .build();
    provider.token().await.unwrap();
    advance(HOUR - Duration::from_secs(600)).await;
    provider.token().await.unwrap();
    assert_eq!(exchange.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn lifetime_is_counted_from_the_request_not_the_response() {
    // The exchange takes 5 s; a 60 s token is fresh until 60 - 15 s after
    // it was requested (the 30 s skew is capped at a quarter of 60 s).
    let exchange = MockExchange::new(Duration::from_secs(60)).with_delay(Duration::from_secs(5));
    let provider = expiry_only(&exchange);
    provider.token().await.unwrap();
    advance(Duration::from_secs(39)).await; // 44 s after the request
    provider.token().await.unwrap();
    assert_eq!(exchange.calls(), 1);
    advance(Duration::from_secs(1)).await; // 45 s
    provider.token().await.unwrap();
    assert_eq!(exchange.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_lifetime_is_assumed_short_and_a_huge_one_is_capped() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::ZERO);
    exchange.queue(MockAnswer::Token(Token::with_unknown_lifetime("no-expiry")));
    let provider = TokenProvider::builder(exchange.clone(), credentials())
        .refresh_ahead(Duration::ZERO)
        .assumed_lifetime(Duration::from_secs(120))
        .build();
    assert_eq!(provider.token().await.unwrap().secret(), "no-expiry");
    advance(Duration::from_secs(89)).await;
    assert_eq!(provider.token().await.unwrap().secret(), "no-expiry");
    advance(Duration::from_secs(1)).await;
    assert_ne!(provider.token().await.unwrap().secret(), "no-expiry");

    let exchange = MockExchange::new(HOUR).with_delay(Duration::ZERO);
    exchange.queue(MockAnswer::Token(Token::new(
        "ten-years",
        Duration::from_secs(10 * 365 * 86_400),
    )));
    let provider = expiry_only(&exchange);
    assert_eq!(provider.token().await.unwrap().secret(), "ten-years");
    advance(MAX_TOKEN_LIFETIME - defaults::EXPIRY_SKEW).await;
    assert_ne!(provider.token().await.unwrap().secret(), "ten-years");
    assert_eq!(exchange.calls(), 2);
}

async fn herd(provider: &TokenProvider, callers: usize) -> Vec<AccessToken> {
    let handles: Vec<_> = (0..callers)
        .map(|_| {
            let provider = provider.clone();
            tokio::spawn(async move { provider.token().await })
        })
        .collect();
    let mut tokens = Vec::with_capacity(callers);
    for handle in handles {
        tokens.push(handle.await.unwrap().unwrap());
    }
    tokens
}

#[tokio::test(start_paused = true)]
async fn one_thousand_concurrent_callers_share_one_exchange_cold_and_at_expiry() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::from_millis(100));
    let provider = expiry_only(&exchange);

    let tokens = herd(&provider, 1000).await;
    assert_eq!(exchange.calls(), 1);
    assert!(tokens.iter().all(|token| token.secret() == "token-1"));

    advance(HOUR).await;
    let tokens = herd(&provider, 1000).await;
    assert_eq!(exchange.calls(), 2);
    assert!(tokens.iter().all(|token| token.secret() == "token-2"));
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_concurrent_callers_share_one_exchange_cold_and_at_expiry() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::from_millis(1));
    let provider = expiry_only(&exchange);

    let tokens = herd(&provider, 10_000).await;
    assert_eq!(exchange.calls(), 1);
    assert!(tokens.iter().all(|token| token.secret() == "token-1"));
    assert_eq!(provider.stats().exchanges, 1);

    advance(HOUR).await;
    let tokens = herd(&provider, 10_000).await;
    assert_eq!(exchange.calls(), 2);
    assert!(tokens.iter().all(|token| token.secret() == "token-2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_exchange_for_concurrent_callers_on_many_threads() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::from_millis(20));
    let provider = expiry_only(&exchange);
    let tokens = herd(&provider, 1000).await;
    assert_eq!(exchange.calls(), 1);
    assert!(tokens.iter().all(|token| token.secret() == "token-1"));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_caller_that_started_the_exchange_cancels_nothing() {
    let exchange = MockExchange::new(HOUR).gated();
    let provider = expiry_only(&exchange);

    let mut first = task::spawn(provider.token());
    assert_pending!(first.poll());
    settle().await;
    assert_eq!(exchange.calls(), 1, "the first caller started the exchange");

    let second = tokio::spawn({
        let provider = provider.clone();
        async move { provider.token().await }
    });
    settle().await;
    drop(first);

    exchange.open_gate();
    let token = second.await.unwrap().unwrap();
    assert_eq!(token.secret(), "token-1");
    assert_eq!(exchange.calls(), 1);
    assert_eq!(exchange.finished(), 1, "the exchange ran to its end");
    // And the result is cached for everyone after.
    assert_eq!(provider.token().await.unwrap(), token);
    assert_eq!(exchange.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_lone_caller_dropped_mid_exchange_still_fills_the_cache() {
    let exchange = MockExchange::new(HOUR).gated();
    let provider = expiry_only(&exchange);
    let mut caller = task::spawn(provider.token());
    assert_pending!(caller.poll());
    drop(caller);
    exchange.open_gate();
    settle().await;
    advance(Duration::from_millis(10)).await;
    settle().await;
    assert_eq!(exchange.finished(), 1);
    assert_eq!(provider.token().await.unwrap().secret(), "token-1");
    assert_eq!(exchange.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_exchange_error_reaches_every_waiter_and_a_later_call_gets_a_token() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::from_millis(100));
    exchange.fail_next(status_error(503, "").await);
    let provider = expiry_only(&exchange);

    let handles: Vec<_> = (0..50)
        .map(|_| {
            let provider = provider.clone();
            tokio::spawn(async move { provider.token().await })
        })
        .collect();
    for handle in handles {
        let err = handle.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), TokenErrorKind::ServerError);
        assert_eq!(err.status().map(|s| s.as_u16()), Some(503));
    }
    assert_eq!(exchange.calls(), 1, "one exchange for all 50 waiters");

    // The retry comes after the first backoff (at most 1 s), not per call.
    advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(provider.token().await.unwrap().secret(), "token-2");
    assert_eq!(exchange.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn invalidate_drops_only_the_cached_token() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::ZERO);
    let provider = expiry_only(&exchange);
    let first = provider.token().await.unwrap();

    assert!(!provider.invalidate(&AccessToken::new("someone-else")));
    assert_eq!(provider.token().await.unwrap(), first);
    assert_eq!(exchange.calls(), 1);

    assert!(provider.invalidate(&first));
    assert!(
        !provider.invalidate(&first),
        "a second 401 for the same token changes nothing"
    );
    let second = provider.token().await.unwrap();
    assert_ne!(second, first);
    assert_eq!(exchange.calls(), 2);

    assert!(
        !provider.invalidate(&first),
        "a stale token never evicts the newer one"
    );
    assert_eq!(provider.token().await.unwrap(), second);
    assert_eq!(exchange.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_token_that_cannot_be_a_header_is_an_error() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::ZERO);
    exchange.queue(MockAnswer::Token(Token::new("bad\ntoken", HOUR)));
    let provider = expiry_only(&exchange);
    let err = provider.token().await.unwrap_err();
    assert_eq!(err.kind(), TokenErrorKind::InvalidResponse);
    assert!(!err.to_string().contains("bad\ntoken"));
    advance(Duration::from_secs(1)).await;
    assert_eq!(provider.token().await.unwrap().secret(), "token-2");
}

#[test]
fn without_a_runtime_token_fails_instead_of_panicking() {
    let provider = MockExchange::new(HOUR).provider();
    let mut future = std::pin::pin!(provider.token());
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(Err(err)) => {
            assert_eq!(err.kind(), TokenErrorKind::Internal);
            assert!(err.to_string().contains("runtime"), "{err}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn an_exchange_lost_with_its_runtime_does_not_leave_the_cache_stuck() {
    let exchange = MockExchange::new(HOUR).gated();
    let provider = expiry_only(&exchange);

    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    first.block_on(async {
        let mut caller = task::spawn(provider.token());
        assert_pending!(caller.poll());
        settle().await;
    });
    assert_eq!(exchange.calls(), 1);
    // The runtime goes away with the exchange task still waiting at the gate.
    drop(first);

    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = second.block_on(async {
        exchange.open_gate();
        provider.token().await
    });
    assert_eq!(token.unwrap().secret(), "token-2");
    assert_eq!(exchange.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn waiters_see_the_same_error_value() {
    let exchange = MockExchange::new(HOUR).gated();
    exchange.fail_next(status_error(401, r#"{"error":"invalid_client"}"#).await);
    let provider = expiry_only(&exchange);
    let mut a = task::spawn(provider.token());
    let mut b = task::spawn(provider.token());
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    exchange.open_gate();
    settle().await;
    advance(Duration::from_millis(10)).await;
    settle().await;
    let a = assert_ready!(a.poll()).unwrap_err();
    let b = assert_ready!(b.poll()).unwrap_err();
    for err in [a, b] {
        assert_eq!(err.kind(), TokenErrorKind::InvalidClient);
        assert_eq!(err.error_code(), Some("invalid_client"));
        assert!(!err.is_retryable());
    }
    assert_eq!(exchange.calls(), 1);
}

#[tokio::test]
async fn debug_shows_no_token_and_no_secret() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::ZERO);
    let provider = expiry_only(&exchange);
    let token = provider.token().await.unwrap();
    let debug = format!("{provider:?} {token:?}");
    assert!(!debug.contains(token.secret()), "{debug}");
    assert!(!debug.contains(credentials().client_secret()), "{debug}");
    assert!(debug.contains("mock-client"), "{debug}");
}

#[test]
fn a_worker_dropped_before_it_ever_ran_releases_its_callers() {
    let exchange = MockExchange::new(HOUR);
    let provider = expiry_only(&exchange);
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut caller = task::spawn(provider.token());
    {
        // The caller asks from inside the runtime, which spawns the worker
        // there; the runtime is never driven, so the worker never runs.
        let _context = first.enter();
        assert_pending!(caller.poll());
    }
    drop(first);
    assert!(caller.is_woken(), "the dropped worker woke its caller");
    let err = assert_ready!(caller.poll()).unwrap_err();
    assert_eq!(err.kind(), TokenErrorKind::Internal);
    assert!(err.to_string().contains("worker stopped"), "{err}");
    assert_eq!(exchange.calls(), 0);

    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let token = second.block_on(provider.token()).unwrap();
    assert_eq!(token.secret(), "token-1", "a new worker on the new runtime");
}

/// A rotation to another client while an exchange for the old one is in
/// flight: its result is discarded, and the token served afterwards comes
/// from an exchange for the new client. (The deterministic counterpart of
/// the racing test below.)
#[tokio::test(start_paused = true)]
async fn a_rotation_while_an_exchange_is_in_flight_discards_its_result() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::from_secs(1));
    let provider = exchange.provider();
    assert_eq!(provider.token().await.unwrap().secret(), "token-1");

    let refreshing = tokio::spawn({
        let provider = provider.clone();
        async move { provider.refresh().await }
    });
    // Bounds the waits (on paused time, at once) so a regression fails the
    // test instead of hanging it.
    let bound = Duration::from_secs(60);
    tokio::time::timeout(bound, exchange.wait_for_calls(2))
        .await
        .expect("the refresh starts exchange 2");
    assert_eq!(exchange.finished(), 1, "exchange 2 is in flight");
    provider.set_credentials(ClientCredentials::new("other", "secret"));
    let refreshed = tokio::time::timeout(bound, refreshing)
        .await
        .expect("the refresh ends")
        .unwrap();

    // `token-N` answered the N-th exchange: it must have been for the new
    // client.
    let asked_for = |secret: &str| {
        let call: usize = secret.strip_prefix("token-").unwrap().parse().unwrap();
        exchange.credentials_seen()[call - 1].client_id().to_owned()
    };
    assert_eq!(asked_for("token-2"), credentials().client_id());
    if let Ok(refreshed) = refreshed {
        assert_eq!(
            asked_for(refreshed.secret()),
            "other",
            "refresh answered {}",
            refreshed.secret()
        );
    }
    let token = provider.token().await.unwrap();
    assert_eq!(asked_for(token.secret()), "other", "{}", token.secret());
}

/// A rotation to another client racing with a refresh under way: a token of
/// the old client is never served afterwards. (The window is narrow; many
/// rounds on a multi-thread runtime make a regression likely to show.)
#[test]
fn a_token_of_the_old_client_is_never_served_after_rotation() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for round in 0..3_000u32 {
        let exchange = MockExchange::new(HOUR);
        let provider = exchange.provider();
        runtime.block_on(async {
            provider.token().await.unwrap();
            let refreshing = tokio::spawn({
                let provider = provider.clone();
                async move { provider.refresh().await }
            });
            for _ in 0..round % 100 {
                std::hint::spin_loop();
            }
            provider.set_credentials(ClientCredentials::new("other", "secret"));
            let _ = refreshing.await;
            let token = provider.token().await.unwrap();
            // `token-N` answered the N-th exchange: it must have been for
            // the new client.
            let call: usize = token
                .secret()
                .strip_prefix("token-")
                .unwrap()
                .parse()
                .unwrap();
            let asked_for = &exchange.credentials_seen()[call - 1];
            assert_eq!(
                asked_for.client_id(),
                "other",
                "round {round}: {}",
                token.secret()
            );
        });
    }
}

#[tokio::test(start_paused = true)]
async fn each_request_says_why_the_token_is_wanted_and_by_when() {
    use routera_auth::TokenReason;
    let exchange = MockExchange::new(HOUR).with_delay(Duration::ZERO);
    let provider = exchange.provider();
    let first = provider.token().await.unwrap();
    let timing = provider.timing().unwrap();
    provider.refresh().await.unwrap();
    let second = provider.token().await.unwrap();
    assert_ne!(first, second);
    provider.invalidate(&second);
    provider.token().await.unwrap();

    let seen = exchange.requests_seen();
    let reasons: Vec<TokenReason> = seen.iter().map(|r| r.reason().clone()).collect();
    assert_eq!(
        reasons,
        [
            TokenReason::Missing,
            TokenReason::Forced,
            TokenReason::Rejected(second)
        ]
    );
    assert_eq!(seen[0].needed_by(), None, "needed now");
    assert_eq!(seen[1].needed_by(), Some(timing.served_until));
    assert_eq!(seen[2].needed_by(), None);
    assert_eq!(seen[0].timeout(), routera_auth::defaults::EXCHANGE_TIMEOUT);
    assert_eq!(seen[0].served_for(HOUR), HOUR - defaults::EXPIRY_SKEW);
}

#[tokio::test(start_paused = true)]
async fn a_token_handed_over_with_an_age_is_scheduled_from_its_issue() {
    let exchange = MockExchange::new(HOUR);
    let cached =
        Token::new("from-a-cache", Duration::from_secs(60)).with_age(Duration::from_secs(20));
    exchange.queue(MockAnswer::Token(cached));
    let provider = expiry_only(&exchange);
    let now = tokio::time::Instant::now();
    assert_eq!(provider.token().await.unwrap().secret(), "from-a-cache");
    let timing = provider.timing().unwrap();
    // Issued 20 s ago: a 60 s token is served until 45 s after its issue,
    // 25 s from now, not 45 s from now.
    assert_eq!(timing.fetched_at, now - Duration::from_secs(20));
    assert_eq!(timing.served_until, now + Duration::from_secs(25));
}

#[tokio::test(start_paused = true)]
async fn a_deferral_is_waited_out_exactly_and_is_no_failure() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::ZERO);
    let held = routera_auth::TokenError::new(TokenErrorKind::RateLimited)
        .with_retry_after(Duration::from_millis(100))
        .deferred();
    exchange.fail_next(held);
    let provider = exchange.provider();
    let error = provider.token().await.unwrap_err();
    assert!(error.is_deferred());
    // Callers meanwhile get it at once; the retry comes after exactly
    // 100 ms, not after a backoff of its own (0.8 s or more).
    assert!(provider.token().await.unwrap_err().is_deferred());
    advance(Duration::from_millis(100)).await;
    settle().await;
    assert_eq!(exchange.calls(), 2);
    assert_eq!(provider.token().await.unwrap().secret(), "token-2");
    assert_eq!(provider.stats().failures, 0);
}
