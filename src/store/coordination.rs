//! How the replicas of a fleet share one exchange: look in the store for
//! the fleet's token; failing that, take the fleet's lock and exchange, or
//! wait for the replica that holds it. What an exchange then leaves for the
//! fleet is in `publish.rs`; the store calls, the breaker and the counters
//! in `replica.rs`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::held_lock::HeldLock;
use super::publish::{Asked, OwnExchange};
use super::replica::Replica;
use super::{Sealer, Snapshot, StoreKeys};
use crate::MAX_RETRY_AFTER;
use crate::clock::{later, random_unit};
use crate::error::{TokenError, TokenErrorKind};
use crate::token::{Token, TokenReason, TokenRequest};

/// The first and the longest pause between two looks at the store while
/// another replica exchanges.
const FIRST_POLL: Duration = Duration::from_millis(10);
const LONGEST_POLL: Duration = Duration::from_millis(100);

/// What to do instead of, or before, an exchange.
pub(super) enum Decision {
    /// The fleet's token, with its age.
    Stored(Token),
    /// This error, without an exchange: the fleet backs off, or the
    /// holder's exchange failed, or took longer than the request may wait.
    Failed(TokenError),
    /// Exchange, then [`OwnExchange::settle`].
    Exchange(OwnExchange),
}

/// One call: its request, its keys, and what it removes from the store.
struct Coordinating<'a> {
    replica: &'a Arc<Replica>,
    keys: StoreKeys,
    sealer: Arc<Sealer>,
    request: &'a TokenRequest,
    asked: Asked,
    /// The fingerprint of the token the request says was rejected.
    rejected: Option<String>,
    /// Whether an entry this replica cannot open was removed already.
    replaced: bool,
}

/// What one look at the store found.
enum Look {
    /// The fleet's token, which this replica may use.
    Token(Token),
    /// The fleet backs off this long more, after this failure.
    BackOff(Duration, Option<String>),
    /// No token to use, and no replica holds the lock.
    Free,
    /// No token to use; another replica holds the lock (its lease runs).
    Held,
}

/// The pauses of a replica that waits for the lock holder: 10 ms doubling
/// to 100 ms, jittered, until the request may wait no longer.
struct Waiting {
    pause: Duration,
    until: Instant,
    started: bool,
}

/// What a look found that this replica may use.
enum Usable {
    Token(Token),
    /// Nothing, or nothing this replica may take.
    Nothing,
    /// An entry this replica cannot open (sealed with a key it does not
    /// have, or garbage), with its fingerprint.
    Unreadable(String),
}

impl Replica {
    /// The sealer for the request's credentials, made again only when they
    /// differ from the last ones (a new secret: new keys, and nothing held
    /// under the old ones). Notes a rejected token for removal.
    fn prepare(&self, request: &TokenRequest) -> Option<Arc<Sealer>> {
        let credentials = request.credentials();
        let mut state = self.state();
        if state
            .keyed
            .as_ref()
            .is_none_or(|(last, _)| last != credentials)
        {
            let config = &self.config;
            let sealer = Sealer::new(
                &config.key_prefix,
                &config.token_url,
                config.auth_method,
                credentials,
                config.key_ring.as_ref(),
            );
            if sealer.is_none() {
                tracing::warn!(
                    "the shared token store is not used: no keys can be derived from an empty client secret"
                );
            }
            state.keyed = Some((credentials.clone(), sealer.map(Arc::new)));
            (state.held, state.removal) = (None, None);
        }
        let sealer = state.keyed.as_ref()?.1.clone()?;
        if let TokenReason::Rejected(token) = request.reason() {
            state.removal = Some(sealer.fingerprint(token.secret()));
        }
        Some(sealer)
    }

    /// Looks for the fleet's token; failing that, takes the fleet's lock
    /// and exchanges, or waits for the replica that holds it: for its token
    /// or its failure, as long as it renews its lease, and up to the
    /// request's timeout. When the lease lapses, the first waiter to look
    /// takes the lock; the others wait for it in turn. Only a failing store
    /// sends this replica to an exchange of its own.
    pub(super) async fn coordinate(self: &Arc<Self>, request: &TokenRequest) -> Decision {
        let asked = Asked::now(self, request);
        let Some(sealer) = self.prepare(request) else {
            self.count(|s| &mut s.fallbacks);
            return Decision::Exchange(self.own_exchange(None, None, asked));
        };
        let mut call = Coordinating {
            replica: self,
            keys: sealer.keys().clone(),
            sealer,
            request,
            asked,
            rejected: self.state().removal.clone(),
            replaced: false,
        };
        if !self.state().breaker.admits(Instant::now()) || !call.remove_rejected().await {
            return call.fall_back(None);
        }
        let mut waiting = Waiting::new(asked.answer_by());
        loop {
            let look = call.look().await;
            if !waiting.started()
                && matches!(look, Some(Look::Free | Look::Held | Look::BackOff(..)))
            {
                self.count(|s| &mut s.misses);
            }
            match look {
                Some(Look::Token(token)) => return Decision::Stored(token),
                Some(Look::BackOff(left, cause)) => {
                    return Decision::Failed(backed_off(left, cause.as_deref(), waiting.started()));
                }
                Some(Look::Free) => match call.take_lock().await {
                    Ok(Some(lock)) => return call.hold(lock).await,
                    Ok(None) => {}
                    // The lock may have been taken without its answer
                    // arriving: exchange as its holder.
                    Err(maybe) => return call.fall_back(Some(maybe)),
                },
                Some(Look::Held) => {}
                // A failed look while waiting: look again later, until the
                // breaker opens.
                None if waiting.started() && !self.breaker_open() => {}
                None => return call.fall_back(None),
            }
            if !waiting.pause(self).await {
                return Decision::Failed(waited_too_long(asked));
            }
        }
    }

    /// The stored token, if this replica may use it: it opens, it is not
    /// the one rejected, and it may still be served for more than an
    /// operation's time. A replica with a token of its own (`needed_by`)
    /// takes it only if it is newer than that one; a cold one takes it as
    /// long as it may be served.
    fn usable(
        &self,
        call: &Coordinating<'_>,
        snapshot: &Snapshot,
        asked_at: Instant,
        rejected: Option<&str>,
    ) -> Usable {
        let request = call.request;
        let Some(stored) = &snapshot.token else {
            return Usable::Nothing;
        };
        let Some(secret) = call.sealer.open(stored) else {
            self.report_unreadable(stored);
            return Usable::Unreadable(stored.fingerprint.clone());
        };
        let lifetime =
            Duration::from_millis(stored.expires_at_ms.saturating_sub(stored.issued_at_ms));
        if rejected == Some(stored.fingerprint.as_str()) || lifetime.is_zero() {
            return Usable::Nothing;
        }
        let served_for = request.served_for(lifetime);
        // How long it may still be served: by the store's own count where
        // it keeps one, so that replicas' clocks need not agree; else from
        // its issue time on this replica's clock.
        let left = snapshot.token_ttl.unwrap_or_else(|| {
            let age = Duration::from_millis(self.now_ms().saturating_sub(stored.issued_at_ms));
            served_for.saturating_sub(age)
        });
        let now = Instant::now();
        // Not a token that may stop being served before it is handed over:
        // one operation's time must be left (the lock's release may come
        // first).
        let margin = later(now, self.config.operation_timeout);
        let issued_at = asked_at
            .checked_add(left)
            .filter(|until| *until > margin)
            .and_then(|until| until.checked_sub(served_for))
            .map(|at| at.min(now));
        let Some(issued_at) = issued_at else {
            return Usable::Nothing;
        };
        let mut state = self.state();
        let newer = state.held.is_none_or(|held| stored.issued_at_ms > held);
        if request.needed_by().is_some() && !newer {
            return Usable::Nothing;
        }
        state.held = Some(stored.issued_at_ms);
        Usable::Token(Token::new(secret, lifetime).with_age(now - issued_at))
    }

    fn own_exchange(
        self: &Arc<Self>,
        keyed: Option<(StoreKeys, Arc<Sealer>)>,
        lock: Option<HeldLock>,
        asked: Asked,
    ) -> OwnExchange {
        OwnExchange {
            replica: Arc::clone(self),
            keyed,
            lock,
            asked,
        }
    }
}

impl Coordinating<'_> {
    /// Removes the rejected token from the store, if the request names
    /// one; false if the store failed.
    async fn remove_rejected(&mut self) -> bool {
        let Some(fingerprint) = self.rejected.clone() else {
            return true;
        };
        let replica = self.replica;
        let remove = replica.config.store.remove(&self.keys, &fingerprint);
        // Tried again at the next call if it fails; no more store time now.
        let Some(removed) = replica.call(remove).await else {
            return false;
        };
        if removed {
            tracing::debug!("rejected token removed from the shared store");
        }
        let mut state = replica.state();
        if state.removal.as_ref() == Some(&fingerprint) {
            state.removal = None;
        }
        true
    }

    /// One look at the store; `None` if the store failed. An entry this
    /// replica cannot open is removed, once per call, and looked for again:
    /// a miss this replica may replace through the lock.
    async fn look(&mut self) -> Option<Look> {
        let replica = self.replica;
        loop {
            // The store counts times left from before its answer travels.
            let asked_at = Instant::now();
            let load = replica.config.store.load(&self.keys);
            let snapshot = replica.call(load).await?;
            let rejected = self.rejected.as_deref();
            match replica.usable(self, &snapshot, asked_at, rejected) {
                Usable::Token(token) => {
                    replica.count(|s| &mut s.hits);
                    return Some(Look::Token(token));
                }
                Usable::Unreadable(fingerprint) if !self.replaced => {
                    self.replaced = true;
                    let remove = replica.config.store.remove(&self.keys, &fingerprint);
                    replica.call(remove).await?;
                    continue;
                }
                Usable::Unreadable(_) | Usable::Nothing => {}
            }
            return Some(match (snapshot.backoff, snapshot.lock_ttl) {
                (Some(left), _) => Look::BackOff(left, snapshot.backoff_cause),
                (None, None) => Look::Free,
                (None, Some(_)) => Look::Held,
            });
        }
    }

    /// Takes the fleet's lock: `Ok(None)` if another replica holds it,
    /// and if the store failed, the lock it may have taken.
    async fn take_lock(&mut self) -> Result<Option<HeldLock>, HeldLock> {
        let replica = self.replica;
        // Held before it is asked for: a call dropped while the store takes
        // it still releases it (the release is owner-checked).
        let held = self.held_lock();
        let take = replica
            .config
            .store
            .lock(&self.keys, &replica.owner, replica.lease());
        match replica.call_writing(take).await {
            Some(true) => Ok(Some(held)),
            Some(false) => {
                held.disarm();
                Ok(None)
            }
            None => Err(held),
        }
    }

    /// Holding the lock: looks once more (a replica may have stored a token
    /// or a failure just before), then exchanges for the fleet.
    async fn hold(mut self, lock: HeldLock) -> Decision {
        let replica = self.replica;
        match self.look().await {
            None => self.fall_back(Some(lock)),
            Some(Look::Token(token)) => {
                lock.release().await;
                Decision::Stored(token)
            }
            Some(Look::BackOff(left, cause)) => {
                lock.release().await;
                Decision::Failed(backed_off(left, cause.as_deref(), false))
            }
            Some(Look::Free | Look::Held) => {
                replica.count(|s| &mut s.lock_wins);
                Decision::Exchange(self.own_exchange(Some(lock)))
            }
        }
    }

    fn held_lock(&self) -> HeldLock {
        HeldLock::new(Arc::clone(self.replica), self.keys.clone())
    }

    /// Exchanges without the fleet's coordination (and shares the token
    /// if the store lets it).
    fn fall_back(self, lock: Option<HeldLock>) -> Decision {
        self.replica.count(|s| &mut s.fallbacks);
        Decision::Exchange(self.own_exchange(lock))
    }

    fn own_exchange(self, lock: Option<HeldLock>) -> OwnExchange {
        let keyed = Some((self.keys, self.sealer));
        (self.replica).own_exchange(keyed, lock, self.asked)
    }
}

impl Waiting {
    fn new(until: Instant) -> Self {
        Self {
            pause: FIRST_POLL,
            until,
            started: false,
        }
    }

    /// Whether this replica waits for the holder already.
    fn started(&self) -> bool {
        self.started
    }

    /// Sleeps about the next pause (jittered), never past the time the
    /// request may wait; false once that time has come.
    async fn pause(&mut self, replica: &Replica) -> bool {
        if !self.started {
            self.started = true;
            replica.count(|s| &mut s.waits);
            tracing::debug!("another replica is fetching the token; waiting for it");
        }
        let jittered = self.pause.mul_f64(0.5 + random_unit() / 2.0);
        let wake = later(Instant::now(), jittered).min(self.until);
        tokio::time::sleep_until(wake).await;
        self.pause = (self.pause * 2).min(LONGEST_POLL);
        wake < self.until
    }
}

/// The error of a replica that finds the fleet backing off, `left` more,
/// after a failure of the lock holder's exchange: `cause` is the kind's
/// label (none, or one this replica does not know: the endpoint's
/// `Retry-After`). A replica that `waited` for that exchange fails as the
/// callers of one process fail with its one exchange: its provider counts
/// the failure and backs off. One that finds the backoff as it comes gets
/// a [deferred](TokenError::deferred) error: its provider waits out
/// exactly what is left, counting no failure.
fn backed_off(left: Duration, cause: Option<&str>, waited: bool) -> TokenError {
    let left = left.min(MAX_RETRY_AFTER);
    let kind = cause.and_then(TokenErrorKind::from_label);
    let ms = left.as_millis();
    let detail = match kind {
        None | Some(TokenErrorKind::RateLimited) => format!(
            "the token endpoint asked another replica to retry later; the fleet backs off for {ms} ms more"
        ),
        Some(_) => format!(
            "the exchange of another replica, which held the fleet's lock, failed so; the fleet backs off for {ms} ms more"
        ),
    };
    let kind = kind.unwrap_or(TokenErrorKind::RateLimited);
    let error = TokenError::with_detail(kind, detail).with_retry_after(left);
    if waited { error } else { error.deferred() }
}

/// The error of a replica that waited for the lock holder's exchange as
/// long as its request may wait.
fn waited_too_long(asked: Asked) -> TokenError {
    TokenError::with_detail(
        TokenErrorKind::Timeout,
        format!(
            "no answer within {} ms: the replica that holds the fleet's lock is still exchanging",
            asked.timeout.as_millis()
        ),
    )
}
