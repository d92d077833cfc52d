//! `SharedExchange` on its own, without a provider, on an in-memory store
//! and paused time: what it answers, when it waits, what it leaves in the
//! store. The same protocol under providers is in `tests/shared_cache.rs`,
//! and against a real Redis in `tests/fleet.rs`.

use std::time::Duration;

use tokio::time::Instant;
use tokio_test::{assert_pending, task};

use routera_auth::store::{SharedCache, SharedExchange};
use routera_auth::{AuthMethod, Token, TokenError, TokenErrorKind, TokenReason, TokenRequest};
use routera_auth_test::{MemoryStore, MockExchange};
use tower::ServiceExt;

const HOUR: Duration = Duration::from_secs(3600);

/// One replica's exchange: `exchange` under a shared cache of its own
/// in `store`.
fn replica(store: &MemoryStore, exchange: &MockExchange) -> SharedExchange<MockExchange> {
    let cache = SharedCache::new(
        store.clone(),
        "https://auth.test/t",
        AuthMethod::RequestBody,
    );
    tower::Layer::layer(&cache, exchange.clone())
}

/// What a provider with no token to serve sends.
fn cold() -> TokenRequest {
    TokenRequest::new(MockExchange::credentials())
}

/// The answer to `request`, once what follows it (the save, the
/// unlock: a task of their own) has run.
async fn ask(
    service: &SharedExchange<MockExchange>,
    request: TokenRequest,
) -> Result<Token, TokenError> {
    let answer = service.clone().oneshot(request).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    answer
}

#[tokio::test(start_paused = true)]
async fn a_token_from_the_store_says_how_long_ago_it_was_issued() {
    let store = MemoryStore::new();
    let exchange = MockExchange::new(HOUR);
    let fresh = ask(&replica(&store, &exchange), cold()).await.unwrap();
    assert_eq!(fresh.age(), Duration::ZERO);
    tokio::time::advance(Duration::from_secs(600)).await;

    let other = replica(&store, &exchange);
    let shared = ask(&other, cold()).await.unwrap();

    assert_eq!(exchange.calls(), 1);
    assert_eq!(shared.access_token().secret(), "token-1");
    assert_eq!(shared.expires_in(), Some(HOUR));
    assert_eq!(shared.age(), Duration::from_secs(600));
    assert_eq!(other.stats().hits, 1);
}

#[tokio::test(start_paused = true)]
async fn a_rejected_token_is_removed_from_the_store_and_never_taken() {
    let store = MemoryStore::new();
    let exchange = MockExchange::new(HOUR);
    let first = ask(&replica(&store, &exchange), cold()).await.unwrap();
    let fingerprint = store.tokens()[0].1.fingerprint.clone();

    let rejected = TokenReason::Rejected(first.access_token().clone());
    let other = replica(&store, &exchange);
    let renewed = ask(&other, cold().with_reason(rejected)).await.unwrap();

    assert_eq!(renewed.access_token().secret(), "token-2");
    let stored = store.tokens();
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0].1.fingerprint, fingerprint, "token-2 replaced it");
    assert_eq!(other.stats().lock_wins, 1);
}

#[tokio::test(start_paused = true)]
async fn the_fleets_backoff_is_a_deferred_error() {
    let store = MemoryStore::new();
    let exchange = MockExchange::new(HOUR);
    let asked = Duration::from_secs(30);
    exchange.fail_next(TokenError::new(TokenErrorKind::RateLimited).with_retry_after(asked));
    let endpoints = ask(&replica(&store, &exchange), cold()).await.unwrap_err();
    assert!(!endpoints.is_deferred(), "the endpoint's own answer");
    tokio::time::advance(Duration::from_secs(10)).await;

    let held_off = ask(&replica(&store, &exchange), cold()).await.unwrap_err();

    assert_eq!(exchange.calls(), 1, "no exchange while the fleet backs off");
    assert!(held_off.is_deferred());
    assert_eq!(held_off.kind(), TokenErrorKind::RateLimited);
    assert_eq!(held_off.retry_after(), Some(Duration::from_secs(20)));
}

#[tokio::test(start_paused = true)]
async fn a_future_dropped_holding_the_lock_releases_it_at_once() {
    let store = MemoryStore::new();
    let hung = MockExchange::new(HOUR).gated();
    let holder = replica(&store, &hung);
    let mut holding = task::spawn(holder.clone().oneshot(cold()));
    assert_pending!(holding.poll());
    assert_eq!(hung.calls(), 1, "it holds the lock and exchanges");
    drop(holding);
    // The release runs in a task of its own.
    tokio::task::yield_now().await;

    let exchange = MockExchange::new(HOUR);
    let other = replica(&store, &exchange);
    let started = Instant::now();
    let token = ask(&other, cold()).await.unwrap();

    assert_eq!(token.access_token().secret(), "token-1");
    assert_eq!(started.elapsed(), Duration::ZERO, "no wait for the lock");
    let stats = other.stats();
    assert_eq!((stats.lock_wins, stats.waits), (1, 0));
}

/// A replica whose exchange has started and never ends, holding the
/// fleet's lock: alive (its future runs on the runtime, and renews the
/// lease).
async fn live_holder(store: &MemoryStore) -> tokio::task::JoinHandle<()> {
    let hung = MockExchange::new(HOUR).gated();
    let holder = replica(store, &hung);
    let holding = tokio::spawn(async move {
        let _ = holder.oneshot(cold()).await;
    });
    while hung.calls() == 0 {
        tokio::task::yield_now().await;
    }
    holding
}

#[tokio::test(start_paused = true)]
async fn a_dead_holders_lease_lapses_and_a_waiter_takes_over() {
    let store = MemoryStore::new();
    let hung = MockExchange::new(HOUR).gated();
    let mut holding = task::spawn(replica(&store, &hung).oneshot(cold()));
    assert_pending!(holding.poll());
    assert_eq!(hung.calls(), 1, "it holds the lock and exchanges");
    // Never polled again: a replica that died (its lock is not
    // released, its lease not renewed).

    let exchange = MockExchange::new(HOUR);
    let waiter = replica(&store, &exchange);
    let started = Instant::now();
    let token = ask(&waiter, cold()).await.unwrap();

    // The lease (1 s), then at most one pause between looks (100 ms).
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(1)..=Duration::from_millis(1_100)).contains(&waited),
        "{waited:?}"
    );
    assert_eq!(token.access_token().secret(), "token-1");
    let stats = waiter.stats();
    assert_eq!((stats.waits, stats.lock_wins, stats.fallbacks), (1, 1, 0));
    drop(holding);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_waits_for_a_live_holder_until_its_own_timeout_and_never_exchanges() {
    let store = MemoryStore::new();
    // Alive past its lease: it renews it, so the waiter waits its whole
    // timeout.
    let _holding = live_holder(&store).await;

    let exchange = MockExchange::new(HOUR);
    let waiter = replica(&store, &exchange);
    let started = Instant::now();
    let request = cold().with_timeout(Duration::from_secs(4));
    let error = ask(&waiter, request).await.unwrap_err();

    // Its answer comes 10 ms before its caller would give up on it.
    assert_eq!(started.elapsed(), Duration::from_millis(3_990));
    assert_eq!(error.kind(), TokenErrorKind::Timeout);
    assert!(!error.is_deferred(), "{error}");
    assert_eq!(exchange.calls(), 0, "no exchange beside a live holder's");
    let stats = waiter.stats();
    assert_eq!((stats.waits, stats.fallbacks, stats.lock_wins), (1, 0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_replica_with_a_token_waits_for_a_live_holder_past_half_its_serving_time() {
    let store = MemoryStore::new();
    let slow = MockExchange::new(HOUR).with_delay(Duration::from_secs(3));
    let holder = replica(&store, &slow);
    let holding = tokio::spawn(holder.oneshot(cold()));
    while slow.calls() == 0 {
        tokio::task::yield_now().await;
    }

    let exchange = MockExchange::new(HOUR);
    let refreshing = replica(&store, &exchange);
    let started = Instant::now();
    // Its token is served 2 s more: it serves it meanwhile, and waits
    // for the holder's 3 s exchange rather than add one of its own.
    let request = cold()
        .with_reason(TokenReason::RefreshDue)
        .with_needed_by(started + Duration::from_secs(2));
    let token = ask(&refreshing, request).await.unwrap();

    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(3)..=Duration::from_millis(3_100)).contains(&waited),
        "{waited:?}"
    );
    assert_eq!(token.access_token().secret(), "token-1");
    assert_eq!(exchange.calls(), 0);
    assert_eq!(refreshing.stats().hits, 1);
    holding.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_holders_failure_is_the_answer_of_its_waiters_and_holds_off_the_others() {
    let store = MemoryStore::new();
    let slow = MockExchange::new(HOUR).with_delay(Duration::from_secs(1));
    slow.fail_next(TokenError::new(TokenErrorKind::ServerError));
    let holder = replica(&store, &slow);
    let backoff = Duration::from_millis(1_500);
    let holding = tokio::spawn(holder.oneshot(cold().with_backoff(backoff)));
    while slow.calls() == 0 {
        tokio::task::yield_now().await;
    }

    let exchange = MockExchange::new(HOUR);
    let waiter = replica(&store, &exchange);
    let started = Instant::now();
    let error = ask(&waiter, cold()).await.unwrap_err();

    // The holder's failure, as its waiters' own (their providers count
    // it), with what is left of the backoff the holder takes.
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(1)..=Duration::from_millis(1_100)).contains(&waited),
        "{waited:?}"
    );
    assert!(holding.await.unwrap().is_err());
    assert_eq!(error.kind(), TokenErrorKind::ServerError);
    assert!(!error.is_deferred(), "{error}");
    let left = error.retry_after().unwrap();
    assert!(
        left > Duration::from_millis(1_400) && left <= backoff,
        "{left:?}"
    );
    assert!(error.to_string().contains("another replica"), "{error}");

    // A replica that comes during the backoff waits it out, deferred.
    tokio::time::advance(Duration::from_millis(500)).await;
    let held_off = ask(&replica(&store, &exchange), cold()).await.unwrap_err();
    assert!(held_off.is_deferred());
    assert_eq!(held_off.kind(), TokenErrorKind::ServerError);
    assert_eq!(exchange.calls(), 0, "no exchange while the fleet backs off");

    // After it, the next one exchanges.
    tokio::time::advance(Duration::from_millis(1_200)).await;
    let token = ask(&replica(&store, &exchange), cold()).await.unwrap();
    assert_eq!(token.access_token().secret(), "token-1");
    assert_eq!(exchange.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_holders_exchange_that_outlasts_its_timeout_fails_here_and_is_published() {
    let store = MemoryStore::new();
    let hung = MockExchange::new(HOUR).gated();
    let holder = replica(&store, &hung);
    let request = cold()
        .with_timeout(Duration::from_secs(2))
        .with_backoff(Duration::from_secs(1));
    let answer = tokio::time::timeout(Duration::from_secs(3), ask(&holder, request));
    let error = answer
        .await
        .expect("answered within its timeout")
        .unwrap_err();

    assert_eq!(error.kind(), TokenErrorKind::Timeout);
    assert_eq!(
        error.to_string(),
        "the token exchange timed out: no answer within 2000 ms"
    );
    let held_off = ask(&replica(&store, &hung), cold()).await.unwrap_err();
    assert!(held_off.is_deferred());
    assert_eq!(held_off.kind(), TokenErrorKind::Timeout);
    assert_eq!(hung.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_store_is_written_after_the_answer_not_before() {
    // A store that takes 200 ms an operation (under its timeout).
    let store = MemoryStore::new();
    store.set_delay(Some(Duration::from_millis(200)));
    let exchange = MockExchange::new(HOUR);
    let started = Instant::now();
    let token = replica(&store, &exchange).oneshot(cold()).await.unwrap();
    // Look, lock, look again: 600 ms; the save and the unlock follow.
    assert_eq!(started.elapsed(), Duration::from_millis(600));
    assert_eq!(token.access_token().secret(), "token-1");
    assert!(store.tokens().is_empty(), "saved after the answer");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.tokens().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_replica_with_a_token_takes_only_a_newer_one() {
    let store = MemoryStore::new();
    let exchange = MockExchange::new(HOUR);
    let own = replica(&store, &exchange);
    ask(&own, cold()).await.unwrap();
    tokio::time::advance(Duration::from_secs(3300)).await;

    // Its own token is the stored one: it exchanges.
    let needed_by = Instant::now() + Duration::from_secs(270);
    let due = || {
        cold()
            .with_reason(TokenReason::RefreshDue)
            .with_needed_by(needed_by)
    };
    let renewed = ask(&own, due()).await.unwrap();
    assert_eq!(renewed.access_token().secret(), "token-2");

    // Another replica, whose token is older, takes the newer one.
    let other = replica(&store, &exchange);
    ask(&other, cold()).await.unwrap();
    assert_eq!(other.stats().hits, 1);
    assert_eq!(exchange.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn debug_shows_no_secret() {
    let store = MemoryStore::new();
    let exchange = MockExchange::new(HOUR);
    let service = replica(&store, &exchange);
    ask(&service, cold()).await.unwrap();
    let text = format!("{service:?}");
    assert!(text.contains("SharedExchange"), "{text}");
    assert!(
        !text.contains("token-1") && !text.contains("mock-secret"),
        "{text}"
    );
}
