use std::time::Duration;

use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use routera_auth::{RetryOnUnauthorized, RouteraAuthLayer};
use routera_auth_test::MockExchange;
use tower::{ServiceBuilder, ServiceExt};
use tower_test::mock;

#[tokio::test(start_paused = true)]
async fn a_rejected_token_is_replaced_and_the_request_sent_again() {
    // No sockets: a scripted token exchange, and a mock in place of the API.
    let exchange = MockExchange::new(Duration::from_secs(3600));
    let (api_mock, mut api) = mock::pair::<Request<String>, Response<String>>();
    let client = ServiceBuilder::new()
        .retry(RetryOnUnauthorized::new())
        .layer(RouteraAuthLayer::new(exchange.provider()))
        .service(api_mock);
    let call = tokio::spawn(client.oneshot(Request::new(String::new())));

    let (request, respond) = api.next_request().await.unwrap();
    assert_eq!(request.headers()[AUTHORIZATION], "Bearer token-1");
    let unauthorized = Response::builder().status(StatusCode::UNAUTHORIZED);
    respond.send_response(unauthorized.body(String::new()).unwrap());

    let (request, respond) = api.next_request().await.unwrap();
    assert_eq!(request.headers()[AUTHORIZATION], "Bearer token-2");
    respond.send_response(Response::new(String::new()));

    assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(exchange.calls(), 2);
}
