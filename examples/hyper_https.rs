//! A hyper-util client over https behind the auth layer, with one TLS
//! connector for both the token exchange and the API calls.
//!
//! The exchange sends `Full<Bytes>` bodies and the API calls here send
//! `Empty<Bytes>`, so they are two `Client`s, built from one connector. The
//! connector is built with an explicit rustls crypto provider, so it never
//! depends on, nor sets, a process-wide default.
//!
//! Without credentials it runs against the embedded emulator (plain http on
//! 127.0.0.1); with `ROUTERA_CLIENT_ID`, `ROUTERA_CLIENT_SECRET` and
//! `ROUTERA_API_URL` set it calls Routera over https:
//!
//! ```sh
//! cargo run --example hyper_https
//! ```

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use routera_auth::{
    BoxError, ClientCredentials, HttpTokenExchange, RouteraAuthLayer, TokenProvider,
};
use routera_auth_test::Emulator;
use tower::{ServiceBuilder, ServiceExt};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let crypto = rustls::crypto::aws_lc_rs::default_provider();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(crypto)?
        // Plain http is for the local emulator only: `HttpTokenExchange`
        // refuses a plain-http token URL unless its host is loopback.
        .https_or_http()
        .enable_http1()
        .build();
    let exchange_client =
        Client::builder(TokioExecutor::new()).build::<_, Full<Bytes>>(connector.clone());
    let api_client = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector);

    // Real credentials if set, else the emulator (kept alive until the end).
    let (credentials, exchange, api_url, _emulator) = match ClientCredentials::from_env() {
        Ok(credentials) => {
            let api_url = std::env::var("ROUTERA_API_URL")
                .map_err(|_| "ROUTERA_API_URL is not set: set it to the Routera API URL to GET")?;
            (
                credentials,
                HttpTokenExchange::new(exchange_client),
                api_url,
                None,
            )
        }
        Err(_) => {
            let emulator = Emulator::start().await?;
            let exchange =
                HttpTokenExchange::new(exchange_client).with_token_url(&emulator.token_url())?;
            println!("no credentials set: using the embedded Routera emulator");
            (
                emulator.credentials(),
                exchange,
                emulator.resource_url(),
                Some(emulator),
            )
        }
    };
    let provider = TokenProvider::new(exchange, credentials);
    let api = ServiceBuilder::new()
        .layer(RouteraAuthLayer::new(provider.clone()))
        .service(api_client);

    for _ in 0..2 {
        let request = Request::get(api_url.as_str()).body(Empty::new())?;
        let response = api.clone().oneshot(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!("GET {api_url} -> {status} ({} bytes)", body.len());
    }
    println!("token exchanges so far: {}", provider.stats().exchanges);
    Ok(())
}
