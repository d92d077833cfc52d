//! The fault matrix: a token endpoint that fails in every way real servers
//! and proxies do, on real loopback HTTP through the reqwest exchange.
//!
//! For each fault: the typed error, `is_retryable()`, an answer in bounded
//! time, no panic, and the valid cached token still served. These run on
//! real time (paused time would fire the exchange timeout while sockets are
//! busy); every wait is bounded by a `timeout`.

#![cfg(feature = "reqwest")]

use std::time::Duration;

use routera_auth::test_util::{Emulator, Fault};
use routera_auth::{
    AccessToken, HttpTokenExchange, ReqwestService, TokenError, TokenErrorKind, TokenProvider,
};

/// Longest any single check may take before the test fails.
const BOUND: Duration = Duration::from_secs(10);

struct Setup {
    emulator: Emulator,
    provider: TokenProvider,
    valid: AccessToken,
}

/// A provider with a valid cached token from a healthy emulator, over a
/// reqwest client that keeps no idle connections (so that every exchange
/// opens a new one) and never follows redirects.
async fn setup() -> Setup {
    let emulator = Emulator::start().await.unwrap();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let exchange = HttpTokenExchange::new(ReqwestService::new(client))
        .with_token_url(&emulator.token_url())
        .unwrap();
    let provider = TokenProvider::builder(exchange, emulator.credentials())
        .exchange_timeout(Duration::from_millis(500))
        .build();
    let valid = provider.token().await.unwrap();
    Setup {
        emulator,
        provider,
        valid,
    }
}

/// Injects `fault`, forces a refresh, and checks what the refresh gives and
/// that the valid token is still served.
async fn refresh_fails(fault: Fault, kind: TokenErrorKind, retryable: bool) -> TokenError {
    let Setup {
        emulator,
        provider,
        valid,
    } = setup().await;
    emulator.inject(fault);
    let err = tokio::time::timeout(BOUND, provider.refresh())
        .await
        .expect("the refresh answered in bounded time")
        .expect_err("the refresh failed");
    assert_eq!(err.kind(), kind, "{err}");
    assert_eq!(err.is_retryable(), retryable, "{err}");
    let served = tokio::time::timeout(BOUND, provider.token())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(served, valid, "the valid cached token is still served");
    assert_eq!(emulator.exchange_count(), 1);
    err
}

/// Injects `fault` and checks that the response is accepted as a token.
async fn refresh_accepts(fault: Fault) {
    let Setup {
        emulator,
        provider,
        valid,
    } = setup().await;
    emulator.inject(fault);
    let token = tokio::time::timeout(BOUND, provider.refresh())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(token, valid);
    assert_eq!(provider.token().await.unwrap(), token);
}

fn token_body(fields: &str) -> Fault {
    Fault::json(200, &format!("{{{fields}}}"))
}

#[tokio::test]
async fn connection_refused() {
    let Setup {
        emulator,
        provider,
        valid,
    } = setup().await;
    drop(emulator);
    let err = tokio::time::timeout(BOUND, provider.refresh())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), TokenErrorKind::Transport, "{err}");
    assert!(err.is_retryable());
    assert_eq!(provider.token().await.unwrap(), valid);
}

#[tokio::test]
async fn connection_reset_mid_response() {
    refresh_fails(Fault::ResetMidResponse, TokenErrorKind::Transport, true).await;
}

#[tokio::test]
async fn endpoint_hangs() {
    let err = refresh_fails(Fault::Hang, TokenErrorKind::Timeout, true).await;
    assert!(err.to_string().contains("500 ms"), "{err}");
}

#[tokio::test]
async fn status_500() {
    let err = refresh_fails(Fault::status(500), TokenErrorKind::ServerError, true).await;
    assert_eq!(err.status().map(|s| s.as_u16()), Some(500));
}

#[tokio::test]
async fn status_502() {
    let err = refresh_fails(Fault::status(502), TokenErrorKind::ServerError, true).await;
    assert_eq!(err.status().map(|s| s.as_u16()), Some(502));
}

#[tokio::test]
async fn status_503_with_retry_after() {
    let err = refresh_fails(
        Fault::retry_after(503, 7),
        TokenErrorKind::ServerError,
        true,
    )
    .await;
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn status_429_with_retry_after() {
    let err = refresh_fails(
        Fault::retry_after(429, 30),
        TokenErrorKind::RateLimited,
        true,
    )
    .await;
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(err.status().map(|s| s.as_u16()), Some(429));
}

#[tokio::test]
async fn html_error_page() {
    let err = refresh_fails(Fault::html(503), TokenErrorKind::ServerError, true).await;
    assert!(err.to_string().contains("text/html"), "{err}");
    // An HTML page with a success status is an unusable token response.
    refresh_fails(Fault::html(200), TokenErrorKind::InvalidResponse, false).await;
}

#[tokio::test]
async fn empty_body() {
    let err = refresh_fails(Fault::status(200), TokenErrorKind::InvalidResponse, false).await;
    assert!(err.to_string().contains("empty"), "{err}");
    let err = refresh_fails(Fault::status(503), TokenErrorKind::ServerError, true).await;
    assert!(err.to_string().contains("empty"), "{err}");
}

#[tokio::test]
async fn malformed_json() {
    let err = refresh_fails(
        Fault::json(200, r#"{"access_token":"abc","#),
        TokenErrorKind::InvalidResponse,
        false,
    )
    .await;
    assert!(err.to_string().contains("not valid JSON"), "{err}");
}

#[tokio::test]
async fn missing_access_token() {
    refresh_fails(
        token_body(r#""expires_in":3600,"token_type":"Bearer""#),
        TokenErrorKind::InvalidResponse,
        false,
    )
    .await;
}

#[tokio::test]
async fn token_type_other_than_bearer() {
    refresh_fails(
        token_body(r#""access_token":"mac-token","expires_in":3600,"token_type":"mac""#),
        TokenErrorKind::InvalidResponse,
        false,
    )
    .await;
}

#[tokio::test]
async fn negative_expires_in() {
    let err = refresh_fails(
        token_body(r#""access_token":"neg","expires_in":-60,"token_type":"Bearer""#),
        TokenErrorKind::InvalidResponse,
        false,
    )
    .await;
    assert!(err.to_string().contains("negative"), "{err}");
}

// Missing, zero, huge and string `expires_in` are accepted: missing and 0
// mean "not said" and the provider assumes a short lifetime (60 s by
// default); a huge one is trusted for 24 h at most; a numeric string is a
// number. The timing itself is tested on paused time in tests/provider.rs.

#[tokio::test]
async fn missing_expires_in_is_accepted() {
    refresh_accepts(token_body(
        r#""access_token":"no-expiry","token_type":"Bearer""#,
    ))
    .await;
}

#[tokio::test]
async fn zero_expires_in_is_accepted() {
    refresh_accepts(token_body(
        r#""access_token":"zero","expires_in":0,"token_type":"Bearer""#,
    ))
    .await;
}

#[tokio::test]
async fn huge_expires_in_is_accepted() {
    refresh_accepts(token_body(
        r#""access_token":"huge","expires_in":315569520000,"token_type":"Bearer""#,
    ))
    .await;
}

#[tokio::test]
async fn string_expires_in_is_accepted() {
    refresh_accepts(token_body(
        r#""access_token":"str","expires_in":"3600","token_type":"Bearer""#,
    ))
    .await;
}

#[tokio::test]
async fn ten_mib_body() {
    for declare_length in [true, false] {
        let err = refresh_fails(
            Fault::Oversized {
                len: 10 * 1024 * 1024,
                declare_length,
            },
            TokenErrorKind::InvalidResponse,
            false,
        )
        .await;
        assert!(err.to_string().contains("larger than 65536 bytes"), "{err}");
    }
}

#[tokio::test]
async fn redirects_to_another_listener_are_not_followed() {
    let elsewhere = Emulator::start().await.unwrap();
    for status in [302, 307] {
        let err = refresh_fails(
            Fault::redirect(status, &elsewhere.token_url()),
            TokenErrorKind::UnexpectedStatus,
            false,
        )
        .await;
        assert_eq!(err.status().map(|s| s.as_u16()), Some(status));
    }
    assert_eq!(
        elsewhere.token_requests(),
        0,
        "the other listener received no request"
    );
}

#[tokio::test]
async fn the_default_reqwest_exchange_does_not_follow_redirects_either() {
    let elsewhere = Emulator::start().await.unwrap();
    let endpoint = Emulator::start().await.unwrap();
    endpoint.inject(Fault::redirect(307, &elsewhere.token_url()));
    let exchange = HttpTokenExchange::reqwest()
        .unwrap()
        .with_token_url(&endpoint.token_url())
        .unwrap();
    let provider = TokenProvider::new(exchange, endpoint.credentials());
    let err = tokio::time::timeout(BOUND, provider.token())
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), TokenErrorKind::UnexpectedStatus);
    assert_eq!(elsewhere.token_requests(), 0);
}
