//! 401 recovery: the layer invalidates the token a rejected request carried,
//! `RetryOnUnauthorized` resends the request once with a fresh token. Plus
//! several credentials in one process, and tower layers around the exchange.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use routera_auth::{
    RetryOnUnauthorized, RouteraAuthLayer, Token, TokenError, TokenProvider, TokenRequest,
};
use routera_auth_test::MockExchange;
use routera_auth_test::{Emulator, Fault};
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_test::mock;

fn client<B>() -> Client<HttpConnector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new()).build_http()
}

#[tokio::test]
async fn revoked_tokens_recover_with_one_exchange_for_500_concurrent_requests() {
    let emulator = Emulator::start().await.unwrap();
    let provider = emulator.provider();
    let api = ServiceBuilder::new()
        .retry(RetryOnUnauthorized::new())
        .layer(RouteraAuthLayer::new(provider.clone()))
        .service(client::<Empty<Bytes>>());

    let warm_up = Request::get(emulator.resource_url())
        .body(Empty::new())
        .unwrap();
    assert_eq!(
        api.clone().oneshot(warm_up).await.unwrap().status(),
        StatusCode::OK
    );
    let first = provider.token().await.unwrap();
    assert_eq!(emulator.exchange_count(), 1);

    emulator.revoke_all();
    let calls: Vec<_> = (0..500)
        .map(|_| {
            let api = api.clone();
            let uri = emulator.resource_url();
            tokio::spawn(async move {
                let request = Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
                api.oneshot(request).await
            })
        })
        .collect();
    for call in calls {
        let response = call.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::OK, "every request recovered");
    }
    assert_eq!(emulator.exchange_count(), 2, "exactly one new exchange");
    let second = provider.token().await.unwrap();
    assert_ne!(second, first);
    // 1 warm-up + 500 rejected + 500 retried at most; none sent twice more.
    let requests = emulator.resource_requests();
    assert!(requests <= 1 + 500 + 500, "{requests}");
    assert_eq!(
        provider.stats().invalidations,
        1,
        "one invalidation for the burst"
    );
}

#[tokio::test]
async fn a_request_whose_body_cannot_be_cloned_gets_the_401_unchanged() {
    let emulator = Emulator::start().await.unwrap();
    let provider = emulator.provider();
    let api = ServiceBuilder::new()
        .retry(RetryOnUnauthorized::new())
        .layer(RouteraAuthLayer::new(provider.clone()))
        .service(client::<BoxBody<Bytes, Infallible>>());
    provider.token().await.unwrap();
    emulator.revoke_all();

    let body = Full::new(Bytes::from_static(b"streamed")).boxed();
    let request = Request::post(emulator.resource_url()).body(body).unwrap();
    let response = api.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let challenge = response.headers()[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap();
    assert!(challenge.contains("invalid_token"), "{challenge}");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(
        std::str::from_utf8(&body)
            .unwrap()
            .contains("token revoked")
    );
    assert_eq!(emulator.resource_requests(), 1, "not retried");
    // The rejected token was still invalidated: the next request gets a new one.
    assert_eq!(emulator.exchange_count(), 1);
    assert!(provider.token().await.is_ok());
    assert_eq!(emulator.exchange_count(), 2);
}

#[tokio::test(start_paused = true)]
async fn no_request_is_retried_more_than_once() {
    let exchange = MockExchange::new(Duration::from_secs(3600));
    let (always_401, calls) = common::answering(|request: Request<String>| {
        assert!(request.headers().contains_key(header::AUTHORIZATION));
        reply(StatusCode::UNAUTHORIZED, "go away")
    });
    let api = ServiceBuilder::new()
        .retry(RetryOnUnauthorized::new())
        .layer(RouteraAuthLayer::new(exchange.provider()))
        .service(always_401);
    for round in 1..=3 {
        let response = api
            .clone()
            .oneshot(Request::new(String::from("body")))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.into_body(), "go away");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2 * round,
            "sent twice, never more"
        );
    }
    // The first 401 invalidated the token; the ones right after it, for the
    // new token, are paced (see the next test), so no exchange per request.
    assert_eq!(exchange.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn other_statuses_are_not_retried_and_keep_the_token() {
    let exchange = MockExchange::new(Duration::from_secs(3600));
    let (forbidden, calls) =
        common::answering(|_: Request<String>| reply(StatusCode::FORBIDDEN, ""));
    let api = ServiceBuilder::new()
        .retry(RetryOnUnauthorized::new())
        .layer(RouteraAuthLayer::new(exchange.provider()))
        .service(forbidden);
    for _ in 0..3 {
        let response = api
            .clone()
            .oneshot(Request::new(String::new()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(exchange.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_401_for_a_stale_token_keeps_the_newer_token() {
    let exchange = MockExchange::new(Duration::from_secs(3600));
    let provider = exchange.provider();
    let first = provider.token().await.unwrap();

    let (inner, mut handle) = mock::pair::<Request<String>, Response<String>>();
    let service = RouteraAuthLayer::new(provider.clone()).layer(inner);
    handle.allow(1);
    let in_flight = tokio::spawn(service.oneshot(Request::new(String::new())));
    let (request, respond) = handle.next_request().await.unwrap();
    assert_eq!(request.headers()[header::AUTHORIZATION], "Bearer token-1");

    // Meanwhile the token was replaced by a newer one.
    assert!(provider.invalidate(&first));
    let second = provider.token().await.unwrap();
    assert_eq!(second.secret(), "token-2");

    // The 401 for the old token arrives late.
    respond.send_response(reply(StatusCode::UNAUTHORIZED, ""));
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(
        response.status(),
        StatusCode::UNAUTHORIZED,
        "passed through untouched"
    );
    assert_eq!(
        provider.token().await.unwrap(),
        second,
        "the newer token is kept"
    );
    assert_eq!(exchange.calls(), 2);
    assert_eq!(provider.stats().invalidations, 1);
}

#[tokio::test(start_paused = true)]
async fn a_401_without_the_retry_policy_invalidates_the_token_for_the_next_request() {
    let exchange = MockExchange::new(Duration::from_secs(3600));
    let provider = exchange.provider();
    let (inner, mut handle) = mock::pair::<Request<String>, Response<String>>();
    let service = RouteraAuthLayer::new(provider.clone()).layer(inner);
    handle.allow(2);

    let first = tokio::spawn(service.clone().oneshot(Request::new(String::new())));
    let (request, respond) = handle.next_request().await.unwrap();
    assert_eq!(request.headers()[header::AUTHORIZATION], "Bearer token-1");
    respond.send_response(reply(StatusCode::UNAUTHORIZED, ""));
    assert_eq!(
        first.await.unwrap().unwrap().status(),
        StatusCode::UNAUTHORIZED
    );

    let second = tokio::spawn(service.oneshot(Request::new(String::new())));
    let (request, respond) = handle.next_request().await.unwrap();
    assert_eq!(request.headers()[header::AUTHORIZATION], "Bearer token-2");
    respond.send_response(Response::new(String::new()));
    assert_eq!(second.await.unwrap().unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn two_providers_never_see_each_others_tokens() {
    let alpha = Emulator::builder()
        .client("alpha", "alpha-secret")
        .start()
        .await
        .unwrap();
    let beta = Emulator::builder()
        .client("beta", "beta-secret")
        .start()
        .await
        .unwrap();
    let alpha_provider = alpha.provider();
    let beta_provider = beta.provider();

    for (emulator, provider) in [(&alpha, &alpha_provider), (&beta, &beta_provider)] {
        let api = ServiceBuilder::new()
            .layer(RouteraAuthLayer::new(provider.clone()))
            .service(client::<Empty<Bytes>>());
        for _ in 0..5 {
            let request = Request::get(emulator.resource_url())
                .body(Empty::new())
                .unwrap();
            assert_eq!(
                api.clone().oneshot(request).await.unwrap().status(),
                StatusCode::OK
            );
        }
    }
    let alpha_token = alpha_provider.token().await.unwrap();
    let beta_token = beta_provider.token().await.unwrap();
    assert_ne!(alpha_token, beta_token);
    assert_eq!(alpha.issued_tokens(), [alpha_token.secret().to_owned()]);
    assert_eq!(beta.issued_tokens(), [beta_token.secret().to_owned()]);
    assert!(beta.token_validator().is_valid(beta_token.secret()));
    assert!(!beta.token_validator().is_valid(alpha_token.secret()));
    assert!(!alpha.token_validator().is_valid(beta_token.secret()));

    // A 401 seen by one provider's stack never touches the other's cache.
    let alpha_stack = RouteraAuthLayer::new(alpha_provider.clone()).layer(client::<Empty<Bytes>>());
    let cross = Request::get(beta.resource_url())
        .body(Empty::new())
        .unwrap();
    assert_eq!(
        alpha_stack.oneshot(cross).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(beta_provider.token().await.unwrap(), beta_token);
    assert_eq!(beta.exchange_count(), 1);
}

/// A retry policy for the token exchange: retries retryable errors twice.
#[derive(Clone)]
struct RetryTransient(usize);

impl tower::retry::Policy<TokenRequest, Token, TokenError> for RetryTransient {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _request: &mut TokenRequest,
        result: &mut Result<Token, TokenError>,
    ) -> Option<Self::Future> {
        match result {
            Err(error) if error.is_retryable() && self.0 > 0 => {
                self.0 -= 1;
                Some(std::future::ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, request: &TokenRequest) -> Option<TokenRequest> {
        Some(request.clone())
    }
}

#[tokio::test]
async fn the_exchange_composes_with_timeout_concurrency_limit_and_retry_layers() {
    let emulator = Emulator::start().await.unwrap();
    let exchange = ServiceBuilder::new()
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(5)))
        .layer(tower::limit::ConcurrencyLimitLayer::new(1))
        .layer(tower::retry::RetryLayer::new(RetryTransient(2)))
        .service(emulator.exchange());
    let provider = TokenProvider::new(exchange, emulator.credentials());

    // Two 503s in a row are absorbed by the retry layer inside one exchange.
    emulator.inject_times(Fault::status(503), 2);
    let token = provider.token().await.unwrap();
    assert_eq!(emulator.token_requests(), 3);
    assert_eq!(emulator.exchange_count(), 1);
    assert_eq!(provider.stats().failures, 0);

    // A 401 is not retried by it and reaches the caller typed.
    let stranger = TokenProvider::new(
        ServiceBuilder::new()
            .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(5)))
            .layer(tower::retry::RetryLayer::new(RetryTransient(2)))
            .service(emulator.exchange()),
        routera_auth::ClientCredentials::new("stranger", "nope"),
    );
    let err = stranger.token().await.unwrap_err();
    assert_eq!(err.kind(), routera_auth::TokenErrorKind::InvalidClient);
    assert_eq!(emulator.token_requests(), 4);
    assert!(!token.secret().is_empty());
}

#[tokio::test]
async fn a_tower_timeout_around_the_exchange_is_a_timeout_error() {
    let emulator = Emulator::start().await.unwrap();
    emulator.inject(Fault::Hang);
    let exchange = ServiceBuilder::new()
        .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(
            200,
        )))
        .service(emulator.exchange());
    let provider = TokenProvider::new(exchange, emulator.credentials());
    let err = provider.token().await.unwrap_err();
    assert_eq!(err.kind(), routera_auth::TokenErrorKind::Timeout);
    assert!(err.is_retryable());
}

#[tokio::test(start_paused = true)]
async fn a_grpc_unauthenticated_invalidates_the_token_and_other_grpc_statuses_do_not() {
    let exchange = MockExchange::new(Duration::from_secs(3600));
    let provider = exchange.provider();
    let (inner, mut handle) = mock::pair::<Request<String>, Response<String>>();
    let service = RouteraAuthLayer::new(provider.clone()).layer(inner);
    handle.allow(3);

    for (grpc_status, invalidated) in [("0", false), ("7", false), ("16", true)] {
        let call = tokio::spawn(service.clone().oneshot(Request::new(String::new())));
        let (_request, respond) = handle.next_request().await.unwrap();
        respond.send_response(
            Response::builder()
                .status(StatusCode::OK)
                .version(http::Version::HTTP_2)
                .header("content-type", "application/grpc")
                .header("grpc-status", grpc_status)
                .body(String::new())
                .unwrap(),
        );
        let response = call.await.unwrap().unwrap();
        assert_eq!(response.headers()["grpc-status"], grpc_status, "untouched");
        assert_eq!(
            provider.stats().invalidations,
            u64::from(invalidated),
            "grpc-status {grpc_status}"
        );
    }
    assert_eq!(provider.token().await.unwrap().secret(), "token-2");
}

#[tokio::test(start_paused = true)]
async fn an_api_that_rejects_every_token_gets_a_trickle_of_exchanges_not_one_per_request() {
    let exchange = MockExchange::new(Duration::from_secs(3600)).with_delay(Duration::ZERO);
    let (always_401, calls) =
        common::answering(|_: Request<String>| reply(StatusCode::UNAUTHORIZED, ""));
    let api = ServiceBuilder::new()
        .retry(RetryOnUnauthorized::new())
        .layer(RouteraAuthLayer::new(exchange.provider()))
        .service(always_401);

    // Ten minutes of ten requests a second, every one rejected.
    for _ in 0..600 {
        for _ in 0..10 {
            let response = api
                .clone()
                .oneshot(Request::new(String::new()))
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        }
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    // Each sent twice (retried once), never more.
    assert_eq!(calls.load(Ordering::SeqCst), 2 * 6_000);
    // Invalidations are paced like the exchange backoff: 1 s, 2 s, 4 s, …
    // up to 60 s between them, so about 17 exchanges instead of 12,000.
    let calls = exchange.calls();
    assert!(
        (10..=25).contains(&calls),
        "{calls} exchanges for 6,000 rejected requests"
    );
}

/// A response with `status` and `body`.
fn reply(status: StatusCode, body: &str) -> Response<String> {
    Response::builder()
        .status(status)
        .body(body.to_owned())
        .unwrap()
}

/// An API that rejects `token-1` and accepts any other; the requests it
/// answered.
fn rejects_the_first_token<B: Send + 'static>()
-> (mock::Mock<Request<B>, Response<()>>, Arc<AtomicUsize>) {
    common::answering(|request: Request<B>| {
        let mut response = Response::new(());
        if request.headers()[header::AUTHORIZATION] == "Bearer token-1" {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        response
    })
}

/// A proxying stack with `axum::body::Body`: a request without a body is
/// retried with a fresh token; one with a body gets the 401 unchanged.
#[tokio::test(start_paused = true)]
async fn any_body_type_retries_what_it_can_replay() {
    use routera_auth::auth::empty_body_only;

    for (body, status, sent) in [
        (axum::body::Body::from("data"), StatusCode::UNAUTHORIZED, 1),
        (axum::body::Body::empty(), StatusCode::OK, 2),
    ] {
        let (api, calls) = rejects_the_first_token();
        let exchange = MockExchange::new(Duration::from_secs(3600));
        let provider = exchange.provider();
        let stack = ServiceBuilder::new()
            .retry(RetryOnUnauthorized::new().with_replay(empty_body_only::<axum::body::Body>))
            .layer(RouteraAuthLayer::new(provider.clone()))
            .service(api);
        let response = stack.oneshot(Request::new(body)).await.unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(calls.load(Ordering::SeqCst), sent);
        assert_eq!(provider.stats().invalidations, 1, "either way");
        assert_eq!(exchange.calls(), sent, "a new token only for the retry");
    }
}

/// Body types that can never be replayed still get a policy: it fits
/// `hyper::body::Incoming` (and passes the 401 through), and
/// `tonic::body::Body` (replaying empty bodies).
#[test]
fn the_policy_fits_incoming_and_tonic_bodies() {
    use routera_auth::auth::{empty_body_only, never};

    fn is_service<B, S: tower::Service<Request<B>>>(_: &S) {}
    let provider = MockExchange::new(Duration::from_secs(3600)).provider();
    // Never called: the services only have to type-check.
    let (api, _) = mock::pair::<Request<hyper::body::Incoming>, Response<()>>();
    let proxy = ServiceBuilder::new()
        .retry(RetryOnUnauthorized::new().with_replay(never::<hyper::body::Incoming>))
        .layer(RouteraAuthLayer::new(provider.clone()))
        .service(api);
    is_service::<hyper::body::Incoming, _>(&proxy);
    let (api, _) = mock::pair::<Request<tonic::body::Body>, Response<()>>();
    let grpc = ServiceBuilder::new()
        .retry(RetryOnUnauthorized::new().with_replay(empty_body_only::<tonic::body::Body>))
        .layer(RouteraAuthLayer::new(provider))
        .service(api);
    is_service::<tonic::body::Body, _>(&grpc);
}

/// A 401 for a token whose refresh is due drops it whatever the pacing:
/// its refresh is due anyway, so no exchange is added.
#[tokio::test(start_paused = true)]
async fn a_rejected_token_past_its_refresh_time_is_dropped_without_pacing() {
    // 4 s tokens: served 3 s (1 s of skew), refresh due from 2 s.
    let exchange = MockExchange::new(Duration::from_secs(4)).with_delay(Duration::ZERO);
    let provider = exchange.provider();
    let (always_401, _) =
        common::answering(|_: Request<String>| reply(StatusCode::UNAUTHORIZED, ""));
    let api = RouteraAuthLayer::new(provider.clone()).layer(always_401);
    let reject_current = || async {
        let response = api.clone().oneshot(Request::new(String::new())).await;
        assert_eq!(response.unwrap().status(), StatusCode::UNAUTHORIZED);
    };
    // Rejections right after each token arrives grow the pacing: 1 s, 2 s,
    // then 4 s before the next may be dropped.
    for wait in [0, 1, 2] {
        tokio::time::advance(Duration::from_secs(wait)).await;
        reject_current().await;
    }
    assert_eq!(provider.stats().invalidations, 3);
    // Each token is fetched by the request after the drop: token-4 comes
    // at 3.5 s, paced until 7 s, its refresh due from 5.5 to 5.7 s, served
    // until 6.5 s.
    tokio::time::advance(Duration::from_millis(500)).await;
    reject_current().await;
    assert_eq!(provider.stats().invalidations, 3, "paced");
    // Its background refresh fails, so token-4 is still the current one
    // when the next 401 comes, after its refresh time.
    let failure = routera_auth::TokenError::new(routera_auth::TokenErrorKind::ServerError);
    exchange.fail_until(
        tokio::time::Instant::now() + Duration::from_secs(60),
        failure,
    );
    tokio::time::advance(Duration::from_millis(2_400)).await;
    reject_current().await;
    assert_eq!(provider.stats().invalidations, 4, "past its refresh time");
    assert_eq!(provider.timing(), None, "token-4 was dropped");
}
