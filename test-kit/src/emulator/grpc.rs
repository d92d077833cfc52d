//! The gRPC health service, `grpc.health.v1.Health/Check`, as a protected
//! resource: for gRPC clients (tonic) under test, over HTTP/2.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;

use super::resource::{bearer_token, token_problem};
use super::response::Body;
use super::state::State;

/// Path of the health check RPC.
pub(super) const HEALTH_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// A `HealthCheckResponse { status: SERVING }` message in its gRPC frame:
/// not compressed, 2 bytes long, field 1 (varint) = 1.
const SERVING: [u8; 7] = [0, 0, 0, 0, 2, 0x08, 0x01];

/// How much of a request message is read.
const MAX_REQUEST: usize = 64 * 1024;

/// `grpc-status` of an accepted call.
const OK: &str = "0";
/// `grpc-status` of a call without a valid bearer token.
const UNAUTHENTICATED: &str = "16";

/// Answers a health check: `SERVING` with a valid bearer token, a
/// trailers-only `UNAUTHENTICATED` answer otherwise.
pub(super) async fn health_check(state: &State, request: Request<Incoming>) -> Response<Body> {
    state.resource_requests.fetch_add(1, Ordering::SeqCst);
    let problem = match request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token)
    {
        None => Some("no bearer token"),
        Some(token) => token_problem(state, token),
    };
    // The request message is read (and ignored: the answer is about the
    // server as a whole) so that the stream ends cleanly.
    let _ = Limited::new(request.into_body(), MAX_REQUEST)
        .collect()
        .await;
    match problem {
        None => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static(OK));
            let body = Full::new(Bytes::from_static(&SERVING))
                .with_trailers(async move { Some(Ok(trailers)) })
                .map_err(|never| match never {})
                .boxed();
            grpc_response(body)
        }
        Some(problem) => {
            let mut response = grpc_response(super::response::full(Bytes::new()));
            let headers = response.headers_mut();
            headers.insert("grpc-status", HeaderValue::from_static(UNAUTHENTICATED));
            headers.insert("grpc-message", HeaderValue::from_static(problem));
            response
        }
    }
}

/// A 200 with the gRPC content type.
fn grpc_response(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    response
}
