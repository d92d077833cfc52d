//! What the handles of a provider and its worker share: [`State`], the
//! current token and a mailbox ([`Mail`]) with the callers' requests and the
//! worker's last outcome ([`Outcome`]); and [`Stopped`], which tells the
//! callers when a worker ends.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::cached::CachedToken;
use super::options::Options;
use super::{Ask, ProviderStats};
use crate::ClientCredentials;
use crate::error::{TokenError, TokenErrorKind};

/// What handles and the worker share.
pub(super) struct State {
    /// The token requests are served, if any.
    pub(super) current: ArcSwapOption<CachedToken>,
    pub(super) mail: Mutex<Mail>,
    /// Wakes the worker when it has mail.
    pub(super) wake: Notify,
    /// Wakes the callers waiting for an answer when there is a new one.
    pub(super) answered: Notify,
    pub(super) options: Options,
    /// The `seq` of the next token stored, whichever worker stores it.
    pub(super) next_seq: AtomicU64,
}

/// The worker's last outcome, as callers see it.
#[derive(Clone)]
pub(super) enum Outcome {
    /// None yet.
    Idle,
    /// A token was stored.
    Ready,
    /// The last exchange failed; the next starts at `retry_at` (`None`: when
    /// asked). An error for credentials older than `generation` is not
    /// served to callers.
    Failed {
        error: TokenError,
        retry_at: Option<Instant>,
        generation: u64,
    },
}

pub(super) struct Mail {
    /// The worker's last outcome, numbered: a caller that joins waits for
    /// the first one numbered after what it saw then. Kept apart from
    /// `fetching`, so that an attempt starting right after a failure never
    /// hides that failure from its waiters.
    pub(super) outcome: (u64, Outcome),
    /// The number of the last `Ready` outcome: a caller that joined before
    /// it takes the current token if it is fresh, even if a later attempt
    /// (a refresh) failed since.
    pub(super) last_ready: u64,
    /// An attempt (an exchange, or a look at the fleet's store) is under
    /// way: callers join it rather than ask for another.
    pub(super) fetching: bool,
    /// A caller has no token to serve, or a request found the refresh due.
    pub(super) need: bool,
    /// A new token is asked for even if the current one is fresh.
    pub(super) refresh: bool,
    /// When a response last invalidated a token (for pacing).
    pub(super) rejected_at: Option<Instant>,
    /// The token last invalidated, by a response or by a caller, for the
    /// worker to name in its next request.
    pub(super) invalidated: Option<crate::token::AccessToken>,
    /// The latest credentials, and how many changes came before them.
    pub(super) credentials: ClientCredentials,
    pub(super) generation: u64,
    /// The worker has not taken the latest credentials yet.
    pub(super) credentials_changed: bool,
    /// The last handle is gone.
    pub(super) closed: bool,
    /// Set by the handle that starts a worker, cleared when its task ends.
    pub(super) worker_running: bool,
    /// Counted on the slow path only.
    pub(super) stats: ProviderStats,
}

impl Mail {
    pub(super) fn request(&mut self, ask: Ask) {
        match ask {
            Ask::Need => self.need = true,
            Ask::Refresh => self.refresh = true,
        }
    }

    /// Records an outcome, which answers the pending requests: they are
    /// cleared in the same step. A caller reads the outcome and leaves its
    /// request under this lock, so it either sees this outcome or leaves its
    /// request for the next round. Wake the callers with
    /// [`State::answered`] once the lock is released.
    pub(super) fn set_outcome(&mut self, outcome: Outcome) {
        self.need = false;
        self.refresh = false;
        self.fetching = false;
        // One per attempt: never wraps.
        let number = self.outcome.0.saturating_add(1);
        if matches!(outcome, Outcome::Ready) {
            self.last_ready = number;
        }
        self.outcome = (number, outcome);
    }
}

impl State {
    pub(super) fn new(options: Options, credentials: ClientCredentials) -> Self {
        let mail = Mail {
            outcome: (0, Outcome::Idle),
            last_ready: 0,
            fetching: false,
            need: false,
            refresh: false,
            rejected_at: None,
            invalidated: None,
            credentials,
            generation: 0,
            credentials_changed: false,
            closed: false,
            worker_running: false,
            stats: ProviderStats::default(),
        };
        Self {
            current: ArcSwapOption::empty(),
            mail: Mutex::new(mail),
            wake: Notify::new(),
            answered: Notify::new(),
            options,
            next_seq: AtomicU64::new(1),
        }
    }

    pub(super) fn mail(&self) -> MutexGuard<'_, Mail> {
        lock(&self.mail)
    }
}

/// Ends the worker's part when its task ends, however it ends (the last
/// handle dropped, its runtime shut down, even before it first ran): the
/// callers waiting on it get an error, and the next caller starts a new
/// worker. Made before the task is spawned.
pub(super) struct Stopped(pub(super) Arc<State>);

impl Drop for Stopped {
    fn drop(&mut self) {
        let error = TokenError::with_detail(
            TokenErrorKind::Internal,
            "the token worker stopped before it finished: its tokio runtime is shutting \
             down, or was built without a time driver (use `enable_all()` or \
             `enable_time()` on the runtime builder)",
        );
        {
            let mut mail = self.0.mail();
            mail.worker_running = false;
            let outcome = Outcome::Failed {
                error,
                retry_at: None,
                generation: u64::MAX,
            };
            mail.set_outcome(outcome);
            // A request that asked for the current token's refresh asked
            // this worker, which never got to it: let a later request ask
            // the next one.
            if let Some(cached) = self.0.current.load().as_ref() {
                cached.unclaim_refresh();
            }
        }
        self.0.answered.notify_waiters();
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent before anything
    // that could panic, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
