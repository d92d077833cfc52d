use std::time::Duration;

use http::header::AUTHORIZATION;
use http::{Request, Response};
use routera_auth::{RetryOnUnauthorized, RouteraAuthLayer};
use routera_auth_test::MockExchange;
use tower::{ServiceBuilder, ServiceExt};

#[tokio::test(start_paused = true)]
async fn a_rejected_token_is_replaced_and_the_request_sent_again() {
    let exchange = MockExchange::new(Duration::from_secs(3600));
    let (api_mock, mut api) = tower_test::mock::pair::<Request<String>, Response<String>>();
    let client = ServiceBuilder::new()
        .retry(RetryOnUnauthorized::new())
        .layer(RouteraAuthLayer::new(exchange.provider()))
        .service(api_mock);
    let call = tokio::spawn(client.oneshot(Request::new(String::new())));
    for (token, status) in [("Bearer token-1", 401_u16), ("Bearer token-2", 200)] {
        let (request, respond) = api.next_request().await.unwrap();
        assert_eq!(request.headers()[AUTHORIZATION], token);
        respond.send_response(Response::builder().status(status).body("".into()).unwrap());
    }
    assert_eq!(call.await.unwrap().unwrap().status(), 200);
    assert_eq!(exchange.calls(), 2);
}
