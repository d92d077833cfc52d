//! Test doubles shared by the integration tests.
#![allow(dead_code)]

use routera_auth::test_util::MockExchange;
use routera_auth::{ClientCredentials, TokenError, TokenRequest};

/// The credentials of `MockExchange::provider`.
pub fn credentials() -> ClientCredentials {
    MockExchange::credentials()
}

/// The error a real `HttpTokenExchange` makes of one canned HTTP answer
/// (a response, or a transport error).
pub async fn exchange_error(
    answer: Result<http::Response<bytes::Bytes>, std::io::Error>,
) -> TokenError {
    use http_body_util::Full;
    use tower::ServiceExt;

    let answer = std::sync::Arc::new(std::sync::Mutex::new(Some(answer)));
    let http = tower::service_fn(move |_: http::Request<Full<bytes::Bytes>>| {
        let answer = answer.lock().unwrap().take().expect("one request");
        std::future::ready(answer.map(|response| response.map(Full::new)))
    });
    routera_auth::HttpTokenExchange::new(http)
        .oneshot(TokenRequest::new(credentials()))
        .await
        .unwrap_err()
}

/// A `TokenError` of the given status, as the HTTP exchange makes it.
pub async fn status_error(status: u16, body: &str) -> TokenError {
    let response = http::Response::builder()
        .status(status)
        .body(bytes::Bytes::from(body.to_owned()))
        .unwrap();
    exchange_error(Ok(response)).await
}

/// A transport `TokenError`, as the HTTP exchange makes it when the
/// connection fails.
pub async fn transport_error() -> TokenError {
    let reset = std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset by peer",
    );
    exchange_error(Err(reset)).await
}
