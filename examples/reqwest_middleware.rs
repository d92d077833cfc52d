//! A reqwest-middleware client whose requests carry the Routera token, and
//! recover from a revoked one.
//!
//! Runs against the embedded emulator:
//! `cargo run --example reqwest_middleware --features reqwest-middleware`.

use routera_auth::RouteraAuthMiddleware;
use routera_auth_test::Emulator;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let emulator = Emulator::start().await?;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(RouteraAuthMiddleware::new(emulator.provider()))
        .build();

    let response = client.get(emulator.resource_url()).send().await?;
    println!("GET {} -> {}", emulator.resource_url(), response.status());

    // The API revokes the token: the middleware invalidates it and retries
    // the request once with a fresh one.
    emulator.revoke_all();
    let response = client.get(emulator.resource_url()).send().await?;
    println!("after revocation -> {}", response.status());
    println!("token exchanges: {}", emulator.exchange_count());
    Ok(())
}
