//! A raw hyper client for the emulator's own tests: requests written by
//! hand, answers read as they came over the wire.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::task::JoinHandle;

use super::Emulator;
use super::resource::RESOURCE_PATH;
use super::token_endpoint::TOKEN_PATH;

/// Status, headers and body of a response.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

impl Answer {
    pub(super) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    pub(super) fn header(&self, name: header::HeaderName) -> Option<&str> {
        self.headers.get(name).map(|value| value.to_str().unwrap())
    }
}

/// Sends one request over a fresh connection with a raw hyper client.
pub(super) async fn send(emulator: &Emulator, request: Request<Full<Bytes>>) -> Answer {
    let (mut sender, _connection) = connect(emulator).await;
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// Opens a connection; the task drives it until it closes or is aborted.
pub(super) async fn connect(emulator: &Emulator) -> (SendRequest<Full<Bytes>>, JoinHandle<()>) {
    let stream = tokio::net::TcpStream::connect(emulator.addr())
        .await
        .unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, task)
}

pub(super) fn host(emulator: &Emulator) -> String {
    emulator.addr().to_string()
}

pub(super) fn token_request(
    emulator: &Emulator,
    authorization: Option<&str>,
    body: &str,
) -> Request<Full<Bytes>> {
    let mut builder = Request::post(TOKEN_PATH)
        .header(header::HOST, host(emulator))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(authorization) = authorization {
        builder = builder.header(header::AUTHORIZATION, authorization);
    }
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

pub(super) fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

pub(super) fn body_auth(id: &str, secret: &str) -> String {
    form(&[
        ("grant_type", "client_credentials"),
        ("client_id", id),
        ("client_secret", secret),
    ])
}

/// `Basic` as RFC 6749 §2.3.1 specifies.
pub(super) fn basic_rfc(id: &str, secret: &str) -> String {
    let encode =
        |value: &str| form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>();
    let joined = format!("{}:{}", encode(id), encode(secret));
    format!("Basic {}", BASE64.encode(joined))
}

/// `Basic` as RFC 7617 alone would do it, without form-urlencoding.
pub(super) fn basic_raw(id: &str, secret: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{id}:{secret}")))
}

/// A valid token request for the default client, body authentication.
pub(super) fn exchange_request(emulator: &Emulator) -> Request<Full<Bytes>> {
    let credentials = emulator.credentials();
    let body = body_auth(credentials.client_id(), credentials.client_secret());
    token_request(emulator, None, &body)
}

/// Sends [`exchange_request`] over a fresh connection: the head of the
/// answer, its body still to be read.
pub(super) async fn exchange_response(emulator: &Emulator) -> Response<Incoming> {
    let (mut sender, _connection) = connect(emulator).await;
    sender
        .send_request(exchange_request(emulator))
        .await
        .unwrap()
}

/// Sends [`exchange_request`].
pub(super) async fn exchange_body(emulator: &Emulator) -> Answer {
    send(emulator, exchange_request(emulator)).await
}

pub(super) async fn issue_token(emulator: &Emulator) -> String {
    let answer = exchange_body(emulator).await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.json()["access_token"].as_str().unwrap().to_owned()
}

pub(super) async fn ping(emulator: &Emulator, authorization: Option<&str>) -> Answer {
    let mut builder = Request::get(RESOURCE_PATH).header(header::HOST, host(emulator));
    if let Some(authorization) = authorization {
        builder = builder.header(header::AUTHORIZATION, authorization);
    }
    send(emulator, builder.body(Full::new(Bytes::new())).unwrap()).await
}

pub(super) fn assert_oauth_error(answer: &Answer, status: StatusCode, error: &str) {
    assert_eq!(answer.status, status, "{:?}", answer.body);
    assert_eq!(
        answer.header(header::CONTENT_TYPE),
        Some("application/json")
    );
    let json = answer.json();
    assert_eq!(json["error"], error, "{json}");
    assert!(json["error_description"].is_string(), "{json}");
}

/// A 401 from the protected resource for a token it does not accept.
pub(super) fn assert_invalid_token(answer: &Answer) {
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(
        answer
            .header(header::WWW_AUTHENTICATE)
            .unwrap()
            .contains(r#"error="invalid_token""#)
    );
}

/// Reads a body frame by frame: the data, the number of data frames and
/// the error that ended it, if one did.
pub(super) async fn read_frames(body: &mut Incoming) -> (Vec<u8>, usize, Option<hyper::Error>) {
    let (mut data, mut frames) = (Vec::new(), 0);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(chunk) = frame.into_data() {
                    data.extend_from_slice(&chunk);
                    frames += 1;
                }
            }
            Err(error) => return (data, frames, Some(error)),
        }
    }
    (data, frames, None)
}

/// Waits, on real time, until `done` holds; fails after five seconds.
pub(super) async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
