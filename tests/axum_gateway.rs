//! The `axum_gateway` example, run for real on 127.0.0.1: the emulator as
//! upstream, the example's own router and client stack, inbound requests
//! through a plain hyper-util client.
#![cfg(feature = "rustls")]

#[path = "../examples/axum_gateway.rs"]
#[allow(dead_code)]
mod gateway;

use bytes::Bytes;
use http::{StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use routera_auth_test::{Emulator, Fault};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// What the emulator's protected resource answers with a valid token.
const UPSTREAM_BODY: &str = r#"{"ok":true}"#;

/// The emulator, the gateway in front of it, and a plain inbound client.
struct Running {
    emulator: Emulator,
    ping: Uri,
    client: Client<HttpConnector, Empty<Bytes>>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn start() -> Self {
        let emulator = Emulator::start().await.expect("the emulator starts");
        let provider = emulator.provider();
        let app = gateway::app(emulator.resource_url(), gateway::api_client(provider));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, server) = gateway::spawn_server(listener, app, std::future::pending()).unwrap();
        Self {
            emulator,
            ping: format!("http://{addr}/ping").parse().unwrap(),
            client: Client::builder(TokioExecutor::new()).build_http(),
            server,
        }
    }

    /// `n` concurrent `GET /ping`s: status, `Content-Type` and body of each.
    async fn ping_concurrently(&self, n: usize) -> Vec<(StatusCode, Option<String>, String)> {
        let mut calls = JoinSet::new();
        for _ in 0..n {
            let (client, ping) = (self.client.clone(), self.ping.clone());
            calls.spawn(async move { ping_once(&client, ping).await });
        }
        let mut answers = Vec::with_capacity(n);
        while let Some(answer) = calls.join_next().await {
            answers.push(answer.expect("the call did not panic"));
        }
        assert!(!self.server.is_finished(), "the gateway stopped");
        answers
    }
}

async fn ping_once(
    client: &Client<HttpConnector, Empty<Bytes>>,
    ping: Uri,
) -> (StatusCode, Option<String>, String) {
    let response = client.get(ping).await.expect("the gateway answers");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|value| value.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    (status, content_type, body)
}

fn assert_all_relayed(answers: &[(StatusCode, Option<String>, String)], n: usize) {
    assert_eq!(answers.len(), n);
    for (status, content_type, body) in answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(content_type.as_deref(), Some("application/json"));
        assert_eq!(body, UPSTREAM_BODY);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hundred_concurrent_inbound_requests_share_one_token_exchange() {
    let running = Running::start().await;

    let answers = running.ping_concurrently(100).await;

    assert_all_relayed(&answers, 100);
    assert_eq!(running.emulator.exchange_count(), 1);
    // Each inbound request went upstream exactly once: none was rejected.
    assert_eq!(running.emulator.resource_requests(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_token_is_replaced_and_no_caller_sees_the_401() {
    let running = Running::start().await;
    assert_all_relayed(&running.ping_concurrently(1).await, 1);
    assert_eq!(running.emulator.exchange_count(), 1);
    let upstream_before = running.emulator.resource_requests();

    running.emulator.revoke_all();
    let answers = running.ping_concurrently(20).await;

    assert_all_relayed(&answers, 20);
    assert_eq!(running.emulator.exchange_count(), 2);
    // At least the first request carried the revoked token, got a 401 and
    // was retried; none was retried twice.
    let upstream = running.emulator.resource_requests() - upstream_before;
    assert!((21..=40).contains(&upstream), "{upstream} upstream calls");

    // The new token is in use from now on.
    let upstream_before = running.emulator.resource_requests();
    assert_all_relayed(&running.ping_concurrently(5).await, 5);
    assert_eq!(running.emulator.exchange_count(), 2);
    assert_eq!(running.emulator.resource_requests() - upstream_before, 5);
}

#[tokio::test]
async fn without_a_token_the_gateway_answers_503_and_never_calls_upstream() {
    let running = Running::start().await;
    running.emulator.inject(Fault::status(500));

    let answers = running.ping_concurrently(3).await;

    for (status, _, body) in &answers {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body, "could not authenticate to the Routera API");
    }
    assert!(running.emulator.token_requests() >= 1);
    assert_eq!(running.emulator.exchange_count(), 0);
    assert_eq!(running.emulator.resource_requests(), 0);
}
