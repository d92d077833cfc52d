//! Real TLS handshakes against the emulator serving HTTPS with a CA it
//! generated (`Emulator::builder().https()`):
//!
//! - `HttpTokenExchange::reqwest()` trusts a private CA the way its users
//!   trust one, through `SSL_CERT_FILE` (read by rustls-platform-verifier on
//!   Linux and by OpenSSL). An environment variable is process-wide, so
//!   those cases run in a child process: this test binary run again with
//!   the variable set and a filter naming one ignored test,
//!   `child_exchange_over_reqwest`.
//! - A reqwest client of the user's own with `tls_certs_merge`, on
//!   each TLS backend the build has.
//! - A server the client does not trust gives a `Transport` error that says
//!   the certificate was not trusted, and no token.
//! - tonic over TLS (HTTP/2 by ALPN) calls the emulator's gRPC health
//!   service through `RouteraAuthLayer`.
//!
//! `reqwest()` takes one TLS stack, chosen by the crate's features:
//! `native-tls` over `rustls-ring` over `rustls`. `cargo test
//! --all-features` runs it on native-tls; `.ci/run` runs this file again
//! with `--no-default-features --features rustls-ring` (rustls on ring) and
//! with the default features (rustls on aws-lc-rs).
//!
//! Nothing sleeps: every wait is on a real handshake, bounded by a timeout.

#![cfg(any(feature = "rustls", feature = "rustls-ring"))]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use routera_auth::{
    BoxError, ClientCredentials, HttpTokenExchange, ReqwestService, RouteraAuthLayer,
    TokenErrorKind, TokenProvider, TokenRequest,
};
use routera_auth_test::Emulator;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::{ServiceBuilder, ServiceExt as _};

/// Upper bound on any one test; only reached if something hangs.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The token URL the child exchanges with.
const CHILD_URL: &str = "ROUTERA_AUTH_TEST_TLS_TOKEN_URL";
/// What the child must get: `token` or `untrusted`.
const CHILD_EXPECT: &str = "ROUTERA_AUTH_TEST_TLS_EXPECT";
/// The test the child runs.
const CHILD_TEST: &str = "child_exchange_over_reqwest";

/// The TLS stack `HttpTokenExchange::reqwest()` uses in this build.
fn reqwest_stack() -> &'static str {
    if cfg!(feature = "native-tls") {
        "native-tls"
    } else if cfg!(feature = "rustls-ring") {
        "rustls on ring"
    } else {
        "rustls on aws-lc-rs"
    }
}

async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("the test hung")
}

/// What the child printed and whether it passed.
struct ChildRun {
    success: bool,
    output: String,
}

/// Runs [`child_exchange_over_reqwest`] in a child process of this test
/// binary, with `SSL_CERT_FILE` naming a file that holds `trusted_ca` only
/// (and no `SSL_CERT_DIR`): the child trusts that CA and nothing else.
async fn exchange_in_child(token_url: &str, trusted_ca: &str, expect: &str) -> ChildRun {
    let port = token_url
        .rsplit(':')
        .next()
        .unwrap_or("0")
        .replace('/', "_");
    let ca_file = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("tls-ca-{}-{port}.pem", std::process::id()));
    std::fs::write(&ca_file, trusted_ca).unwrap();
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args([CHILD_TEST, "--exact", "--ignored", "--nocapture"])
        .env("SSL_CERT_FILE", &ca_file)
        .env_remove("SSL_CERT_DIR")
        .env(CHILD_URL, token_url)
        .env(CHILD_EXPECT, expect)
        .env("ROUTERA_CLIENT_ID", "routera-test-client")
        .env("ROUTERA_CLIENT_SECRET", "routera-test-secret");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .unwrap();
    std::fs::remove_file(&ca_file).unwrap();
    let run = ChildRun {
        success: output.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    };
    // Shown with `--nocapture`, and with a failure.
    println!("the child, expecting {expect}:\n{}", run.output);
    run
}

/// Run by the tests below in a child process, with `SSL_CERT_FILE` set:
/// a token exchange over `HttpTokenExchange::reqwest()`, which must give a
/// token or a `Transport` error saying the certificate was not trusted, as
/// the parent asked.
#[tokio::test]
#[ignore = "run in a child process, with SSL_CERT_FILE set, by the tests of this file"]
async fn child_exchange_over_reqwest() {
    let (Ok(url), Ok(expect)) = (std::env::var(CHILD_URL), std::env::var(CHILD_EXPECT)) else {
        panic!("{CHILD_TEST} is run by the other tests of tests/tls.rs, with {CHILD_URL} set");
    };
    let exchange = HttpTokenExchange::reqwest()
        .unwrap()
        .with_token_url(&url)
        .unwrap();
    let credentials = ClientCredentials::from_env().unwrap();
    let result = exchange.oneshot(TokenRequest::new(credentials)).await;
    let stack = reqwest_stack();
    match (expect.as_str(), result) {
        ("token", Ok(token)) => {
            assert!(!token.access_token().secret().is_empty());
            println!("CHILD: token over {stack}");
        }
        ("untrusted", Err(error)) => {
            assert_eq!(error.kind(), TokenErrorKind::Transport, "{error:?}");
            assert!(error.to_string().contains("not trusted"), "{error:?}");
            // The TLS library's own words show which stack refused it.
            let library_says = if cfg!(feature = "native-tls") {
                "certificate verify failed"
            } else {
                "InvalidCertificate"
            };
            assert!(format!("{error:#?}").contains(library_says), "{error:#?}");
            println!("CHILD: refused over {stack}: {error}");
        }
        (expect, result) => panic!("expected {expect} over {stack}, got {result:?}"),
    }
}

#[tokio::test]
async fn reqwest_trusts_a_private_ca_given_in_ssl_cert_file() {
    bounded(async {
        let emulator = Emulator::builder().https().start().await.unwrap();
        assert!(emulator.token_url().starts_with("https://127.0.0.1:"));
        let ca_pem = emulator.ca_pem().unwrap();
        assert!(
            ca_pem.starts_with("-----BEGIN CERTIFICATE-----\n"),
            "{ca_pem}"
        );

        let child = exchange_in_child(&emulator.token_url(), ca_pem, "token").await;
        assert!(child.success, "{}", child.output);
        let expected = format!("CHILD: token over {}", reqwest_stack());
        assert!(child.output.contains(&expected), "{}", child.output);
        assert_eq!(emulator.exchange_count(), 1);
        let recorded = emulator.last_token_request().unwrap();
        assert_eq!(
            recorded.form()[0],
            ("grant_type".into(), "client_credentials".into())
        );
    })
    .await;
}

#[tokio::test]
async fn reqwest_refuses_a_server_whose_ca_it_does_not_trust() {
    bounded(async {
        let emulator = Emulator::builder().https().start().await.unwrap();
        // The child trusts a CA, but another emulator's.
        let other = Emulator::builder().https().start().await.unwrap();
        assert_ne!(other.ca_pem(), emulator.ca_pem());

        let child =
            exchange_in_child(&emulator.token_url(), other.ca_pem().unwrap(), "untrusted").await;
        assert!(child.success, "{}", child.output);
        let expected = format!("CHILD: refused over {}", reqwest_stack());
        assert!(child.output.contains(&expected), "{}", child.output);
        assert_eq!(emulator.token_requests(), 0, "nothing was sent");
        assert_eq!(emulator.exchange_count(), 0);
    })
    .await;
}

#[tokio::test]
async fn reqwest_refuses_a_self_signed_server_even_with_the_ca_trusted() {
    bounded(async {
        let emulator = Emulator::builder()
            .https_self_signed()
            .start()
            .await
            .unwrap();
        let child = exchange_in_child(
            &emulator.token_url(),
            emulator.ca_pem().unwrap(),
            "untrusted",
        )
        .await;
        assert!(child.success, "{}", child.output);
        assert!(child.output.contains("CHILD: refused"), "{}", child.output);
        assert_eq!(emulator.token_requests(), 0, "nothing was sent");
    })
    .await;
}

/// A reqwest client on each TLS backend this build has, trusting `roots`
/// (on top of the platform's roots, except on ring).
fn reqwest_clients(roots: &[&str]) -> Vec<(&'static str, reqwest::Client)> {
    let certificates: Vec<reqwest::Certificate> = roots
        .iter()
        .map(|pem| reqwest::Certificate::from_pem(pem.as_bytes()).unwrap())
        .collect();
    let base = || {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .tls_certs_merge(certificates.iter().cloned())
    };
    let clients = vec![
        #[cfg(feature = "native-tls")]
        ("native-tls", base().tls_backend_native().build().unwrap()),
        #[cfg(feature = "rustls")]
        (
            "rustls on aws-lc-rs",
            base().tls_backend_rustls().build().unwrap(),
        ),
        #[cfg(feature = "rustls-ring")]
        ("rustls on ring", ring_client(roots)),
    ];
    let _ = base;
    clients
}

/// A reqwest client on rustls with ring, trusting `roots` only: with
/// reqwest's `rustls-no-provider`, the application brings the provider in a
/// preconfigured `rustls::ClientConfig`.
#[cfg(feature = "rustls-ring")]
fn ring_client(roots: &[&str]) -> reqwest::Client {
    let mut store = rustls::RootCertStore::empty();
    for pem in roots {
        use rustls::pki_types::pem::PemObject as _;
        let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        store.add(der).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .tls_backend_preconfigured(config)
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_client_of_ones_own_trusts_the_ca_with_tls_certs_merge() {
    bounded(async {
        let emulator = Emulator::builder().https().start().await.unwrap();
        let ca_pem = emulator.ca_pem().unwrap();
        let clients = reqwest_clients(&[ca_pem]);
        assert!(!clients.is_empty());
        for (i, (backend, client)) in clients.into_iter().enumerate() {
            let exchange = HttpTokenExchange::new(ReqwestService::new(client))
                .with_token_url(&emulator.token_url())
                .unwrap();
            let provider = TokenProvider::new(exchange, emulator.credentials());
            let token = provider
                .token()
                .await
                .unwrap_or_else(|error| panic!("{backend}: {error:?}"));
            assert!(
                emulator.token_validator().is_valid(token.secret()),
                "{backend}"
            );
            assert_eq!(emulator.exchange_count(), i as u64 + 1, "{backend}");
        }
    })
    .await;
}

#[tokio::test]
async fn a_client_of_ones_own_refuses_a_self_signed_server() {
    bounded(async {
        let emulator = Emulator::builder()
            .https_self_signed()
            .start()
            .await
            .unwrap();
        for (backend, client) in reqwest_clients(&[emulator.ca_pem().unwrap()]) {
            let exchange = HttpTokenExchange::new(ReqwestService::new(client))
                .with_token_url(&emulator.token_url())
                .unwrap();
            let error = exchange
                .oneshot(TokenRequest::new(emulator.credentials()))
                .await
                .expect_err(backend);
            assert_eq!(
                error.kind(),
                TokenErrorKind::Transport,
                "{backend}: {error:?}"
            );
            let shown = error.to_string();
            assert!(
                shown.contains("certificate was not trusted"),
                "{backend}: {shown}"
            );
            assert!(shown.contains("tls_certs_merge"), "{backend}: {shown}");
            assert!(error.is_retryable(), "{backend}");
        }
        assert_eq!(emulator.token_requests(), 0, "nothing was sent");
        assert!(emulator.issued_tokens().is_empty());
    })
    .await;
}

#[tokio::test]
async fn tonic_over_tls_calls_the_emulator_through_the_layer() -> Result<(), BoxError> {
    bounded(async {
        let emulator = Emulator::builder().https().start().await?;
        let ca_pem = emulator.ca_pem().ok_or("no CA")?;
        let base_url = emulator.base_url();
        assert!(base_url.starts_with("https://"), "{base_url}");
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        let channel = Endpoint::from_shared(base_url)?
            .tls_config(tls)?
            .connect()
            .await?;

        // The token comes over TLS too, from the same emulator.
        let (_, client) = reqwest_clients(&[ca_pem])
            .into_iter()
            .next()
            .ok_or("no client")?;
        let exchange = HttpTokenExchange::new(ReqwestService::new(client))
            .with_token_url(&emulator.token_url())?;
        let provider = TokenProvider::new(exchange, emulator.credentials());

        // Without the layer the emulator refuses the call.
        let mut bare = HealthClient::new(channel.clone());
        let status = bare
            .check(HealthCheckRequest::default())
            .await
            .expect_err("a call without a token was served");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert_eq!(status.message(), "no bearer token");

        let authenticated = ServiceBuilder::new()
            .layer(RouteraAuthLayer::new(provider.clone()))
            .service(channel);
        let mut client = HealthClient::new(authenticated);
        for _ in 0..3 {
            let response = client.check(HealthCheckRequest::default()).await?;
            assert_eq!(response.get_ref().status(), ServingStatus::Serving);
        }
        assert_eq!(emulator.exchange_count(), 1, "one token for every call");
        assert_eq!(emulator.resource_requests(), 4);

        // A revoked token is refused by the emulator.
        emulator.revoke_all();
        let status = client
            .check(HealthCheckRequest::default())
            .await
            .expect_err("a revoked token was accepted");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert_eq!(status.message(), "token revoked");
        // The layer took the refusal as a 401: the next call gets a new token.
        let response = client.check(HealthCheckRequest::default()).await?;
        assert_eq!(response.get_ref().status(), ServingStatus::Serving);
        assert_eq!(emulator.exchange_count(), 2);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn tonic_refuses_an_emulator_whose_ca_it_does_not_trust() {
    bounded(async {
        let emulator = Emulator::builder().https().start().await.unwrap();
        let other = Emulator::builder().https().start().await.unwrap();
        let tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(other.ca_pem().unwrap()));
        let connected = Endpoint::from_shared(emulator.base_url())
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await;
        let error = connected.expect_err("tonic trusted a CA it was not given");
        let chain = format!("{:?}", BoxError::from(error));
        assert!(chain.contains("UnknownIssuer"), "{chain}");
        assert_eq!(emulator.resource_requests(), 0);
    })
    .await;
}
