//! An application that uses rustls with ring, and routera-auth with the
//! `rustls-ring` feature. Exits non-zero on any failure.
//!
//! 1. Builds the exchange's client (`HttpTokenExchange::reqwest()`, rustls
//!    on ring, the provider given explicitly) and checks that this installed
//!    no process-wide default `CryptoProvider`.
//! 2. Shares a token through a `RedisStore` over TLS (rustls on ring)
//!    with a real `redis-server` serving TLS (`test_util::RedisTlsServer`),
//!    and checks again that no process-wide provider was installed.
//! 3. Calls `rustls::ClientConfig::builder()`, which picks the process-level
//!    provider from rustls's features and panics if it cannot: with
//!    aws-lc-rs in the build beside ring, it would.
//! 4. Completes a token exchange against the in-process emulator through a
//!    `TokenProvider` over that exchange.

use std::process::ExitCode;
use std::time::Duration;

use routera_auth::store::{RedisStore, RedisTls, StoreKeys, TokenStore};
use routera_auth::test_util::{Emulator, RedisTlsServer};
use routera_auth::{BoxError, HttpTokenExchange, TokenProvider};

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => {
            println!("ring-app: ok");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("ring-app failed: {err}");
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
    let emulator = Emulator::start().await?;
    let exchange = HttpTokenExchange::reqwest()?.with_token_url(&emulator.token_url())?;
    if rustls::crypto::CryptoProvider::get_default().is_some() {
        return Err("building the exchange installed a process-wide CryptoProvider".into());
    }

    if RedisTls::from_features() != Some(RedisTls::RustlsRing) {
        return Err(format!("RedisStore's TLS is {:?}", RedisTls::from_features()).into());
    }
    let redis = RedisTlsServer::start().await?;
    let store = RedisStore::builder(&redis.url())
        .add_root_certificates(redis.ca_pem())
        .connect()
        .await?;
    let keys = StoreKeys::new("ring-app", "tls");
    if !store.lock(&keys, "ring-app", Duration::from_secs(5)).await? {
        return Err("the lock on the TLS Redis was not taken".into());
    }
    if rustls::crypto::CryptoProvider::get_default().is_some() {
        return Err("the TLS connection to Redis installed a process-wide CryptoProvider".into());
    }
    println!("ring-app: RedisStore over TLS (rustls on ring) done");

    // The application's own TLS: panics if rustls cannot pick a provider.
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    println!(
        "ring-app: rustls::ClientConfig::builder() works ({} cipher suites)",
        config.crypto_provider().cipher_suites.len()
    );

    let provider = TokenProvider::new(exchange, emulator.credentials());
    let token = provider.token().await?;
    if !emulator.token_validator().is_valid(token.secret()) {
        return Err("the emulator does not know the token the exchange returned".into());
    }
    if emulator.exchange_count() != 1 {
        return Err(format!(
            "expected 1 token exchange, got {}",
            emulator.exchange_count()
        )
        .into());
    }
    println!("ring-app: token exchange over HttpTokenExchange::reqwest() (rustls on ring) done");

    Ok(())
}
