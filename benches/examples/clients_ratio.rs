//! The cost of the per-client layer's key lookup on the no-op stack,
//! measured interleaved (as `examples/ratio.rs` does): each round times a
//! batch of requests through the single-provider layer, then through the
//! per-client layer, every request for the next of 1,000 clients with a
//! fresh token (the key in an extension, which both pay for); the
//! difference of each round is kept and their median reported. Also each
//! with 2 threads over 1, every thread across the same 1,000 clients.
//!
//! Usage: `cargo run --release --example clients_ratio [rounds]`
//! (default 100).

use http::{Request, Response};
use routera_auth::RouteraAuthLayer;
use routera_auth_benches::{
    Noop, key_of, median, on_threads_keyed, quantile, runtime, warm_provider, warm_providers,
};
use tower::{Layer, Service};

const BATCH: u32 = 20_000;
const KEYS: u32 = 1_000;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let runtime = runtime(1);
    let single = RouteraAuthLayer::new(warm_provider(&runtime)).layer(Noop);
    let providers = warm_providers(&runtime, KEYS);
    let keyed = RouteraAuthLayer::per_client(providers, key_of).layer(Noop);

    let (mut single_times, mut keyed_times, mut extra) = (Vec::new(), Vec::new(), Vec::new());
    let (mut single_2, mut keyed_2) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (a, b) = if round % 2 == 0 {
            let a = per_request(&single, 1);
            (a, per_request(&keyed, 1))
        } else {
            let b = per_request(&keyed, 1);
            (per_request(&single, 1), b)
        };
        single_times.push(a);
        keyed_times.push(b);
        extra.push(b - a);
        single_2.push(per_request(&single, 2) / per_request(&single, 1));
        keyed_2.push(per_request(&keyed, 2) / per_request(&keyed, 1));
    }
    println!(
        "no-op stack, {rounds} rounds of {BATCH} requests across {KEYS} clients; median per \
         request: RouteraAuth {:.1} ns, per_client {:.1} ns",
        median(&mut single_times),
        median(&mut keyed_times)
    );
    println!(
        "key lookup: median {:.1} ns more per request (quartiles {:.1} to {:.1})",
        median(&mut extra),
        quantile(&mut extra, 0.25),
        quantile(&mut extra, 0.75)
    );
    println!(
        "time per request, 2 threads over 1: RouteraAuth median {:.3}, per_client median {:.3}",
        median(&mut single_2),
        median(&mut keyed_2)
    );
}

/// Nanoseconds per request with `threads` threads each sending `BATCH`
/// requests through its own clone of `service`; the slowest thread's time.
fn per_request<S>(service: &S, threads: usize) -> f64
where
    S: Service<Request<()>, Response = Response<()>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
{
    let slowest = on_threads_keyed(service, threads, KEYS, u64::from(BATCH));
    slowest.as_nanos() as f64 / f64::from(BATCH)
}
