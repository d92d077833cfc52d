//! `RedisStore` against a real `redis-server` started by the test kit's
//! `RedisServer`: every operation, its atomic rules, and what it does when
//! Redis is killed, restarted or frozen.
//!
//! Needs `redis-server` on `PATH` (Debian package `redis-server`); without
//! it every test fails, naming the package.

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::chain;
use routera_auth::store::{RedisStore, StoreKeys, StoredToken, TokenStore};
use routera_auth_test::RedisServer;

/// The store's response timeout.
const RESPONSE_TIMEOUT: Duration = RedisStore::RESPONSE_TIMEOUT;
/// The bound on any single operation in these tests: far beyond what a
/// working store takes, well short of a hang.
const BOUND: Duration = Duration::from_secs(5);

async fn server() -> RedisServer {
    match RedisServer::start().await {
        Ok(server) => server,
        Err(error) => panic!("{error}"),
    }
}

/// A store whose connection is open: one operation has succeeded.
async fn store(server: &RedisServer) -> RedisStore {
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let keys = keys("warm-up");
    bounded(store.load(&keys)).await.unwrap();
    store
}

fn keys(tag: &str) -> StoreKeys {
    StoreKeys::new("test", tag)
}

fn token(issued_at_ms: u64, fingerprint: &str) -> StoredToken {
    StoredToken {
        issued_at_ms,
        expires_at_ms: issued_at_ms + 3_600_000,
        fingerprint: fingerprint.to_owned(),
        // Every byte value, so the value must be stored binary-safe.
        sealed: (0..=255u8).chain([0, b'\r', b'\n']).collect(),
    }
}

/// `operation`, which must finish within [`BOUND`].
async fn bounded<T>(operation: impl Future<Output = T>) -> T {
    match tokio::time::timeout(BOUND, operation).await {
        Ok(output) => output,
        Err(_) => panic!("a store operation hung for {BOUND:?}"),
    }
}

/// A plain connection to the server, to look at what the store wrote.
async fn raw(server: &RedisServer) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(server.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

async fn pttl(server: &RedisServer, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut raw(server).await)
        .await
        .unwrap()
}

/// Polls `condition` every 10 ms until it holds; panics after `within`.
async fn eventually<F, Fut>(within: Duration, what: &str, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_token_is_stored_whole_and_read_back() {
    let server = server().await;
    let store = store(&server).await;
    let keys = keys("whole");

    let empty = bounded(store.load(&keys)).await.unwrap();
    assert_eq!(empty.token, None);
    assert_eq!(empty.backoff, None);

    let stored = token(1_700_000_000_000, "fp-1");
    assert!(
        bounded(store.save(&keys, &stored, Duration::from_secs(60)))
            .await
            .unwrap()
    );
    let loaded = bounded(store.load(&keys)).await.unwrap();
    assert_eq!(loaded.token, Some(stored.clone()));

    // The layout: one hash, four fields, numbers in decimal.
    let mut fields: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
        .arg(keys.token())
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    fields.sort();
    assert_eq!(
        fields,
        vec![
            ("exp".to_owned(), b"1700003600000".to_vec()),
            ("fp".to_owned(), b"fp-1".to_vec()),
            ("iat".to_owned(), b"1700000000000".to_vec()),
            ("v".to_owned(), stored.sealed.clone()),
        ]
    );
}

#[tokio::test]
async fn save_keeps_only_a_newer_token() {
    let server = server().await;
    let store = store(&server).await;
    let keys = keys("newer");
    let ttl = Duration::from_secs(60);

    assert!(
        bounded(store.save(&keys, &token(100, "a"), ttl))
            .await
            .unwrap()
    );
    // Issued at the same time, or earlier: refused, the stored one stays.
    assert!(
        !bounded(store.save(&keys, &token(100, "b"), ttl))
            .await
            .unwrap()
    );
    assert!(
        !bounded(store.save(&keys, &token(99, "c"), ttl))
            .await
            .unwrap()
    );
    let loaded = bounded(store.load(&keys)).await.unwrap().token.unwrap();
    assert_eq!(
        (loaded.issued_at_ms, loaded.fingerprint.as_str()),
        (100, "a")
    );

    // Later: stored.
    assert!(
        bounded(store.save(&keys, &token(101, "d"), ttl))
            .await
            .unwrap()
    );
    let loaded = bounded(store.load(&keys)).await.unwrap().token.unwrap();
    assert_eq!(
        (loaded.issued_at_ms, loaded.fingerprint.as_str()),
        (101, "d")
    );

    // Numbers of different lengths and beyond 2^53 compare exactly.
    assert!(
        bounded(store.save(&keys, &token(1_000, "e"), ttl))
            .await
            .unwrap()
    );
    let big = (1u64 << 60) + 1;
    assert!(
        bounded(store.save(&keys, &token(big, "f"), ttl))
            .await
            .unwrap()
    );
    assert!(
        !bounded(store.save(&keys, &token(big - 1, "g"), ttl))
            .await
            .unwrap()
    );
    assert!(
        bounded(store.save(&keys, &token(big + 1, "h"), ttl))
            .await
            .unwrap()
    );
    let loaded = bounded(store.load(&keys)).await.unwrap().token.unwrap();
    assert_eq!(
        (loaded.issued_at_ms, loaded.fingerprint.as_str()),
        (big + 1, "h")
    );
}

#[tokio::test]
async fn concurrent_saves_leave_the_newest_token() {
    let server = server().await;
    let keys = Arc::new(keys("race"));
    let mut tasks = Vec::new();
    for iat in (1..=40u64).rev() {
        let store = RedisStore::open(&server.url()).unwrap();
        let keys = Arc::clone(&keys);
        tasks.push(tokio::spawn(async move {
            bounded(store.save(
                &keys,
                &token(iat, &format!("fp-{iat}")),
                Duration::from_secs(60),
            ))
            .await
            .unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let store = store(&server).await;
    let loaded = bounded(store.load(&keys)).await.unwrap().token.unwrap();
    assert_eq!(loaded.issued_at_ms, 40);
    assert_eq!(loaded.fingerprint, "fp-40");
}

#[tokio::test]
async fn save_applies_the_time_to_live() {
    let server = server().await;
    let store = store(&server).await;
    let keys = keys("ttl");

    assert!(
        bounded(store.save(&keys, &token(1, "a"), Duration::from_secs(30)))
            .await
            .unwrap()
    );
    let remaining = pttl(&server, keys.token()).await;
    assert!((29_000..=30_000).contains(&remaining), "PTTL {remaining}");

    // A newer token brings its own time to live.
    assert!(
        bounded(store.save(&keys, &token(2, "b"), Duration::from_secs(5)))
            .await
            .unwrap()
    );
    let remaining = pttl(&server, keys.token()).await;
    assert!((4_000..=5_000).contains(&remaining), "PTTL {remaining}");

    // A refused save leaves the time to live alone.
    assert!(
        !bounded(store.save(&keys, &token(2, "c"), Duration::from_secs(600)))
            .await
            .unwrap()
    );
    let remaining = pttl(&server, keys.token()).await;
    assert!((4_000..=5_000).contains(&remaining), "PTTL {remaining}");

    // The entry expires with its time to live.
    assert!(
        bounded(store.save(&keys, &token(3, "d"), Duration::from_millis(50)))
            .await
            .unwrap()
    );
    eventually(Duration::from_secs(2), "the entry expires", || async {
        bounded(store.load(&keys)).await.unwrap().token.is_none()
    })
    .await;

    // A time to live of zero stores nothing.
    let other = StoreKeys::new("test", "ttl-zero");
    assert!(
        !bounded(store.save(&other, &token(1, "a"), Duration::ZERO))
            .await
            .unwrap()
    );
    assert_eq!(pttl(&server, other.token()).await, -2);
    // Less than a millisecond is one millisecond, not "forever" or an error.
    assert!(
        bounded(store.save(&other, &token(1, "a"), Duration::from_micros(10)))
            .await
            .unwrap()
    );
    assert!(pttl(&server, other.token()).await <= 1);
}

#[tokio::test]
async fn remove_needs_the_stored_fingerprint() {
    let server = server().await;
    let store = store(&server).await;
    let keys = keys("remove");

    assert!(!bounded(store.remove(&keys, "fp-1")).await.unwrap());
    assert!(
        bounded(store.save(&keys, &token(1, "fp-1"), Duration::from_secs(60)))
            .await
            .unwrap()
    );
    assert!(!bounded(store.remove(&keys, "fp-2")).await.unwrap());
    assert!(!bounded(store.remove(&keys, "")).await.unwrap());
    assert!(bounded(store.load(&keys)).await.unwrap().token.is_some());

    assert!(bounded(store.remove(&keys, "fp-1")).await.unwrap());
    assert_eq!(bounded(store.load(&keys)).await.unwrap().token, None);
    assert!(!bounded(store.remove(&keys, "fp-1")).await.unwrap());

    // Once removed, an older token may be stored again.
    assert!(
        bounded(store.save(&keys, &token(0, "fp-0"), Duration::from_secs(60)))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn the_lock_is_taken_once_and_released_only_by_its_owner() {
    let server = server().await;
    let store = store(&server).await;
    let keys = keys("lock");
    let ttl = Duration::from_secs(10);

    assert!(bounded(store.lock(&keys, "owner-a", ttl)).await.unwrap());
    assert!(!bounded(store.lock(&keys, "owner-b", ttl)).await.unwrap());
    // Taking it again does not extend it either.
    assert!(!bounded(store.lock(&keys, "owner-a", ttl)).await.unwrap());
    let remaining = pttl(&server, keys.lock()).await;
    assert!((9_000..=10_000).contains(&remaining), "PTTL {remaining}");

    // Another owner cannot release it.
    bounded(store.unlock(&keys, "owner-b")).await.unwrap();
    assert!(!bounded(store.lock(&keys, "owner-b", ttl)).await.unwrap());
    let holder: Option<String> = redis::cmd("GET")
        .arg(keys.lock())
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    assert_eq!(holder.as_deref(), Some("owner-a"));

    bounded(store.unlock(&keys, "owner-a")).await.unwrap();
    assert!(bounded(store.lock(&keys, "owner-b", ttl)).await.unwrap());
    // Unlocking what one does not hold is no error.
    bounded(store.unlock(&keys, "owner-a")).await.unwrap();
    bounded(store.unlock(&StoreKeys::new("test", "no-lock"), "owner-a"))
        .await
        .unwrap();

    // It expires with its time to live.
    let short = StoreKeys::new("test", "lock-short");
    assert!(
        bounded(store.lock(&short, "owner-a", Duration::from_millis(50)))
            .await
            .unwrap()
    );
    eventually(Duration::from_secs(2), "the lock expires", || async {
        bounded(store.lock(&short, "owner-b", ttl)).await.unwrap()
    })
    .await;
}

#[tokio::test]
async fn among_many_replicas_one_takes_the_lock() {
    let server = server().await;
    let keys = Arc::new(keys("contended"));
    let mut tasks = Vec::new();
    for replica in 0..50 {
        let store = RedisStore::open(&server.url()).unwrap();
        let keys = Arc::clone(&keys);
        tasks.push(tokio::spawn(async move {
            let owner = format!("replica-{replica}");
            bounded(store.lock(&keys, &owner, Duration::from_secs(10)))
                .await
                .unwrap()
        }));
    }
    let mut winners = 0;
    for task in tasks {
        winners += usize::from(task.await.unwrap());
    }
    assert_eq!(winners, 1);
}

#[tokio::test]
async fn a_backoff_is_never_shortened() {
    let server = server().await;
    let store = store(&server).await;
    let keys = keys("backoff");

    bounded(store.back_off(&keys, Duration::ZERO, "rate_limited"))
        .await
        .unwrap();
    assert_eq!(bounded(store.load(&keys)).await.unwrap().backoff, None);

    bounded(store.back_off(&keys, Duration::from_secs(10), "rate_limited"))
        .await
        .unwrap();
    let backoff = bounded(store.load(&keys)).await.unwrap().backoff.unwrap();
    assert!(
        backoff > Duration::from_secs(9) && backoff <= Duration::from_secs(10),
        "{backoff:?}"
    );

    // Shorter: ignored, cause and all.
    bounded(store.back_off(&keys, Duration::from_secs(1), "timeout"))
        .await
        .unwrap();
    let snapshot = bounded(store.load(&keys)).await.unwrap();
    assert_eq!(snapshot.backoff_cause.as_deref(), Some("rate_limited"));
    let backoff = snapshot.backoff.unwrap();
    assert!(backoff > Duration::from_secs(9), "{backoff:?}");

    // Longer: extended, with its cause.
    bounded(store.back_off(&keys, Duration::from_secs(20), "server_error"))
        .await
        .unwrap();
    let snapshot = bounded(store.load(&keys)).await.unwrap();
    assert_eq!(snapshot.backoff_cause.as_deref(), Some("server_error"));
    let backoff = snapshot.backoff.unwrap();
    assert!(
        backoff > Duration::from_secs(19) && backoff <= Duration::from_secs(20),
        "{backoff:?}"
    );

    // It ends with its duration.
    let short = StoreKeys::new("test", "backoff-short");
    bounded(store.back_off(&short, Duration::from_millis(50), "rate_limited"))
        .await
        .unwrap();
    assert!(bounded(store.load(&short)).await.unwrap().backoff.is_some());
    eventually(Duration::from_secs(2), "the backoff ends", || async {
        bounded(store.load(&short)).await.unwrap().backoff.is_none()
    })
    .await;

    // A backoff key without expiry (not written by the store) is given one.
    let stuck = StoreKeys::new("test", "backoff-stuck");
    let _: () = redis::cmd("SET")
        .arg(stuck.backoff())
        .arg("1")
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    assert_eq!(bounded(store.load(&stuck)).await.unwrap().backoff, None);
    bounded(store.back_off(&stuck, Duration::from_secs(5), "rate_limited"))
        .await
        .unwrap();
    let remaining = pttl(&server, stuck.backoff()).await;
    assert!((4_000..=5_000).contains(&remaining), "PTTL {remaining}");
}

/// A field of a hash: its name and value.
type Field<'a> = (&'a str, &'a [u8]);

#[tokio::test]
async fn a_malformed_entry_is_a_miss_and_is_replaced() {
    let server = server().await;
    let store = store(&server).await;
    let mut connection = raw(&server).await;
    let complete: [(&str, &[u8]); 4] = [
        ("iat", b"100"),
        ("exp", b"200"),
        ("fp", b"fp"),
        ("v", b"sealed"),
    ];
    let cases: Vec<(&str, Vec<Field>)> = vec![
        ("no-iat", complete[1..].to_vec()),
        ("no-exp", vec![complete[0], complete[2], complete[3]]),
        ("no-fp", vec![complete[0], complete[1], complete[3]]),
        ("no-v", complete[..3].to_vec()),
        (
            "text-iat",
            vec![("iat", b"soon"), complete[1], complete[2], complete[3]],
        ),
        (
            "negative-exp",
            vec![complete[0], ("exp", b"-5"), complete[2], complete[3]],
        ),
        (
            "huge-iat",
            vec![
                ("iat", b"99999999999999999999999"),
                complete[1],
                complete[2],
                complete[3],
            ],
        ),
        (
            "binary-fp",
            vec![complete[0], complete[1], ("fp", b"\xff\xfe"), complete[3]],
        ),
        (
            "surrogate-fp",
            vec![
                complete[0],
                complete[1],
                ("fp", b"\xed\xa0\x80"),
                complete[3],
            ],
        ),
        (
            "overlong-fp",
            vec![complete[0], complete[1], ("fp", b"\xc0\xaf"), complete[3]],
        ),
        (
            "u64-overflow-exp",
            vec![
                complete[0],
                ("exp", b"18446744073709551616"),
                complete[2],
                complete[3],
            ],
        ),
    ];
    for (tag, fields) in cases {
        let keys = StoreKeys::new("test", tag);
        let mut hset = redis::cmd("HSET");
        hset.arg(keys.token());
        for (name, value) in &fields {
            hset.arg(*name).arg(*value);
        }
        let _: i64 = hset.query_async(&mut connection).await.unwrap();

        let snapshot = bounded(store.load(&keys)).await;
        assert_eq!(snapshot.unwrap().token, None, "{tag}");

        // Even an older token replaces it, whole.
        let older = token(1, "fresh");
        assert!(
            bounded(store.save(&keys, &older, Duration::from_secs(60)))
                .await
                .unwrap(),
            "{tag}"
        );
        let loaded = bounded(store.load(&keys)).await.unwrap().token;
        assert_eq!(loaded, Some(older), "{tag}");
    }
}

#[tokio::test]
async fn an_entry_written_by_hand_is_read_as_save_judges_it() {
    // Leading zeros, the largest u64, a multi-byte fingerprint: well
    // formed, so `load` reads it and `save` keeps it against older tokens.
    let server = server().await;
    let store = store(&server).await;
    let keys = keys("by-hand");
    let _: i64 = redis::cmd("HSET")
        .arg(keys.token())
        .arg("iat")
        .arg("000100")
        .arg("exp")
        .arg("18446744073709551615")
        .arg("fp")
        .arg("é✓😀")
        .arg("v")
        .arg(&b""[..])
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();

    let loaded = bounded(store.load(&keys)).await.unwrap().token.unwrap();
    assert_eq!(loaded.issued_at_ms, 100);
    assert_eq!(loaded.expires_at_ms, u64::MAX);
    assert_eq!(loaded.fingerprint, "é✓😀");
    assert!(loaded.sealed.is_empty());

    let ttl = Duration::from_secs(60);
    assert!(
        !bounded(store.save(&keys, &token(100, "a"), ttl))
            .await
            .unwrap()
    );
    assert!(
        !bounded(store.save(&keys, &token(99, "a"), ttl))
            .await
            .unwrap()
    );
    assert!(bounded(store.remove(&keys, "é✓😀")).await.unwrap());
}

#[tokio::test]
async fn clients_do_not_share_entries() {
    let server = server().await;
    let store = store(&server).await;
    let (a, b) = (keys("client-a"), keys("client-b"));
    let ttl = Duration::from_secs(60);

    assert!(bounded(store.save(&a, &token(5, "a"), ttl)).await.unwrap());
    assert!(bounded(store.save(&b, &token(1, "b"), ttl)).await.unwrap());
    assert!(bounded(store.lock(&a, "x", ttl)).await.unwrap());
    assert!(bounded(store.lock(&b, "x", ttl)).await.unwrap());
    bounded(store.back_off(&a, ttl, "rate_limited"))
        .await
        .unwrap();

    let snapshot = bounded(store.load(&b)).await.unwrap();
    assert_eq!(snapshot.token.unwrap().fingerprint, "b");
    assert_eq!(snapshot.backoff, None);
}

#[tokio::test]
async fn a_killed_server_fails_operations_fast_and_a_restarted_one_serves_again() {
    let server = server().await;
    let store = store(&server).await;
    let keys = keys("killed");
    let ttl = Duration::from_secs(60);
    assert!(
        bounded(store.save(&keys, &token(1, "a"), ttl))
            .await
            .unwrap()
    );

    server.kill().unwrap();
    let started = Instant::now();
    let failures = [
        bounded(store.load(&keys)).await.err(),
        bounded(store.save(&keys, &token(2, "b"), ttl)).await.err(),
        bounded(store.remove(&keys, "a")).await.err(),
        bounded(store.lock(&keys, "owner", ttl)).await.err(),
        bounded(store.unlock(&keys, "owner")).await.err(),
        bounded(store.back_off(&keys, ttl, "rate_limited"))
            .await
            .err(),
    ];
    for (operation, failure) in ["load", "save", "remove", "lock", "unlock", "back_off"]
        .iter()
        .zip(&failures)
    {
        let error = failure
            .as_ref()
            .unwrap_or_else(|| panic!("{operation} succeeded on a killed server"));
        let text = chain(error);
        assert!(text.contains(operation), "{text}");
        assert!(text.contains("no connection to Redis"), "{text}");
    }
    // Fast: together they took less than one response timeout, so none
    // waited for an answer or a reconnection.
    assert!(
        started.elapsed() < RESPONSE_TIMEOUT,
        "{:?}",
        started.elapsed()
    );

    // Restarted, empty: the first operation already succeeds, scripts
    // included (they are loaded again).
    server.restart().await.unwrap();
    let restarted = Instant::now();
    let snapshot = bounded(store.load(&keys)).await.unwrap();
    assert_eq!(snapshot.token, None);
    assert!(
        bounded(store.save(&keys, &token(3, "c"), ttl))
            .await
            .unwrap()
    );
    assert!(bounded(store.lock(&keys, "owner", ttl)).await.unwrap());
    assert!(
        restarted.elapsed() < Duration::from_secs(1),
        "{:?}",
        restarted.elapsed()
    );
}

#[tokio::test]
async fn a_restart_between_two_operations_is_not_seen() {
    let server = server().await;
    let store = store(&server).await;
    let keys = keys("restart");
    let ttl = Duration::from_secs(60);

    for round in 1..=3u64 {
        // The connection dies with the server; the next operation finds it
        // dead and runs on a new one.
        server.restart().await.unwrap();
        let started = Instant::now();
        assert!(
            bounded(store.save(&keys, &token(round, "a"), ttl))
                .await
                .unwrap(),
            "round {round}"
        );
        assert!(
            bounded(store.lock(&keys, "owner", ttl)).await.unwrap(),
            "round {round}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_frozen_server_times_out_within_the_response_timeout() {
    let server = server().await;
    let store = store(&server).await;
    let keys = keys("frozen");
    let ttl = Duration::from_secs(60);

    server.freeze().unwrap();
    for operation in ["load", "save", "lock"] {
        let started = Instant::now();
        let error = match operation {
            "load" => bounded(store.load(&keys)).await.err(),
            "save" => bounded(store.save(&keys, &token(1, "a"), ttl)).await.err(),
            _ => bounded(store.lock(&keys, "owner", ttl)).await.err(),
        };
        let elapsed = started.elapsed();
        let error = error.unwrap_or_else(|| panic!("{operation} succeeded on a frozen server"));
        let text = chain(&error);
        assert!(text.contains("did not answer in time"), "{text}");
        assert!(
            elapsed >= RESPONSE_TIMEOUT - Duration::from_millis(50),
            "{operation} gave up early: {elapsed:?}"
        );
        assert!(
            elapsed < RESPONSE_TIMEOUT + Duration::from_millis(500),
            "{operation} took {elapsed:?}"
        );
    }

    // Thawed: the same connection serves again (the answers it missed are
    // not mistaken for new ones).
    server.thaw().unwrap();
    let waited = eventually(
        Duration::from_secs(2),
        "the store answers again",
        || async { bounded(store.load(&keys)).await.is_ok() },
    )
    .await;
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    let snapshot = bounded(store.load(&keys)).await.unwrap();
    assert_eq!(snapshot.token, None);
    assert!(
        bounded(store.save(&keys, &token(7, "b"), ttl))
            .await
            .unwrap()
    );
    let loaded = bounded(store.load(&keys)).await.unwrap().token.unwrap();
    assert_eq!(loaded.issued_at_ms, 7);
}

#[tokio::test]
async fn open_starts_without_redis_and_shares_once_it_is_up() {
    let server = server().await;
    server.kill().unwrap();
    let keys = keys("lazy");

    let store = RedisStore::open(&server.url()).unwrap();
    let error = bounded(store.load(&keys)).await.unwrap_err();
    assert!(chain(&error).contains("no connection to Redis"), "{error}");

    server.restart().await.unwrap();
    let waited = eventually(Duration::from_secs(2), "the store connects", || async {
        bounded(store.load(&keys)).await.is_ok()
    })
    .await;
    assert!(waited < Duration::from_secs(1), "{waited:?}");
    assert!(
        bounded(store.save(&keys, &token(1, "a"), Duration::from_secs(60)))
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn connect_fails_clearly_when_redis_is_down() {
    let server = server().await;
    server.kill().unwrap();

    let error = bounded(RedisStore::connect(&server.url()))
        .await
        .unwrap_err();
    let text = chain(&error);
    assert!(text.contains("could not reach Redis at"), "{text}");
    assert!(text.contains("redis.sock"), "{text}");
    assert!(text.contains("RedisStore::open"), "{text}");

    let error = RedisStore::open("redis://:hunter2@redis.internal:port").unwrap_err();
    let text = chain(&error);
    assert!(!text.contains("hunter2"), "{text}");
    let error = RedisStore::open("https://:hunter2@redis.internal").unwrap_err();
    let text = chain(&error);
    assert!(text.contains("invalid Redis URL"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn a_password_protected_server_needs_the_password_and_never_shows_it() {
    let server = server().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("hunter2")
        .query_async(&mut raw(&server).await)
        .await
        .unwrap();
    let keys = keys("password");

    let store = RedisStore::connect(&format!("{}?pass=hunter2", server.url()))
        .await
        .unwrap();
    assert!(!format!("{store:?}").contains("hunter2"));
    assert!(
        bounded(store.save(&keys, &token(1, "a"), Duration::from_secs(60)))
            .await
            .unwrap()
    );

    for url in [server.url(), format!("{}?pass=wrong-hunter2", server.url())] {
        let error = bounded(RedisStore::connect(&url)).await.unwrap_err();
        let text = chain(&error);
        assert!(text.contains("refused the connection"), "{text}");
        assert!(text.contains("password"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");

        let store = RedisStore::open(&url).unwrap();
        let error = bounded(store.load(&keys)).await.unwrap_err();
        assert!(!chain(&error).contains("hunter2"), "{error}");
    }
}

#[tokio::test]
async fn debug_names_the_server_and_no_password() {
    let store = RedisStore::open("redis://admin:hunter2@127.0.0.1:6399/3").unwrap();
    let debug = format!("{store:?}");
    assert!(debug.contains("127.0.0.1:6399"), "{debug}");
    assert!(
        !debug.contains("hunter2") && !debug.contains("admin"),
        "{debug}"
    );
}

#[tokio::test]
async fn the_harness_dumps_every_byte_and_flushes() {
    let server = server().await;
    let store = store(&server).await;
    let keys = keys("dump");
    let stored = token(42, "fingerprint");
    assert!(
        bounded(store.save(&keys, &stored, Duration::from_secs(60)))
            .await
            .unwrap()
    );
    assert!(
        bounded(store.lock(&keys, "the-owner", Duration::from_secs(60)))
            .await
            .unwrap()
    );

    let dump = server.dump().await.unwrap();
    let names: Vec<&[u8]> = dump.iter().map(|(name, _)| name.as_slice()).collect();
    assert_eq!(
        names,
        [keys.lock().as_bytes(), keys.token().as_bytes()],
        "{dump:?}"
    );
    let token_entry = &dump[1].1;
    let contains = |haystack: &[u8], needle: &[u8]| {
        haystack
            .windows(needle.len())
            .any(|window| window == needle)
    };
    assert!(contains(token_entry, &stored.sealed));
    assert!(contains(token_entry, b"fingerprint"));
    assert!(contains(token_entry, b"42"));
    assert_eq!(dump[0].1, b"the-owner");

    server.flush_all().await.unwrap();
    assert!(server.dump().await.unwrap().is_empty());
}

#[tokio::test]
async fn the_harness_restarts_empty_and_cleans_up() {
    let server = server().await;
    let socket = server.socket_path().to_owned();
    let directory = socket.parent().unwrap().to_owned();
    assert!(
        server.url().starts_with("redis+unix:///"),
        "{}",
        server.url()
    );
    let first = server.pid().unwrap();

    let store = store(&server).await;
    let keys = keys("harness");
    assert!(
        bounded(store.lock(&keys, "a", Duration::from_secs(60)))
            .await
            .unwrap()
    );
    server.restart().await.unwrap();
    assert_ne!(server.pid(), Some(first));
    assert!(server.dump().await.unwrap().is_empty());

    server.kill().unwrap();
    assert_eq!(server.pid(), None);
    assert!(server.freeze().is_err());
    drop(server);
    assert!(!directory.exists(), "{} left behind", directory.display());

    // A frozen server is killed all the same when dropped.
    let frozen = self::server().await;
    let pid = frozen.pid().unwrap();
    let directory = frozen.socket_path().parent().unwrap().to_owned();
    frozen.freeze().unwrap();
    drop(frozen);
    assert!(!directory.exists(), "{} left behind", directory.display());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "redis-server {pid} still runs"
    );
}

#[tokio::test]
async fn load_reports_the_times_left_as_redis_counts_them() {
    let server = server().await;
    let store = store(&server).await;
    let keys = keys("times-left");

    let empty = bounded(store.load(&keys)).await.unwrap();
    assert_eq!((empty.token_ttl, empty.lock_ttl), (None, None));

    let ttl = Duration::from_secs(10);
    assert!(
        bounded(store.save(&keys, &token(1, "fp"), ttl))
            .await
            .unwrap()
    );
    let lock_for = Duration::from_secs(5);
    assert!(bounded(store.lock(&keys, "owner", lock_for)).await.unwrap());
    let loaded = bounded(store.load(&keys)).await.unwrap();

    let token_ttl = loaded.token_ttl.unwrap();
    assert!(token_ttl <= ttl && token_ttl > ttl - BOUND, "{token_ttl:?}");
    let lock_ttl = loaded.lock_ttl.unwrap();
    assert!(
        lock_ttl <= lock_for && lock_ttl > lock_for - BOUND,
        "{lock_ttl:?}"
    );
    bounded(store.unlock(&keys, "owner")).await.unwrap();
    let unlocked = bounded(store.load(&keys)).await.unwrap();
    assert_eq!(unlocked.lock_ttl, None);
    assert!(unlocked.token_ttl.is_some());
}

#[test]
fn the_store_timeouts_nest_within_the_operation_timeout() {
    // An operation that reconnects first (its connection dropped) opens a
    // connection and then waits for the answer: both fit in the shared
    // cache's bound on the operation, so the store's own error is the one
    // reported.
    let inner = RedisStore::CONNECTION_TIMEOUT + RedisStore::RESPONSE_TIMEOUT;
    assert!(
        inner < routera_auth::store::DEFAULT_OPERATION_TIMEOUT,
        "{inner:?}"
    );
    let config = RedisStore::manager_config();
    assert_eq!(
        config.response_timeout(),
        Some(RedisStore::RESPONSE_TIMEOUT)
    );
    assert_eq!(
        config.connection_timeout(),
        Some(RedisStore::CONNECTION_TIMEOUT)
    );
}
