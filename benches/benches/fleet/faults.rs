//! The fleet under faults, on the same real Redis and emulator as the cold
//! starts: the lock holder killed at a cold start and at a renewal, and a
//! store outage.
//!
//! A replica is killed in-process: from the moment it starts an exchange
//! as the fleet's lock holder, its exchange futures are never polled again
//! and never dropped, so its lock is neither renewed nor released, as in a
//! process killed mid-exchange. Its own callers are left out of the
//! figures.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use routera_auth::store::{
    DEFAULT_BREAKER_FAILURES, DEFAULT_BREAKER_PROBE_EVERY, RedisStore, SharedCache,
};
use routera_auth::{Token, TokenError, TokenProvider, TokenRequest};
use routera_auth_test::{Emulator, Fault, RedisServer};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::Service;

use crate::ms;

/// How late the token endpoint answers in the holder-killed runs.
const SLOW_EXCHANGE: Duration = Duration::from_secs(2);
/// The token lifetime of the renewal and outage runs.
const SHORT_LIFETIME: Duration = Duration::from_secs(6);
/// The lease on the fleet's lock with the default operation timeout.
const LEASE: Duration = Duration::from_secs(1);
/// The replicas of each run.
const REPLICAS: usize = 10;
/// The replicas of the outage run.
const OUTAGE_REPLICAS: usize = 20;
/// How long Redis is frozen in the outage run.
const OUTAGE: Duration = Duration::from_secs(5);
/// The pause between two requests of a replica's request loop.
const REQUEST_GAP: Duration = Duration::from_millis(10);

/// Runs the three fault scenarios and prints their figures; an error if a
/// surviving replica got no token.
pub(crate) async fn run(redis: &RedisServer) -> Result<(), String> {
    let slow = emulator(Duration::from_secs(3600), SLOW_EXCHANGE).await?;
    redis.flush_all().await.map_err(flush_error)?;
    let fleet = Fleet::new(&slow, redis, REPLICAS).await?;
    fleet.kill_next_holder();
    let longest = fleet.cold_start().await?;
    let target = LEASE + SLOW_EXCHANGE + Duration::from_millis(500);
    println!(
        "holder killed mid-exchange at a cold start ({REPLICAS} replicas, exchange {} s, lease {} s): \
         the other replicas had a token after {} at most (target {}: {})",
        SLOW_EXCHANGE.as_secs(),
        LEASE.as_secs(),
        ms(longest),
        ms(target),
        verdict(longest <= target),
    );

    let slow = emulator(SHORT_LIFETIME, SLOW_EXCHANGE).await?;
    redis.flush_all().await.map_err(flush_error)?;
    let fleet = Fleet::new(&slow, redis, REPLICAS).await?;
    fleet.cold_start().await?;
    fleet.kill_next_holder();
    let stall = fleet
        .request_loops(SHORT_LIFETIME * 2, |_| async {})
        .await?;
    let target = SLOW_EXCHANGE + Duration::from_millis(500);
    println!(
        "holder killed mid-exchange at a renewal ({REPLICAS} replicas, {} s tokens, exchange {} s): \
         the longest request waited {} (target {}: {})",
        SHORT_LIFETIME.as_secs(),
        SLOW_EXCHANGE.as_secs(),
        ms(stall),
        ms(target),
        verdict(stall <= target),
    );

    for probe_every in [DEFAULT_BREAKER_PROBE_EVERY, Duration::from_secs(5)] {
        outage(redis, probe_every).await?;
    }
    Ok(())
}

/// A store outage: Redis frozen while a fleet serves requests; the
/// exchanges during it and after it.
async fn outage(redis: &RedisServer, probe_every: Duration) -> Result<(), String> {
    let quick = emulator(SHORT_LIFETIME, Duration::from_millis(50)).await?;
    redis.flush_all().await.map_err(flush_error)?;
    let fleet = Fleet::probing(&quick, redis, OUTAGE_REPLICAS, probe_every).await?;
    fleet.cold_start().await?;
    let counts = Arc::new(std::sync::Mutex::new(Vec::new()));
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
    fleet
        .request_loops(
            SHORT_LIFETIME / 2 + OUTAGE + Duration::from_secs(18),
            outage,
        )
        .await?;
    let counts = counts
        .lock()
        .map(|counts| counts.clone())
        .unwrap_or_default();
    let [during, first_second, next_five, next_twelve] = counts[..] else {
        return Err("the outage run could not freeze or thaw Redis".to_owned());
    };
    println!(
        "store outage ({OUTAGE_REPLICAS} replicas, {} s tokens refreshed about every 3 s, Redis \
         frozen {} s from the first refresh, breaker probing every {} ms): {during} exchanges during the outage; after it, \
         {first_second} in the first second (target at most {OUTAGE_REPLICAS}: {}), {next_five} \
         in the next 5 s, {next_twelve} in the 12 s after that (one per refresh: about 4)",
        SHORT_LIFETIME.as_secs(),
        OUTAGE.as_secs(),
        probe_every.as_millis(),
        verdict(first_second <= OUTAGE_REPLICAS as u64),
    );
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

fn flush_error(error: std::io::Error) -> String {
    format!("could not flush Redis: {error}")
}

async fn emulator(lifetime: Duration, delay: Duration) -> Result<Emulator, String> {
    let emulator = Emulator::builder()
        .expires_in(lifetime)
        .start()
        .await
        .map_err(|error| format!("could not start the emulator: {error}"))?;
    emulator.inject(Fault::slow(delay));
    Ok(emulator)
}

/// Replicas that share a Redis, one of which may be killed.
struct Fleet {
    replicas: Vec<(TokenProvider, Arc<Life>)>,
    /// Set to kill the next replica that starts an exchange.
    armed: Arc<AtomicBool>,
}

/// Whether a replica is dead.
#[derive(Default)]
struct Life {
    dead: AtomicBool,
}

impl Fleet {
    async fn new(emulator: &Emulator, redis: &RedisServer, n: usize) -> Result<Self, String> {
        Self::probing(emulator, redis, n, DEFAULT_BREAKER_PROBE_EVERY).await
    }

    /// With an open breaker probing the store every `probe_every`.
    async fn probing(
        emulator: &Emulator,
        redis: &RedisServer,
        n: usize,
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
            replicas.push((TokenProvider::new(exchange, emulator.credentials()), life));
        }
        Ok(Self { replicas, armed })
    }

    fn kill_next_holder(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// Every replica asks for its first token at once; the longest time a
    /// surviving replica took.
    async fn cold_start(&self) -> Result<Duration, String> {
        let (gate, opened) = watch::channel(false);
        let mut asks = JoinSet::new();
        for (provider, life) in &self.replicas {
            let (provider, life, mut opened) = (provider.clone(), Arc::clone(life), opened.clone());
            asks.spawn(async move {
                let _ = opened.wait_for(|&open| open).await;
                let started = Instant::now();
                // A dead replica's callers are never answered.
                tokio::select! {
                    token = provider.token() => Some((token.map(drop), started.elapsed())),
                    () = dead(&life) => None,
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        gate.send_replace(true);
        let mut longest = Duration::ZERO;
        while let Some(joined) = asks.join_next().await {
            let answer = joined.map_err(|error| format!("a replica panicked: {error}"))?;
            if let Some((token, took)) = answer {
                token.map_err(|error| format!("a replica got no token: {error}"))?;
                longest = longest.max(took);
            }
        }
        Ok(longest)
    }

    /// Every surviving replica asks for a token in a loop for `run_for`,
    /// while `meanwhile` runs from the start; the longest a request waited.
    async fn request_loops<F, Fut>(
        &self,
        run_for: Duration,
        meanwhile: F,
    ) -> Result<Duration, String>
    where
        F: FnOnce(Instant) -> Fut,
        Fut: Future<Output = ()>,
    {
        let started = Instant::now();
        let until = started + run_for;
        let longest = Arc::new(AtomicU64::new(0));
        let mut loops = JoinSet::new();
        for (provider, life) in &self.replicas {
            let (provider, life, longest) =
                (provider.clone(), Arc::clone(life), Arc::clone(&longest));
            loops.spawn(async move {
                while Instant::now() < until {
                    let asked = Instant::now();
                    let token = tokio::select! {
                        token = provider.token() => token,
                        () = dead(&life) => return Ok(()),
                    };
                    token.map_err(|error| format!("a replica got no token: {error}"))?;
                    let waited = u64::try_from(asked.elapsed().as_micros()).unwrap_or(u64::MAX);
                    longest.fetch_max(waited, Ordering::Relaxed);
                    tokio::time::sleep(REQUEST_GAP).await;
                }
                Ok::<(), String>(())
            });
        }
        meanwhile(started).await;
        while let Some(joined) = loops.join_next().await {
            joined.map_err(|error| format!("a replica panicked: {error}"))??;
        }
        Ok(Duration::from_micros(longest.load(Ordering::Relaxed)))
    }
}

/// Completes once `life` is dead (checked every 10 ms).
async fn dead(life: &Life) {
    while !life.dead.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The exchange under the shared cache: the first call after the fleet is
/// armed kills its replica (only a lock holder, or a replica exchanging on
/// its own, calls it).
#[derive(Clone)]
struct Tripwire<S> {
    inner: S,
    armed: Arc<AtomicBool>,
    life: Arc<Life>,
}

impl<S: Service<TokenRequest>> Service<TokenRequest> for Tripwire<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: TokenRequest) -> S::Future {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.life.dead.store(true, Ordering::SeqCst);
        }
        self.inner.call(request)
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
            Some(inner) if !this.life.dead.load(Ordering::SeqCst) => inner.as_mut().poll(cx),
            _ => Poll::Pending,
        }
    }
}

impl<F> Drop for Frozen<F> {
    fn drop(&mut self) {
        if self.life.dead.load(Ordering::SeqCst) {
            std::mem::forget(self.inner.take());
        }
    }
}
