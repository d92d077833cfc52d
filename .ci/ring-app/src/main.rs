//! An application that uses rustls with ring, and routera-auth with the
//! `rustls-ring` feature. Exits non-zero on any failure.
//!
//! 1. Builds the exchange's client (`HttpTokenExchange::reqwest()`, rustls
//!    on ring, the provider given explicitly) and checks that this installed
//!    no process-wide default `CryptoProvider`.
//! 2. Calls `rustls::ClientConfig::builder()`, which picks the process-level
//!    provider from rustls's features and panics if it cannot: with
//!    aws-lc-rs in the build beside ring, it would.
//! 3. Completes a token exchange against the in-process emulator through a
//!    `TokenProvider` over that exchange.
//! 4. Completes a token exchange over a real TLS handshake against the
//!    emulator serving HTTPS (its server on ring too), through a reqwest
//!    client of the application's own on ring that trusts the emulator's CA.

use std::process::ExitCode;

use std::sync::Arc;

use routera_auth::test_util::Emulator;
use routera_auth::{BoxError, HttpTokenExchange, ReqwestService, TokenProvider};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

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
    https().await
}

/// A token exchange over TLS, both ends on ring.
async fn https() -> Result<(), BoxError> {
    let emulator = Emulator::builder().https().start().await?;
    let ca_pem = emulator
        .ca_pem()
        .ok_or("an HTTPS emulator hands out no CA")?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let client = routera_auth::reqwest::Client::builder()
        .redirect(routera_auth::reqwest::redirect::Policy::none())
        .tls_backend_preconfigured(config)
        .build()?;
    let exchange = HttpTokenExchange::new(ReqwestService::new(client))
        .with_token_url(&emulator.token_url())?;
    let provider = TokenProvider::new(exchange, emulator.credentials());
    let token = provider.token().await?;
    if !emulator.token_validator().is_valid(token.secret()) {
        return Err("the HTTPS emulator does not know the token the exchange returned".into());
    }
    println!(
        "ring-app: token exchange over TLS against the HTTPS emulator (ring on both ends) done"
    );
    Ok(())
}
