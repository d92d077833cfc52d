//! Token sharing across a fleet on a real `redis-server` (Debian package
//! `redis-server`), started by the test harness on a unix socket, against
//! the emulator. Each replica is a provider over an exchange under its own
//! `SharedCache` layer, with its own Redis connection.
//!
//! These tests run on real time: Redis answers over a socket, which paused
//! time would skip past. They wait for events, not for fixed sleeps, except
//! where a token's lifetime must pass (the refresh; a few seconds).

mod common;

use std::future::Future;
use std::time::Duration;

use common::{Replica, layered, total};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use routera_auth::store::{RedisStore, SharedCache, StoreKeyRing};
use routera_auth::{AuthMethod, RouteraAuthLayer, TokenRequest};
use routera_auth_test::{Emulator, EmulatorExchange, Fault, MockExchange, RedisServer};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

/// Bounds every wait of a test, so a regression fails it instead of hanging.
const BOUND: Duration = Duration::from_secs(30);
/// How often an open breaker of the tests' replicas tries Redis again.
const PROBE_EVERY: Duration = Duration::from_millis(500);

async fn redis() -> RedisServer {
    match RedisServer::start().await {
        Ok(server) => server,
        Err(error) => panic!("these tests need a real Redis: {error}"),
    }
}

async fn emulator(lifetime: Duration) -> Emulator {
    Emulator::builder()
        .expires_in(lifetime)
        .start()
        .await
        .unwrap()
}

async fn cache(redis: &RedisServer, exchange: &EmulatorExchange) -> SharedCache {
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    SharedCache::for_exchange(store, exchange).breaker(3, PROBE_EVERY)
}

/// A shared cache on `redis` for `MockExchange`'s client.
async fn mock_cache(redis: &RedisServer) -> SharedCache {
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    SharedCache::new(store, "https://auth.test/token", AuthMethod::RequestBody)
}

async fn replica(redis: &RedisServer, emulator: &Emulator) -> Replica {
    let exchange = emulator.exchange();
    let cache = cache(redis, &exchange).await;
    let timeout = routera_auth::defaults::EXCHANGE_TIMEOUT;
    layered(cache, exchange, emulator.credentials(), timeout)
}

async fn fleet(n: usize, redis: &RedisServer, emulator: &Emulator) -> Vec<Replica> {
    let mut replicas = Vec::with_capacity(n);
    for _ in 0..n {
        replicas.push(replica(redis, emulator).await);
    }
    replicas
}

/// Every replica asks for a token at once; the tokens they got, and the
/// longest any of them waited.
async fn all_ask(replicas: &[Replica]) -> (Vec<String>, Duration) {
    let mut asks = JoinSet::new();
    for (i, replica) in replicas.iter().enumerate() {
        let replica = replica.provider.clone();
        asks.spawn(async move {
            let started = Instant::now();
            let token = replica.token().await;
            (i, token, started.elapsed())
        });
    }
    let mut tokens = vec![String::new(); replicas.len()];
    let mut longest = Duration::ZERO;
    let all = async {
        while let Some(joined) = asks.join_next().await {
            let (i, token, waited) = joined.unwrap();
            match token {
                Ok(token) => tokens[i] = token.secret().to_owned(),
                Err(error) => panic!("replica {i} failed a request: {error}"),
            }
            longest = longest.max(waited);
        }
    };
    tokio::time::timeout(BOUND, all).await.unwrap();
    (tokens, longest)
}

fn last_refresh(replicas: &[Replica]) -> Instant {
    let refresh_at = replicas.iter().map(|r| r.timing().unwrap().refresh_at);
    refresh_at.max().unwrap()
}

/// Steady traffic on every replica (each asks every 50 ms) until `until`.
async fn traffic_until(replicas: &[Replica], until: Instant) {
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(50)).await;
        all_ask(replicas).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_replicas_make_one_exchange_at_start_and_one_at_the_refresh() {
    let redis = redis().await;
    // 4 s tokens: served until 3 s, refreshed from 2.0–2.2 s.
    let emulator = emulator(Duration::from_secs(4)).await;
    let replicas = fleet(200, &redis, &emulator).await;

    let (tokens, _) = all_ask(&replicas).await;

    assert_eq!(
        emulator.exchange_count(),
        1,
        "one exchange for 200 replicas"
    );
    let first = &emulator.issued_tokens()[0];
    assert!(tokens.iter().all(|token| token == first));
    assert_eq!(total(&replicas, |s| s.lock_wins), 1);
    assert_eq!(total(&replicas, |s| s.fallbacks), 0);
    // The entry lives as long as the token may be served (3 s of 4). A
    // replica that took it from the store counts its time left from before
    // its look, so it may stop serving it up to a round trip earlier.
    let served_for = replicas[0].timing().unwrap().served_until - Instant::now();
    let ttl = Duration::from_millis(token_ttl_ms(&redis).await);
    assert!(
        ttl <= served_for + Duration::from_millis(250)
            && served_for <= ttl + Duration::from_millis(250),
        "entry lives {ttl:?}, token served for {served_for:?}"
    );

    let past_refresh = last_refresh(&replicas) + Duration::from_millis(200);
    traffic_until(&replicas, past_refresh).await;

    assert_eq!(emulator.exchange_count(), 2, "one exchange at the refresh");
    let second = &emulator.issued_tokens()[1];
    let (tokens, _) = all_ask(&replicas).await;
    assert!(tokens.iter().all(|token| token == second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_restarted_frozen_or_flushed_never_fails_a_request() {
    let redis = redis().await;
    let emulator = emulator(Duration::from_secs(3600)).await;
    let replicas = fleet(20, &redis, &emulator).await;
    all_ask(&replicas).await;
    assert_eq!(emulator.exchange_count(), 1);

    // Every replica loses its token (a forced renewal) while Redis is down:
    // each falls back to an exchange of its own.
    redis.kill().unwrap();
    let before = emulator.exchange_count();
    refresh_all(&replicas).await;
    assert_eq!(
        emulator.exchange_count() - before,
        20,
        "each replica on its own"
    );
    assert!(total(&replicas, |s| s.fallbacks) >= 20);

    // Redis is back (empty): once the connections are back and the
    // breakers closed, a fleet-wide renewal costs one exchange again.
    redis.restart().await.unwrap();
    let mut resumed = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let before = emulator.exchange_count();
        refresh_all(&replicas).await;
        if emulator.exchange_count() - before == 1 {
            resumed = true;
            break;
        }
    }
    assert!(resumed, "sharing did not resume after Redis came back");

    // Frozen: every renewal waits one store timeout at most, then exchanges.
    redis.freeze().unwrap();
    let before = emulator.exchange_count();
    let longest = refresh_all(&replicas).await;
    redis.thaw().unwrap();
    assert_eq!(emulator.exchange_count() - before, 20);
    assert!(
        longest < Duration::from_millis(250 + 500),
        "a renewal waited {longest:?} on a frozen Redis"
    );

    // Flushed: a miss, one exchange for the fleet.
    tokio::time::sleep(Duration::from_millis(600)).await;
    redis.flush_all().await.unwrap();
    let before = emulator.exchange_count();
    refresh_all(&replicas).await;
    assert_eq!(emulator.exchange_count() - before, 1);
    let (tokens, _) = all_ask(&replicas).await;
    let newest = emulator.issued_tokens().last().cloned().unwrap();
    assert!(tokens.iter().all(|token| *token == newest));
}

/// The time to live of the one token entry in Redis, in milliseconds.
async fn token_ttl_ms(redis: &RedisServer) -> u64 {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*:token")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut connection)
        .await
        .unwrap()
}

/// Every replica renews at once; the longest any waited.
async fn refresh_all(replicas: &[Replica]) -> Duration {
    let mut asks = JoinSet::new();
    for replica in replicas {
        let replica = replica.provider.clone();
        asks.spawn(async move {
            let started = Instant::now();
            replica.refresh().await.map(|_| started.elapsed())
        });
    }
    let mut longest = Duration::ZERO;
    let all = async {
        while let Some(joined) = asks.join_next().await {
            match joined.unwrap() {
                Ok(waited) => longest = longest.max(waited),
                Err(error) => panic!("a renewal failed: {error}"),
            }
        }
    };
    tokio::time::timeout(BOUND, all).await.unwrap();
    longest
}

#[test]
fn a_lock_holder_that_dies_is_overtaken_after_the_lock_time() {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    };
    let main = runtime();
    let (redis, emulator) = main.block_on(async {
        let redis = redis().await;
        (redis, emulator(Duration::from_secs(3600)).await)
    });

    // The holder: same client and token URL, an exchange that never
    // answers. Its process dies (its runtime is dropped) holding the lock.
    let hung = MockExchange::new(Duration::from_secs(3600)).gated();
    let doomed = runtime();
    doomed.block_on(async {
        let store = RedisStore::connect(&redis.url()).await.unwrap();
        let cache = SharedCache::new(store, emulator.token_url(), AuthMethod::RequestBody);
        let timeout = Duration::from_secs(2);
        let holder = layered(cache, hung.clone(), emulator.credentials(), timeout);
        tokio::spawn(async move { holder.token().await });
        tokio::time::timeout(BOUND, hung.wait_for_calls(1))
            .await
            .expect("the holder starts its exchange (and takes the lock) within BOUND");
    });
    doomed.shutdown_background();

    main.block_on(async {
        let exchange = emulator.exchange();
        let cache = cache(&redis, &exchange).await;
        // It waits for the fleet 5 s at most, half its 10 s timeout.
        let timeout = routera_auth::defaults::EXCHANGE_TIMEOUT;
        let survivor = layered(cache, exchange, emulator.credentials(), timeout);
        let started = Instant::now();
        let token = tokio::time::timeout(BOUND, survivor.token()).await.unwrap();
        let waited = started.elapsed();

        assert_eq!(token.unwrap().secret(), emulator.issued_tokens()[0]);
        assert_eq!(emulator.exchange_count(), 1);
        // The dead holder's lock lasted its 2 s exchange timeout + 3 × 250 ms.
        assert!(waited <= Duration::from_secs(4), "{waited:?}");
        let stats = survivor.cache.stats();
        assert_eq!(stats.waits, 1);
        assert_eq!(stats.lock_wins + stats.fallbacks, 1);
        // The fleet has the token now.
        let late = replica(&redis, &emulator).await;
        assert_eq!(
            late.token().await.unwrap().secret(),
            emulator.issued_tokens()[0]
        );
        assert_eq!(emulator.exchange_count(), 1);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_with_a_wrong_key_replace_the_entry_once_for_their_group() {
    let redis = redis().await;
    let emulator = emulator(Duration::from_secs(3600)).await;
    let fleet = fleet(5, &redis, &emulator).await;
    all_ask(&fleet).await;
    // The token entry (the lock holder may not have released its lock yet).
    let token_entry = || async {
        let dump = redis.dump().await.unwrap();
        dump.into_iter()
            .filter(|(key, _)| key.ends_with(b":token"))
            .collect::<Vec<_>>()
    };
    let before = token_entry().await;
    assert_eq!(before.len(), 1);

    let exchange = emulator.exchange();
    let stranger = || async {
        let wrong = cache(&redis, &exchange)
            .await
            .key_ring(StoreKeyRing::new("not-the-fleets", [42; 32]));
        let timeout = routera_auth::defaults::EXCHANGE_TIMEOUT;
        layered(wrong, exchange.clone(), emulator.credentials(), timeout)
    };
    let first = stranger().await;
    let token = first.token().await.unwrap();

    assert!(emulator.token_validator().is_valid(token.secret()));
    assert_eq!(token.secret(), emulator.issued_tokens()[1], "its own token");
    let stats = first.cache.stats();
    assert_eq!((stats.unreadable, stats.lock_wins), (1, 1));
    // Its token replaced the entry it could not open, once saved (after
    // the answer): the next replica of its group takes it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while token_entry().await == before {
        assert!(std::time::Instant::now() < deadline, "never replaced");
        tokio::task::yield_now().await;
    }
    let second = stranger().await;
    assert_eq!(second.token().await.unwrap().secret(), token.secret());
    assert_eq!(second.cache.stats().hits, 1);
    assert_eq!(emulator.exchange_count(), 2, "one exchange per key group");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_on_one_replica_drops_the_shared_token_once_and_costs_one_exchange() {
    let redis = redis().await;
    let emulator = emulator(Duration::from_secs(3600)).await;
    let replicas = fleet(10, &redis, &emulator).await;
    all_ask(&replicas).await;
    let ping = |replica: &Replica| {
        let http = Client::builder(TokioExecutor::new()).build_http();
        let client = RouteraAuthLayer::new(replica.provider.clone()).layer(http);
        let request = Request::get(emulator.resource_url())
            .body(Empty::<Bytes>::new())
            .unwrap();
        async move {
            client
                .oneshot(request)
                .await
                .map(|response| response.status())
        }
    };
    assert_eq!(ping(&replicas[0]).await.unwrap(), StatusCode::OK);

    emulator.revoke_all();
    // The first replica to see a 401 removes the token from Redis, even if
    // it cannot get a new one: no replica that starts now picks it up.
    emulator.inject(Fault::status(503));
    assert_eq!(ping(&replicas[0]).await.unwrap(), StatusCode::UNAUTHORIZED);
    assert!(replicas[0].token().await.is_err(), "the endpoint is down");
    let keys = redis.dump().await.unwrap();
    assert!(
        !keys.iter().any(|(key, _)| key.ends_with(b":token")),
        "the rejected token is still shared"
    );
    let cold = replica(&redis, &emulator).await;
    assert!(
        cold.token().await.is_err(),
        "a new replica got the revoked token"
    );
    emulator.clear_fault();

    // Every other replica sees a 401 on its next call. Once the backoff
    // the failed exchange left for the fleet is over, they all succeed,
    // with the one token the first of them fetched for the fleet.
    for replica in &replicas[1..] {
        assert_eq!(ping(replica).await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    for replica in &replicas {
        let recovered = async {
            while !matches!(ping(replica).await, Ok(StatusCode::OK)) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(BOUND, recovered).await.unwrap();
    }

    assert_eq!(
        emulator.issued_tokens().len(),
        2,
        "one new exchange for the fleet"
    );
    let (tokens, _) = all_ask(&replicas).await;
    assert!(
        tokens
            .iter()
            .all(|token| *token == emulator.issued_tokens()[1])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_in_redis_reveals_a_secret_or_a_token_in_any_encoding() {
    let redis = redis().await;
    let emulator = emulator(Duration::from_secs(4)).await;
    let replicas = fleet(5, &redis, &emulator).await;
    all_ask(&replicas).await;
    traffic_until(
        &replicas,
        last_refresh(&replicas) + Duration::from_millis(200),
    )
    .await;
    assert!(emulator.exchange_count() >= 2);

    let dump = redis.dump().await.unwrap();
    assert!(!dump.is_empty(), "the fleet's token is in Redis");
    let credentials = emulator.credentials();
    let mut needles: Vec<String> = vec![credentials.client_secret().to_owned()];
    needles.extend(emulator.issued_tokens());
    for needle in &needles {
        for form in encodings(needle) {
            for (key, value) in &dump {
                for haystack in [key, value] {
                    assert!(
                        !contains(haystack, &form),
                        "a secret or token, or 12 bytes of one, is in Redis"
                    );
                }
            }
        }
    }
}

/// `secret` in the encodings a store might use, and every 12-byte piece of
/// it as is.
fn encodings(secret: &str) -> Vec<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let bytes = secret.as_bytes();
    let mut forms = vec![
        bytes.to_vec(),
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
            .into_bytes(),
        bytes
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<String>()
            .into_bytes(),
    ];
    for engine in [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD] {
        // Without its last characters, which depend on what follows.
        let encoded = engine.encode(bytes);
        forms.push(encoded.as_bytes()[..encoded.len().saturating_sub(4)].to_vec());
    }
    forms.extend(bytes.windows(12).map(<[u8]>::to_vec));
    forms
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

/// A replica that takes the fleet's lock on `redis`, starts its exchange
/// (which never answers), then dies: its future is never polled again nor
/// dropped, so it neither renews nor releases the lock.
async fn dead_holder(redis: &RedisServer) {
    let hung = MockExchange::new(Duration::from_secs(3600)).gated();
    let holder = mock_cache(redis).await.layer(hung.clone());
    let mut holding = Box::pin(holder.oneshot(TokenRequest::new(MockExchange::credentials())));
    let deadline = std::time::Instant::now() + BOUND;
    while hung.calls() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the holder never exchanged"
        );
        let waker = std::task::Waker::noop();
        let _ = holding
            .as_mut()
            .poll(&mut std::task::Context::from_waker(waker));
        tokio::task::yield_now().await;
    }
    std::mem::forget(holding);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_dies_mid_exchange_holds_the_fleet_up_for_its_lease_only() {
    let redis = redis().await;
    let shared = || mock_cache(&redis);
    dead_holder(&redis).await;

    let exchange_time = Duration::from_millis(500);
    let exchange = MockExchange::new(Duration::from_secs(3600)).with_delay(exchange_time);
    let timeout = routera_auth::defaults::EXCHANGE_TIMEOUT;
    let cold = layered(
        shared().await,
        exchange.clone(),
        MockExchange::credentials(),
        timeout,
    );
    let started = Instant::now();
    let token = cold.token().await.unwrap();
    let took = started.elapsed();

    // The lease (one second with the default operation timeout), the
    // exchange, and at most half a second of looking and locking.
    let lease = Duration::from_secs(1);
    assert!(
        took < lease + exchange_time + Duration::from_millis(500),
        "{took:?}"
    );
    assert!(took >= lease, "it waited for the lease: {took:?}");
    assert_eq!(token.secret(), "token-1");
    assert_eq!(exchange.calls(), 1);
    let stats = cold.cache.stats();
    assert_eq!((stats.waits, stats.lock_wins, stats.fallbacks), (1, 1, 0));
}

/// Runs `redis-cli` (Debian package `redis-tools`, which `redis-server`
/// depends on) against `redis` with `args`.
fn redis_cli(redis: &RedisServer, args: &[&str]) {
    let socket = redis.socket_path();
    let output = std::process::Command::new("redis-cli")
        .arg("-s")
        .arg(socket)
        .args(args)
        .output()
        .unwrap_or_else(|error| {
            panic!("this test needs redis-cli (Debian package redis-tools): {error}")
        });
    let reply = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && reply.trim() == "OK",
        "{args:?}: {reply}"
    );
}

#[tokio::test]
async fn a_redis_that_refuses_writes_opens_the_breaker_with_a_warning_and_never_fails_a_request() {
    let (logs, _guard) = common::Capture::install();
    let redis = redis().await;
    let emulator = emulator(Duration::from_secs(3600)).await;
    let replicas = fleet(5, &redis, &emulator).await;
    all_ask(&replicas).await;
    assert_eq!(emulator.exchange_count(), 1);

    // A replica of a primary that is gone: it answers reads and refuses
    // every write (`READONLY`), as a Redis replica left behind by a
    // failover does.
    redis_cli(&redis, &["REPLICAOF", "127.0.0.1", "1"]);
    for _ in 0..2 {
        refresh_all(&replicas).await;
    }
    assert_eq!(emulator.exchange_count(), 11, "each replica on its own");
    let text = logs.text();
    let warnings = text
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("shared token store failing"))
        .count();
    assert_eq!(
        warnings, 5,
        "one warning per replica, at its first failure:\n{text}"
    );
    assert!(
        text.contains("write against a read only replica"),
        "the warning says why:\n{text}"
    );
    let address = redis.socket_path().display().to_string();
    assert!(
        text.lines()
            .any(|line| line.contains("WARN") && line.contains(&address)),
        "the warning names the store ({address}):\n{text}"
    );

    // Writable again: once the breakers' probe interval (500 ms here) has
    // passed, the next probe closes each breaker, and the fleet renews with
    // one exchange again.
    redis_cli(&redis, &["REPLICAOF", "NO", "ONE"]);
    tokio::time::sleep(PROBE_EVERY).await;
    let before = emulator.exchange_count();
    refresh_all(&replicas).await;
    assert_eq!(emulator.exchange_count() - before, 1, "shared again");
}

/// Starts `exchange` under a shared cache of its own on `redis` as a
/// lock holder would: in a task, with a cold request of `timeout`, once
/// its exchange has started.
async fn holding(
    redis: &RedisServer,
    exchange: &MockExchange,
    timeout: Duration,
) -> tokio::task::JoinHandle<Result<routera_auth::Token, routera_auth::TokenError>> {
    let holder = mock_cache(redis).await.layer(exchange.clone());
    let request = TokenRequest::new(MockExchange::credentials()).with_timeout(timeout);
    let task = tokio::spawn(holder.oneshot(request));
    let deadline = std::time::Instant::now() + BOUND;
    while exchange.calls() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the holder never exchanged"
        );
        tokio::task::yield_now().await;
    }
    task
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_a_token_waits_for_a_live_holder_past_half_its_serving_time() {
    let redis = redis().await;
    // A holder that is alive (it renews its lease) and whose exchange
    // answers when the test opens its gate.
    let slow = MockExchange::new(Duration::from_secs(3600)).gated();
    let holder = holding(&redis, &slow, Duration::from_secs(10)).await;

    // A replica whose token is served 2 s more: the old rule gave up on
    // the holder after 1 s, half of that, and exchanged.
    let exchange = MockExchange::new(Duration::from_secs(3600));
    let cache = mock_cache(&redis).await;
    let refreshing = tokio::spawn({
        let service = cache.layer(exchange.clone());
        let request = TokenRequest::new(MockExchange::credentials())
            .with_reason(routera_auth::TokenReason::RefreshDue)
            .with_needed_by(Instant::now() + Duration::from_secs(2));
        service.oneshot(request)
    });
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(!refreshing.is_finished(), "it still waits for the holder");
    slow.open_gate();
    let token = tokio::time::timeout(BOUND, refreshing).await.unwrap();

    assert_eq!(token.unwrap().unwrap().access_token().secret(), "token-1");
    assert_eq!(exchange.calls(), 0, "no exchange beside the holder's");
    let stats = cache.stats();
    assert_eq!((stats.waits, stats.hits, stats.fallbacks), (1, 1, 0));
    assert!(holder.await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_costs_a_cold_fleet_one_exchange() {
    let redis = redis().await;
    // 1.5 s an answer, with a 2 s exchange timeout: the old rule gave up
    // on the holder after 0.5 s and sent an exchange per replica.
    let endpoint = Duration::from_millis(1_500);
    let exchange = MockExchange::new(Duration::from_secs(3600)).with_delay(endpoint);
    let mut replicas = Vec::new();
    for _ in 0..10 {
        let cache = mock_cache(&redis).await;
        let credentials = MockExchange::credentials();
        let timeout = Duration::from_secs(2);
        replicas.push(layered(cache, exchange.clone(), credentials, timeout));
    }

    let (tokens, longest) = all_ask(&replicas).await;

    assert_eq!(exchange.calls(), 1);
    assert!(tokens.iter().all(|token| token == "token-1"), "{tokens:?}");
    assert!(
        longest < endpoint + Duration::from_millis(400),
        "{longest:?}"
    );
    assert_eq!(total(&replicas, |s| s.waits), 9);
    assert_eq!(total(&replicas, |s| s.fallbacks), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_stops_renewing_is_replaced_by_one_waiter_the_others_wait_on() {
    let redis = redis().await;
    dead_holder(&redis).await;

    // Six replicas with a 2.5 s exchange timeout: the old rule gave up
    // after 0.75 s, before the lease (1 s) lapsed, and all six exchanged.
    let endpoint = Duration::from_millis(800);
    let exchange = MockExchange::new(Duration::from_secs(3600)).with_delay(endpoint);
    let mut replicas = Vec::new();
    for _ in 0..6 {
        let cache = mock_cache(&redis).await;
        let credentials = MockExchange::credentials();
        let timeout = Duration::from_millis(2_500);
        replicas.push(layered(cache, exchange.clone(), credentials, timeout));
    }
    let (tokens, longest) = all_ask(&replicas).await;

    assert_eq!(
        exchange.calls(),
        1,
        "one took over, the others waited on it"
    );
    assert!(tokens.iter().all(|token| token == "token-1"), "{tokens:?}");
    // The lease, the new holder's exchange, and half a second of looks.
    let lease = Duration::from_secs(1);
    assert!(
        longest < lease + endpoint + Duration::from_millis(500),
        "{longest:?}"
    );
    assert_eq!(total(&replicas, |s| s.lock_wins), 1);
    assert_eq!(total(&replicas, |s| s.fallbacks), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holders_failure_is_published_and_its_waiters_fail_with_it() {
    let redis = redis().await;
    let failing =
        MockExchange::new(Duration::from_secs(3600)).with_delay(Duration::from_millis(500));
    failing.fail_next(routera_auth::TokenError::new(
        routera_auth::TokenErrorKind::ServerError,
    ));
    let holder = holding(&redis, &failing, Duration::from_secs(10)).await;

    let exchange = MockExchange::new(Duration::from_secs(3600));
    let mut waiters = JoinSet::new();
    for _ in 0..5 {
        let service = mock_cache(&redis).await.layer(exchange.clone());
        waiters.spawn(service.oneshot(TokenRequest::new(MockExchange::credentials())));
    }
    let answers = tokio::time::timeout(BOUND, waiters.join_all())
        .await
        .unwrap();

    assert!(holder.await.unwrap().is_err());
    for answer in answers {
        let error = answer.unwrap_err();
        assert_eq!(error.kind(), routera_auth::TokenErrorKind::ServerError);
        assert!(
            !error.is_deferred(),
            "a failure of the waiters' own: {error}"
        );
    }
    assert_eq!(exchange.calls(), 0, "no waiter exchanged after the failure");
    // The fleet backs off, and the store says after what.
    let backoff = redis_get(&redis, "backoff");
    assert_eq!(backoff, "server_error");
}

/// The value of the one key of `redis` whose name ends with `:suffix`.
fn redis_get(redis: &RedisServer, suffix: &str) -> String {
    let run = |args: &[&str]| {
        let output = std::process::Command::new("redis-cli")
            .arg("-s")
            .arg(redis.socket_path())
            .args(args)
            .output()
            .unwrap_or_else(|error| {
                panic!("this test needs redis-cli (Debian package redis-tools): {error}")
            });
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    let keys = run(&["--scan", "--pattern", &format!("*:{suffix}")]);
    let key = keys
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no key *:{suffix}"));
    run(&["GET", key])
}
