//! The fault matrix: a token endpoint that fails in every way real servers
//! and proxies do, on real loopback HTTP, through each HTTP client under the
//! exchange: the emulator's own (hyper-util) and, with the `reqwest`
//! feature, reqwest.
//!
//! For each fault: the typed error, `is_retryable()`, an answer in bounded
//! time, no panic, and the valid cached token still served. These run on
//! real time (paused time would fire the exchange timeout while sockets are
//! busy); every wait is bounded by a `timeout`.

use std::time::Duration;

use routera_auth::{AccessToken, TokenError, TokenErrorKind, TokenProvider};
use routera_auth_test::{Emulator, Fault};

/// Longest any single check may take before the test fails.
const BOUND: Duration = Duration::from_secs(10);
/// The providers' exchange timeout.
const EXCHANGE_TIMEOUT: Duration = Duration::from_millis(500);

/// An HTTP client under the exchange. Neither keeps idle connections, so
/// every exchange opens a new one, and neither follows redirects.
#[derive(Debug, Clone, Copy)]
enum ExchangeClient {
    /// `Emulator::exchange`: hyper-util's legacy client.
    Hyper,
    /// reqwest, configured as above.
    #[cfg(feature = "reqwest")]
    Reqwest,
}

/// Every client the matrix runs on.
const CLIENTS: &[ExchangeClient] = &[
    ExchangeClient::Hyper,
    #[cfg(feature = "reqwest")]
    ExchangeClient::Reqwest,
];

struct Setup {
    emulator: Emulator,
    provider: TokenProvider,
    valid: AccessToken,
}

/// A provider over `client` with a valid cached token from a healthy
/// emulator.
async fn setup(client: ExchangeClient) -> Setup {
    let emulator = Emulator::start().await.unwrap();
    let provider = match client {
        ExchangeClient::Hyper => {
            TokenProvider::builder(emulator.exchange(), emulator.credentials())
                .exchange_timeout(EXCHANGE_TIMEOUT)
                .build()
        }
        #[cfg(feature = "reqwest")]
        ExchangeClient::Reqwest => {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap();
            let exchange =
                routera_auth::HttpTokenExchange::new(routera_auth::ReqwestService::new(client))
                    .with_token_url(&emulator.token_url())
                    .unwrap();
            TokenProvider::builder(exchange, emulator.credentials())
                .exchange_timeout(EXCHANGE_TIMEOUT)
                .build()
        }
    };
    let valid = provider.token().await.unwrap();
    Setup {
        emulator,
        provider,
        valid,
    }
}

/// A provider over `client` with a valid token, `fault` injected, and what
/// a forced refresh then gives, in bounded time.
async fn refresh_under(
    client: ExchangeClient,
    fault: Fault,
) -> (Setup, Result<AccessToken, TokenError>) {
    let setup = setup(client).await;
    setup.emulator.inject(fault);
    let refreshed = tokio::time::timeout(BOUND, setup.provider.refresh())
        .await
        .expect("the refresh answered in bounded time");
    (setup, refreshed)
}

/// On every client: checks that a refresh under `fault` fails as said and
/// that the valid token is still served. The errors, one per client.
async fn refresh_fails(fault: Fault, kind: TokenErrorKind, retryable: bool) -> Vec<TokenError> {
    let mut errors = Vec::new();
    for &client in CLIENTS {
        let (setup, refreshed) = refresh_under(client, fault.clone()).await;
        let err = refreshed.expect_err("the refresh failed");
        assert_eq!(err.kind(), kind, "{client:?}: {err}");
        assert_eq!(err.is_retryable(), retryable, "{client:?}: {err}");
        let served = tokio::time::timeout(BOUND, setup.provider.token())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            served, setup.valid,
            "{client:?}: the valid token is still served"
        );
        assert_eq!(setup.emulator.exchange_count(), 1);
        errors.push(err);
    }
    errors
}

/// On every client: checks that the answer under `fault` is accepted as a
/// token.
async fn refresh_accepts(fault: Fault) {
    for &client in CLIENTS {
        let (setup, refreshed) = refresh_under(client, fault.clone()).await;
        let token = refreshed.unwrap_or_else(|err| panic!("{client:?}: {err}"));
        assert_ne!(token, setup.valid);
        assert_eq!(setup.provider.token().await.unwrap(), token);
    }
}

fn token_body(fields: &str) -> Fault {
    Fault::json(200, &format!("{{{fields}}}"))
}

#[tokio::test]
async fn connection_refused() {
    for &client in CLIENTS {
        let Setup {
            emulator,
            provider,
            valid,
        } = setup(client).await;
        drop(emulator);
        let err = tokio::time::timeout(BOUND, provider.refresh())
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), TokenErrorKind::Transport, "{client:?}: {err}");
        assert!(err.is_retryable());
        assert_eq!(provider.token().await.unwrap(), valid);
    }
}

#[tokio::test]
async fn connection_reset_mid_response() {
    refresh_fails(Fault::ResetMidResponse, TokenErrorKind::Transport, true).await;
}

#[tokio::test]
async fn endpoint_hangs() {
    for err in refresh_fails(Fault::Hang, TokenErrorKind::Timeout, true).await {
        assert!(err.to_string().contains("500 ms"), "{err}");
    }
}

#[tokio::test]
async fn slower_than_the_exchange_timeout() {
    let slow = Fault::slow(EXCHANGE_TIMEOUT * 4);
    for err in refresh_fails(slow, TokenErrorKind::Timeout, true).await {
        assert!(err.to_string().contains("500 ms"), "{err}");
    }
}

#[tokio::test]
async fn status_500() {
    for err in refresh_fails(Fault::status(500), TokenErrorKind::ServerError, true).await {
        assert_eq!(err.status().map(|s| s.as_u16()), Some(500));
    }
}

#[tokio::test]
async fn status_502() {
    for err in refresh_fails(Fault::status(502), TokenErrorKind::ServerError, true).await {
        assert_eq!(err.status().map(|s| s.as_u16()), Some(502));
    }
}

#[tokio::test]
async fn status_503_with_retry_after() {
    let fault = Fault::retry_after(503, 7);
    for err in refresh_fails(fault, TokenErrorKind::ServerError, true).await {
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    }
}

#[tokio::test]
async fn status_429_with_retry_after() {
    let fault = Fault::retry_after(429, 30);
    for err in refresh_fails(fault, TokenErrorKind::RateLimited, true).await {
        assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
        assert_eq!(err.status().map(|s| s.as_u16()), Some(429));
    }
}

#[tokio::test]
async fn html_error_page() {
    for err in refresh_fails(Fault::html(503), TokenErrorKind::ServerError, true).await {
        assert!(err.to_string().contains("text/html"), "{err}");
    }
    // An HTML page with a success status is an unusable token response.
    refresh_fails(Fault::html(200), TokenErrorKind::InvalidResponse, false).await;
}

#[tokio::test]
async fn empty_body() {
    for err in refresh_fails(Fault::status(200), TokenErrorKind::InvalidResponse, false).await {
        assert!(err.to_string().contains("empty"), "{err}");
    }
    for err in refresh_fails(Fault::status(503), TokenErrorKind::ServerError, true).await {
        assert!(err.to_string().contains("empty"), "{err}");
    }
}

#[tokio::test]
async fn malformed_json() {
    let fault = Fault::json(200, r#"{"access_token":"abc","#);
    for err in refresh_fails(fault, TokenErrorKind::InvalidResponse, false).await {
        assert!(err.to_string().contains("not valid JSON"), "{err}");
    }
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
    let fault = token_body(r#""access_token":"neg","expires_in":-60,"token_type":"Bearer""#);
    for err in refresh_fails(fault, TokenErrorKind::InvalidResponse, false).await {
        assert!(err.to_string().contains("negative"), "{err}");
    }
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
        let fault = Fault::Oversized {
            len: 10 * 1024 * 1024,
            declare_length,
        };
        for err in refresh_fails(fault, TokenErrorKind::InvalidResponse, false).await {
            assert!(err.to_string().contains("larger than 65536 bytes"), "{err}");
        }
    }
}

#[tokio::test]
async fn redirects_to_another_listener_are_not_followed() {
    let elsewhere = Emulator::start().await.unwrap();
    for status in [302, 307] {
        let fault = Fault::redirect(status, &elsewhere.token_url());
        for err in refresh_fails(fault, TokenErrorKind::UnexpectedStatus, false).await {
            assert_eq!(err.status().map(|s| s.as_u16()), Some(status));
        }
    }
    assert_eq!(
        elsewhere.token_requests(),
        0,
        "the other listener received no request"
    );
}

/// The default reqwest exchange (`HttpTokenExchange::reqwest()`): a
/// redirect is an error with its own status, the endpoint is asked once and
/// the redirect target never.
#[cfg(feature = "rustls")]
#[tokio::test]
async fn the_default_reqwest_exchange_does_not_follow_redirects_either() {
    use tower::ServiceExt as _;

    let elsewhere = Emulator::start().await.unwrap();
    for status in [302, 307] {
        let endpoint = Emulator::start().await.unwrap();
        endpoint.inject(Fault::redirect(status, &elsewhere.token_url()));
        let exchange = routera_auth::HttpTokenExchange::reqwest()
            .unwrap()
            .with_token_url(&endpoint.token_url())
            .unwrap();
        let request = routera_auth::TokenRequest::new(endpoint.credentials());
        let err = tokio::time::timeout(BOUND, exchange.oneshot(request))
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(
            err.kind(),
            TokenErrorKind::UnexpectedStatus,
            "{status}: {err}"
        );
        assert_eq!(err.status().map(|s| s.as_u16()), Some(status));
        assert_eq!(endpoint.token_requests(), 1, "{status}");
    }
    assert_eq!(
        elsewhere.token_requests(),
        0,
        "the redirect target received no request"
    );
}

/// A reqwest client the user built, which follows redirects (reqwest's
/// default): the exchange refuses the answer that came from elsewhere, and
/// the credentials never reach the redirect target, in the body or in a
/// Basic header.
#[cfg(feature = "reqwest")]
#[tokio::test]
async fn a_user_built_reqwest_client_that_follows_a_redirect_gets_no_token() {
    use routera_auth::{AuthMethod, HttpTokenExchange, ReqwestService};

    const SECRET: &str = "the-secret-that-stays-home";
    for method in [AuthMethod::RequestBody, AuthMethod::BasicAuth] {
        for status in [301, 302, 303, 307, 308] {
            let endpoint = Emulator::builder()
                .client("client-id", SECRET)
                .start()
                .await
                .unwrap();
            let elsewhere = Emulator::builder()
                .client("client-id", SECRET)
                .start()
                .await
                .unwrap();
            endpoint.inject(Fault::redirect(status, &elsewhere.token_url()));
            let exchange = HttpTokenExchange::new(ReqwestService::new(reqwest::Client::new()))
                .with_token_url(&endpoint.token_url())
                .unwrap()
                .with_auth_method(method);
            let provider = TokenProvider::new(exchange, endpoint.credentials());
            let err = tokio::time::timeout(BOUND, provider.token())
                .await
                .expect("answered in bounded time")
                .expect_err("no token from a redirect");
            let case = format!("{method:?} {status}: {err}");
            assert_eq!(err.kind(), TokenErrorKind::UnexpectedStatus, "{case}");
            assert!(!err.is_retryable(), "{case}");
            if elsewhere.token_requests() > 0 {
                // reqwest followed it: the answer is refused with the fix.
                assert!(err.status().is_none(), "{case}");
                assert!(err.to_string().contains("followed the redirect"), "{case}");
                assert!(
                    err.to_string()
                        .contains(&format!("from http://{}", elsewhere.addr())),
                    "{case}"
                );
                assert!(
                    err.to_string()
                        .contains("reqwest::redirect::Policy::none()"),
                    "{case}"
                );
                let request = elsewhere.last_token_request().unwrap();
                assert_eq!(request.method, http::Method::GET, "{case}");
                assert!(
                    request.headers.get(http::header::AUTHORIZATION).is_none(),
                    "{case}: Authorization reached the redirect target"
                );
                assert!(
                    !String::from_utf8_lossy(&request.body).contains(SECRET),
                    "{case}: the secret reached the redirect target"
                );
            } else {
                // reqwest did not follow it: the redirect status itself.
                assert_eq!(err.status().map(|s| s.as_u16()), Some(status), "{case}");
            }
            assert_eq!(elsewhere.exchange_count(), 0, "{case}");
            let expected_followed = matches!(status, 301..=303);
            assert_eq!(
                elsewhere.token_requests() > 0,
                expected_followed,
                "{case}: reqwest follows 301-303 (as a GET without the body) and \
                 not 307/308 with a body it cannot replay"
            );
        }
    }
}

/// Only the exchange's own requests are held to the token URL: the same
/// `ReqwestService` follows redirects for any other request, as its client
/// is configured to.
#[cfg(feature = "reqwest")]
#[tokio::test]
async fn a_reqwest_service_follows_redirects_for_requests_that_are_not_token_requests() {
    use http_body_util::Empty;
    use routera_auth::ReqwestService;
    use tower::ServiceExt as _;

    let endpoint = Emulator::start().await.unwrap();
    let elsewhere = Emulator::start().await.unwrap();
    endpoint.inject(Fault::redirect(302, &elsewhere.token_url()));
    let request = http::Request::get(endpoint.token_url())
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = tokio::time::timeout(
        BOUND,
        ReqwestService::new(reqwest::Client::new()).oneshot(request),
    )
    .await
    .unwrap()
    .unwrap();
    assert_ne!(response.status(), http::StatusCode::FOUND);
    assert_eq!(elsewhere.token_requests(), 1);
}
