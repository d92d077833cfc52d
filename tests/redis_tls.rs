//! The Redis store over TLS, against a real `redis-server` serving TLS
//! (Debian package `redis-server`, built with TLS), started by
//! `routera_auth_test::RedisTlsServer` with a CA and certificates it makes. Every
//! test runs under each TLS stack compiled in (`RedisTls::available()`:
//! with `--all-features`, rustls on aws-lc-rs, rustls on ring and
//! native-tls), each through a real handshake.
#![cfg(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls"))]

mod common;

use std::time::{Duration, Instant};

use common::{Capture, Replica, chain, layered};
use routera_auth::store::{RedisStore, RedisTls, SharedCache, StoreKeys, TokenStore};
use routera_auth_test::{Emulator, RedisTlsServer, TestCa};

/// Bounds every wait of a test, so a regression fails it instead of hanging.
const BOUND: Duration = Duration::from_secs(30);

async fn tls_server() -> RedisTlsServer {
    match RedisTlsServer::start().await {
        Ok(server) => server,
        Err(error) => panic!("these tests need a real Redis with TLS: {error}"),
    }
}

async fn mutual_tls_server() -> RedisTlsServer {
    match RedisTlsServer::start_mutual().await {
        Ok(server) => server,
        Err(error) => panic!("these tests need a real Redis with TLS: {error}"),
    }
}

/// A replica of the emulator's client over `store`.
fn replica(store: RedisStore, emulator: &Emulator) -> Replica {
    let exchange = emulator.exchange();
    let cache = SharedCache::for_exchange(store, &exchange).breaker(3, Duration::from_millis(500));
    layered(
        cache,
        exchange,
        emulator.credentials(),
        routera_auth::defaults::EXCHANGE_TIMEOUT,
    )
}

async fn token(replica: &Replica) -> String {
    let token = tokio::time::timeout(BOUND, replica.token()).await.unwrap();
    token.unwrap().secret().to_owned()
}

#[test]
fn the_features_choose_the_stack_as_the_exchange_does() {
    let available = RedisTls::available();
    assert_eq!(RedisTls::from_features(), available.first().copied());
    #[cfg(feature = "native-tls")]
    assert_eq!(RedisTls::from_features(), Some(RedisTls::NativeTls));
    #[cfg(all(feature = "rustls-ring", not(feature = "native-tls")))]
    assert_eq!(RedisTls::from_features(), Some(RedisTls::RustlsRing));
    #[cfg(all(
        feature = "rustls",
        not(feature = "rustls-ring"),
        not(feature = "native-tls")
    ))]
    assert_eq!(RedisTls::from_features(), Some(RedisTls::RustlsAwsLc));
    let expected = usize::from(cfg!(feature = "rustls"))
        + usize::from(cfg!(feature = "rustls-ring"))
        + usize::from(cfg!(feature = "native-tls"));
    assert_eq!(available.len(), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_trust_the_ca_share_one_exchange_over_tls() {
    let redis = tls_server().await;
    for &stack in RedisTls::available() {
        let emulator = Emulator::start().await.unwrap();
        let mut replicas = Vec::new();
        for _ in 0..2 {
            let store = RedisStore::builder(&redis.url())
                .add_root_certificates(redis.ca_pem())
                .tls(stack)
                .connect()
                .await
                .unwrap_or_else(|error| panic!("{stack:?}: {}", chain(&error)));
            replicas.push(replica(store, &emulator));
        }
        let first = token(&replicas[0]).await;
        let second = token(&replicas[1]).await;
        assert_eq!(
            first, second,
            "{stack:?}: the second replica took the shared token"
        );
        assert_eq!(emulator.exchange_count(), 1, "{stack:?}");
        let stats = replicas[1].cache.stats();
        assert_eq!((stats.hits, stats.errors), (1, 0), "{stack:?}: {stats:?}");
        // The token is in Redis, sealed: the server holds one entry.
        let entries = redis.server().dump().await.unwrap();
        assert!(
            entries.iter().any(|(key, _)| key.ends_with(b":token")),
            "{stack:?}"
        );
        redis.server().flush_all().await.unwrap();
    }
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_fails_clearly_and_exchanges_on_its_own() {
    let redis = tls_server().await;
    let (capture, _guard) = Capture::install();

    for &stack in RedisTls::available() {
        // Checked at start: the error says what failed and what to give.
        let error = RedisStore::builder(&redis.url())
            .tls(stack)
            .connect()
            .await
            .unwrap_err();
        let text = chain(&error);
        assert!(
            text.contains("TLS handshake with Redis at 127.0.0.1:"),
            "{stack:?}: {text}"
        );
        assert!(text.contains("add_root_certificates"), "{stack:?}: {text}");

        // Lazily: the requests succeed through the replica's own exchange,
        // and the store's failures are counted and logged.
        let emulator = Emulator::start().await.unwrap();
        let store = RedisStore::builder(&redis.url())
            .tls(stack)
            .build()
            .unwrap();
        let replica = replica(store, &emulator);
        assert!(!token(&replica).await.is_empty());
        assert_eq!(emulator.exchange_count(), 1, "{stack:?}");
        let stats = replica.cache.stats();
        assert!(stats.errors >= 1, "{stack:?}: {stats:?}");
        assert_eq!(stats.hits, 0, "{stack:?}: {stats:?}");
        let logs = capture.text();
        assert!(
            logs.contains("TLS handshake with Redis at 127.0.0.1:"),
            "{stack:?}: {logs}"
        );
        assert!(logs.contains("no connection to Redis"), "{stack:?}: {logs}");
        // Nothing reached Redis.
        assert!(redis.server().dump().await.unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_certificate_of_another_ca_is_not_trusted() {
    let redis = tls_server().await;
    let other = TestCa::new("another CA").unwrap();
    for &stack in RedisTls::available() {
        let error = RedisStore::builder(&redis.url())
            .add_root_certificates(other.certificate_pem())
            .tls(stack)
            .connect()
            .await
            .unwrap_err();
        let text = chain(&error);
        assert!(text.contains("TLS handshake"), "{stack:?}: {text}");
    }
}

#[tokio::test]
async fn mutual_tls_works_with_the_client_certificate_and_fails_clearly_without() {
    let redis = mutual_tls_server().await;
    let keys = StoreKeys::new("routera-auth", "mtls");
    let (certificate, key) = redis.client_certificate();
    for &stack in RedisTls::available() {
        let store = RedisStore::builder(&redis.url())
            .add_root_certificates(redis.ca_pem())
            .client_certificate(certificate, key)
            .tls(stack)
            .connect()
            .await
            .unwrap_or_else(|error| panic!("{stack:?}: {}", chain(&error)));
        assert!(
            store
                .lock(&keys, "owner", Duration::from_secs(5))
                .await
                .unwrap()
        );
        store.unlock(&keys, "owner").await.unwrap();

        let error = RedisStore::builder(&redis.url())
            .add_root_certificates(redis.ca_pem())
            .tls(stack)
            .connect()
            .await
            .unwrap_err();
        let text = chain(&error);
        assert!(
            text.contains("could not reach Redis at 127.0.0.1:"),
            "{stack:?}: {text}"
        );
        assert!(text.contains("client certificate"), "{stack:?}: {text}");

        // A certificate of another CA is refused too.
        let other = TestCa::new("another CA").unwrap();
        let (certificate, key) = other.client_certificate("intruder").unwrap();
        let refused = RedisStore::builder(&redis.url())
            .add_root_certificates(redis.ca_pem())
            .client_certificate(certificate, key)
            .tls(stack)
            .connect()
            .await;
        assert!(refused.is_err(), "{stack:?}");
    }
}

#[tokio::test]
async fn a_restarted_tls_server_is_reconnected_on_the_next_operation() {
    let redis = tls_server().await;
    let keys = StoreKeys::new("routera-auth", "restart");
    for &stack in RedisTls::available() {
        redis.server().flush_all().await.unwrap();
        let store = RedisStore::builder(&redis.url())
            .add_root_certificates(redis.ca_pem())
            .tls(stack)
            .connect()
            .await
            .unwrap();
        assert!(
            store
                .lock(&keys, "a", Duration::from_secs(60))
                .await
                .unwrap()
        );

        redis.server().restart().await.unwrap();
        let started = Instant::now();
        // The connection died with the server: the next operation opens a
        // new one and succeeds, on the empty server.
        let snapshot = tokio::time::timeout(BOUND, store.load(&keys))
            .await
            .unwrap()
            .unwrap_or_else(|error| panic!("{stack:?}: {}", chain(&error)));
        assert_eq!(snapshot.lock_ttl, None, "{stack:?}");
        assert!(started.elapsed() < Duration::from_secs(1), "{stack:?}");

        redis.server().kill().unwrap();
        let error = store.load(&keys).await.unwrap_err();
        assert!(
            chain(&error).contains("no connection to Redis"),
            "{stack:?}"
        );
        redis.server().restart().await.unwrap();
        assert!(
            store
                .lock(&keys, "b", Duration::from_secs(60))
                .await
                .unwrap()
        );
    }
}

#[test]
fn bad_certificates_are_clear_errors() {
    let ca = TestCa::new("a CA").unwrap();
    let (certificate, key) = ca.client_certificate("client").unwrap();
    let url = "rediss://127.0.0.1:6380";
    let cases: [(&str, routera_auth::store::RedisStoreBuilder, &str); 5] = [
        (
            "garbage roots",
            RedisStore::builder(url).add_root_certificates("not a certificate"),
            "hold no certificate",
        ),
        (
            "a truncated root",
            RedisStore::builder(url).add_root_certificates(&ca.certificate_pem()[..100]),
            "not valid PEM",
        ),
        (
            "a key that is not PEM",
            RedisStore::builder(url).client_certificate(certificate.clone(), "not a key"),
            "not a PEM private key",
        ),
        (
            "a certificate that is not PEM",
            RedisStore::builder(url).client_certificate("not a certificate", key.clone()),
            "holds no certificate",
        ),
        (
            "certificates without TLS",
            RedisStore::builder("redis://127.0.0.1:6379")
                .add_root_certificates(ca.certificate_pem()),
            "use a rediss:// URL",
        ),
    ];
    for (case, builder, expected) in cases {
        let error = builder.build().unwrap_err();
        let text = chain(&error);
        assert!(text.contains(expected), "{case}: {text}");
        assert!(!text.contains(&key[30..60]), "{case}: the key is shown");
    }
    let error = RedisStore::open("rediss://127.0.0.1:6380#insecure").unwrap_err();
    assert!(chain(&error).contains("always"), "{error}");
    let debug = format!(
        "{:?}",
        RedisStore::builder("rediss://:hunter2@127.0.0.1:6380")
            .client_certificate(certificate, key.clone())
    );
    assert!(
        !debug.contains("hunter2") && !debug.contains(&key[30..60]),
        "{debug}"
    );
}

#[tokio::test]
async fn a_frozen_tls_server_fails_operations_within_the_store_timeouts() {
    let redis = tls_server().await;
    let keys = StoreKeys::new("routera-auth", "frozen");
    let Some(stack) = RedisTls::from_features() else {
        unreachable!("a TLS feature is on");
    };
    let connected = RedisStore::builder(&redis.url())
        .add_root_certificates(redis.ca_pem())
        .tls(stack)
        .connect()
        .await
        .unwrap();
    let fresh = RedisStore::builder(&redis.url())
        .add_root_certificates(redis.ca_pem())
        .tls(stack)
        .build()
        .unwrap();
    redis.server().freeze().unwrap();

    // An open connection: the command's answer times out.
    let started = Instant::now();
    let error = connected.load(&keys).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        chain(&error).contains("did not answer in time"),
        "{}",
        chain(&error)
    );
    assert!(
        elapsed >= RedisStore::RESPONSE_TIMEOUT - Duration::from_millis(20),
        "{elapsed:?}"
    );
    assert!(
        elapsed < RedisStore::RESPONSE_TIMEOUT + Duration::from_millis(500),
        "{elapsed:?}"
    );

    // A new connection: the handshake gets no answer, the connection
    // times out (the system accepts the TCP connection for the frozen
    // server).
    let started = Instant::now();
    let error = fresh.load(&keys).await.unwrap_err();
    let elapsed = started.elapsed();
    let text = chain(&error);
    assert!(text.contains("over TLS within 100 ms"), "{text}");
    assert!(
        elapsed >= RedisStore::CONNECTION_TIMEOUT - Duration::from_millis(20),
        "{elapsed:?}"
    );
    assert!(
        elapsed < RedisStore::CONNECTION_TIMEOUT + Duration::from_millis(500),
        "{elapsed:?}"
    );

    redis.server().thaw().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while fresh.load(&keys).await.is_err() || connected.load(&keys).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the store does not answer after a thaw"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills every client connection of `redis` from the server's side
/// (`CLIENT KILL TYPE normal`, over its unix socket).
async fn kill_clients(redis: &RedisTlsServer) {
    let client = redis::Client::open(redis.server().url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(killed >= 1, "{killed} connections killed");
}

/// A connection the server closed (killed, or a restart) is noticed before
/// the next command is sent on it: that command goes on a new connection
/// and succeeds, even `lock`, which is not tried again on a lost
/// connection (its `SET NX` may have been applied).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closed_is_replaced_before_the_next_command() {
    let redis = tls_server().await;
    for &stack in RedisTls::available() {
        redis.server().flush_all().await.unwrap();
        let keys = StoreKeys::new("routera-auth", "closed");
        let store = RedisStore::builder(&redis.url())
            .add_root_certificates(redis.ca_pem())
            .tls(stack)
            .connect()
            .await
            .unwrap();

        kill_clients(&redis).await;
        // The end of the connection reaches the client (its FIN) at once;
        // a moment for its task to see it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let taken = store.lock(&keys, "a", Duration::from_secs(60)).await;
        assert!(
            taken.as_ref().is_ok_and(|taken| *taken),
            "{stack:?}: {:?}",
            taken.map_err(|error| chain(&error))
        );

        redis.server().restart().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let taken = store.lock(&keys, "b", Duration::from_secs(60)).await;
        assert!(
            taken.as_ref().is_ok_and(|taken| *taken),
            "{stack:?}: {:?}",
            taken.map_err(|error| chain(&error))
        );
    }
}

/// While the server cannot be reached, attempts to connect are spaced out
/// (10 ms after the first failure, doubling, at most 1 s): a burst of
/// operations makes a few attempts, not one (or two) each. A real listener
/// that accepts each TCP connection and closes it counts them: each
/// handshake fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_connects_are_spaced_out() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counting = accepted.clone();
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            counting.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let ca = TestCa::new("a CA").unwrap();
    let keys = StoreKeys::new("routera-auth", "spaced");
    for &stack in RedisTls::available() {
        let store = RedisStore::builder(&format!("rediss://127.0.0.1:{port}"))
            .add_root_certificates(ca.certificate_pem())
            .tls(stack)
            .build()
            .unwrap();
        let before = accepted.load(Ordering::SeqCst);
        let mut backing_off = 0;
        for _ in 0..100 {
            let error = store.load(&keys).await.unwrap_err();
            if chain(&error).contains("the next is in") {
                backing_off += 1;
            }
        }
        // Accepted connections are counted as the listener's task runs.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let attempts = accepted.load(Ordering::SeqCst) - before;
        assert!(
            (1..=10).contains(&attempts),
            "{stack:?}: {attempts} attempts to connect for 100 operations"
        );
        assert!(backing_off >= 90, "{stack:?}: {backing_off}");
    }
    server.abort();
}
