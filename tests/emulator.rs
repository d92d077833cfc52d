//! The emulator's run-time controls seen through a real provider: secret
//! rotation with `Emulator::set_client`, and slow answers with
//! `Fault::slow` on paused time, against the provider's exchange timeout.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use routera_auth::defaults;
use routera_auth::{ClientCredentials, RouteraAuthLayer, TokenErrorKind, TokenProvider};
use routera_auth_test::{Emulator, Fault};
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};

/// `GET` the emulator's protected resource through the auth layer.
async fn ping(emulator: &Emulator, provider: &TokenProvider) -> StatusCode {
    let api = ServiceBuilder::new()
        .layer(RouteraAuthLayer::new(provider.clone()))
        .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
    let request = Request::get(emulator.resource_url())
        .body(Empty::new())
        .unwrap();
    api.oneshot(request).await.unwrap().status()
}

#[tokio::test]
async fn a_rotated_secret_is_picked_up_with_set_credentials() {
    let emulator = Emulator::start().await.unwrap();
    let provider = emulator.provider();
    assert_eq!(ping(&emulator, &provider).await, StatusCode::OK);
    let before = provider.token().await.unwrap();
    let id = emulator.credentials().client_id().to_owned();

    // The server rotates the secret: the provider's next exchange is refused,
    // but the token it holds is still valid and still served.
    emulator.set_client(id.as_str(), "second-secret");
    let err = provider.refresh().await.unwrap_err();
    assert_eq!(err.kind(), TokenErrorKind::InvalidClient, "{err}");
    assert_eq!(provider.token().await.unwrap(), before);
    assert_eq!(ping(&emulator, &provider).await, StatusCode::OK);

    // The client gets the new secret: the next exchange succeeds.
    let rotated = emulator.credentials();
    assert_eq!(rotated.client_secret(), "second-secret");
    provider.set_credentials(rotated);
    let after = provider.refresh().await.unwrap();
    assert_ne!(after, before);
    assert_eq!(ping(&emulator, &provider).await, StatusCode::OK);
    assert!(emulator.token_validator().is_valid(before.secret()));
    assert_eq!(emulator.exchange_count(), 2);
    assert_eq!(emulator.token_requests(), 3);
}

#[tokio::test]
async fn a_client_added_at_run_time_gets_tokens_and_a_switch_drops_the_old_one() {
    let emulator = Emulator::start().await.unwrap();
    let provider = emulator.provider();
    let first = provider.token().await.unwrap();

    let next = ClientCredentials::new("next-client", "next-secret");
    let err = emulator
        .exchange()
        .oneshot(routera_auth::TokenRequest::new(next.clone()))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), TokenErrorKind::InvalidClient, "not yet known");

    emulator.set_client("next-client", "next-secret");
    // Another client id: the provider drops the first client's token.
    provider.set_credentials(next);
    assert_eq!(provider.client_id(), "next-client");
    let second = provider.token().await.unwrap();
    assert_ne!(second, first);
    assert_eq!(ping(&emulator, &provider).await, StatusCode::OK);
    assert_eq!(emulator.exchange_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_slow_answer_arrives_after_its_delay_within_the_exchange_timeout() {
    let emulator = Emulator::start().await.unwrap();
    let provider = emulator.provider();
    let delay = defaults::EXCHANGE_TIMEOUT / 2;
    emulator.inject_times(Fault::slow(delay), 1);

    let start = Instant::now();
    let token = provider.token().await.unwrap();
    let waited = start.elapsed();
    assert!(
        delay <= waited && waited < defaults::EXCHANGE_TIMEOUT,
        "{waited:?}"
    );
    assert!(emulator.token_validator().is_valid(token.secret()));
    assert_eq!(emulator.exchange_count(), 1);

    // The fault was for one request: the next exchange answers at once.
    let start = Instant::now();
    assert_ne!(provider.refresh().await.unwrap(), token);
    assert!(start.elapsed() < delay, "{:?}", start.elapsed());
}

#[tokio::test(start_paused = true)]
async fn a_slower_answer_than_the_exchange_timeout_is_a_timeout() {
    let emulator = Emulator::start().await.unwrap();
    let timeout = Duration::from_secs(2);
    let provider = TokenProvider::builder(emulator.exchange(), emulator.credentials())
        .exchange_timeout(timeout)
        .build();
    let valid = provider.token().await.unwrap();

    // Every answer takes a minute from now on.
    emulator.inject(Fault::slow(Duration::from_secs(60)));
    let start = Instant::now();
    let err = provider.refresh().await.unwrap_err();
    assert_eq!(err.kind(), TokenErrorKind::Timeout, "{err}");
    assert!(err.is_retryable());
    let waited = start.elapsed();
    assert!(
        timeout <= waited && waited < Duration::from_secs(60),
        "{waited:?}"
    );
    assert_eq!(provider.token().await.unwrap(), valid, "still served");

    // Cleared: later requests are answered at once again.
    emulator.clear_fault();
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_ne!(provider.refresh().await.unwrap(), valid);
}
