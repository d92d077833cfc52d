//! `RouteraAuth` over `tower_test::mock` inner services.

mod common;

use std::time::Duration;

use common::status_error;
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use routera_auth::{RouteraAuth, RouteraAuthLayer, TokenError, TokenErrorKind};
use routera_auth_test::MockExchange;
use tokio_test::{assert_pending, assert_ready, assert_ready_ok};
use tower::{Layer, ServiceExt};
use tower_test::mock;

const HOUR: Duration = Duration::from_secs(3600);

type Inner = mock::Mock<Request<String>, Response<String>>;
type Handle = mock::Handle<Request<String>, Response<String>>;

fn stack(exchange: &MockExchange) -> (RouteraAuth<Inner>, Handle) {
    let (inner, handle) = mock::pair();
    let service = RouteraAuthLayer::new(exchange.provider()).layer(inner);
    (service, handle)
}

#[tokio::test(start_paused = true)]
async fn attaches_a_sensitive_bearer_header() {
    let exchange = MockExchange::new(HOUR);
    let (service, mut handle) = stack(&exchange);
    handle.allow(1);

    let response = tokio::spawn(service.oneshot(Request::new("hello".to_owned())));
    let (request, send) = handle.next_request().await.unwrap();
    let authorization = &request.headers()[AUTHORIZATION];
    assert_eq!(authorization, "Bearer token-1");
    assert!(authorization.is_sensitive());
    assert_eq!(request.body(), "hello");

    send.send_response(Response::new("world".to_owned()));
    let response = response.await.unwrap().unwrap();
    assert_eq!(
        response.body(),
        "world",
        "the response is passed through untouched"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fresh_token_goes_straight_to_the_inner_service() {
    let exchange = MockExchange::new(HOUR);
    let provider = exchange.provider();
    provider.token().await.unwrap();
    let (inner, mut handle) = mock::pair::<Request<String>, Response<String>>();
    let service = RouteraAuth::new(inner, provider);
    handle.allow(1);

    let mut service = mock::Spawn::new(service);
    assert_ready_ok!(service.poll_ready());
    let _response = service.call(Request::new("x".to_owned()));
    // Called synchronously inside `call`: the request is already with the inner service.
    let (request, _send) =
        assert_ready!(handle.poll_request()).expect("the inner service was called");
    assert_eq!(request.headers()[AUTHORIZATION], "Bearer token-1");
    assert_eq!(exchange.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn poll_ready_is_the_inner_services() {
    let exchange = MockExchange::new(HOUR);
    let (service, mut handle) = stack(&exchange);
    let mut service = mock::Spawn::new(service);

    handle.allow(0);
    assert_pending!(service.poll_ready());
    handle.allow(1);
    assert_ready_ok!(service.poll_ready());
    assert_eq!(exchange.calls(), 0, "readiness does not fetch a token");
}

#[tokio::test(start_paused = true)]
async fn inner_errors_from_poll_ready_are_passed_on() {
    let exchange = MockExchange::new(HOUR);
    let (service, mut handle) = stack(&exchange);
    let mut service = mock::Spawn::new(service);
    handle.send_error("inner broke");
    let err = assert_ready!(service.poll_ready()).unwrap_err();
    assert_eq!(err.to_string(), "inner broke");
}

#[tokio::test(start_paused = true)]
async fn fails_closed_when_no_token_can_be_had() {
    let exchange = MockExchange::new(HOUR);
    exchange.fail_next(status_error(401, r#"{"error":"invalid_client"}"#).await);
    let (service, mut handle) = stack(&exchange);
    handle.allow(10);

    let err = service
        .clone()
        .oneshot(Request::new("x".to_owned()))
        .await
        .unwrap_err();
    let err = err
        .downcast::<TokenError>()
        .expect("a TokenError inside the BoxError");
    assert_eq!(err.kind(), TokenErrorKind::InvalidClient);

    // The inner service never saw a request.
    assert_pending!(handle.poll_request());
}

#[tokio::test(start_paused = true)]
async fn an_existing_authorization_header_is_replaced() {
    let exchange = MockExchange::new(HOUR);
    let (service, mut handle) = stack(&exchange);
    handle.allow(1);

    let mut request = Request::new("x".to_owned());
    request
        .headers_mut()
        .insert(AUTHORIZATION, HeaderValue::from_static("Basic c3RhbGU="));
    request
        .headers_mut()
        .append(AUTHORIZATION, HeaderValue::from_static("Bearer other"));
    let response = tokio::spawn(service.oneshot(request));
    let (request, send) = handle.next_request().await.unwrap();
    let values: Vec<_> = request.headers().get_all(AUTHORIZATION).iter().collect();
    assert_eq!(values, ["Bearer token-1"]);
    send.send_response(Response::new("ok".to_owned()));
    response.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn many_requests_on_a_cold_cache_share_one_exchange() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::from_millis(50));
    let (service, mut handle) = stack(&exchange);
    handle.allow(100);

    let responses: Vec<_> = (0..100)
        .map(|i| {
            let service = service.clone();
            tokio::spawn(async move {
                let request = Request::new(format!("request {i}"));
                service.oneshot(request).await
            })
        })
        .collect();
    for _ in 0..100 {
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!(request.headers()[AUTHORIZATION], "Bearer token-1");
        send.send_response(Response::new("ok".to_owned()));
    }
    for response in responses {
        assert_eq!(response.await.unwrap().unwrap().body(), "ok");
    }
    assert_eq!(exchange.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn inner_errors_are_boxed_unchanged() {
    let exchange = MockExchange::new(HOUR);
    let (service, mut handle) = stack(&exchange);
    handle.allow(1);
    let response = tokio::spawn(service.oneshot(Request::new("x".to_owned())));
    let (_request, send) = handle.next_request().await.unwrap();
    send.send_error(std::io::Error::other("upstream reset"));
    let err = response.await.unwrap().unwrap_err();
    assert!(err.downcast_ref::<TokenError>().is_none());
    assert_eq!(err.to_string(), "upstream reset");
}

#[tokio::test(start_paused = true)]
async fn the_layer_and_service_are_clone_and_debug_without_secrets() {
    let exchange = MockExchange::new(HOUR);
    let (service, _handle) = stack(&exchange);
    service.provider().token().await.unwrap();
    let layer = RouteraAuthLayer::new(service.provider().clone());
    let text = format!("{:?} {:?}", layer.clone(), service.clone());
    assert!(!text.contains("token-1"), "{text}");
    assert!(!text.contains("mock-secret"), "{text}");
}
