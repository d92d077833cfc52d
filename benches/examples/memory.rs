//! Live heap bytes and tasks per idle provider: 1,000 providers over a
//! `tower::service_fn` exchange, each holding an 88-byte token on a
//! multi-thread runtime, counted by a global allocator that sees every
//! thread (`stats_alloc`). The providers' own `Vec` is subtracted.
//!
//! Usage: `cargo run --release --example memory [providers]` (default 1000).

use std::alloc::System;
use std::future::ready;
use std::time::Duration;

use routera_auth::{ClientCredentials, Token, TokenError, TokenProvider, TokenRequest};
use routera_auth_benches::runtime;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let runtime = runtime(2);
    let token = "t".repeat(88);
    let exchange = tower::service_fn(move |_: TokenRequest| {
        ready(Ok::<_, TokenError>(Token::new(
            token.as_str(),
            Duration::from_secs(3600),
        )))
    });
    let credentials = ClientCredentials::new("memory-client", "memory-secret");
    let idle = |runtime: &tokio::runtime::Runtime| {
        runtime.block_on(async {
            while tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
                > 0
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
    };
    // What the runtime sets up once (its timer wheel, thread-local state)
    // is made outside the measurement, by a first provider.
    let warm_up = TokenProvider::new(exchange.clone(), credentials.clone());
    runtime.block_on(warm_up.token()).expect("token");
    drop(warm_up);
    idle(&runtime);

    let region = Region::new(GLOBAL);
    let mut providers = Vec::with_capacity(count);
    for _ in 0..count {
        providers.push(TokenProvider::new(exchange.clone(), credentials.clone()));
    }
    runtime.block_on(async {
        for provider in &providers {
            provider.token().await.expect("token");
        }
    });
    idle(&runtime);
    let change = region.change();
    let live = change.bytes_allocated as i64 - change.bytes_deallocated as i64
        + change.bytes_reallocated as i64
        - (count * std::mem::size_of::<TokenProvider>()) as i64;
    let tasks = runtime.metrics().num_alive_tasks();
    println!(
        "{count} idle providers holding an 88-byte token: {} bytes each, {} live tasks in all",
        live / count as i64,
        tasks
    );
    drop(providers);
}
