//! The in-process emulator as the README's "Testing your code" describes
//! it: one exchange for many calls, and a revoked token replaced on the
//! retry of the request it failed.

use routera_auth::{ReqwestService, RetryOnUnauthorized, RouteraAuthLayer};
use routera_auth_test::Emulator;
use tower::{ServiceBuilder, ServiceExt};

#[tokio::test]
async fn one_exchange_for_many_calls_and_a_401_retried_with_a_new_token() {
    // A local Routera: a token endpoint and a protected route.
    let emulator = Emulator::builder().start().await.unwrap();
    let api = ServiceBuilder::new()
        .retry(RetryOnUnauthorized::new())
        .layer(RouteraAuthLayer::new(emulator.provider()))
        .service(ReqwestService::new(reqwest::Client::new()));
    let call = || {
        let request = http::Request::get(emulator.resource_url()).body(String::new());
        api.clone().oneshot(request.unwrap())
    };

    for _ in 0..10 {
        assert_eq!(call().await.unwrap().status(), 200);
    }
    assert_eq!(emulator.exchange_count(), 1);

    // Routera revokes every token: the next call gets a 401, the layer
    // drops that token, and the retry goes out with a new one.
    emulator.revoke_all();
    assert_eq!(call().await.unwrap().status(), 200);
    assert_eq!(emulator.exchange_count(), 2);
}
