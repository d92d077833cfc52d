//! The fleet protocol of the `SharedCache` layer on an in-memory store and
//! paused time, with providers over a layered exchange: one exchange per
//! fleet, the lock, the waits, the fallbacks, the breaker. The same protocol
//! against a real Redis is in `tests/fleet.rs`.

mod common;

use std::time::Duration;

use common::{Capture, Replica, layered, total};

use routera_auth::store::{SharedCache, StoreKeyRing};
use routera_auth::{AccessToken, AuthMethod, TokenError, TokenErrorKind, TokenRequest};
use routera_auth_test::{MemoryStore, MockExchange};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tower::ServiceExt;

const HOUR: Duration = Duration::from_secs(3600);
const URL: &str = "https://auth.routera.test/oauth2/token";

fn cache(store: &MemoryStore) -> SharedCache {
    SharedCache::new(store.clone(), URL, AuthMethod::RequestBody)
}

fn replica_with(
    cache: SharedCache,
    exchange: &MockExchange,
    exchange_timeout: Duration,
) -> Replica {
    layered(
        cache,
        exchange.clone(),
        MockExchange::credentials(),
        exchange_timeout,
    )
}

fn replica(store: &MemoryStore, exchange: &MockExchange) -> Replica {
    timed_replica(store, exchange, routera_auth::defaults::EXCHANGE_TIMEOUT)
}

/// A replica whose exchange never answers, holding the fleet's lock: its
/// exchange has started. Its `token()` runs in the returned task.
async fn lock_holder(
    store: &MemoryStore,
    exchange_timeout: Duration,
) -> (Replica, JoinHandle<Result<AccessToken, TokenError>>) {
    let hung = MockExchange::new(HOUR).gated();
    let holder = timed_replica(store, &hung, exchange_timeout);
    let holding = tokio::spawn({
        let holder = holder.clone();
        async move { holder.token().await }
    });
    while hung.calls() == 0 {
        tokio::task::yield_now().await;
    }
    (holder, holding)
}

fn timed_replica(
    store: &MemoryStore,
    exchange: &MockExchange,
    exchange_timeout: Duration,
) -> Replica {
    replica_with(cache(store), exchange, exchange_timeout)
}

fn fleet(n: usize, store: &MemoryStore, exchange: &MockExchange) -> Vec<Replica> {
    (0..n).map(|_| replica(store, exchange)).collect()
}

/// Every replica asks for a token at once; the tokens they got.
async fn all_ask(replicas: &[Replica]) -> Vec<String> {
    let mut asks = JoinSet::new();
    for (i, replica) in replicas.iter().enumerate() {
        let replica = replica.provider.clone();
        asks.spawn(async move { (i, replica.token().await) });
    }
    let mut tokens = vec![String::new(); replicas.len()];
    while let Some(joined) = asks.join_next().await {
        let (i, token) = joined.unwrap();
        tokens[i] = token.unwrap().secret().to_owned();
    }
    tokens
}

/// Steady traffic on every replica, one request a second, until past the
/// last one's refresh point: each finds its refresh due in its own jittered
/// second.
async fn traffic_past_refresh(replicas: &[Replica]) {
    let refresh_at = replicas.iter().map(|r| r.timing().unwrap().refresh_at);
    let last_refresh = refresh_at.max().unwrap();
    while Instant::now() < last_refresh + Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        all_ask(replicas).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_cold_fleet_makes_one_exchange_and_serves_one_token() {
    let store = MemoryStore::new();
    let exchange = MockExchange::new(HOUR).with_delay(Duration::from_millis(50));
    let replicas = fleet(50, &store, &exchange);

    let tokens = all_ask(&replicas).await;

    assert_eq!(exchange.calls(), 1);
    assert!(tokens.iter().all(|token| token == "token-1"), "{tokens:?}");
    assert_eq!(total(&replicas, |s| s.lock_wins), 1);
    assert_eq!(total(&replicas, |s| s.hits), 49);
    assert_eq!(total(&replicas, |s| s.waits), 49);
    assert_eq!(total(&replicas, |s| s.errors), 0);
    assert_eq!(total(&replicas, |s| s.fallbacks), 0);
    assert_eq!(store.tokens().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_refresh_costs_one_exchange_for_the_fleet() {
    let store = MemoryStore::new();
    let exchange = MockExchange::new(HOUR).with_delay(Duration::from_millis(50));
    let replicas = fleet(20, &store, &exchange);
    all_ask(&replicas).await;
    traffic_past_refresh(&replicas).await;

    assert_eq!(exchange.calls(), 2, "one exchange at start, one at refresh");
    let tokens = all_ask(&replicas).await;
    assert!(tokens.iter().all(|token| token == "token-2"), "{tokens:?}");
    let refreshes = replicas.iter().map(|r| r.stats().background_refreshes);
    assert_eq!(refreshes.sum::<u64>(), 20);
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_never_fails_a_request_and_sharing_resumes() {
    let store = MemoryStore::new();
    let exchange = MockExchange::new(HOUR);
    let replicas = fleet(10, &store, &exchange);
    store.set_failing(true);

    let tokens = all_ask(&replicas).await;

    assert_eq!(tokens.len(), 10);
    assert_eq!(exchange.calls(), 10, "each replica exchanges on its own");
    assert_eq!(total(&replicas, |s| s.fallbacks), 10);
    assert!(total(&replicas, |s| s.errors) >= 10);

    // The store is back long before the refresh: the fleet shares again.
    store.set_failing(false);
    traffic_past_refresh(&replicas).await;
    assert_eq!(exchange.calls(), 11, "one fleet exchange at the refresh");
}

#[tokio::test(start_paused = true)]
async fn a_breaker_leaves_a_failing_store_alone() {
    let store = MemoryStore::new();
    store.set_failing(true);
    let exchange = MockExchange::new(Duration::from_secs(60));
    let cache = cache(&store).breaker(2, Duration::from_secs(30));
    let replica = replica_with(cache, &exchange, routera_auth::defaults::EXCHANGE_TIMEOUT);

    replica.token().await.unwrap();
    // A load failed, then the save after the exchange: two in a row.
    let after_open = store.operations();
    assert_eq!(replica.cache.stats().errors, 2);
    for _ in 0..5 {
        replica.refresh().await.unwrap();
    }
    assert_eq!(store.operations(), after_open, "the breaker is open");
    assert_eq!(exchange.calls(), 6);

    // After 30 s one probe goes to the store; it fails, and the breaker
    // stays open for 30 s more.
    tokio::time::sleep(Duration::from_secs(31)).await;
    replica.refresh().await.unwrap();
    assert_eq!(store.operations(), after_open + 1);
    replica.refresh().await.unwrap();
    assert_eq!(store.operations(), after_open + 1);

    // The store answers again: the next probe's writes close the breaker,
    // and the store is used from then on.
    store.set_failing(false);
    tokio::time::sleep(Duration::from_secs(31)).await;
    replica.refresh().await.unwrap();
    let closed = store.operations();
    assert!(closed > after_open + 2, "a probe went through");
    assert_eq!(store.tokens().len(), 1, "and shared its token");
    replica.refresh().await.unwrap();
    assert!(store.operations() > closed, "the breaker is closed");
}

#[tokio::test(start_paused = true)]
async fn sharing_resumes_one_probe_after_the_store_answers_again() {
    let store = MemoryStore::new();
    let exchange = MockExchange::new(HOUR);
    let replicas = fleet(10, &store, &exchange);
    store.set_failing(true);
    all_ask(&replicas).await;
    assert_eq!(
        exchange.calls(),
        10,
        "each on its own while the store fails"
    );

    // The store answers again; the default breaker probes every 250 ms.
    store.set_failing(false);
    tokio::time::sleep(routera_auth::store::DEFAULT_BREAKER_PROBE_EVERY).await;
    let mut refreshes = JoinSet::new();
    for replica in &replicas {
        let replica = replica.provider.clone();
        refreshes.spawn(async move { replica.refresh().await.unwrap() });
    }
    refreshes.join_all().await;
    assert_eq!(exchange.calls(), 11, "one exchange for the whole fleet");
}

#[tokio::test(start_paused = true)]
async fn a_store_down_at_start_is_reported_at_once_and_its_return_too() {
    let (logs, _guard) = Capture::install();
    let store = MemoryStore::new();
    store.set_failing(true);
    let exchange = MockExchange::new(HOUR);
    let replica = replica(&store, &exchange);
    replica.token().await.unwrap();
    let warned = |text: &str| {
        text.lines()
            .filter(|line| line.contains("WARN") && line.contains("exchanging without it"))
            .count()
    };
    // The first failure of the very first look, not the next refresh,
    // naming the store.
    let text = logs.text();
    assert_eq!(warned(&text), 1, "{text}");
    assert!(text.contains(r#"store="memory""#), "{text}");

    store.set_failing(false);
    replica.refresh().await.unwrap();
    let text = logs.text();
    assert_eq!(warned(&text), 1, "{text}");
    assert!(
        text.lines()
            .any(|line| line.contains("INFO") && line.contains("sharing resumes")),
        "{text}"
    );
    assert_eq!(store.tokens().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_store_that_refuses_writes_opens_the_breaker_and_says_so() {
    let (logs, _guard) = Capture::install();
    let store = MemoryStore::new();
    store.set_read_only(true);
    let exchange = MockExchange::new(Duration::from_secs(60));
    let replica = replica(&store, &exchange);
    for _ in 0..3 {
        replica.refresh().await.unwrap();
    }
    // Every look succeeded; the locks and the save failed, and the third
    // failure with no write between them opened the breaker.
    let stats = replica.cache.stats();
    assert_eq!(stats.errors, 3);
    assert_eq!(exchange.calls(), 3);
    let before = store.operations();
    replica.refresh().await.unwrap();
    assert_eq!(store.operations(), before, "the breaker is open");
    let text = logs.text();
    assert!(
        text.lines()
            .any(|line| line.contains("WARN") && line.contains("shared token store failing")),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_frozen_store_delays_a_cold_caller_by_one_timeout_at_most() {
    let store = MemoryStore::new();
    store.set_delay(Some(HOUR));
    let exchange = MockExchange::new(HOUR).with_delay(Duration::from_millis(40));
    let replica = replica(&store, &exchange);

    let started = Instant::now();
    replica.token().await.unwrap();

    // The store's 250 ms timeout, then the exchange's 40 ms.
    assert_eq!(started.elapsed(), Duration::from_millis(290));
    assert_eq!(replica.cache.stats().fallbacks, 1);
}

#[tokio::test(start_paused = true)]
async fn a_live_lock_holder_is_waited_for_up_to_the_waiters_timeout_and_never_overtaken() {
    let store = MemoryStore::new();
    // The holder's exchange does not answer yet (its exchange timeout is
    // long): alive, it renews its lease.
    let (_holder, holding) = lock_holder(&store, HOUR).await;
    let exchange = MockExchange::new(HOUR);
    let other = timed_replica(&store, &exchange, Duration::from_secs(2));
    let started = Instant::now();
    let error = other.token().await.unwrap_err();

    // It waited its whole exchange timeout, less the 10 ms in which the
    // layer answers before its provider gives up, and sent nothing.
    assert_eq!(started.elapsed(), Duration::from_millis(1_990));
    assert_eq!(error.kind(), TokenErrorKind::Timeout);
    assert_eq!(exchange.calls(), 0);
    let stats = other.cache.stats();
    assert_eq!((stats.waits, stats.fallbacks, stats.lock_wins), (1, 0, 0));
    assert!(!holding.is_finished());
}

#[tokio::test(start_paused = true)]
async fn a_slow_endpoint_costs_the_cold_fleet_one_exchange() {
    // 20 replicas at a cold start, default options, an endpoint that takes
    // 6 s an answer: more than half the 10 s exchange timeout.
    let store = MemoryStore::new();
    let endpoint = Duration::from_secs(6);
    let exchange = MockExchange::new(HOUR).with_delay(endpoint);
    let replicas = fleet(20, &store, &exchange);
    let started = Instant::now();

    let tokens = all_ask(&replicas).await;

    assert_eq!(exchange.calls(), 1);
    assert!(tokens.iter().all(|token| token == "token-1"), "{tokens:?}");
    // Each had its token within the endpoint's time and a pause between
    // two looks at the store.
    let took = started.elapsed();
    assert!(took <= endpoint + Duration::from_millis(100), "{took:?}");
    assert_eq!(total(&replicas, |s| s.fallbacks), 0);
    assert_eq!(total(&replicas, |s| s.waits), 19);
}

#[tokio::test(start_paused = true)]
async fn a_holder_that_dies_at_a_cold_start_is_replaced_by_one_waiter_the_others_wait_on() {
    let store = MemoryStore::new();
    // The holder dies mid-exchange: its future is never polled again, so
    // its lease is neither renewed nor released.
    let hung = MockExchange::new(HOUR).gated();
    let dead = tower::Layer::layer(&cache(&store), hung.clone());
    let request = TokenRequest::new(MockExchange::credentials());
    let mut holding = tokio_test::task::spawn(dead.oneshot(request));
    tokio_test::assert_pending!(holding.poll());
    assert_eq!(hung.calls(), 1, "it holds the lock and exchanges");

    // Nine others with a 5 s exchange timeout and a 2 s endpoint: the old
    // rule gave up after 2 s and sent nine exchanges.
    let endpoint = Duration::from_secs(2);
    let exchange = MockExchange::new(HOUR).with_delay(endpoint);
    let others: Vec<Replica> = (0..9)
        .map(|_| timed_replica(&store, &exchange, Duration::from_secs(5)))
        .collect();
    let started = Instant::now();
    let tokens = all_ask(&others).await;

    assert_eq!(
        exchange.calls(),
        1,
        "one took over, the others waited on it"
    );
    assert!(tokens.iter().all(|token| token == "token-1"), "{tokens:?}");
    // The lease (1 s), the new holder's exchange, and two pauses between
    // looks at most (100 ms each): within the target of lease + exchange +
    // 0.5 s.
    let took = started.elapsed();
    assert!(took <= Duration::from_millis(3_200), "{took:?}");
    assert_eq!(total(&others, |s| s.lock_wins), 1);
    assert_eq!(total(&others, |s| s.fallbacks), 0);
    drop(holding);
}

#[tokio::test(start_paused = true)]
async fn replicas_with_another_key_cost_one_exchange_per_key_group_not_per_replica() {
    let (logs, _guard) = Capture::install();
    let store = MemoryStore::new();
    let exchange = MockExchange::new(HOUR);
    let first = replica(&store, &exchange);
    first.token().await.unwrap();

    // Three replicas sealing with another key: the first finds an entry it
    // cannot open, replaces it through the lock; the others take its token.
    let other_key = || cache(&store).key_ring(StoreKeyRing::new("other-key", [9; 32]));
    let strangers: Vec<Replica> = (0..3)
        .map(|_| {
            replica_with(
                other_key(),
                &exchange,
                routera_auth::defaults::EXCHANGE_TIMEOUT,
            )
        })
        .collect();
    for stranger in &strangers {
        let token = stranger.token().await.unwrap();
        assert_eq!(
            token.secret(),
            "token-2",
            "its group's token, never garbage"
        );
    }
    assert_eq!(
        exchange.calls(),
        2,
        "one exchange for the other key's group"
    );
    let stranger_stats = total(&strangers, |s| s.unreadable);
    assert_eq!(stranger_stats, 1);
    assert_eq!(total(&strangers, |s| s.hits), 2);

    // The first key's group likewise: one exchange for all of its cold
    // replicas, the first of which replaces the other group's entry.
    let cold = fleet(3, &store, &exchange);
    for replica in &cold {
        assert_eq!(replica.token().await.unwrap().secret(), "token-3");
    }
    assert_eq!(exchange.calls(), 3);
    assert_eq!(total(&cold, |s| s.unreadable), 1);

    // Each replica warned once for the entry it could not open, naming the
    // key it was sealed under, not a secret.
    let text = logs.text();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("cannot open"))
        .collect();
    assert_eq!(warnings.len(), 2, "{text}");
    assert!(warnings[0].contains(r#"key_id=Some("secret")"#), "{text}");
    assert!(
        warnings[1].contains(r#"key_id=Some("other-key")"#),
        "{text}"
    );
    assert!(warnings.iter().all(|line| line.contains("WARN")), "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_rejected_token_leaves_the_store_once_and_the_fleet_renews_once() {
    let store = MemoryStore::new();
    let exchange = MockExchange::new(HOUR);
    let replicas = fleet(10, &store, &exchange);
    all_ask(&replicas).await;
    let rejected = replicas[0].token().await.unwrap();
    let fingerprint = store.tokens()[0].1.fingerprint.clone();

    // The API rejects token-1 on every replica.
    for replica in &replicas {
        assert!(replica.invalidate(&rejected));
    }
    let tokens = all_ask(&replicas).await;

    assert_eq!(exchange.calls(), 2);
    assert!(tokens.iter().all(|token| token == "token-2"), "{tokens:?}");
    let stored = store.tokens();
    assert_eq!(stored.len(), 1);
    assert_ne!(stored[0].1.fingerprint, fingerprint);
    // A replica that starts now gets the new token, not the rejected one.
    assert_eq!(
        replica(&store, &exchange).token().await.unwrap().secret(),
        "token-2"
    );
}

#[tokio::test(start_paused = true)]
async fn the_fleet_backs_off_when_the_endpoint_asks_one_replica_to() {
    let store = MemoryStore::new();
    let exchange = MockExchange::new(HOUR);
    let limited =
        TokenError::new(TokenErrorKind::RateLimited).with_retry_after(Duration::from_secs(30));
    exchange.fail_next(limited);
    let first = replica(&store, &exchange);
    let second = replica(&store, &exchange);

    assert_eq!(
        first.token().await.unwrap_err().kind(),
        TokenErrorKind::RateLimited
    );
    let error = second.token().await.unwrap_err();

    assert_eq!(error.kind(), TokenErrorKind::RateLimited);
    assert!(error.retry_after().unwrap() <= Duration::from_secs(30));
    assert_eq!(
        exchange.calls(),
        1,
        "the second replica did not ask the endpoint"
    );
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(second.token().await.unwrap().secret(), "token-2");
    assert_eq!(first.token().await.unwrap().secret(), "token-2");
    assert_eq!(exchange.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn new_credentials_move_to_new_keys() {
    let store = MemoryStore::new();
    let exchange = MockExchange::new(HOUR);
    let replica = replica(&store, &exchange);
    replica.token().await.unwrap();
    let before = store.tokens()[0].0.clone();

    replica.set_credentials(routera_auth::ClientCredentials::new(
        "mock-client",
        "rotated",
    ));
    // Same client: the token stays until renewed.
    replica.refresh().await.unwrap();

    let keys: Vec<String> = store.tokens().into_iter().map(|(key, _)| key).collect();
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(&before));
    assert_eq!(exchange.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_endless_retry_after_holds_the_fleet_back_ten_minutes_at_most() {
    let store = MemoryStore::new();
    let exchange = MockExchange::new(HOUR);
    let day = Duration::from_secs(24 * 3600);
    exchange.fail_next(TokenError::new(TokenErrorKind::RateLimited).with_retry_after(day));
    let first = replica(&store, &exchange);
    assert!(first.token().await.is_err());

    let second = replica(&store, &exchange);
    let error = second.token().await.unwrap_err();
    assert!(error.retry_after().unwrap() <= Duration::from_secs(600));
    tokio::time::sleep(Duration::from_secs(601)).await;
    assert_eq!(second.token().await.unwrap().secret(), "token-2");
}

#[tokio::test(start_paused = true)]
async fn a_provider_dropped_during_its_exchange_releases_the_fleets_lock() {
    let store = MemoryStore::new();
    let slow = MockExchange::new(HOUR).with_delay(Duration::from_secs(1));
    let doomed = replica(&store, &slow);
    let asking = tokio::spawn({
        let doomed = doomed.clone();
        async move { doomed.token().await }
    });
    while slow.calls() == 0 {
        tokio::task::yield_now().await;
    }
    asking.abort();
    drop(doomed);

    let exchange = MockExchange::new(HOUR);
    let other = replica(&store, &exchange);
    let started = Instant::now();
    other.token().await.unwrap();

    // The dropped provider's exchange was cancelled, and its lock released
    // at once: not after the exchange (1 s), nor after the lock time (10.75 s).
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(50), "{waited:?}");
    assert_eq!(exchange.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn new_credentials_end_a_wait_on_the_old_ones_at_once() {
    let store = MemoryStore::new();
    let _holder = lock_holder(&store, HOUR).await;
    let exchange = MockExchange::new(HOUR);
    let waiter = replica(&store, &exchange);
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.token().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(exchange.calls(), 0, "it waits for the lock holder");

    let rotated = routera_auth::ClientCredentials::new("mock-client", "rotated");
    waiter.set_credentials(rotated.clone());
    let started = Instant::now();
    waiting.await.unwrap().unwrap();

    assert!(started.elapsed() < Duration::from_millis(300));
    assert_eq!(
        exchange.credentials_seen(),
        [rotated],
        "never the old secret"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cold_replica_takes_a_stored_token_due_for_refresh_while_the_endpoint_fails() {
    let store = MemoryStore::new();
    let exchange = MockExchange::new(HOUR);
    replica(&store, &exchange).token().await.unwrap();
    // Past every refresh point (54:30–55:30), before it stops being served.
    tokio::time::sleep(Duration::from_secs(58 * 60)).await;
    let failure = TokenError::new(TokenErrorKind::ServerError);
    exchange.fail_until(Instant::now() + HOUR, failure);

    let late = replica(&store, &exchange);
    assert_eq!(late.token().await.unwrap().secret(), "token-1");
}

#[tokio::test(start_paused = true)]
async fn replicas_agree_on_a_shared_tokens_deadline_whatever_their_clocks() {
    let store = MemoryStore::new();
    let exchange = MockExchange::new(HOUR);
    let first = replica(&store, &exchange);
    first.token().await.unwrap();
    tokio::time::sleep(Duration::from_secs(50 * 60)).await;

    // This replica's wall clock is read now, while tokio's clock has moved
    // on by 50 minutes: to it, the shared token looks 50 minutes younger.
    let skewed = replica(&store, &exchange);
    skewed.token().await.unwrap();

    assert_eq!(exchange.calls(), 1);
    let deadline = |replica: &Replica| replica.timing().unwrap().served_until;
    let gap = deadline(&skewed).saturating_duration_since(deadline(&first));
    assert!(
        gap <= Duration::from_millis(1),
        "served {gap:?} past its deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn a_lock_holder_whose_exchange_times_out_makes_the_fleet_back_off_with_it() {
    let store = MemoryStore::new();
    let (holder, holding) = lock_holder(&store, Duration::from_secs(2)).await;
    let exchange = MockExchange::new(HOUR);
    let waiter = replica(&store, &exchange);

    let started = Instant::now();
    let error = waiter.token().await.unwrap_err();

    // The holder's exchange timed out: the waiter fails with it, as the
    // callers of one process fail with its one exchange, and sends none of
    // its own.
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(2_100), "{waited:?}");
    assert_eq!(error.kind(), TokenErrorKind::Timeout);
    assert!(error.to_string().contains("another replica"), "{error}");
    assert_eq!(exchange.calls(), 0);
    assert_eq!(
        holding.await.unwrap().unwrap_err().kind(),
        TokenErrorKind::Timeout
    );
    drop(holder);

    // Once the backoff is over, the waiter's provider asks again and takes
    // the lock.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(waiter.token().await.unwrap().secret(), "token-1");
    assert_eq!(exchange.calls(), 1);
    assert_eq!(waiter.cache.stats().lock_wins, 1);
}

#[tokio::test(start_paused = true)]
async fn the_fleets_backoff_is_waited_out_exactly_not_as_a_failure_of_its_own() {
    let store = MemoryStore::new();
    let exchange = MockExchange::new(HOUR);
    let second = Duration::from_secs(1);
    exchange.fail_next(TokenError::new(TokenErrorKind::RateLimited).with_retry_after(second));
    let started = Instant::now();
    assert!(replica(&store, &exchange).token().await.is_err());

    // Another replica asks 900 ms into the fleet's 1 s backoff: it waits out
    // the 100 ms left, not a backoff of its own (0.8 s or more).
    tokio::time::sleep(Duration::from_millis(900)).await;
    let other = replica(&store, &exchange);
    assert!(other.token().await.is_err());
    let recovered = async {
        loop {
            if let Ok(token) = other.token().await {
                return token;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    assert_eq!(recovered.await.secret(), "token-2");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(1_100), "{elapsed:?}");
    assert_eq!(
        other.stats().failures,
        0,
        "the fleet's backoff is no failure of its own"
    );
}

#[tokio::test(start_paused = true)]
async fn a_shared_token_about_to_stop_being_served_is_a_miss_not_a_failure() {
    let store = MemoryStore::new();
    let first = MockExchange::new(HOUR);
    let a = replica(&store, &first);
    a.token().await.unwrap();
    let served_until = a.timing().unwrap().served_until;
    // 150 ms of serving left in the store, and a store that takes 100 ms.
    tokio::time::advance(served_until - Instant::now() - Duration::from_millis(150)).await;
    store.set_delay(Some(Duration::from_millis(100)));

    let second = MockExchange::new(HOUR);
    let b = replica(&store, &second);
    let token = b.token().await.expect("a token of its own, not a failure");
    assert_eq!(token.secret(), "token-1");
    assert_eq!(second.calls(), 1, "it exchanged for itself");
    assert_eq!(b.stats().failures, 0);
    assert!(b.timing().unwrap().served_until > Instant::now());
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_finds_the_fleets_token_lets_the_next_call_use_the_store_at_once() {
    let store = MemoryStore::new();
    let exchange = MockExchange::new(HOUR);
    let timeout = routera_auth::defaults::EXCHANGE_TIMEOUT;
    let probing = replica_with(
        cache(&store).breaker(1, Duration::from_secs(30)),
        &exchange,
        timeout,
    );
    store.set_failing(true);
    let own = probing.token().await.unwrap();
    assert_eq!(probing.cache.stats().fallbacks, 1, "its breaker is open");
    store.set_failing(false);
    let sharer = replica(&store, &exchange);
    assert_eq!(sharer.token().await.unwrap().secret(), "token-2");

    // Its probe takes the fleet's token (its own was rejected); its breaker
    // stays open (a read shows nothing of writes), but its next call, well
    // within the probe interval, uses the store again: its exchange is
    // shared.
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(probing.invalidate(&own));
    assert_eq!(probing.token().await.unwrap().secret(), "token-2");
    assert_eq!(probing.refresh().await.unwrap().secret(), "token-3");
    let stats = probing.cache.stats();
    assert_eq!((stats.fallbacks, stats.hits, stats.lock_wins), (1, 1, 1));
    tokio::task::yield_now().await;
    assert_eq!(
        replica(&store, &exchange).token().await.unwrap().secret(),
        "token-3"
    );
}
