//! The fleet under stress and faults, on the same real Redis as the cold
//! starts, each run with an emulator of its own (so its token requests are
//! its own). Every replica is a `TokenProvider` with a `SharedCache` and a
//! `RedisStore` connection of its own.
//!
//! 1. **Slow endpoint.** 20 replicas at a cold start, the endpoint
//!    answering in 6 s, default options (10 s exchange timeout). Target:
//!    1 token request, and every replica has its first token within the
//!    endpoint's time plus 1.5 s (7.5 s): the replicas wait for the live
//!    lock holder rather than give up on it and exchange beside it.
//! 2. **Holder killed mid-exchange at a cold start.** 10 replicas, the
//!    endpoint answering in 2 s, a 5 s exchange timeout, the lock holder
//!    killed as it sends its request. Target: at most 3 token requests in
//!    all (the dead holder's and one replacement's are expected), and the
//!    other replicas have a token within lease + exchange + 0.5 s (3.5 s).
//! 3. **Short tokens, holder killed at a renewal.** 8 replicas serving
//!    requests in a loop, 6 s tokens (refresh due from 3 s, 3.3 s at most
//!    with the jitter; served until 4.5 s: the 1.5 s expiry skew of a 6 s
//!    token, see `served_for` in `src/token.rs`), the endpoint answering in
//!    1 s, the holder of the first refresh killed. Over the 20 s after the
//!    kill it counts the token requests of each refresh (a round in which
//!    the replicas move to new tokens: new tokens first seen less than 2 s
//!    apart are one round). Target: one request per refresh (the first
//!    also has the dead holder's own), and no API request (a
//!    `provider.token()` call) waits longer than the exchange time plus
//!    0.5 s (1.5 s).
//! 4. **Store outage.** 20 replicas serving requests, 6 s tokens, Redis
//!    frozen for 5 s from the first refresh, with the default breaker
//!    probe and a 5 s one: the exchanges during and after the outage.
//!    Target: at most one per replica in the first second after it.
//!
//! The token requests are those the endpoint received
//! (`Emulator::token_requests`); the tokens it issued
//! (`Emulator::exchange_count`) are printed beside them. A replica that
//! gets no token, or a request that fails, makes the bench exit non-zero
//! once every run is printed.
//!
//! A replica is killed in-process: when, as the fleet's lock holder, it
//! calls the token endpoint, its request is sent (on a task of its own,
//! whose answer goes nowhere) and from then on its exchange futures are
//! never polled again and never dropped, so its lock is neither renewed
//! nor released, as in a process killed mid-exchange. Its own callers are
//! left out of the figures.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use routera_auth::defaults::EXCHANGE_TIMEOUT;
use routera_auth::store::{
    DEFAULT_BREAKER_FAILURES, DEFAULT_BREAKER_PROBE_EVERY, RedisStore, SharedCache,
};
use routera_auth::{Token, TokenError, TokenProvider, TokenRequest};
use routera_auth_test::{Emulator, Fault, RedisServer};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::Service;

use crate::{StoreCounts, ms, percentile};

/// The lease on the fleet's lock with the default operation timeout.
const LEASE: Duration = Duration::from_secs(1);
/// The lifetime of the tokens of the runs where no token is renewed.
const LONG_LIFETIME: Duration = Duration::from_secs(3600);

/// Run 1: how late the token endpoint answers.
const SLOW_ENDPOINT: Duration = Duration::from_secs(6);
/// Run 1: the replicas.
const SLOW_ENDPOINT_REPLICAS: usize = 20;
/// Run 1: the target for the last replica's first token, past the
/// endpoint's time.
const SLOW_ENDPOINT_MARGIN: Duration = Duration::from_millis(1500);

/// Run 2: how late the token endpoint answers.
const COLD_KILL_EXCHANGE: Duration = Duration::from_secs(2);
/// Run 2: the providers' exchange timeout.
const COLD_KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// Run 2: the replicas.
const COLD_KILL_REPLICAS: usize = 10;
/// Run 2: the most token requests the run may make.
const COLD_KILL_MAX_REQUESTS: u64 = 3;

/// Runs 3 and 4: the token lifetime (refresh due from 3 s, served 4.5 s).
const SHORT_LIFETIME: Duration = Duration::from_secs(6);
/// Run 3: how late the token endpoint answers.
const RENEWAL_EXCHANGE: Duration = Duration::from_secs(1);
/// Run 3: the replicas.
const RENEWAL_REPLICAS: usize = 8;
/// Run 3: how long the refreshes are counted after the kill.
const AFTER_KILL: Duration = Duration::from_secs(20);
/// Run 3: new tokens first seen closer than this are one refresh; two
/// refreshes are at least 3 s apart (half a 6 s lifetime).
const ROUND_GAP: Duration = Duration::from_secs(2);

/// Run 4: the replicas.
const OUTAGE_REPLICAS: usize = 20;
/// Run 4: how long Redis is frozen.
const OUTAGE: Duration = Duration::from_secs(5);

/// Both targets of the timings: this much past the exchange time.
const HALF_A_SECOND: Duration = Duration::from_millis(500);
/// The pause between two requests of a replica's request loop.
const REQUEST_GAP: Duration = Duration::from_millis(10);

/// Runs the fault scenarios and prints their figures; an error, once all
/// are printed, if a surviving replica got no token or a request failed.
pub(crate) async fn run(redis: &RedisServer) -> Result<(), String> {
    let mut failures = Vec::new();
    slow_endpoint(redis, &mut failures).await?;
    killed_at_cold_start(redis, &mut failures).await?;
    killed_at_renewal(redis, &mut failures).await?;
    for probe_every in [DEFAULT_BREAKER_PROBE_EVERY, Duration::from_secs(5)] {
        outage(redis, probe_every, &mut failures).await?;
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// Run 1: a cold start against an endpoint slower than the lease, faster
/// than the exchange timeout.
async fn slow_endpoint(redis: &RedisServer, failures: &mut Vec<String>) -> Result<(), String> {
    let emulator = emulator(LONG_LIFETIME, SLOW_ENDPOINT).await?;
    redis.flush_all().await.map_err(flush_error)?;
    let fleet = Fleet::new(&emulator, redis, SLOW_ENDPOINT_REPLICAS, EXCHANGE_TIMEOUT).await?;
    let start = fleet.cold_start().await?;
    let target = SLOW_ENDPOINT + SLOW_ENDPOINT_MARGIN;
    println!(
        "1. slow endpoint: {SLOW_ENDPOINT_REPLICAS} replicas at a cold start, endpoint answering \
         in {} s, exchange timeout {} s (default)",
        SLOW_ENDPOINT.as_secs(),
        EXCHANGE_TIMEOUT.as_secs(),
    );
    println!(
        "   token requests: {} ({} tokens issued); target 1: {}",
        start.requests,
        start.issued,
        verdict(start.requests == 1),
    );
    println!(
        "   first token: p50 {}, max {} ({} of {SLOW_ENDPOINT_REPLICAS} replicas); target every \
         replica within {}: {}",
        ms(percentile(&start.times, 0.5)),
        ms(start.longest()),
        start.times.len(),
        ms(target),
        verdict(start.failed.is_empty() && start.longest() <= target),
    );
    println!("   {}\n", start.stats);
    failures.extend(start.failed);
    Ok(())
}

/// Run 2: the lock holder killed as it sends its request, at a cold start.
async fn killed_at_cold_start(
    redis: &RedisServer,
    failures: &mut Vec<String>,
) -> Result<(), String> {
    let emulator = emulator(LONG_LIFETIME, COLD_KILL_EXCHANGE).await?;
    redis.flush_all().await.map_err(flush_error)?;
    let fleet = Fleet::new(&emulator, redis, COLD_KILL_REPLICAS, COLD_KILL_TIMEOUT).await?;
    fleet.kill_next_holder();
    let start = fleet.cold_start().await?;
    let target = LEASE + COLD_KILL_EXCHANGE + HALF_A_SECOND;
    println!(
        "2. holder killed mid-exchange at a cold start: {COLD_KILL_REPLICAS} replicas, endpoint \
         answering in {} s, exchange timeout {} s, lease {} s",
        COLD_KILL_EXCHANGE.as_secs(),
        COLD_KILL_TIMEOUT.as_secs(),
        LEASE.as_secs(),
    );
    println!(
        "   token requests: {} ({} tokens issued; the dead holder's included); target at most \
         {COLD_KILL_MAX_REQUESTS}: {}",
        start.requests,
        start.issued,
        verdict(start.requests <= COLD_KILL_MAX_REQUESTS),
    );
    println!(
        "   first token of the {} surviving replicas: p50 {}, max {}; target within lease + \
         exchange + 0.5 s ({}): {}",
        start.times.len(),
        ms(percentile(&start.times, 0.5)),
        ms(start.longest()),
        ms(target),
        verdict(start.failed.is_empty() && start.longest() <= target),
    );
    println!("   {}\n", start.stats);
    failures.extend(start.failed);
    Ok(())
}

/// Run 3: the holder of the first refresh killed; the refreshes of the
/// next 20 s and the longest wait of a request.
async fn killed_at_renewal(redis: &RedisServer, failures: &mut Vec<String>) -> Result<(), String> {
    let emulator = emulator(SHORT_LIFETIME, RENEWAL_EXCHANGE).await?;
    redis.flush_all().await.map_err(flush_error)?;
    let fleet = Fleet::new(&emulator, redis, RENEWAL_REPLICAS, EXCHANGE_TIMEOUT).await?;
    let start = fleet.cold_start().await?;
    failures.extend(start.failed);
    fleet.kill_next_holder();
    let fleet = &fleet;
    let killed = Arc::new(OnceLock::new());
    let meanwhile = {
        let killed = Arc::clone(&killed);
        move |started: Instant| async move {
            // The first refresh is due 3.3 s after the cold start at most.
            let deadline = started + SHORT_LIFETIME * 2;
            if let Ok(at) = tokio::time::timeout_at(deadline, fleet.killed()).await {
                let _ = killed.set(at);
                tokio::time::sleep_until(at + AFTER_KILL).await;
            }
        }
    };
    let loops = fleet.request_loops(meanwhile).await?;
    let Some(&killed) = killed.get() else {
        return Err("the renewal run killed no lock holder".to_owned());
    };
    // The tokens first seen after the kill, in refresh rounds: the token
    // requests made since the previous round, and when the round began.
    let mut rounds: Vec<(Duration, u64)> = Vec::new();
    let (mut counted, mut last_seen) = (loops.requests_at_start, None::<Instant>);
    for &(seen, requests) in loops.sightings.iter().filter(|(seen, _)| *seen > killed) {
        let new_round = last_seen.is_none_or(|last| seen - last >= ROUND_GAP);
        if new_round {
            rounds.push((seen - killed, 0));
        }
        if let Some(round) = rounds.last_mut() {
            round.1 += requests - counted;
        }
        counted = requests;
        last_seen = Some(seen);
    }
    let after_last = loops.requests_at_end - counted;
    let in_rounds: u64 = rounds.iter().map(|&(_, requests)| requests).sum();
    // The first round has the dead holder's request too.
    let one_each = !rounds.is_empty()
        && rounds
            .iter()
            .enumerate()
            .all(|(i, &(_, requests))| requests <= if i == 0 { 2 } else { 1 });
    let stall_target = RENEWAL_EXCHANGE + HALF_A_SECOND;
    println!(
        "3. short tokens, holder killed at a renewal: {RENEWAL_REPLICAS} replicas with request \
         loops, {} s tokens (refresh due from 3 s, served until 4.5 s), endpoint answering in {} s, \
         the holder of the first refresh killed",
        SHORT_LIFETIME.as_secs(),
        RENEWAL_EXCHANGE.as_secs(),
    );
    let per_round: Vec<String> = rounds
        .iter()
        .map(|&(at, requests)| format!("{requests} (+{:.1} s)", at.as_secs_f64()))
        .collect();
    println!(
        "   in the {} s after the kill: {} refreshes, {in_rounds} token requests for them \
         (the dead holder's included), {after_last} for a refresh under way at the end; \
         {} tokens issued while the loops ran",
        AFTER_KILL.as_secs(),
        rounds.len(),
        loops.issued_at_end - loops.issued_at_start,
    );
    println!(
        "   token requests per refresh (its new token first served so long after the kill): {}; \
         target one per refresh (the first: the dead holder's + its replacement's): {}",
        per_round.join(", "),
        verdict(one_each),
    );
    println!(
        "   longest API request wait: {} over {} requests, {} failed; target at most the \
         exchange + 0.5 s ({}): {}",
        ms(loops.longest),
        loops.requests,
        loops.failed.len(),
        ms(stall_target),
        verdict(loops.failed.is_empty() && loops.longest <= stall_target),
    );
    println!("   {}\n", fleet.stats());
    failures.extend(loops.failed);
    Ok(())
}

/// Run 4: a store outage: Redis frozen while a fleet serves requests; the
/// exchanges during it and after it.
async fn outage(
    redis: &RedisServer,
    probe_every: Duration,
    failures: &mut Vec<String>,
) -> Result<(), String> {
    let quick = emulator(SHORT_LIFETIME, Duration::from_millis(50)).await?;
    redis.flush_all().await.map_err(flush_error)?;
    let fleet = Fleet::probing(
        &quick,
        redis,
        OUTAGE_REPLICAS,
        EXCHANGE_TIMEOUT,
        probe_every,
    )
    .await?;
    let start = fleet.cold_start().await?;
    failures.extend(start.failed);
    let counts = Arc::new(Mutex::new(Vec::new()));
    // Borrowed: the emulator outlives the request loops.
    let quick = &quick;
    let outage = {
        let counts = Arc::clone(&counts);
        move |started: Instant| async move {
            // Frozen from the fleet's first refresh on.
            tokio::time::sleep_until(started + SHORT_LIFETIME / 2).await;
            let frozen = quick.exchange_count();
            if redis.freeze().is_err() {
                return;
            }
            tokio::time::sleep(OUTAGE).await;
            let thawed = quick.exchange_count();
            if redis.thaw().is_err() {
                return;
            }
            let mut marks = vec![frozen, thawed];
            for wait in [1, 5, 12] {
                tokio::time::sleep(Duration::from_secs(wait)).await;
                marks.push(quick.exchange_count());
            }
            if let Ok(mut counts) = counts.lock() {
                counts.extend(marks.windows(2).map(|pair| pair[1] - pair[0]));
            }
        }
    };
    let loops = fleet.request_loops(outage).await?;
    let counts = counts
        .lock()
        .map(|counts| counts.clone())
        .unwrap_or_default();
    let [during, first_second, next_five, next_twelve] = counts[..] else {
        return Err("the outage run could not freeze or thaw Redis".to_owned());
    };
    println!(
        "4. store outage ({OUTAGE_REPLICAS} replicas, {} s tokens refreshed about every 3 s, Redis \
         frozen {} s from the first refresh, breaker probing every {} ms): {during} exchanges during the outage; after it, \
         {first_second} in the first second (target at most {OUTAGE_REPLICAS}: {}), {next_five} \
         in the next 5 s, {next_twelve} in the 12 s after that (one per refresh: about 4); \
         longest API request wait {}, {} failed",
        SHORT_LIFETIME.as_secs(),
        OUTAGE.as_secs(),
        probe_every.as_millis(),
        verdict(first_second <= OUTAGE_REPLICAS as u64),
        ms(loops.longest),
        loops.failed.len(),
    );
    failures.extend(loops.failed);
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

fn flush_error(error: std::io::Error) -> String {
    format!("could not flush Redis: {error}")
}

/// An emulator of one run, answering every token request `delay` late with
/// tokens of `lifetime`.
async fn emulator(lifetime: Duration, delay: Duration) -> Result<Arc<Emulator>, String> {
    let emulator = Emulator::builder()
        .expires_in(lifetime)
        .start()
        .await
        .map_err(|error| format!("could not start the emulator: {error}"))?;
    emulator.inject(Fault::slow(delay));
    Ok(Arc::new(emulator))
}

/// Replicas that share a Redis, one of which may be killed.
struct Fleet {
    replicas: Vec<Replica>,
    /// Set to kill the next replica that calls the token endpoint.
    armed: Arc<AtomicBool>,
    /// The token endpoint of every replica.
    emulator: Arc<Emulator>,
}

struct Replica {
    provider: TokenProvider,
    cache: SharedCache,
    life: Arc<Life>,
}

/// Whether a replica is dead, and since when.
#[derive(Default)]
struct Life {
    dead: AtomicBool,
    killed_at: OnceLock<Instant>,
}

impl Life {
    fn kill(&self) {
        let _ = self.killed_at.set(Instant::now());
        self.dead.store(true, Ordering::SeqCst);
    }

    fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }
}

/// What a cold start of a fleet gave.
struct ColdStart {
    /// The time until each surviving replica had its token, sorted.
    times: Vec<Duration>,
    /// What the replicas that got no token got instead.
    failed: Vec<String>,
    /// The token requests the endpoint received meanwhile.
    requests: u64,
    /// The tokens it issued meanwhile.
    issued: u64,
    stats: StoreCounts,
}

impl ColdStart {
    fn longest(&self) -> Duration {
        self.times.last().copied().unwrap_or_default()
    }
}

/// What the request loops of a fleet gave.
struct Loops {
    /// The longest a request waited for its token.
    longest: Duration,
    /// The requests made.
    requests: u64,
    /// The requests that got no token.
    failed: Vec<String>,
    /// Each token the first time a surviving replica served it: when, and
    /// the token requests the endpoint had received by then. Sorted.
    sightings: Vec<(Instant, u64)>,
    /// The endpoint's counts when the loops began and ended.
    requests_at_start: u64,
    requests_at_end: u64,
    issued_at_start: u64,
    issued_at_end: u64,
}

/// The tokens the loops have served, and when each was first served.
#[derive(Default)]
struct Sightings {
    seen: HashSet<String>,
    first: Vec<(Instant, u64)>,
}

impl Fleet {
    /// `n` replicas with the default breaker, whose providers give their
    /// exchanges `exchange_timeout`.
    async fn new(
        emulator: &Arc<Emulator>,
        redis: &RedisServer,
        n: usize,
        exchange_timeout: Duration,
    ) -> Result<Self, String> {
        Self::probing(
            emulator,
            redis,
            n,
            exchange_timeout,
            DEFAULT_BREAKER_PROBE_EVERY,
        )
        .await
    }

    /// With an open breaker probing the store every `probe_every`.
    async fn probing(
        emulator: &Arc<Emulator>,
        redis: &RedisServer,
        n: usize,
        exchange_timeout: Duration,
        probe_every: Duration,
    ) -> Result<Self, String> {
        let armed = Arc::new(AtomicBool::new(false));
        let mut replicas = Vec::with_capacity(n);
        for _ in 0..n {
            let exchange = emulator.exchange();
            let store = RedisStore::connect(&redis.url())
                .await
                .map_err(|error| format!("could not connect to Redis: {error}"))?;
            let cache = SharedCache::for_exchange(store, &exchange)
                .breaker(DEFAULT_BREAKER_FAILURES, probe_every);
            let life = Arc::new(Life::default());
            let tripwire = Tripwire {
                inner: exchange,
                armed: Arc::clone(&armed),
                life: Arc::clone(&life),
            };
            let exchange = Mortal {
                inner: tower::Layer::layer(&cache, tripwire),
                life: Arc::clone(&life),
            };
            let provider = TokenProvider::builder(exchange, emulator.credentials())
                .exchange_timeout(exchange_timeout)
                .build();
            replicas.push(Replica {
                provider,
                cache,
                life,
            });
        }
        Ok(Self {
            replicas,
            armed,
            emulator: Arc::clone(emulator),
        })
    }

    fn kill_next_holder(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Completes when a replica has been killed: when it was.
    async fn killed(&self) -> Instant {
        loop {
            if let Some(at) = self
                .replicas
                .iter()
                .find_map(|replica| replica.life.killed_at.get())
            {
                return *at;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The store counters summed over the replicas.
    fn stats(&self) -> StoreCounts {
        StoreCounts::sum(self.replicas.iter().map(|replica| replica.cache.stats()))
    }

    /// Every replica asks for its first token at once.
    async fn cold_start(&self) -> Result<ColdStart, String> {
        let (gate, opened) = watch::channel(false);
        let mut asks = JoinSet::new();
        for (i, replica) in self.replicas.iter().enumerate() {
            let (provider, life, mut opened) = (
                replica.provider.clone(),
                Arc::clone(&replica.life),
                opened.clone(),
            );
            asks.spawn(async move {
                let _ = opened.wait_for(|&open| open).await;
                let started = Instant::now();
                // A dead replica's callers are never answered.
                tokio::select! {
                    token = provider.token() => Some((i, token.map(drop), started.elapsed())),
                    () = dead(&life) => None,
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (requests, issued) = (
            self.emulator.token_requests(),
            self.emulator.exchange_count(),
        );
        gate.send_replace(true);
        let (mut times, mut failed) = (Vec::new(), Vec::new());
        while let Some(joined) = asks.join_next().await {
            let answer = joined.map_err(|error| format!("a replica panicked: {error}"))?;
            match answer {
                Some((_, Ok(()), took)) => times.push(took),
                Some((i, Err(error), took)) => {
                    failed.push(format!(
                        "replica {i} got no token at a cold start after {}: {error}",
                        ms(took)
                    ));
                }
                None => {}
            }
        }
        times.sort();
        Ok(ColdStart {
            times,
            failed,
            requests: self.emulator.token_requests() - requests,
            issued: self.emulator.exchange_count() - issued,
            stats: self.stats(),
        })
    }

    /// Every surviving replica asks for a token in a loop while `meanwhile`
    /// runs (it is given the start).
    async fn request_loops<F, Fut>(&self, meanwhile: F) -> Result<Loops, String>
    where
        F: FnOnce(Instant) -> Fut,
        Fut: Future<Output = ()>,
    {
        let emulator = &self.emulator;
        let (requests_at_start, issued_at_start) =
            (emulator.token_requests(), emulator.exchange_count());
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let longest = Arc::new(AtomicU64::new(0));
        let sightings = Arc::new(Mutex::new(Sightings::default()));
        let mut loops = JoinSet::new();
        for (i, replica) in self.replicas.iter().enumerate() {
            let provider = replica.provider.clone();
            let life = Arc::clone(&replica.life);
            let (stop, longest) = (Arc::clone(&stop), Arc::clone(&longest));
            let (sightings, emulator) = (Arc::clone(&sightings), Arc::clone(emulator));
            loops.spawn(async move {
                let (mut requests, mut failed) = (0, Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    let asked = Instant::now();
                    let token = tokio::select! {
                        token = provider.token() => token,
                        () = dead(&life) => break,
                    };
                    let waited = asked.elapsed();
                    requests += 1;
                    match token {
                        Ok(token) => {
                            let mut sightings =
                                sightings.lock().unwrap_or_else(|error| error.into_inner());
                            if sightings.seen.insert(token.secret().to_owned()) {
                                let requests = emulator.token_requests();
                                sightings.first.push((Instant::now(), requests));
                            }
                        }
                        Err(error) => failed.push(format!(
                            "a request of replica {i} got no token after {}: {error}",
                            ms(waited)
                        )),
                    }
                    let waited = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
                    longest.fetch_max(waited, Ordering::Relaxed);
                    tokio::time::sleep(REQUEST_GAP).await;
                }
                (requests, failed)
            });
        }
        meanwhile(started).await;
        stop.store(true, Ordering::SeqCst);
        let (mut requests, mut failed) = (0, Vec::new());
        while let Some(joined) = loops.join_next().await {
            let (made, failures) =
                joined.map_err(|error| format!("a replica panicked: {error}"))?;
            requests += made;
            failed.extend(failures);
        }
        let mut sightings = std::mem::take(
            &mut sightings
                .lock()
                .unwrap_or_else(|error| error.into_inner())
                .first,
        );
        sightings.sort();
        Ok(Loops {
            longest: Duration::from_micros(longest.load(Ordering::Relaxed)),
            requests,
            failed,
            sightings,
            requests_at_start,
            requests_at_end: emulator.token_requests(),
            issued_at_start,
            issued_at_end: emulator.exchange_count(),
        })
    }
}

/// Completes once `life` is dead (checked every 10 ms).
async fn dead(life: &Life) {
    while !life.is_dead() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The exchange under the shared cache: the first call after the fleet is
/// armed kills its replica (only a lock holder, or a replica exchanging on
/// its own, calls it). The request is still sent and answered, on a task
/// of its own, as the request of a process killed after sending it; the
/// replica never sees the answer.
#[derive(Clone)]
struct Tripwire<S> {
    inner: S,
    armed: Arc<AtomicBool>,
    life: Arc<Life>,
}

impl<S> Service<TokenRequest> for Tripwire<S>
where
    S: Service<TokenRequest, Response = Token, Error = TokenError>,
    S::Future: Send + 'static,
{
    type Response = Token;
    type Error = TokenError;
    type Future = Pin<Box<dyn Future<Output = Result<Token, TokenError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TokenError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: TokenRequest) -> Self::Future {
        let exchange = self.inner.call(request);
        if self.armed.swap(false, Ordering::SeqCst) {
            self.life.kill();
            drop(tokio::spawn(async move {
                let _ = exchange.await;
            }));
            return Box::pin(std::future::pending());
        }
        Box::pin(exchange)
    }
}

/// A replica's whole exchange (the shared cache and what is under it),
/// frozen once the replica is dead.
#[derive(Clone)]
struct Mortal<S> {
    inner: S,
    life: Arc<Life>,
}

impl<S> Service<TokenRequest> for Mortal<S>
where
    S: Service<TokenRequest, Response = Token, Error = TokenError>,
    S::Future: Send + 'static,
{
    type Response = Token;
    type Error = TokenError;
    type Future = Frozen<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TokenError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: TokenRequest) -> Self::Future {
        Frozen {
            inner: Some(Box::pin(self.inner.call(request))),
            life: Arc::clone(&self.life),
        }
    }
}

/// A future that is never polled again once its replica is dead, and is
/// then leaked rather than dropped (nothing it holds is released).
struct Frozen<F> {
    inner: Option<Pin<Box<F>>>,
    life: Arc<Life>,
}

impl<F: Future> Future for Frozen<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        match &mut this.inner {
            Some(inner) if !this.life.is_dead() => inner.as_mut().poll(cx),
            _ => Poll::Pending,
        }
    }
}

impl<F> Drop for Frozen<F> {
    fn drop(&mut self) {
        if self.life.is_dead() {
            std::mem::forget(self.inner.take());
        }
    }
}
