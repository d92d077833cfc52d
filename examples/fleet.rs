//! Fifty replicas of a service, in one process, sharing their token through
//! Redis: one exchange for the fleet where each replica would make its own.
//!
//! Each replica is a `TokenProvider` over an exchange under a `SharedCache`
//! layer with its own Redis connection, as the pods of a deployment would
//! be. The token endpoint is the in-process
//! Routera emulator, answering each exchange about 50 ms late, as a real
//! one does. The example cold-starts the fleet without and with sharing,
//! then forces a fleet-wide renewal, and prints the exchanges each made and
//! the store's counters:
//!
//! ```text
//! cargo run --example fleet --features redis
//! ```
//!
//! Redis is the one at `REDIS_URL` (Redis 6+ or Valkey), by default
//! `redis://127.0.0.1:6379`. With `REDIS_URL` unset and nothing answering
//! there, the example starts a `redis-server` of its own on a unix socket
//! (Debian package `redis-server`). Its keys have a prefix of their own and
//! expire within two minutes; nothing else in that Redis is touched.
//!
//! Exits non-zero with a message on any failure, or if sharing did not cut
//! the fleet's exchanges to one.

use std::error::Error;
use std::process::ExitCode;
use std::time::Duration;

use routera_auth::store::{RedisStore, SharedCache, StoreStats};
use routera_auth::{BoxError, TokenProvider};
use routera_auth_test::{Emulator, Fault, RedisServer};
use tokio::task::JoinSet;
use tower::ServiceBuilder;

/// Replicas in the fleet.
const REPLICAS: usize = 50;
/// Where Redis is looked for when `REDIS_URL` is unset.
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("fleet failed: {}", chain(&*err));
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    // `_server` keeps a redis-server of the example's own running.
    let (redis_url, _server) = find_redis().await?;
    let emulator = Emulator::builder()
        .expires_in(Duration::from_secs(120))
        .start()
        .await?;
    emulator.inject(Fault::slow(Duration::from_millis(50)));
    println!(
        "Token endpoint: the Routera emulator at {}, answering in about 50 ms.",
        emulator.token_url()
    );

    let (alone, _) = fleet(&emulator, None)?;
    let (shared, caches) = fleet(&emulator, Some(&redis_url))?;

    println!("\n{REPLICAS} replicas cold-starting at once:");
    let without = count_exchanges(&emulator, all_ask(&alone, false)).await?;
    println!("  without sharing: {}", exchanges(without));
    let with = count_exchanges(&emulator, all_ask(&shared, false)).await?;
    println!("  with sharing:    {}", exchanges(with));

    println!("\nEvery replica forces a renewal (`refresh()`) at once:");
    let without_refresh = count_exchanges(&emulator, all_ask(&alone, true)).await?;
    println!("  without sharing: {}", exchanges(without_refresh));
    let with_refresh = count_exchanges(&emulator, all_ask(&shared, true)).await?;
    println!("  with sharing:    {}", exchanges(with_refresh));

    let stats: Vec<StoreStats> = caches.iter().map(SharedCache::stats).collect();
    let sum = |count: fn(&StoreStats) -> u64| stats.iter().map(count).sum::<u64>();
    println!(
        "\nStore counters summed over the {REPLICAS} sharing replicas: hits {}, misses {}, \
         errors {}, lock wins {}, waits {}, fallbacks {}",
        sum(|s| s.hits),
        sum(|s| s.misses),
        sum(|s| s.errors),
        sum(|s| s.lock_wins),
        sum(|s| s.waits),
        sum(|s| s.fallbacks),
    );

    if with != 1 || with_refresh != 1 {
        return Err("expected one exchange for the sharing fleet each time".into());
    }
    println!("ok");
    Ok(())
}

/// The Redis to share on: `REDIS_URL`, else the default address, else a
/// `redis-server` started here (returned too, to keep it running).
async fn find_redis() -> Result<(String, Option<RedisServer>), BoxError> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        // The URL may hold a password: it is not printed.
        if let Err(error) = RedisStore::connect(&url).await {
            return Err(format!("REDIS_URL is set, but {}", chain(&error)).into());
        }
        println!("Redis: the one at REDIS_URL.");
        return Ok((url, None));
    }
    if RedisStore::connect(DEFAULT_REDIS_URL).await.is_ok() {
        println!("Redis: {DEFAULT_REDIS_URL} (REDIS_URL is unset).");
        return Ok((DEFAULT_REDIS_URL.to_owned(), None));
    }
    match RedisServer::start().await {
        Ok(server) => {
            println!(
                "Redis: REDIS_URL is unset and nothing answers at {DEFAULT_REDIS_URL}, so the \
                 example started a redis-server of its own on {}.",
                server.socket_path().display()
            );
            Ok((server.url(), Some(server)))
        }
        Err(error) => Err(format!(
            "no Redis to share tokens on: REDIS_URL is unset, nothing answers at \
             {DEFAULT_REDIS_URL}, and a redis-server could not be started: {error}. \
             Set REDIS_URL to a Redis 6+ or Valkey, or run one on 127.0.0.1:6379"
        )
        .into()),
    }
}

/// `REPLICAS` providers for the emulator's client; if `redis_url` is
/// given, each exchanges under a shared cache with a Redis connection of
/// its own, returned too.
fn fleet(
    emulator: &Emulator,
    redis_url: Option<&str>,
) -> Result<(Vec<TokenProvider>, Vec<SharedCache>), BoxError> {
    // A prefix of this run's own: a shared Redis holds nothing of another.
    let prefix = format!("routera-auth-fleet-example:{}", std::process::id());
    let (mut replicas, mut caches) = (Vec::with_capacity(REPLICAS), Vec::new());
    for _ in 0..REPLICAS {
        let exchange = emulator.exchange();
        let replica = match redis_url {
            Some(url) => {
                // Connects on first use, as a service that must start even
                // while Redis is down would.
                let store = RedisStore::open(url)?;
                let cache = SharedCache::for_exchange(store, &exchange).key_prefix(&prefix);
                caches.push(cache.clone());
                let exchange = ServiceBuilder::new().layer(cache).service(exchange);
                TokenProvider::new(exchange, emulator.credentials())
            }
            None => TokenProvider::new(exchange, emulator.credentials()),
        };
        replicas.push(replica);
    }
    Ok((replicas, caches))
}

/// Every replica asks for a token at once (`refresh`: forces a renewal).
async fn all_ask(replicas: &[TokenProvider], refresh: bool) -> Result<(), BoxError> {
    let mut asks = JoinSet::new();
    for replica in replicas {
        let replica = replica.clone();
        asks.spawn(async move {
            if refresh {
                replica.refresh().await
            } else {
                replica.token().await
            }
        });
    }
    while let Some(asked) = asks.join_next().await {
        asked??;
    }
    Ok(())
}

/// The exchanges the emulator answered while `asking` ran.
async fn count_exchanges(
    emulator: &Emulator,
    asking: impl Future<Output = Result<(), BoxError>>,
) -> Result<u64, BoxError> {
    let before = emulator.exchange_count();
    asking.await?;
    Ok(emulator.exchange_count() - before)
}

/// "1 exchange", "50 exchanges".
fn exchanges(n: u64) -> String {
    if n == 1 {
        "1 exchange".to_owned()
    } else {
        format!("{n} exchanges")
    }
}

/// `error` and its causes, on one line.
fn chain(error: &dyn Error) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}
