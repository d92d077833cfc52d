//! An application that uses rustls with ring, and routera-auth with the
//! `rustls-ring` feature. Exits non-zero on any failure.
//!
//! 1. Builds the exchange's client (`HttpTokenExchange::reqwest()`, rustls
//!    on ring, the provider given explicitly) and checks that this installed
//!    no process-wide default `CryptoProvider`.
//! 2. Shares a token through a `RedisStore` over TLS (rustls on ring)
//!    with a real `redis-server` serving TLS (`routera_auth_test::RedisTlsServer`),
//!    and checks again that no process-wide provider was installed.
//! 3. Calls `rustls::ClientConfig::builder()`, which picks the process-level
//!    provider from rustls's features and panics if it cannot: with
//!    aws-lc-rs in the build beside ring, it would.
//!    Before that, a `RedisStore` on a Redis Cluster over TLS
//!    (`routera_auth_test::RedisCluster::start_tls`), whose TLS is the redis
//!    crate's on the process-wide provider, fails with the error that says
//!    to install one, and installs none; after it (the provider installed),
//!    the same store takes a lock over TLS on ring.
//! 4. Completes a token exchange against the in-process emulator through a
//!    `TokenProvider` over that exchange.
//! 5. Completes token exchanges over real TLS handshakes against the
//!    emulator serving HTTPS (its server on ring too): through a reqwest
//!    client of the application's own on ring that trusts the emulator's
//!    CA, and through `HttpTokenExchange::reqwest()` in a child process (this
//!    program run again) whose `SSL_CERT_FILE` holds that CA.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use routera_auth::store::{RedisStore, RedisTls, StoreKeys, TokenStore};
use routera_auth_test::{Emulator, RedisCluster, RedisTlsServer};
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

/// Set in the child process: the token URL it exchanges with.
const CHILD_URL: &str = "RING_APP_TOKEN_URL";

async fn run() -> Result<(), BoxError> {
    if let Ok(url) = std::env::var(CHILD_URL) {
        return child(&url).await;
    }
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

    let cluster = RedisCluster::start_tls().await?;
    let cluster_store = RedisStore::cluster_builder(cluster.urls())
        .add_root_certificates(cluster.ca_pem().unwrap_or_default())
        .build()?;
    let cluster_keys = StoreKeys::new("ring-app", "cluster");
    match cluster_store
        .lock(&cluster_keys, "ring-app", Duration::from_secs(5))
        .await
    {
        Err(error) if format!("{error:?}").contains("install_default()") => {}
        other => {
            return Err(format!(
                "a TLS cluster store without a process-wide provider: {other:?}"
            )
            .into());
        }
    }
    if rustls::crypto::CryptoProvider::get_default().is_some() {
        return Err("the TLS cluster store installed a process-wide CryptoProvider".into());
    }
    println!("ring-app: RedisStore on a TLS cluster without a provider fails clearly");

    // The application's own TLS: panics if rustls cannot pick a provider.
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    println!(
        "ring-app: rustls::ClientConfig::builder() works ({} cipher suites)",
        config.crypto_provider().cipher_suites.len()
    );
    // What the application does for a cluster over TLS (above, `builder()`
    // installed ring already, from rustls's features).
    let _ = rustls::crypto::ring::default_provider().install_default();
    if !cluster_store
        .lock(&cluster_keys, "ring-app", Duration::from_secs(5))
        .await?
    {
        return Err("the lock on the TLS Redis Cluster was not taken".into());
    }
    println!("ring-app: RedisStore on a Redis Cluster over TLS (rustls on ring) done");

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

    // HttpTokenExchange::reqwest() trusts the CA as a private CA is
    // trusted: SSL_CERT_FILE, in a process of its own.
    let ca_file = std::env::temp_dir().join(format!("ring-app-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, ca_pem)?;
    let mut command = std::process::Command::new(std::env::current_exe()?);
    command
        .env("SSL_CERT_FILE", &ca_file)
        .env_remove("SSL_CERT_DIR")
        .env(CHILD_URL, emulator.token_url());
    let status = tokio::task::spawn_blocking(move || command.status()).await?;
    std::fs::remove_file(&ca_file)?;
    if !status?.success() {
        return Err("the child's exchange over HttpTokenExchange::reqwest() and TLS failed".into());
    }
    if emulator.exchange_count() != 2 {
        return Err(format!(
            "expected 2 token exchanges over TLS, got {}",
            emulator.exchange_count()
        )
        .into());
    }
    Ok(())
}

/// In the child: one exchange over `HttpTokenExchange::reqwest()`.
async fn child(url: &str) -> Result<(), BoxError> {
    let exchange = HttpTokenExchange::reqwest()?.with_token_url(url)?;
    let credentials =
        routera_auth::ClientCredentials::new("routera-test-client", "routera-test-secret");
    let provider = TokenProvider::new(exchange, credentials);
    provider.token().await?;
    println!(
        "ring-app (child): token exchange over TLS through HttpTokenExchange::reqwest() (rustls on ring) done"
    );
    Ok(())
}
