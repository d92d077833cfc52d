//! The time of `RouteraAuth` over tower-http's `AddAuthorization` on the
//! no-op stack, measured interleaved: each round times a batch of requests
//! through one layer, then the same through the other, so both see the same
//! machine; the ratio of each round is kept and their median reported. On a
//! shared machine, where criterion's runs of one variant after the other
//! drift by more than the difference measured, this is the steady figure.
//!
//! Also the same with 1 and 2 threads, each sending through its own clone
//! of one service: how much slower a request gets when a second thread
//! sends at the same time, for each layer.
//!
//! Usage: `cargo run --release --example ratio [rounds]` (default 200).

use http::{Request, Response};
use routera_auth::RouteraAuthLayer;
use routera_auth_benches::{Noop, TOKEN, median, on_threads, quantile, runtime, warm_provider};
use tower::{Layer, Service};
use tower_http::auth::AddAuthorizationLayer;

const BATCH: u32 = 20_000;

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(200);
    let runtime = runtime(1);
    let provider = warm_provider(&runtime);
    let floor = AddAuthorizationLayer::bearer(TOKEN).layer(Noop);
    let auth = RouteraAuthLayer::new(provider).layer(Noop);

    let mut single = Vec::with_capacity(rounds);
    let mut scaling = Vec::with_capacity(rounds);
    let (mut floor_times, mut auth_times) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate which goes first, so neither always runs on a warmer
        // or colder machine.
        let (a, b) = if round % 2 == 0 {
            let a = per_request(&floor, 1);
            (a, per_request(&auth, 1))
        } else {
            let b = per_request(&auth, 1);
            (per_request(&floor, 1), b)
        };
        single.push(b / a);
        floor_times.push(a);
        auth_times.push(b);
        let floor_2 = per_request(&floor, 2) / per_request(&floor, 1);
        let auth_2 = per_request(&auth, 2) / per_request(&auth, 1);
        scaling.push((floor_2, auth_2));
    }
    println!(
        "no-op stack, {rounds} rounds of {BATCH} requests; median per request: \
         AddAuthorization {:.1} ns, RouteraAuth {:.1} ns",
        median(&mut floor_times),
        median(&mut auth_times)
    );
    println!(
        "RouteraAuth / AddAuthorization: median {:.3} (quartiles {:.3} to {:.3})",
        median(&mut single),
        quantile(&mut single, 0.25),
        quantile(&mut single, 0.75)
    );
    let (mut floor_2, mut auth_2): (Vec<f64>, Vec<f64>) = scaling.into_iter().unzip();
    println!(
        "time per request, 2 threads over 1: AddAuthorization median {:.3}, RouteraAuth median {:.3}",
        median(&mut floor_2),
        median(&mut auth_2)
    );
}

/// Nanoseconds per request with `threads` threads each sending `BATCH`
/// requests through its own clone of `service`; the slowest thread's time.
fn per_request<S>(service: &S, threads: usize) -> f64
where
    S: Service<Request<()>, Response = Response<()>> + Clone + Send + 'static,
    S::Error: std::fmt::Debug,
{
    let slowest = on_threads(service, threads, u64::from(BATCH / 10), u64::from(BATCH));
    slowest.as_nanos() as f64 / f64::from(BATCH)
}
