//! Calls the Routera API through `RouteraAuthLayer`.
//!
//! With no credentials in the environment it starts the in-process Routera
//! emulator (tokens living 2 s) and shows several calls sharing one token,
//! a renewal after expiry, and the exchange count:
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Against a real endpoint:
//!
//! ```text
//! ROUTERA_CLIENT_ID=… ROUTERA_CLIENT_SECRET=… \
//! ROUTERA_API_URL=https://api.routera.io/v1/… \
//! [ROUTERA_TOKEN_URL=https://api.routera.io/oauth2/token] [ROUTERA_AUTH_METHOD=body|basic] \
//! cargo run --example quickstart
//! ```
//!
//! Exits non-zero with a message on any failure, including a non-2xx API
//! response.

use std::process::ExitCode;
use std::time::Duration;

use routera_auth::defaults;
use routera_auth::{
    AuthMethod, BoxError, CLIENT_ID_ENV, CLIENT_SECRET_ENV, ClientCredentials, HttpTokenExchange,
    ReqwestService, RouteraAuthLayer, TokenProvider,
};
use routera_auth_test::Emulator;
use tower::{Service, ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("quickstart failed: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let configured =
        std::env::var_os(CLIENT_ID_ENV).is_some() || std::env::var_os(CLIENT_SECRET_ENV).is_some();
    if configured {
        against_real_endpoint().await
    } else {
        against_emulator().await
    }
}

/// Builds the client stack: the auth layer in front of reqwest.
fn api_client(
    provider: &TokenProvider,
) -> impl Service<
    http::Request<String>,
    Response = http::Response<reqwest::Body>,
    Error = BoxError,
    Future: Send,
> + Clone
+ Send
+ 'static {
    ServiceBuilder::new()
        .layer(RouteraAuthLayer::new(provider.clone()))
        .service(ReqwestService::new(reqwest::Client::new()))
}

/// One GET; a non-2xx status is an error.
async fn get<S>(api: S, url: &str) -> Result<http::StatusCode, BoxError>
where
    S: Service<http::Request<String>, Response = http::Response<reqwest::Body>, Error = BoxError>,
{
    let request = http::Request::get(url).body(String::new())?;
    let status = api.oneshot(request).await?.status();
    if !status.is_success() {
        return Err(format!("GET {url} answered {status}").into());
    }
    Ok(status)
}

async fn against_emulator() -> Result<(), BoxError> {
    println!("No {CLIENT_ID_ENV}/{CLIENT_SECRET_ENV} set: starting the local Routera emulator.");
    let emulator = Emulator::builder()
        .expires_in(Duration::from_secs(2))
        .start()
        .await?;
    let provider = emulator.provider();
    let api = api_client(&provider);
    let url = emulator.resource_url();

    // Several concurrent calls, one token exchange.
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let (api, url) = (api.clone(), url.clone());
            tokio::spawn(async move { get(api, &url).await })
        })
        .collect();
    for (i, call) in calls.into_iter().enumerate() {
        println!("call {}: GET {url} -> {}", i + 1, call.await??);
    }
    println!("token exchanges so far: {}", emulator.exchange_count());
    if emulator.exchange_count() != 1 {
        return Err("expected the five calls to share one token".into());
    }
    let first = provider.token().await?;

    // Tokens live 2 s here; the provider renews them before they expire.
    println!("waiting for the token to need renewal…");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 6..=8 {
        println!("call {i}: GET {url} -> {}", get(api.clone(), &url).await?);
    }
    let renewed = provider.token().await? != first;
    println!(
        "token exchanges so far: {} (token renewed: {})",
        emulator.exchange_count(),
        if renewed { "yes" } else { "no" }
    );
    if emulator.exchange_count() != 2 || !renewed {
        return Err("expected exactly one renewal".into());
    }
    println!("ok");
    Ok(())
}

async fn against_real_endpoint() -> Result<(), BoxError> {
    let credentials = ClientCredentials::from_env()?;
    let token_url =
        std::env::var("ROUTERA_TOKEN_URL").unwrap_or_else(|_| defaults::TOKEN_URL.to_owned());
    let api_url = std::env::var("ROUTERA_API_URL")
        .map_err(|_| "ROUTERA_API_URL is not set: set it to the Routera API URL to GET")?;
    let auth_method = match std::env::var("ROUTERA_AUTH_METHOD") {
        Ok(value) => AuthMethod::parse(&value)?,
        Err(_) => AuthMethod::default(),
    };
    println!(
        "client {} -> token URL {token_url} ({auth_method:?})",
        credentials.client_id()
    );
    let exchange = HttpTokenExchange::reqwest()?
        .with_token_url(&token_url)?
        .with_auth_method(auth_method);
    let provider = TokenProvider::new(exchange, credentials);
    let api = api_client(&provider);
    for i in 1..=3 {
        println!(
            "call {i}: GET {api_url} -> {}",
            get(api.clone(), &api_url).await?
        );
    }
    println!("ok");
    Ok(())
}
