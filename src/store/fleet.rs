//! The worker's side of a [`SharedCache`]: before an exchange, look for
//! the fleet's token and take the fleet's lock; after it, share the token.
//!
//! Only the worker calls this, and only when it would otherwise exchange:
//! with no token, with the refresh due, after an invalidation. Every store
//! operation is bounded by the operation timeout; a failure is counted,
//! feeds the breaker, and makes the worker exchange on its own.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use super::{Sealer, SharedCache, Snapshot, StoreFuture, StoreKeys, random_id};
use crate::ClientCredentials;
use crate::clock::{later, random_unit};
use crate::error::{ErrorChain, TokenError, TokenErrorKind};
use crate::provider::{MAX_RETRY_AFTER, Options, ProviderStats};
use crate::token::Token;

/// The first and the longest pause between two looks at the store while
/// another replica exchanges.
const FIRST_POLL: Duration = Duration::from_millis(10);
const LONGEST_POLL: Duration = Duration::from_millis(100);

/// What an exchange of this replica's owes the fleet afterwards: the keys
/// it was made under (the credentials may change before it ends), whether
/// it holds the lock, whether its token may be shared.
pub(crate) struct Ticket {
    locked: bool,
    share: bool,
    keys: StoreKeys,
    /// When the exchange was sent, by the wall clock.
    issued_at_ms: u64,
}

/// What to do instead of, or before, an exchange.
pub(crate) enum Acquired {
    /// The fleet's token, and the instant its lifetime counts from.
    Shared(Token, Instant),
    /// Exchange, then settle the ticket, if any, with
    /// [`Fleet::publish`] or [`Fleet::release`].
    Exchange(Option<Ticket>),
    /// The fleet backs off: this error, without an exchange.
    HoldOff(TokenError),
}

pub(crate) struct Fleet {
    cache: SharedCache,
    /// For the credentials in use; `None` if they could not be keyed.
    sealer: Option<Sealer>,
    owner: String,
    /// When the token this replica serves was issued, if it came from or
    /// went to the store.
    held: Option<u64>,
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
pub(crate) struct FleetStats {
    hits: u64,
    misses: u64,
    errors: u64,
    lock_wins: u64,
    waits: u64,
    fallbacks: u64,
}

impl FleetStats {
    /// Adds the counts to `stats` and starts again from zero, so that a new
    /// worker (after its runtime shut down) goes on counting.
    fn drain_into(&mut self, stats: &mut ProviderStats) {
        let counts = std::mem::take(self);
        stats.store_hits += counts.hits;
        stats.store_misses += counts.misses;
        stats.store_errors += counts.errors;
        stats.store_lock_wins += counts.lock_wins;
        stats.store_waits += counts.waits;
        stats.store_fallbacks += counts.fallbacks;
    }
}

impl Fleet {
    /// Now, in milliseconds since the Unix epoch: the one clock the replicas
    /// of a fleet share, read once and then followed on tokio's clock, so
    /// it never steps back and paused time moves it.
    pub(crate) fn now_ms(&self) -> u64 {
        let (wall, instant) = self.epoch;
        wall.saturating_add(millis(instant.elapsed()))
    }

    /// Moves the store's counts into `stats`.
    pub(crate) fn count(&mut self, stats: &mut ProviderStats) {
        self.guard.stats.drain_into(stats);
    }

    pub(crate) fn new(cache: SharedCache, credentials: &ClientCredentials) -> Self {
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
    pub(crate) fn set_credentials(&mut self, credentials: &ClientCredentials) {
        let cache = &self.cache;
        self.sealer = Sealer::new(
            &cache.key_prefix,
            &cache.token_url,
            cache.auth_method,
            credentials,
            cache.key_ring.as_ref(),
        );
        if self.sealer.is_none() {
            tracing::warn!(
                "the shared token store is not used: no keys can be derived from an empty client secret"
            );
        }
        (self.held, self.rejected) = (None, None);
    }

    /// `token` was dropped as rejected: remove it from the store before the
    /// next look, if it is still there.
    pub(crate) fn rejected(&mut self, token: &str) {
        self.rejected = self.sealer.as_ref().map(|sealer| sealer.fingerprint(token));
    }

    /// Looks for the fleet's token; failing that, takes the fleet's lock or
    /// waits for the replica that holds it, until the lock's time runs out.
    /// `cold`: this replica has no token to serve meanwhile. `stop`: the
    /// provider is gone or has new credentials, so stop waiting.
    pub(crate) async fn acquire(
        &mut self,
        options: &Options,
        cold: bool,
        stop: impl Fn() -> bool,
    ) -> Acquired {
        let Some(keys) = self.sealer.as_ref().map(|sealer| sealer.keys().clone()) else {
            self.guard.stats.fallbacks += 1;
            return Acquired::Exchange(None);
        };
        if self.guard.is_open() {
            return self.fall_back(keys, false);
        }
        let rejected = self.rejected.take();
        if let Some(fingerprint) = &rejected {
            let remove = self.cache.store.remove(&keys, fingerprint);
            match self.guard.run(remove).await {
                Some(true) => tracing::debug!("rejected token removed from the shared store"),
                Some(false) => {}
                None => {
                    // Tried again at the next look; no more store time now.
                    self.rejected.clone_from(&rejected);
                    return self.fall_back(keys, false);
                }
            }
        }
        let lock_for = self.lock_for(options);
        let started = Instant::now();
        let operation = self.cache.operation_timeout;
        // Waits for the holder's lock time, and again for each new holder,
        // three lock times at most.
        let longest = later(started, lock_for.saturating_mul(3));
        let mut give_up_at = later(started, lock_for.saturating_add(operation));
        let mut pause = FIRST_POLL;
        let (mut waiting, mut locked) = (false, false);
        let mut last_lock_ttl = None;
        loop {
            // The store counts times left from before its answer travels.
            let asked_at = Instant::now();
            let Some(snapshot) = self.load(&keys).await else {
                if waiting && !locked && !self.guard.is_open() && Instant::now() < give_up_at {
                    // One failed look while waiting: look again later.
                    pause = self.pause(pause).await;
                    continue;
                }
                return self.fall_back(keys, locked);
            };
            let (found, unreadable) =
                self.usable(&snapshot, asked_at, options, cold, rejected.as_deref());
            if let Some(found) = found {
                self.guard.stats.hits += 1;
                if locked {
                    self.unlock(&keys).await;
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
                    self.unlock(&keys).await;
                }
                self.guard.stats.fallbacks += 1;
                return Acquired::Exchange(Some(self.ticket(keys, false, false)));
            }
            if let Some(backoff) = snapshot.backoff {
                if locked {
                    self.unlock(&keys).await;
                }
                let backoff = backoff.min(MAX_RETRY_AFTER);
                let error = TokenError::with_detail(
                    TokenErrorKind::RateLimited,
                    format!(
                        "the token endpoint asked another replica to retry later; the fleet backs off for {} ms more",
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
                return Acquired::Exchange(Some(self.ticket(keys, true, true)));
            }
            if let Some(held_for) = snapshot.lock_ttl {
                // The lock's time went up: a new holder (the last one's ran
                // out, or it released the lock after a failure) gets its
                // time too.
                if last_lock_ttl.is_some_and(|last| held_for > last) {
                    let wait = held_for.min(lock_for).saturating_add(operation);
                    give_up_at = give_up_at.max(later(Instant::now(), wait)).min(longest);
                }
                last_lock_ttl = Some(held_for);
            }
            let lock = self.cache.store.lock(&keys, &self.owner, lock_for);
            match self.guard.run(lock).await {
                // The lock may have been taken without its answer arriving:
                // exchange as its holder, whose unlock is safe either way.
                None => return self.fall_back(keys, true),
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
            if Instant::now() >= give_up_at || stop() {
                return self.fall_back(keys, false);
            }
            pause = self.pause(pause).await;
        }
    }

    /// After an exchange under `ticket`: shares its token, or, after a
    /// failure with the endpoint's `Retry-After` (`Err(Some(..))`), makes the
    /// fleet back off that long if this replica held the lock; then releases
    /// the lock. Other failures only release it, for a waiter to take over.
    pub(crate) async fn publish(
        &mut self,
        result: Result<Shared<'_>, Option<Duration>>,
        ticket: Ticket,
    ) {
        match result {
            Ok(shared) => {
                let issued_at_ms = ticket.issued_at_ms;
                let expires_at_ms = issued_at_ms.saturating_add(millis(shared.lifetime));
                let sealer = self
                    .sealer
                    .as_ref()
                    .filter(|sealer| *sealer.keys() == ticket.keys);
                if let Some(stored) =
                    sealer.and_then(|s| s.seal(shared.token, issued_at_ms, expires_at_ms))
                {
                    self.held = Some(issued_at_ms);
                    if ticket.share && !self.guard.is_open() {
                        let save = self
                            .cache
                            .store
                            .save(&ticket.keys, &stored, shared.served_for);
                        if self.guard.run(save).await == Some(true) {
                            tracing::debug!("token shared with the fleet");
                        }
                    }
                }
            }
            Err(Some(retry_after)) if ticket.locked => {
                let retry_after = retry_after.min(MAX_RETRY_AFTER);
                let back_off = self.cache.store.back_off(&ticket.keys, retry_after);
                self.guard.run(back_off).await;
            }
            Err(_) => {}
        }
        self.release(ticket).await;
    }

    /// Releases the lock of `ticket`, if it holds it, with nothing to share
    /// (the provider was dropped, or its credentials changed).
    pub(crate) async fn release(&mut self, ticket: Ticket) {
        if ticket.locked {
            self.unlock(&ticket.keys).await;
        }
    }

    /// The time the lock is held for: the longest an exchange may take,
    /// plus the store operations around it (one more look, the save).
    fn lock_for(&self, options: &Options) -> Duration {
        options
            .exchange_timeout
            .saturating_add(self.cache.operation_timeout.saturating_mul(3))
    }

    fn fall_back(&mut self, keys: StoreKeys, locked: bool) -> Acquired {
        self.guard.stats.fallbacks += 1;
        Acquired::Exchange(Some(self.ticket(keys, locked, true)))
    }

    fn ticket(&self, keys: StoreKeys, locked: bool, share: bool) -> Ticket {
        Ticket {
            locked,
            share,
            keys,
            issued_at_ms: self.now_ms(),
        }
    }

    /// Sleeps about `pause` (jittered); the next, longer pause.
    async fn pause(&self, pause: Duration) -> Duration {
        let jittered = pause.mul_f64(0.5 + random_unit() / 2.0);
        tokio::time::sleep(jittered).await;
        (pause * 2).min(LONGEST_POLL)
    }

    /// The stored token, if this replica can use it: it opens, it is not
    /// the one rejected, and it may still be served. A replica with a token
    /// of its own takes it only if it is newer and its refresh is not due;
    /// a `cold` one takes it as long as it may be served. The second value
    /// tells whether a token was stored that does not open.
    fn usable(
        &mut self,
        snapshot: &Snapshot,
        asked_at: Instant,
        options: &Options,
        cold: bool,
        rejected: Option<&str>,
    ) -> (Option<Acquired>, bool) {
        let (Some(stored), Some(sealer)) = (&snapshot.token, &self.sealer) else {
            return (None, false);
        };
        let Some(secret) = sealer.open(stored) else {
            return (None, true);
        };
        let lifetime =
            Duration::from_millis(stored.expires_at_ms.saturating_sub(stored.issued_at_ms));
        if rejected == Some(stored.fingerprint.as_str()) || lifetime.is_zero() {
            return (None, false);
        }
        let token = Token::new(secret, lifetime);
        // The earliest refresh point, whatever the jitter.
        let schedule = options.schedule(&token, 0.0);
        // How long it may still be served: by the store's own count where
        // it keeps one, so that replicas' clocks need not agree; else from
        // its issue time on this replica's clock.
        let left = snapshot.token_ttl.unwrap_or_else(|| {
            let age = Duration::from_millis(self.now_ms().saturating_sub(stored.issued_at_ms));
            schedule.fresh_for.saturating_sub(age)
        });
        let now = Instant::now();
        // Not a token that may stop being served before it is stored: one
        // operation's time must be left (the lock's release may come first).
        let margin = later(now, self.cache.operation_timeout);
        let requested_at = asked_at
            .checked_add(left)
            .filter(|until| *until > margin)
            .and_then(|until| until.checked_sub(schedule.fresh_for))
            .map(|at| at.min(now));
        let Some(requested_at) = requested_at else {
            return (None, false);
        };
        let newer = self
            .held
            .as_ref()
            .is_none_or(|&held| stored.issued_at_ms > held);
        let due = now >= later(requested_at, schedule.refresh_after);
        if !cold && (!newer || due) {
            return (None, false);
        }
        self.held = Some(stored.issued_at_ms);
        (Some(Acquired::Shared(token, requested_at)), false)
    }

    async fn load(&mut self, keys: &StoreKeys) -> Option<Snapshot> {
        let load = self.cache.store.load(keys);
        self.guard.run(load).await
    }

    async fn unlock(&mut self, keys: &StoreKeys) {
        let unlock = self.cache.store.unlock(keys, &self.owner);
        self.guard.run(unlock).await;
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
            self.open_until = Some(later(Instant::now(), open_for));
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
pub(crate) struct Shared<'a> {
    pub(crate) token: &'a str,
    pub(crate) lifetime: Duration,
    /// How long from now it may still be served: the entry's time to live.
    pub(crate) served_for: Duration,
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
