//! The whole flow against the in-process emulator on 127.0.0.1: real HTTP,
//! real clients.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use routera_auth::{
    AuthMethod, ClientCredentials, HttpTokenExchange, RouteraAuthLayer, TokenError, TokenErrorKind,
    TokenProvider, TokenRequest,
};
use routera_auth_test::Emulator;
use tower::{ServiceBuilder, ServiceExt};

const WEIRD_SECRET: &str = "p: a+b/c&d%e=f g é";

fn hyper_client<B>() -> Client<HttpConnector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new()).build_http()
}

#[tokio::test]
async fn both_auth_methods_work_with_a_secret_full_of_special_characters() {
    let emulator = Emulator::builder()
        .client("svc id:1", WEIRD_SECRET)
        .start()
        .await
        .unwrap();
    for method in [AuthMethod::RequestBody, AuthMethod::BasicAuth] {
        let token = emulator
            .exchange()
            .with_auth_method(method)
            .oneshot(TokenRequest::new(emulator.credentials()))
            .await
            .unwrap_or_else(|err| panic!("{method:?}: {err}"));
        assert!(token.access_token().secret().starts_with("rt_"));
        assert_eq!(token.expires_in(), Some(Duration::from_secs(3600)));

        let sent = emulator.last_token_request().unwrap();
        assert_eq!(
            sent.headers["content-type"],
            "application/x-www-form-urlencoded"
        );
        assert_eq!(sent.headers["accept"], "application/json");
        match method {
            AuthMethod::RequestBody => {
                assert!(
                    sent.form()
                        .contains(&("client_secret".to_owned(), WEIRD_SECRET.to_owned()))
                );
                assert!(sent.headers.get("authorization").is_none());
            }
            AuthMethod::BasicAuth => {
                assert_eq!(
                    sent.form(),
                    [("grant_type".to_owned(), "client_credentials".to_owned())]
                );
                assert!(
                    sent.headers["authorization"]
                        .to_str()
                        .unwrap()
                        .starts_with("Basic ")
                );
            }
        }
    }
    assert_eq!(emulator.exchange_count(), 2);
}

#[tokio::test]
async fn wrong_credentials_are_an_invalid_client_error_without_the_secret() {
    let emulator = Emulator::start().await.unwrap();
    for method in [AuthMethod::RequestBody, AuthMethod::BasicAuth] {
        let credentials =
            ClientCredentials::new(emulator.credentials().client_id(), "wrong-secret-123");
        let err = emulator
            .exchange()
            .with_auth_method(method)
            .oneshot(TokenRequest::new(credentials))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), TokenErrorKind::InvalidClient, "{method:?}");
        assert_eq!(err.status(), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(err.error_code(), Some("invalid_client"));
        assert!(!err.is_retryable());
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains("wrong-secret-123"), "{text}");
        }
    }
    assert_eq!(emulator.exchange_count(), 0);
    assert_eq!(emulator.token_requests(), 2);
}

#[tokio::test]
async fn a_refused_connection_is_a_retryable_transport_error() {
    // Bind and release a port so that nothing listens on it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}/oauth2/token", listener.local_addr().unwrap());
    drop(listener);
    let err = HttpTokenExchange::new(hyper_client::<Full<Bytes>>())
        .with_token_url(&closed)
        .unwrap()
        .oneshot(TokenRequest::new(ClientCredentials::new("a", "b")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), TokenErrorKind::Transport, "{err}");
    assert!(err.is_retryable());
}

#[tokio::test]
async fn a_hyper_client_behind_the_layer_calls_the_protected_api_with_one_exchange() {
    let emulator = Emulator::start().await.unwrap();
    let provider = emulator.provider();
    let api = ServiceBuilder::new()
        .layer(RouteraAuthLayer::new(provider))
        .service(hyper_client::<Empty<Bytes>>());

    let calls: Vec<_> = (0..64)
        .map(|_| {
            let api = api.clone();
            let uri = emulator.resource_url();
            tokio::spawn(async move {
                let request = Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
                let response = api.oneshot(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                Ok::<_, routera_auth::BoxError>((status, body))
            })
        })
        .collect();
    for call in calls {
        let (status, body) = call.await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], br#"{"ok":true}"#);
    }
    assert_eq!(emulator.exchange_count(), 1);
    assert_eq!(emulator.resource_requests(), 64);
}

#[tokio::test]
async fn the_emulator_rejects_requests_without_a_valid_token() {
    // The check the end-to-end test relies on: the protected route really
    // rejects what the layer did not authorize.
    let emulator = Emulator::start().await.unwrap();
    let request = Request::get(emulator.resource_url())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = hyper_client().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_layer_fails_closed_against_a_real_server() {
    let emulator = Emulator::start().await.unwrap();
    let provider = TokenProvider::new(
        emulator.exchange(),
        ClientCredentials::new("unknown-client", "nope"),
    );
    let api = ServiceBuilder::new()
        .layer(RouteraAuthLayer::new(provider))
        .service(hyper_client::<Empty<Bytes>>());
    let request = Request::get(emulator.resource_url())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let err = api.oneshot(request).await.unwrap_err();
    let err = err.downcast::<TokenError>().unwrap();
    assert_eq!(err.kind(), TokenErrorKind::InvalidClient);
    assert_eq!(
        emulator.resource_requests(),
        0,
        "no request reached the API"
    );
}

#[tokio::test]
async fn a_renewed_token_is_accepted_after_the_first_expires() {
    let emulator = Emulator::builder()
        .expires_in(Duration::from_secs(2))
        .start()
        .await
        .unwrap();
    let provider = TokenProvider::new(
        emulator.exchange().with_auth_method(AuthMethod::BasicAuth),
        emulator.credentials(),
    );
    let first = provider.token().await.unwrap();
    assert_eq!(provider.token().await.unwrap(), first);
    // Paused time drives both the provider's clock and the emulator's.
    // A 2 s token is served for 1 s (a second of skew, as half of its
    // lifetime allows).
    let timing = provider.timing().unwrap();
    assert_eq!(
        timing.served_until - timing.fetched_at,
        Duration::from_millis(1000)
    );
    tokio::time::pause();
    tokio::time::advance(timing.served_until - tokio::time::Instant::now()).await;
    tokio::time::resume();
    let second = provider.token().await.unwrap();
    assert_ne!(second, first);
    assert_eq!(emulator.exchange_count(), 2);
}

#[cfg(feature = "rustls")]
mod reqwest_backend {
    use super::*;
    use routera_auth::ReqwestService;

    #[tokio::test]
    async fn the_reqwest_exchange_and_adapter_work_against_the_emulator() {
        let emulator = Emulator::builder()
            .client("rq", WEIRD_SECRET)
            .start()
            .await
            .unwrap();
        let exchange = HttpTokenExchange::reqwest()
            .unwrap()
            .with_token_url(&emulator.token_url())
            .unwrap()
            .with_auth_method(AuthMethod::BasicAuth);
        let provider = TokenProvider::new(exchange, emulator.credentials());
        let api = ServiceBuilder::new()
            .layer(RouteraAuthLayer::new(provider))
            // The re-exported reqwest: the version the public API takes.
            .service(ReqwestService::new(routera_auth::reqwest::Client::new()));
        for _ in 0..3 {
            let request = Request::get(emulator.resource_url())
                .body(String::new())
                .unwrap();
            let response = api.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
        assert_eq!(emulator.exchange_count(), 1);
    }
}
