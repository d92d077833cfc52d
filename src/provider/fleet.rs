//! The worker's side of a [`SharedCache`]: before an exchange, look for
//! the fleet's token and take the fleet's lock; after it, share the token.
//!
//! Only the worker calls this, and only when it would otherwise exchange:
//! with no token, with the refresh due, after an invalidation. Every store
//! operation is bounded by the operation timeout; a failure is counted,
//! feeds the breaker, and makes the worker exchange on its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::ProviderStats;
use super::options::{Options, random_unit};
use crate::ClientCredentials;
use crate::error::{ErrorChain, TokenError, TokenErrorKind};
use crate::store::{Sealer, SharedCache, Snapshot, StoreFuture, StoredToken, random_id};
use crate::token::Token;

/// The first and the longest pause between two looks at the store while
/// another replica exchanges.
const FIRST_POLL: Duration = Duration::from_millis(10);
const LONGEST_POLL: Duration = Duration::from_millis(100);

/// What an exchange of this replica's owes the fleet afterwards.
#[derive(Clone, Copy)]
pub(super) struct Ticket {
    pub(super) locked: bool,
    pub(super) share: bool,
    /// When the exchange was sent, by the wall clock.
    pub(super) issued_at_ms: u64,
}

/// What to do instead of, or before, an exchange.
pub(super) enum Acquired {
    /// The fleet's token, and the instant its lifetime counts from.
    Shared(Token, Instant),
    /// Exchange; `locked` if this replica holds the fleet's lock, `share`
    /// if the result may be written to the store.
    Exchange { locked: bool, share: bool },
    /// The fleet backs off: this error, without an exchange.
    HoldOff(TokenError),
}

/// The token this replica serves, as the store knows it.
struct Held {
    fingerprint: String,
    issued_at_ms: u64,
}

pub(super) struct Fleet {
    cache: SharedCache,
    /// For the credentials in use; `None` if they could not be keyed.
    sealer: Option<Sealer>,
    owner: String,
    held: Option<Held>,
    /// The fingerprint of a token a response rejected, to remove from the
    /// store before the next look.
    rejected: Option<String>,
    guard: Guard,
    /// The wall clock when the fleet was made, and tokio's instant then:
    /// see [`Fleet::now_ms`].
    epoch: (u64, Instant),
}

/// Bounds every store operation, and leaves the store alone for a while
/// after enough failures in a row (the breaker).
struct Guard {
    timeout: Duration,
    breaker_failures: u32,
    open_for: Duration,
    /// Failed operations in a row, and until when the store is left alone.
    failures: u32,
    open_until: Option<Instant>,
    stats: FleetStats,
}

/// The store's part of [`ProviderStats`].
#[derive(Default, Clone, Copy)]
pub(super) struct FleetStats {
    hits: u64,
    misses: u64,
    errors: u64,
    lock_wins: u64,
    waits: u64,
    fallbacks: u64,
}

impl FleetStats {
    fn apply(&self, stats: &mut ProviderStats) {
        stats.store_hits = self.hits;
        stats.store_misses = self.misses;
        stats.store_errors = self.errors;
        stats.store_lock_wins = self.lock_wins;
        stats.store_waits = self.waits;
        stats.store_fallbacks = self.fallbacks;
    }
}

impl Fleet {
    /// Now, in milliseconds since the Unix epoch: the one clock the replicas
    /// of a fleet share, read once and then followed on tokio's clock, so
    /// it never steps back and paused time moves it.
    pub(super) fn now_ms(&self) -> u64 {
        let (wall, instant) = self.epoch;
        wall.saturating_add(millis(instant.elapsed()))
    }

    /// Copies the store's counters into `stats`.
    pub(super) fn count(&self, stats: &mut ProviderStats) {
        self.guard.stats.apply(stats);
    }

    pub(super) fn new(cache: SharedCache, credentials: &ClientCredentials) -> Self {
        let owner = random_id().unwrap_or_else(|| format!("pid-{}", std::process::id()));
        let guard = Guard {
            timeout: cache.operation_timeout,
            breaker_failures: cache.breaker_failures,
            open_for: cache.breaker_open_for,
            failures: 0,
            open_until: None,
            stats: FleetStats::default(),
        };
        let mut fleet = Self {
            cache,
            sealer: None,
            owner,
            held: None,
            rejected: None,
            guard,
            epoch: (wall_clock_ms(), Instant::now()),
        };
        fleet.set_credentials(credentials);
        fleet
    }

    /// New credentials: new key names, and nothing held under the old ones.
    pub(super) fn set_credentials(&mut self, credentials: &ClientCredentials) {
        let cache = &self.cache;
        self.sealer = Sealer::new(
            &cache.key_prefix,
            &cache.token_url,
            cache.auth_method,
            credentials,
            cache.key_ring.as_ref(),
        );
        if self.sealer.is_none() {
            tracing::warn!("the shared token store is not used: its keys could not be derived");
        }
        (self.held, self.rejected) = (None, None);
    }

    /// A response rejected the token this replica served.
    pub(super) fn rejected(&mut self) {
        if let Some(held) = self.held.take() {
            self.rejected = Some(held.fingerprint);
        }
    }

    /// Looks for the fleet's token; failing that, takes the fleet's lock or
    /// waits for the replica that holds it, until the lock's time runs out.
    /// `closed` tells whether the provider is gone, to stop waiting.
    pub(super) async fn acquire(
        &mut self,
        options: &Options,
        closed: impl Fn() -> bool,
    ) -> Acquired {
        let fallback = Acquired::Exchange {
            locked: false,
            share: true,
        };
        if self.sealer.is_none() || self.guard.is_open() {
            self.guard.stats.fallbacks += 1;
            return fallback;
        }
        let rejected = self.rejected.take();
        if let Some(fingerprint) = &rejected {
            let Some(keys) = self.sealer.as_ref().map(Sealer::keys) else {
                return fallback;
            };
            let remove = self.cache.store.remove(keys, fingerprint);
            match self.guard.run(remove).await {
                Some(true) => tracing::debug!("rejected token removed from the shared store"),
                Some(false) => {}
                // Tried again at the next look.
                None => self.rejected.clone_from(&rejected),
            }
        }
        let lock_for = self.lock_for(options);
        let give_up_at = Instant::now() + lock_for + self.cache.operation_timeout;
        let mut pause = FIRST_POLL;
        let mut waiting = false;
        let mut locked = false;
        loop {
            let Some(snapshot) = self.load().await else {
                return self.fall_back(locked);
            };
            let (found, unreadable) = self.usable(&snapshot, options, rejected.as_deref());
            if let Some(found) = found {
                self.guard.stats.hits += 1;
                if locked {
                    self.unlock().await;
                }
                return found;
            }
            if !waiting && !locked {
                self.guard.stats.misses += 1;
            }
            if unreadable {
                // Sealed by a key this replica does not have: exchange for
                // itself, and leave the fleet's entry alone.
                if locked {
                    self.unlock().await;
                }
                self.guard.stats.fallbacks += 1;
                return Acquired::Exchange {
                    locked: false,
                    share: false,
                };
            }
            if let Some(backoff) = snapshot.backoff {
                if locked {
                    self.unlock().await;
                }
                let error = TokenError::with_detail(
                    TokenErrorKind::RateLimited,
                    format!(
                        "another replica was asked to retry after {} ms; the fleet backs off",
                        backoff.as_millis()
                    ),
                )
                .with_retry_after(backoff);
                return Acquired::HoldOff(error);
            }
            if locked {
                // Looked once more after taking the lock: no replica stored
                // a token in between.
                self.guard.stats.lock_wins += 1;
                return Acquired::Exchange {
                    locked: true,
                    share: true,
                };
            }
            let Some(keys) = self.sealer.as_ref().map(Sealer::keys) else {
                return fallback;
            };
            let lock = self.cache.store.lock(keys, &self.owner, lock_for);
            match self.guard.run(lock).await {
                None => return self.fall_back(false),
                Some(true) => {
                    locked = true;
                    continue;
                }
                Some(false) => {}
            }
            if !waiting {
                waiting = true;
                self.guard.stats.waits += 1;
                tracing::debug!("another replica is fetching the token; waiting for it");
            }
            if Instant::now() >= give_up_at || closed() {
                return self.fall_back(false);
            }
            let jittered = pause.mul_f64(0.5 + random_unit() / 2.0);
            tokio::time::sleep(jittered).await;
            pause = (pause * 2).min(LONGEST_POLL);
        }
    }

    /// After an exchange: shares its token (or the endpoint's
    /// `Retry-After`) and releases the lock.
    pub(super) async fn publish(
        &mut self,
        result: Result<Shared<'_>, Option<Duration>>,
        ticket: Ticket,
    ) {
        let Ticket { locked, share, .. } = ticket;
        match result {
            Ok(shared) => {
                let sealed = self.sealer.as_ref().and_then(|sealer| {
                    let issued_at_ms = ticket.issued_at_ms;
                    let expires_at_ms = issued_at_ms.saturating_add(millis(shared.lifetime));
                    sealer.seal(shared.token, issued_at_ms, expires_at_ms)
                });
                if let Some(stored) = sealed {
                    self.held = Some(Held {
                        fingerprint: stored.fingerprint.clone(),
                        issued_at_ms: stored.issued_at_ms,
                    });
                    if share && !self.guard.is_open() {
                        self.save(&stored, shared.served_for).await;
                    }
                }
            }
            Err(retry_after) => {
                if let Some(retry_after) = retry_after.filter(|_| locked) {
                    if let Some(keys) = self.sealer.as_ref().map(Sealer::keys) {
                        let back_off = self.cache.store.back_off(keys, retry_after);
                        self.guard.run(back_off).await;
                    }
                }
            }
        }
        if locked {
            self.unlock().await;
        }
    }

    /// The time the lock is held for: the longest an exchange may take,
    /// plus the store operations around it.
    fn lock_for(&self, options: &Options) -> Duration {
        options
            .exchange_timeout
            .saturating_add(self.cache.operation_timeout.saturating_mul(2))
    }

    fn fall_back(&mut self, locked: bool) -> Acquired {
        self.guard.stats.fallbacks += 1;
        Acquired::Exchange {
            locked,
            share: true,
        }
    }

    /// The stored token, if this replica can use it: it opens, it is not
    /// the one rejected, it is newer than the one held, and its refresh is
    /// not due yet. The second value tells whether a token was stored that
    /// does not open.
    fn usable(
        &mut self,
        snapshot: &Snapshot,
        options: &Options,
        rejected: Option<&str>,
    ) -> (Option<Acquired>, bool) {
        let (Some(stored), Some(sealer)) = (&snapshot.token, &self.sealer) else {
            return (None, false);
        };
        let Some(secret) = sealer.open(stored) else {
            return (None, true);
        };
        let newer = self
            .held
            .as_ref()
            .is_none_or(|held| stored.issued_at_ms > held.issued_at_ms)
            && rejected != Some(stored.fingerprint.as_str());
        let now_ms = self.now_ms();
        let age = Duration::from_millis(now_ms.saturating_sub(stored.issued_at_ms));
        let lifetime =
            Duration::from_millis(stored.expires_at_ms.saturating_sub(stored.issued_at_ms));
        let token = Token::new(secret, lifetime);
        // Usable until its earliest refresh point, whatever the jitter.
        let due = age >= options.schedule(&token, 1.0).refresh_after;
        if !newer || due || lifetime.is_zero() {
            return (None, false);
        }
        self.held = Some(Held {
            fingerprint: stored.fingerprint.clone(),
            issued_at_ms: stored.issued_at_ms,
        });
        let now = Instant::now();
        let requested_at = now.checked_sub(age).unwrap_or(now);
        (Some(Acquired::Shared(token, requested_at)), false)
    }

    async fn load(&mut self) -> Option<Snapshot> {
        let keys = self.sealer.as_ref()?.keys();
        let load = self.cache.store.load(keys);
        self.guard.run(load).await
    }

    async fn save(&mut self, stored: &StoredToken, ttl: Duration) {
        let Some(keys) = self.sealer.as_ref().map(Sealer::keys) else {
            return;
        };
        let save = self.cache.store.save(keys, stored, ttl);
        if self.guard.run(save).await == Some(true) {
            tracing::debug!("token shared with the fleet");
        }
    }

    async fn unlock(&mut self) {
        if let Some(keys) = self.sealer.as_ref().map(Sealer::keys) {
            let unlock = self.cache.store.unlock(keys, &self.owner);
            self.guard.run(unlock).await;
        }
    }
}

impl Guard {
    fn is_open(&self) -> bool {
        self.open_until.is_some_and(|until| Instant::now() < until)
    }

    /// Runs one store operation within the operation timeout, counting a
    /// failure and opening the breaker after enough of them in a row.
    async fn run<T>(&mut self, operation: StoreFuture<'_, T>) -> Option<T> {
        let timeout = self.timeout;
        let error = match tokio::time::timeout(timeout, operation).await {
            Ok(Ok(value)) => {
                (self.failures, self.open_until) = (0, None);
                return Some(value);
            }
            Ok(Err(error)) => ErrorChain(&error).to_string(),
            Err(_) => format!("no answer within {} ms", timeout.as_millis()),
        };
        self.stats.errors += 1;
        self.failures = self.failures.saturating_add(1);
        // A failure after the breaker let one operation through opens it
        // again at once.
        if self.failures >= self.breaker_failures || self.open_until.is_some() {
            let open_for = self.open_for;
            self.open_until = Some(Instant::now() + open_for);
            self.failures = 0;
            tracing::warn!(
                %error,
                open_for_ms = open_for.as_millis() as u64,
                "shared token store failing; exchanging without it for now"
            );
        } else {
            tracing::debug!(%error, "shared token store operation failed");
        }
        None
    }
}

/// A token this replica fetched, for the store.
pub(super) struct Shared<'a> {
    pub(super) token: &'a str,
    pub(super) lifetime: Duration,
    /// How long from now it may still be served: the entry's time to live.
    pub(super) served_for: Duration,
}

/// The wall clock in milliseconds since the Unix epoch.
fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
