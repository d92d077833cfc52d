//! Live heap bytes per idle client of a `TokenProviders`: 10,000 clients
//! (keys `0..10_000`), each with credentials of its own from the source
//! and a provider holding an 88-byte token from a `tower::service_fn`
//! exchange, on a multi-thread runtime, counted by a global allocator that
//! sees every thread (`stats_alloc`). Counts the exchanges too: one per
//! client.
//!
//! Usage: `cargo run --release --example clients_memory [clients]`
//! (default 10000).

use std::alloc::System;
use std::convert::Infallible;
use std::future::ready;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use routera_auth::clients::{CredentialSource, TokenProviders};
use routera_auth::{ClientCredentials, Token, TokenError, TokenRequest};
use routera_auth_benches::runtime;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    let count: u32 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let runtime = runtime(2);
    let token = "t".repeat(88);
    let exchanges = Arc::new(AtomicUsize::new(0));
    let exchange = {
        let exchanges = Arc::clone(&exchanges);
        tower::service_fn(move |_: TokenRequest| {
            exchanges.fetch_add(1, Ordering::SeqCst);
            ready(Ok::<_, TokenError>(Token::new(
                token.as_str(),
                Duration::from_secs(3600),
            )))
        })
    };
    let source = CredentialSource::from_fn(|client: u32| {
        ready(Ok::<_, Infallible>(ClientCredentials::new(
            format!("client-{client}"),
            format!("secret-of-client-{client}"),
        )))
    });
    let idle = |runtime: &tokio::runtime::Runtime, tasks: usize| {
        runtime.block_on(async {
            while tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
                > tasks
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    };
    // What the runtime and the cache set up once is made outside the
    // measurement, by a first set, dropped.
    let warm_up = TokenProviders::new(exchange.clone(), source.clone());
    runtime.block_on(async {
        for client in 0..100 {
            let provider = warm_up.provider(&client).await.expect("credentials");
            provider.token().await.expect("token");
        }
    });
    drop(warm_up);
    idle(&runtime, 0);
    exchanges.store(0, Ordering::SeqCst);

    let region = Region::new(GLOBAL);
    // A quarter of room to spare, as the cache's shards each hold their
    // share and keys spread over them unevenly.
    let providers = TokenProviders::builder(exchange, source)
        .max_clients(u64::from(count) + u64::from(count / 4))
        .build();
    runtime.block_on(async {
        for client in 0..count {
            let provider = providers.provider(&client).await.expect("credentials");
            provider.token().await.expect("token");
        }
        providers.run_pending_tasks();
    });
    // Every worker left.
    idle(&runtime, 0);
    let change = region.change();
    let live = change.bytes_allocated as i64 - change.bytes_deallocated as i64
        + change.bytes_reallocated as i64;
    let tasks = runtime.metrics().num_alive_tasks();
    println!(
        "{count} idle clients holding an 88-byte token: {} bytes each ({live} in all, \
         credentials and keys included), {} exchanges, {} clients kept, {tasks} live tasks",
        live / i64::from(count),
        exchanges.load(Ordering::SeqCst),
        providers.len(),
    );
    assert_eq!(
        exchanges.load(Ordering::SeqCst),
        count as usize,
        "one exchange per client"
    );
    assert_eq!(providers.len(), u64::from(count), "every client is kept");
    drop(providers);
}
