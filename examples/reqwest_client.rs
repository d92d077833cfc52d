//! reqwest behind `RouteraAuthLayer`, with `RetryOnUnauthorized` recovering
//! from a revoked token.
//!
//! ```text
//! cargo run --example reqwest_client
//! ```
//!
//! Without `ROUTERA_CLIENT_ID`/`ROUTERA_CLIENT_SECRET` it runs against the
//! local emulator and revokes the token halfway; with them it GETs
//! `ROUTERA_API_URL` (token URL from `ROUTERA_TOKEN_URL`, default the real
//! endpoint).

use std::process::ExitCode;

use routera_auth::defaults;
use routera_auth::{
    BoxError, CLIENT_ID_ENV, CLIENT_SECRET_ENV, ClientCredentials, HttpTokenExchange,
    ReqwestService, RetryOnUnauthorized, RouteraAuthLayer, TokenProvider,
};
use routera_auth_test::Emulator;
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("reqwest_client failed: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let configured =
        std::env::var_os(CLIENT_ID_ENV).is_some() || std::env::var_os(CLIENT_SECRET_ENV).is_some();
    let emulator = if configured {
        None
    } else {
        Some(Emulator::start().await?)
    };
    // The setup: one provider, one client stack, cloned wherever needed.
    let (provider, api_url) = match &emulator {
        Some(emulator) => (emulator.provider(), emulator.resource_url()),
        None => {
            let token_url = std::env::var("ROUTERA_TOKEN_URL")
                .unwrap_or_else(|_| defaults::TOKEN_URL.to_owned());
            let provider = TokenProvider::new(
                HttpTokenExchange::reqwest()?.with_token_url(&token_url)?,
                ClientCredentials::from_env()?,
            );
            let api_url = std::env::var("ROUTERA_API_URL")
                .map_err(|_| "set ROUTERA_API_URL to the URL to GET")?;
            (provider, api_url)
        }
    };
    let api = ServiceBuilder::new()
        .retry(RetryOnUnauthorized::new()) // outside the auth layer: a retry gets a fresh token
        .layer(RouteraAuthLayer::new(provider.clone()))
        .service(ReqwestService::new(reqwest::Client::new()));

    for i in 1..=4 {
        if i == 3
            && let Some(emulator) = &emulator
        {
            emulator.revoke_all();
            println!("(the emulator revoked every token it issued)");
        }
        let request = http::Request::get(&api_url).body(String::new())?;
        let response = api.clone().oneshot(request).await?;
        let status = response.status();
        println!("call {i}: GET {api_url} -> {status}");
        if !status.is_success() {
            return Err(format!("GET {api_url} answered {status}").into());
        }
    }
    if let Some(emulator) = &emulator {
        println!(
            "token exchanges: {} (one at start, one after the revocation)",
            emulator.exchange_count()
        );
        if emulator.exchange_count() != 2 {
            return Err("expected exactly two token exchanges".into());
        }
    }
    println!("ok");
    Ok(())
}
