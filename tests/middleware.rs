//! `RouteraAuthMiddleware` in a reqwest-middleware client, against the
//! emulator: the token on every request, fail closed, 401 recovery.

use reqwest::StatusCode;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use routera_auth::{ClientCredentials, RouteraAuthMiddleware, TokenError, TokenErrorKind};
use routera_auth_test::Emulator;

fn client(provider: routera_auth::TokenProvider) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(RouteraAuthMiddleware::new(provider))
        .build()
}

#[tokio::test]
async fn every_request_carries_the_token_and_a_revoked_one_recovers_once() {
    let emulator = Emulator::start().await.unwrap();
    let client = client(emulator.provider());
    for _ in 0..3 {
        let response = client.get(emulator.resource_url()).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(emulator.exchange_count(), 1, "one token for every request");

    emulator.revoke_all();
    let response = client
        .post(emulator.resource_url())
        .body("a body that can be cloned")
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "retried with a fresh token"
    );
    assert_eq!(emulator.exchange_count(), 2);
    assert_eq!(
        emulator.resource_requests(),
        5,
        "3, then the 401 and its retry"
    );
}

#[tokio::test]
async fn no_request_is_sent_without_a_token() {
    let emulator = Emulator::start().await.unwrap();
    let wrong = ClientCredentials::new(emulator.credentials().client_id(), "wrong-secret");
    let provider = routera_auth::TokenProvider::new(emulator.exchange(), wrong);
    let err = client(provider)
        .get(emulator.resource_url())
        .send()
        .await
        .unwrap_err();
    let reqwest_middleware::Error::Middleware(err) = err else {
        panic!("expected the middleware's error, got {err:?}");
    };
    let err = err.downcast_ref::<TokenError>().expect("a TokenError");
    assert_eq!(err.kind(), TokenErrorKind::InvalidClient);
    assert!(!err.to_string().contains("wrong-secret"));
    assert_eq!(emulator.resource_requests(), 0, "fail closed");
}
