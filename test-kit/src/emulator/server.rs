//! Connection plumbing: the accept loop, connections over plain HTTP/1.1
//! or TLS (HTTP/2 or HTTP/1.1, as ALPN chose), and routing to the
//! endpoints and, when it is on, the control API.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;

use super::control;
use super::grpc::{self, HEALTH_CHECK_PATH};
use super::resource::{self, RESOURCE_PATH};
use super::response::{Aborted, Body, json_response};
use super::state::State;
use super::token_endpoint::{self, TOKEN_PATH};

/// How the emulator's connections are served.
#[derive(Clone)]
pub(super) enum Transport {
    /// Plain HTTP/1.1.
    Http,
    /// TLS, then HTTP/2 or HTTP/1.1 as ALPN chose.
    Https(tokio_rustls::TlsAcceptor),
}

/// Accepts connections until the task is aborted, one task per connection.
pub(super) async fn accept_loop(listener: TcpListener, transport: Transport, state: Arc<State>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                tracing::debug!(%error, "routera emulator: accept failed");
                // Out of file descriptors and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let state = Arc::clone(&state);
        match &transport {
            Transport::Http => {
                tokio::spawn(serve_http1(TokioIo::new(stream), state));
            }
            Transport::Https(acceptor) => {
                tokio::spawn(serve_tls(acceptor.clone(), stream, state));
            }
        }
    }
}

/// Serves HTTP/1.1 on one connection until it closes.
pub(super) async fn serve_http1<I>(io: I, state: Arc<State>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| route(Arc::clone(&state), request));
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    if let Err(error) = connection.await {
        tracing::debug!(%error, "routera emulator: connection error");
    }
}

/// Completes the handshake, then serves HTTP/2 if the client asked for it
/// through ALPN, HTTP/1.1 otherwise.
async fn serve_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: tokio::net::TcpStream,
    state: Arc<State>,
) {
    // A handshake that never completes ends with the emulator, on no
    // timer (tests may run on paused time).
    let mut shutdown = state.shutdown.clone();
    let stream = tokio::select! {
        accepted = acceptor.accept(stream) => match accepted {
            Ok(stream) => stream,
            Err(error) => {
                // A client that does not trust the certificate ends up here.
                tracing::debug!(%error, "routera emulator: TLS handshake failed");
                return;
            }
        },
        _ = shutdown.changed() => return,
    };
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
    let io = TokioIo::new(stream);
    if !h2 {
        return serve_http1(io, state).await;
    }
    let service = hyper::service::service_fn(move |request| route(Arc::clone(&state), request));
    let connection = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(io, service);
    if let Err(error) = connection.await {
        tracing::debug!(%error, "routera emulator: connection error");
    }
}

/// Dispatches on the path. An error closes the connection without an answer.
pub(super) async fn route(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Aborted> {
    let state = &*state;
    match request.uri().path() {
        TOKEN_PATH => token_endpoint::serve(state, request).await,
        RESOURCE_PATH => Ok(resource::serve(state, request.headers())),
        HEALTH_CHECK_PATH => Ok(grpc::health_check(state, request).await),
        path if state.control_api && control::is_control_path(path) => {
            Ok(control::serve(state, request).await)
        }
        _ => Ok(json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": "not_found" }),
        )),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{Method, Request, StatusCode, header};
    use http_body_util::Full;

    use super::super::test_client::{
        connect, eventually, exchange_request, host, issue_token, ping, send,
    };
    use super::super::{Emulator, Fault};
    use super::*;

    #[tokio::test]
    async fn wrong_method_and_unknown_path() {
        let emulator = Emulator::start().await.unwrap();
        let get = Request::get(TOKEN_PATH)
            .header(header::HOST, host(&emulator))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = send(&emulator, get).await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(answer.header(header::ALLOW), Some("POST"));
        assert_eq!(emulator.last_token_request().unwrap().method, Method::GET);

        let other = Request::post("/oauth2/token/extra")
            .header(header::HOST, host(&emulator))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let answer = send(&emulator, other).await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);

        assert_eq!(emulator.token_requests(), 1);
        assert_eq!(emulator.resource_requests(), 0);
        assert_eq!(emulator.exchange_count(), 0);
    }

    #[tokio::test]
    async fn hang_never_answers_and_is_released_by_drop() {
        let emulator = Emulator::start().await.unwrap();
        let token = issue_token(&emulator).await;
        emulator.inject(Fault::Hang);

        let (mut sender, _connection) = connect(&emulator).await;
        let request = exchange_request(&emulator);
        let mut pending = tokio::spawn(async move { sender.send_request(request).await });
        let waited = tokio::time::timeout(Duration::from_millis(200), &mut pending).await;
        assert!(waited.is_err(), "a hung request got an answer: {waited:?}");

        // The request was read, counted and recorded, but no token issued.
        assert_eq!(emulator.token_requests(), 2);
        assert_eq!(emulator.exchange_count(), 1);
        let recorded = emulator.last_token_request().unwrap();
        assert_eq!(recorded.form()[0].1, "client_credentials");

        // Other connections and the protected resource still work.
        let answer = ping(&emulator, Some(&format!("Bearer {token}"))).await;
        assert_eq!(answer.status, StatusCode::OK);
        emulator.clear_fault();
        issue_token(&emulator).await;
        assert!(!pending.is_finished());

        // Dropping the emulator closes the hung connection without an
        // answer, and every task holding the state ends.
        let state = Arc::downgrade(&emulator.state);
        drop(emulator);
        let outcome = tokio::time::timeout(Duration::from_secs(5), pending)
            .await
            .expect("the hung request outlived the emulator")
            .unwrap();
        let error = outcome.expect_err("a hung request got an answer");
        assert!(error.is_incomplete_message(), "{error:?}");
        eventually("the emulator's tasks end", || state.strong_count() == 0).await;
    }

    #[tokio::test]
    async fn hang_ends_when_the_client_gives_up() {
        let emulator = Emulator::start().await.unwrap();
        emulator.inject(Fault::Hang);
        let idle = Arc::strong_count(&emulator.state);

        let (mut sender, connection) = connect(&emulator).await;
        let request = exchange_request(&emulator);
        let pending = tokio::spawn(async move { sender.send_request(request).await });
        eventually("the request is hanging", || emulator.token_requests() == 1).await;
        assert!(Arc::strong_count(&emulator.state) > idle);

        // The client gives up: its connection closes, the server's
        // connection task and the hung request with it.
        pending.abort();
        connection.abort();
        eventually("the hung connection is closed", || {
            Arc::strong_count(&emulator.state) == idle
        })
        .await;
        assert_eq!(emulator.exchange_count(), 0);
    }
}
