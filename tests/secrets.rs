//! Neither the client secret nor any access token appears in logs (every
//! tracing event and span at TRACE), `Debug` or `Display`, whatever path
//! the crate takes.

#![cfg(feature = "rustls")]

mod common;

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use common::Capture;
use http::Request;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use routera_auth::{
    AuthMethod, ClientCredentials, ConfigError, HttpTokenExchange, ReqwestService,
    RouteraAuthLayer, Token, TokenProvider, TokenRequest,
};
use routera_auth_test::{Emulator, Fault};
use tower::{Layer, ServiceBuilder, ServiceExt};

const CLIENT_ID: &str = "secret-test-client";
const SECRET: &str = "S3cr3t+/=value with spaces é";

/// Every form in which the secret travels: as it is, form-urlencoded, and
/// inside the Basic header.
fn secret_forms() -> Vec<String> {
    let encoded: String = form_urlencoded::byte_serialize(SECRET.as_bytes()).collect();
    let id: String = form_urlencoded::byte_serialize(CLIENT_ID.as_bytes()).collect();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{id}:{encoded}"));
    vec![SECRET.to_owned(), encoded, basic]
}

fn assert_clean(what: &str, text: &str, tokens: &[String]) {
    for form in secret_forms() {
        assert!(
            !text.contains(&form),
            "the secret appears in {what}:\n{text}"
        );
    }
    for token in tokens {
        assert!(
            !text.contains(token.as_str()),
            "a token appears in {what}:\n{text}"
        );
    }
}

/// The HTTP client under the exchange.
#[derive(Debug, Clone, Copy)]
enum ExchangeClient {
    /// `Emulator::exchange`: hyper-util's legacy client.
    Hyper,
    /// `HttpTokenExchange::reqwest`, the default.
    Reqwest,
}

/// A provider over `client`, authenticating with `method`, with short
/// timeouts and backoff.
fn provider_for(emulator: &Emulator, client: ExchangeClient, method: AuthMethod) -> TokenProvider {
    let (timeout, backoff) = (Duration::from_millis(300), Duration::from_millis(10));
    match client {
        ExchangeClient::Hyper => {
            let exchange = emulator.exchange().with_auth_method(method);
            TokenProvider::builder(exchange, emulator.credentials())
                .exchange_timeout(timeout)
                .backoff(backoff, 2 * backoff)
                .build()
        }
        ExchangeClient::Reqwest => {
            let exchange = HttpTokenExchange::reqwest()
                .unwrap()
                .with_token_url(&emulator.token_url())
                .unwrap()
                .with_auth_method(method);
            TokenProvider::builder(exchange, emulator.credentials())
                .exchange_timeout(timeout)
                .backoff(backoff, 2 * backoff)
                .build()
        }
    }
}

#[tokio::test]
async fn no_secret_or_token_in_logs_debug_or_display() {
    let (capture, _guard) = Capture::install();

    let mut shown = Vec::new();
    let emulator = Emulator::builder()
        .client(CLIENT_ID, SECRET)
        .start()
        .await
        .unwrap();

    let clients = [ExchangeClient::Hyper, ExchangeClient::Reqwest];
    let methods = [AuthMethod::RequestBody, AuthMethod::BasicAuth];
    for (exchange_client, method) in clients.into_iter().flat_map(|c| methods.map(|m| (c, m))) {
        let provider = provider_for(&emulator, exchange_client, method);
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let api = ServiceBuilder::new()
            .layer(RouteraAuthLayer::new(provider.clone()))
            .service(client.clone());

        // Healthy calls through the layer.
        for _ in 0..3 {
            let request = Request::get(emulator.resource_url())
                .body(Empty::new())
                .unwrap();
            let response = api.clone().oneshot(request).await.unwrap();
            assert_eq!(response.status(), 200);
        }
        let token = provider.token().await.unwrap();
        shown.push(format!(
            "{token:?} {provider:?} {api:?} {:?}",
            provider.stats()
        ));

        // Every fault, each giving an error that is displayed and debugged.
        for fault in [
            Fault::status(500),
            Fault::retry_after(429, 1),
            Fault::html(502),
            Fault::json(
                400,
                &format!(
                    r#"{{"error":"invalid_request","error_description":"bad secret {SECRET}"}}"#
                ),
            ),
            Fault::json(401, r#"{"error":"invalid_client"}"#),
            Fault::json(
                200,
                r#"{"access_token":"leaky-token","token_type":"mac","expires_in":1}"#,
            ),
            Fault::json(200, "{broken"),
            Fault::redirect(302, "http://127.0.0.1:9/elsewhere"),
            Fault::Oversized {
                len: 200_000,
                declare_length: false,
            },
            Fault::ResetMidResponse,
            Fault::slow(Duration::from_secs(1)),
            Fault::Hang,
        ] {
            // A provider of its own for each fault, with a valid token.
            let provider = provider_for(&emulator, exchange_client, method);
            provider.token().await.unwrap();
            emulator.inject(fault.clone());
            let err = provider.refresh().await.unwrap_err();
            shown.push(format!("{err} {err:?} {:?}", err.oauth_error()));
            let mut source = std::error::Error::source(&err);
            while let Some(cause) = source {
                shown.push(format!("{cause} {cause:?}"));
                source = cause.source();
            }
            emulator.clear_fault();
        }

        // Rejected credentials, rotation, the layer failing closed.
        provider.set_credentials(ClientCredentials::new(CLIENT_ID, format!("{SECRET}-wrong")));
        let err = provider.refresh().await.unwrap_err();
        shown.push(format!("{err} {err:?}"));
        let request = Request::get(emulator.resource_url())
            .body(Empty::new())
            .unwrap();
        provider.invalidate(&token);
        if let Err(err) = api.clone().oneshot(request).await {
            shown.push(format!("{err} {err:?}"));
        }
        provider.set_credentials(ClientCredentials::new(CLIENT_ID, SECRET));
        provider.refresh().await.unwrap();
    }

    // Debug and Display of every other public type.
    let credentials = ClientCredentials::new(CLIENT_ID, SECRET);
    let exchange = HttpTokenExchange::reqwest().unwrap();
    let builder = TokenProvider::builder(exchange.clone(), credentials.clone());
    let manual = Token::new(format!("manual-{SECRET}"), Duration::from_secs(1));
    let layer = RouteraAuthLayer::new(builder.build());
    let service = layer.layer(ReqwestService::new(reqwest::Client::new()));
    shown.push(format!(
        "{credentials:?} {exchange:?} {:?} {manual:?} {:?} {layer:?} {service:?} {emulator:?}",
        TokenRequest::new(credentials.clone()),
        TokenProvider::builder(HttpTokenExchange::reqwest().unwrap(), credentials.clone()),
    ));
    let config_error: ConfigError = HttpTokenExchange::reqwest()
        .unwrap()
        .with_token_url(&format!(
            "https://{CLIENT_ID}:{}@example.com/",
            secret_forms()[1]
        ))
        .unwrap_err();
    shown.push(format!("{config_error} {config_error:?}"));

    let mut tokens = emulator.issued_tokens();
    assert!(tokens.len() >= 20, "{} tokens issued", tokens.len());
    tokens.push("leaky-token".to_owned());
    tokens.push(format!("manual-{SECRET}"));

    drop(_guard);
    let logs = capture.text();
    assert!(
        logs.contains("token exchange failed"),
        "the logs were captured"
    );
    assert!(
        logs.contains("ERROR"),
        "permanent failures are logged at error level"
    );
    assert!(logs.contains("backing off"), "backoff is logged");
    assert!(
        logs.contains("token exchange succeeded"),
        "successes are logged"
    );
    assert!(logs.contains(CLIENT_ID), "the client id is not a secret");
    // Every failure says which client failed, and why the token was wanted.
    let failures: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("token exchange failed"))
        .collect();
    assert!(!failures.is_empty());
    for line in &failures {
        assert!(line.contains(CLIENT_ID), "no client id: {line}");
        assert!(line.contains("reason="), "no reason: {line}");
    }
    assert_clean("the logs", &logs, &tokens);
    assert_clean("Debug and Display", &shown.join("\n"), &tokens);
}
