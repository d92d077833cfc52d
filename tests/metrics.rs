//! The metrics of the token's life, read back from a debugging recorder
//! after a scripted run (feature `metrics`).

use std::collections::HashMap;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use routera_auth::{TokenError, TokenErrorKind};
use routera_auth_test::{MOCK_CLIENT_ID, MockExchange};

const HOUR: Duration = Duration::from_secs(3600);

/// Every metric recorded, by name and sorted labels.
type Recorded = HashMap<(String, Vec<(String, String)>), DebugValue>;

#[test]
fn a_scripted_run_records_exactly_what_happened() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();

    let exchange = MockExchange::new(HOUR).with_delay(Duration::from_millis(40));
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let provider = exchange.provider();
            // 1: a failure; 2: the worker retries on its own after the
            // backoff (at most 1 s, then the 40 ms exchange), so the next
            // caller, 2 s later, finds a token.
            exchange.fail_next(TokenError::new(TokenErrorKind::ServerError));
            assert!(provider.token().await.is_err());
            tokio::time::sleep(Duration::from_secs(2)).await;
            let token = provider.token().await.unwrap();
            // 3: after an invalidation.
            assert!(provider.invalidate(&token));
            provider.token().await.unwrap();
            // 4: ahead of expiry, in the background.
            let timing = provider.timing().unwrap();
            tokio::time::sleep_until(timing.refresh_at).await;
            assert_eq!(provider.token().await.unwrap().secret(), "token-3");
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(provider.token().await.unwrap().secret(), "token-4");
            assert_eq!(exchange.calls(), 4);
        })
    });

    let recorded: Recorded = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<_> = key
                .labels()
                .map(|label| (label.key().to_owned(), label.value().to_owned()))
                .collect();
            labels.sort();
            ((key.name().to_owned(), labels), value)
        })
        .collect();
    let client = || ("client_id".to_owned(), MOCK_CLIENT_ID.to_owned());
    let get = |name: &str, mut labels: Vec<(String, String)>| {
        labels.sort();
        recorded
            .get(&(name.to_owned(), labels))
            .unwrap_or_else(|| panic!("{name} was not recorded: {:?}", recorded.keys()))
    };
    let counter = |name: &str, labels| match get(name, labels) {
        DebugValue::Counter(value) => *value,
        other => panic!("{name} is not a counter: {other:?}"),
    };

    assert_eq!(
        counter("routera_auth_token_exchanges_total", vec![client()]),
        4
    );
    let kind = ("kind".to_owned(), "server_error".to_owned());
    assert_eq!(
        counter(
            "routera_auth_token_exchange_failures_total",
            vec![client(), kind]
        ),
        1
    );
    // The first caller, and the first after the invalidation.
    assert_eq!(counter("routera_auth_token_waits_total", vec![client()]), 2);
    assert_eq!(
        counter("routera_auth_token_invalidations_total", vec![client()]),
        1
    );
    assert_eq!(
        counter(
            "routera_auth_token_background_refreshes_total",
            vec![client()]
        ),
        1
    );

    let outcome = |value: &str| ("outcome".to_owned(), value.to_owned());
    let durations = |labels| match get("routera_auth_token_exchange_duration_seconds", labels) {
        DebugValue::Histogram(values) => values.iter().map(|v| v.into_inner()).collect::<Vec<_>>(),
        other => panic!("not a histogram: {other:?}"),
    };
    // Each exchange took the mock's 40 ms, on paused time.
    assert_eq!(
        durations(vec![client(), outcome("success")]),
        [0.04, 0.04, 0.04]
    );
    assert_eq!(durations(vec![client(), outcome("failure")]), [0.04]);

    match get(
        "routera_auth_token_expiry_timestamp_seconds",
        vec![client()],
    ) {
        DebugValue::Gauge(value) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            // The last token is served for 59:30 from its request.
            let remaining = value.into_inner() - now;
            assert!((3000.0..3600.0).contains(&remaining), "{remaining}");
        }
        other => panic!("not a gauge: {other:?}"),
    }

    let text = format!("{recorded:?}");
    assert!(!text.contains("token-"), "no token in a metric: {text}");
    assert!(!text.contains("mock-secret"), "no secret in a metric");
}

#[cfg(feature = "shared-store")]
#[test]
fn a_token_taken_from_the_fleets_store_sets_the_expiry_gauge() {
    use routera_auth::AuthMethod;
    use routera_auth::store::SharedCache;
    use routera_auth_test::MemoryStore;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let store = MemoryStore::new();
    let replica = |exchange: &MockExchange| {
        let cache = SharedCache::new(
            store.clone(),
            "https://auth.test/t",
            AuthMethod::RequestBody,
        );
        let layered = tower::ServiceBuilder::new()
            .layer(cache)
            .service(exchange.clone());
        routera_auth::TokenProvider::new(layered, MockExchange::credentials())
    };
    let (first, second) = (MockExchange::new(HOUR), MockExchange::new(HOUR));
    let a = replica(&first);
    runtime.block_on(a.token()).unwrap();

    // The second replica, with a recorder of its own, takes the token from
    // the store.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let b = replica(&second);
    metrics::with_local_recorder(&recorder, || runtime.block_on(b.token())).unwrap();
    assert_eq!(second.calls(), 0, "taken from the store");

    let gauge = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(key, ..)| key.key().name() == "routera_auth_token_expiry_timestamp_seconds");
    let Some((_, _, _, DebugValue::Gauge(value))) = gauge else {
        panic!("no expiry gauge for a token from the store: {gauge:?}");
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let remaining = value.into_inner() - now;
    assert!((3000.0..3600.0).contains(&remaining), "{remaining}");
}
