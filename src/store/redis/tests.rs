use std::error::Error as _;

use super::scripts::{MAX_TTL_MS, millis, parse_token};
use super::*;
use crate::store::StoredToken;

fn fields(values: [Option<&[u8]>; 4]) -> Vec<Option<Vec<u8>>> {
    values.iter().map(|v| v.map(<[u8]>::to_vec)).collect()
}

#[test]
fn complete_fields_are_a_token() {
    let token = parse_token(fields([
        Some(b"10"),
        Some(b"20"),
        Some(b"fp"),
        Some(b"\0\xffsealed"),
    ]));
    assert_eq!(
        token,
        Some(StoredToken {
            issued_at_ms: 10,
            expires_at_ms: 20,
            fingerprint: "fp".to_owned(),
            sealed: b"\0\xffsealed".to_vec(),
        })
    );
}

#[test]
fn missing_or_malformed_fields_are_a_miss() {
    let cases = [
        fields([None, Some(b"20"), Some(b"fp"), Some(b"v")]),
        fields([Some(b"10"), None, Some(b"fp"), Some(b"v")]),
        fields([Some(b"10"), Some(b"20"), None, Some(b"v")]),
        fields([Some(b"10"), Some(b"20"), Some(b"fp"), None]),
        fields([Some(b"ten"), Some(b"20"), Some(b"fp"), Some(b"v")]),
        fields([Some(b"-1"), Some(b"20"), Some(b"fp"), Some(b"v")]),
        fields([Some(b"+1"), Some(b"20"), Some(b"fp"), Some(b"v")]),
        fields([Some(b""), Some(b"20"), Some(b"fp"), Some(b"v")]),
        fields([
            Some(b"10"),
            Some(b"99999999999999999999"),
            Some(b"fp"),
            Some(b"v"),
        ]),
        fields([Some(b"10"), Some(b"20"), Some(b"\xff"), Some(b"v")]),
        Vec::new(),
    ];
    for case in cases {
        assert_eq!(parse_token(case.clone()), None, "{case:?}");
    }
}

#[test]
fn durations_become_milliseconds_for_px() {
    assert_eq!(millis(Duration::ZERO), None);
    assert_eq!(millis(Duration::from_nanos(1)), Some(1));
    assert_eq!(millis(Duration::from_millis(1500)), Some(1500));
    assert_eq!(millis(Duration::MAX), Some(MAX_TTL_MS));
}

#[test]
fn debug_shows_no_password() {
    let store = RedisStore::open("redis://user:hunter2@redis.internal:6380/2");
    let store = match store {
        Ok(store) => store,
        Err(error) => panic!("{error}"),
    };
    let debug = format!("{store:?}");
    assert!(debug.contains("redis.internal:6380"), "{debug}");
    assert!(!debug.contains("hunter2"), "{debug}");
    assert!(!debug.contains("user"), "{debug}");
}

#[test]
fn a_bad_url_says_what_is_expected() {
    for url in ["http://localhost", "not a url", "redis://host:99999"] {
        let error = match RedisStore::open(url) {
            Ok(store) => panic!("{url} opened {store:?}"),
            Err(error) => error,
        };
        let message = error.to_string();
        assert!(message.contains("invalid Redis URL"), "{message}");
        assert!(message.contains("redis://"), "{message}");
        assert!(error.source().is_some());
    }
}

#[test]
fn an_operation_outside_a_runtime_is_an_error() {
    let store = RedisStore::open("redis://127.0.0.1:1");
    let store = match store {
        Ok(store) => store,
        Err(error) => panic!("{error}"),
    };
    let error = match store.connection() {
        Ok(_) => panic!("built a manager without a runtime"),
        Err(error) => error,
    };
    assert!(error.to_string().contains("Tokio runtime"), "{error}");
}
