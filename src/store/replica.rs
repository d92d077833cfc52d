//! [`Replica`]: what a [`SharedCache`](super::SharedCache) and every
//! [`SharedExchange`](super::SharedExchange) it makes share: the
//! configuration, this replica's name on the lock, the breaker and the
//! counters, and the store calls, each bounded by the operation timeout.
//! A failed call is counted, feeds the breaker, and makes the replica
//! exchange on its own.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::breaker::{Breaker, Failure};
use super::{Sealer, StoreFuture, StoreKeyRing, StoreStats, StoredToken, TokenStore};
use crate::error::ErrorChain;
use crate::{AuthMethod, ClientCredentials};

/// The shortest lease on the fleet's lock; see [`Replica::lease`].
const SHORTEST_LEASE: Duration = Duration::from_secs(1);

/// What a [`SharedCache`](super::SharedCache) is configured with.
#[derive(Clone)]
pub(super) struct Config {
    pub(super) store: Arc<dyn TokenStore>,
    /// [`TokenStore::address`], for the logs.
    pub(super) address: Option<Arc<str>>,
    pub(super) token_url: String,
    pub(super) auth_method: AuthMethod,
    pub(super) key_ring: Option<StoreKeyRing>,
    pub(super) key_prefix: String,
    pub(super) operation_timeout: Duration,
    pub(super) breaker_failures: u32,
    pub(super) breaker_probe_every: Duration,
}

/// This replica's side of fleet sharing (not the fleet's: the fleet's
/// state is in the store): the configuration and the mutable state of one
/// shared cache, behind the `Arc` that the layer and its services share.
pub(super) struct Replica {
    pub(super) config: Config,
    /// This replica's name on the fleet's lock.
    pub(super) owner: String,
    /// The wall clock at the first use, and tokio's instant then: see
    /// [`Replica::now_ms`].
    epoch: OnceLock<(u64, Instant)>,
    /// Never held across an await.
    state: Mutex<State>,
}

/// What changes as the replica uses the store.
pub(super) struct State {
    /// The credentials of the last request and their sealer (`None` if no
    /// keys can be derived from them).
    pub(super) keyed: Option<(ClientCredentials, Option<Arc<Sealer>>)>,
    /// When the token this replica holds was issued, in ms since the Unix
    /// epoch, if it came from or went to the store.
    pub(super) held: Option<u64>,
    /// The fingerprint of a rejected token, to remove from the store before
    /// the next look.
    pub(super) removal: Option<String>,
    /// The fingerprint of the last entry found that this replica cannot
    /// open, so that it is reported once.
    pub(super) unreadable: Option<String>,
    pub(super) breaker: Breaker,
    pub(super) stats: StoreStats,
}

impl Replica {
    pub(super) fn new(config: Config) -> Self {
        let owner = super::random_id().unwrap_or_else(|| format!("pid-{}", std::process::id()));
        let breaker = Breaker::new(config.breaker_failures, config.breaker_probe_every);
        Self {
            config,
            owner,
            epoch: OnceLock::new(),
            state: Mutex::new(State {
                keyed: None,
                held: None,
                removal: None,
                unreadable: None,
                breaker,
                stats: StoreStats::default(),
            }),
        }
    }

    pub(super) fn stats(&self) -> StoreStats {
        self.state().stats
    }

    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn count(&self, counter: fn(&mut StoreStats) -> &mut u64) {
        *counter(&mut self.state().stats) += 1;
    }

    /// Now, in milliseconds since the Unix epoch: the one clock the replicas
    /// of a fleet share, read once and then followed on tokio's clock, so
    /// it never steps back and paused time moves it.
    pub(super) fn now_ms(&self) -> u64 {
        let (wall, instant) = *self.epoch.get_or_init(|| (wall_clock_ms(), Instant::now()));
        wall.saturating_add(millis(instant.elapsed()))
    }

    /// Notes that the token this replica holds was issued at `issued_ms`
    /// (it took it from the store, or exchanged it).
    pub(super) fn hold(&self, issued_ms: u64) {
        self.state().held = Some(issued_ms);
    }

    pub(super) fn breaker_open(&self) -> bool {
        self.state().breaker.is_open()
    }

    /// How long the fleet's lock lives unless its holder renews it, which
    /// it does every third of that while it exchanges: four operation
    /// timeouts, a second at least. A holder that dies (or stalls) loses it
    /// that long after its last renewal.
    pub(super) fn lease(&self) -> Duration {
        self.config
            .operation_timeout
            .saturating_mul(4)
            .max(SHORTEST_LEASE)
    }

    /// Warns once per entry that this replica cannot open: replicas with
    /// different keys (a wrong key ring, a different client secret) share
    /// the client's entries.
    pub(super) fn report_unreadable(&self, stored: &StoredToken) {
        let mut state = self.state();
        state.stats.unreadable += 1;
        if state.unreadable.as_deref() == Some(stored.fingerprint.as_str()) {
            return;
        }
        state.unreadable = Some(stored.fingerprint.clone());
        drop(state);
        tracing::warn!(
            key_id = ?super::seal::key_id(stored),
            "the shared token store holds a token this replica cannot open (sealed under another key, or not a token); replacing it with its own. Check that every replica has the same client secret and key ring"
        );
    }

    /// Runs one store operation within the operation timeout; a failure
    /// is counted and may open the breaker, a success leaves it as it is.
    ///
    /// A success shows only that the store answered: a Redis that refuses
    /// writes still runs a script that happens not to write (an unlock of a
    /// lock held by another, a save of an older token).
    pub(super) async fn call<T>(&self, operation: StoreFuture<'_, T>) -> Option<T> {
        self.run(operation, false).await
    }

    /// Runs the taking of the lock, as [`Replica::call`]; its success closes
    /// the breaker. Taking the lock is a write the store refuses whenever
    /// it refuses writes, whether the lock is free or held: its answer
    /// shows that the store takes writes.
    pub(super) async fn call_writing<T>(&self, operation: StoreFuture<'_, T>) -> Option<T> {
        self.run(operation, true).await
    }

    async fn run<T>(&self, operation: StoreFuture<'_, T>, writes: bool) -> Option<T> {
        let timeout = self.config.operation_timeout;
        let error = match tokio::time::timeout(timeout, operation).await {
            Ok(Ok(value)) => {
                let mut state = self.state();
                if !writes {
                    state.breaker.answered(Instant::now());
                } else if state.breaker.wrote() {
                    drop(state);
                    let store = self.config.address.as_deref().unwrap_or("unnamed");
                    tracing::info!(
                        store,
                        "shared token store accepts writes again; sharing resumes"
                    );
                }
                return Some(value);
            }
            Ok(Err(error)) => ErrorChain(&error).to_string(),
            Err(_) => format!("no answer within {} ms", timeout.as_millis()),
        };
        let failure = {
            let mut state = self.state();
            state.stats.errors += 1;
            state.breaker.failed(Instant::now())
        };
        let probe_every_ms = self.config.breaker_probe_every.as_millis() as u64;
        let store = self.config.address.as_deref().unwrap_or("unnamed");
        // One warning until the store takes a write again.
        match failure {
            Failure::First => tracing::warn!(
                store,
                %error,
                "shared token store failing; exchanging without it until it answers again"
            ),
            Failure::Opened => tracing::info!(
                store,
                %error,
                probe_every_ms,
                "shared token store still failing; left alone but for a probe now and then"
            ),
            Failure::StillOpen => tracing::debug!(%error, "shared token store still failing"),
            Failure::Counted => tracing::debug!(%error, "shared token store operation failed"),
        }
        None
    }
}

/// The wall clock in milliseconds since the Unix epoch.
fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

pub(super) use crate::clock::millis;
