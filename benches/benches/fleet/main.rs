//! The fleet of replicas that share one token through Redis: a cold start
//! of N replicas (N = 10, 100, 1,000) with and without the shared store,
//! then, in a full run, the fleet under stress and faults (`faults.rs`).
//!
//! Each replica is a `TokenProvider` of its own; with the store, its
//! exchange is under a `SharedCache` layer with its own `RedisStore`
//! connection (opened before the start, as a service connects at boot), on
//! a real `redis-server` the bench starts on a unix socket (Debian package
//! `redis-server`). The token endpoint is the in-process emulator, made to
//! answer late with `Fault::slow`. Redis is flushed between runs.
//!
//! # Cold starts
//!
//! N replicas ask for a token at the same instant, the endpoint answering
//! every exchange 50 ms late. For each run it prints the exchanges the
//! fleet made and the time from the start until each replica had its token
//! (p50, p99, max). Target for the store runs: 1 exchange for the fleet and
//! p99 within the exchange time plus 100 ms.
//!
//! # Faults (full run only; targets in `faults.rs`)
//!
//! 1. Slow endpoint: 20 replicas at a cold start, endpoint 6 s, default
//!    options. Target: 1 token request, every replica's first token within
//!    7.5 s.
//! 2. Holder killed mid-exchange at a cold start: 10 replicas, endpoint
//!    2 s, 5 s exchange timeout. Target: at most 3 token requests, the
//!    others' token within lease + exchange + 0.5 s = 3.5 s.
//! 3. Short tokens, holder killed at a renewal: 8 replicas with request
//!    loops, 6 s tokens, endpoint 1 s. Target over the 20 s after the kill:
//!    one token request per refresh, no API request waiting longer than
//!    the exchange + 0.5 s = 1.5 s.
//! 4. Store outage: Redis frozen 5 s under 20 replicas serving requests.
//!
//! Each run counts its own token requests (the endpoint's counters, read
//! before and after it). Timings and targets are printed as "met" or
//! "missed", never a failure; a store cold start that makes other than one
//! exchange, or a replica that gets no token, is: the bench then exits
//! non-zero, once everything is printed.
//!
//! Not a criterion bench: what is measured is a distribution over one run,
//! not a loop. Run with
//!
//! ```text
//! cargo bench --manifest-path benches/Cargo.toml --bench fleet
//! ```
//!
//! Run without `--bench` (`cargo test --benches`) or with `--test`
//! (`cargo bench -- --test`), it checks N = 10 only and skips the faults.

mod faults;

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use routera_auth::TokenProvider;
use routera_auth::store::{RedisStore, SharedCache, StoreStats};
use routera_auth_test::{Emulator, Fault, RedisServer};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The fleet sizes of a full run.
const FLEETS: [usize; 3] = [10, 100, 1000];
/// The fleet sizes of a quick check.
const QUICK_FLEETS: [usize; 1] = [10];
/// How late the token endpoint answers each exchange.
const EXCHANGE_DELAY: Duration = Duration::from_millis(50);
/// The target for p99 with the store: the exchange time plus this.
const TARGET_MARGIN: Duration = Duration::from_millis(100);
/// Solo exchanges timed to measure the exchange time.
const SOLO_EXCHANGES: usize = 5;
/// The longest a cold start may take before the bench gives up on it.
const BOUND: Duration = Duration::from_secs(60);

/// What one cold start of a fleet gave.
struct Run {
    replicas: usize,
    shared: bool,
    exchanges: u64,
    /// The time until each replica had its token, sorted.
    waits: Vec<Duration>,
    /// The store counters summed over the replicas.
    stats: StoreCounts,
}

/// The store counters of a run, summed over its replicas' shared caches.
#[derive(Default)]
struct StoreCounts {
    lock_wins: u64,
    waits: u64,
    fallbacks: u64,
    errors: u64,
}

impl StoreCounts {
    fn sum(stats: impl IntoIterator<Item = StoreStats>) -> Self {
        let mut sum = Self::default();
        for own in stats {
            sum.lock_wins += own.lock_wins;
            sum.waits += own.waits;
            sum.fallbacks += own.fallbacks;
            sum.errors += own.errors;
        }
        sum
    }
}

impl fmt::Display for StoreCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "store: {} lock wins, {} waits, {} fallbacks, {} errors",
            self.lock_wins, self.waits, self.fallbacks, self.errors
        )
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; `cargo test --benches` does not.
    let quick = !args.iter().any(|arg| arg == "--bench") || args.iter().any(|arg| arg == "--test");
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("fleet: could not start a Tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(quick)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("fleet: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(quick: bool) -> Result<(), String> {
    let redis = RedisServer::start()
        .await
        .map_err(|error| format!("this bench needs a real Redis: {error}"))?;
    let emulator = Emulator::builder()
        .expires_in(Duration::from_secs(3600))
        .start()
        .await
        .map_err(|error| format!("could not start the emulator: {error}"))?;
    emulator.inject(Fault::slow(EXCHANGE_DELAY));

    let exchange_time = solo_exchange(&emulator).await?;
    let target = exchange_time + TARGET_MARGIN;
    println!(
        "token endpoint: emulator answering {} ms late; one exchange alone takes {} \
         (median of {SOLO_EXCHANGES})",
        EXCHANGE_DELAY.as_millis(),
        ms(exchange_time),
    );
    println!(
        "target with the store: 1 exchange for the fleet and p99 within the exchange time \
         plus {} ms ({})",
        TARGET_MARGIN.as_millis(),
        ms(target),
    );
    println!(
        "tokio: multi-thread runtime, {} worker threads\n",
        tokio::runtime::Handle::current().metrics().num_workers()
    );

    println!(
        "{:>8}  {:<5}  {:>9}  {:>9}  {:>9}  {:>9}  {:>5}  {:>5}  {:>9}  {:>6}  target",
        "replicas",
        "store",
        "exchanges",
        "p50",
        "p99",
        "max",
        "wins",
        "waits",
        "fallbacks",
        "errors"
    );
    let fleets: &[usize] = if quick { &QUICK_FLEETS } else { &FLEETS };
    let mut failures = Vec::new();
    for &replicas in fleets {
        for shared in [false, true] {
            redis
                .flush_all()
                .await
                .map_err(|error| format!("could not flush Redis: {error}"))?;
            let run = cold_start(&emulator, shared.then_some(&redis), replicas).await?;
            println!("{}", row(&run, target));
            if run.shared && run.exchanges != 1 {
                failures.push(format!(
                    "{replicas} replicas with the store made {} exchanges, expected 1",
                    run.exchanges
                ));
            }
        }
    }
    let mut errors = Vec::new();
    if !failures.is_empty() {
        errors.push(format!(
            "single flight across replicas is broken: {}",
            failures.join("; ")
        ));
    }
    if !quick {
        println!();
        if let Err(error) = faults::run(&redis).await {
            errors.push(error);
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// The time of one exchange with nothing else going on: the median of a
/// few lone providers' first token.
async fn solo_exchange(emulator: &Emulator) -> Result<Duration, String> {
    let mut times = Vec::with_capacity(SOLO_EXCHANGES);
    for _ in 0..SOLO_EXCHANGES {
        let provider = emulator.provider();
        let started = Instant::now();
        provider
            .token()
            .await
            .map_err(|error| format!("a lone provider got no token: {error}"))?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// `replicas` providers, sharing `redis` if given, all asking for their
/// first token at the same instant.
async fn cold_start(
    emulator: &Emulator,
    redis: Option<&RedisServer>,
    replicas: usize,
) -> Result<Run, String> {
    let (mut fleet, mut caches) = (Vec::with_capacity(replicas), Vec::new());
    for _ in 0..replicas {
        let exchange = emulator.exchange();
        let provider = match redis {
            Some(redis) => {
                let store = RedisStore::connect(&redis.url())
                    .await
                    .map_err(|error| format!("could not connect to Redis: {error}"))?;
                let cache = SharedCache::for_exchange(store, &exchange);
                caches.push(cache.clone());
                let exchange = tower::ServiceBuilder::new().layer(cache).service(exchange);
                TokenProvider::new(exchange, emulator.credentials())
            }
            None => TokenProvider::new(exchange, emulator.credentials()),
        };
        fleet.push(provider);
    }

    // Every replica waits at the gate; opening it is the start.
    let (gate, opened) = watch::channel(false);
    let mut asks = JoinSet::new();
    for (i, provider) in fleet.iter().enumerate() {
        let (provider, mut opened) = (provider.clone(), opened.clone());
        asks.spawn(async move {
            let _ = opened.wait_for(|&open| open).await;
            let token = provider.token().await;
            (i, token.map(drop), Instant::now())
        });
    }
    // Lets every task reach the gate before it opens.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = emulator.exchange_count();
    let started = Instant::now();
    gate.send_replace(true);

    let mut waits = Vec::with_capacity(replicas);
    let all = async {
        while let Some(joined) = asks.join_next().await {
            let (i, token, done) =
                joined.map_err(|error| format!("a replica panicked: {error}"))?;
            token.map_err(|error| format!("replica {i} got no token: {error}"))?;
            waits.push(done - started);
        }
        Ok::<(), String>(())
    };
    tokio::time::timeout(BOUND, all)
        .await
        .map_err(|_| format!("{replicas} replicas had no token after {BOUND:?}"))??;
    waits.sort();

    let stats = StoreCounts::sum(caches.iter().map(SharedCache::stats));
    Ok(Run {
        replicas,
        shared: redis.is_some(),
        exchanges: emulator.exchange_count() - before,
        waits,
        stats,
    })
}

/// One line of the table.
fn row(run: &Run, target: Duration) -> String {
    let p99 = percentile(&run.waits, 0.99);
    let verdict = match (run.shared, run.exchanges == 1 && p99 <= target) {
        (false, _) => "-",
        (true, true) => "met",
        (true, false) => "missed",
    };
    let store = |value: u64| {
        if run.shared {
            value.to_string()
        } else {
            "-".to_owned()
        }
    };
    format!(
        "{:>8}  {:<5}  {:>9}  {:>9}  {:>9}  {:>9}  {:>5}  {:>5}  {:>9}  {:>6}  {verdict}",
        run.replicas,
        if run.shared { "yes" } else { "no" },
        run.exchanges,
        ms(percentile(&run.waits, 0.50)),
        ms(p99),
        ms(run.waits.last().copied().unwrap_or_default()),
        store(run.stats.lock_wins),
        store(run.stats.waits),
        store(run.stats.fallbacks),
        store(run.stats.errors),
    )
}

/// The nearest-rank `q` quantile of `sorted`.
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `duration` in milliseconds, one decimal.
fn ms(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}
