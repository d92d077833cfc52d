//! What the handles of a provider and its worker share: [`State`], the
//! current token and a mailbox ([`Mail`]) with the callers' requests and the
//! worker's last answer ([`Status`]); and [`Stopped`], which tells the
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
    /// The fleet's store, if tokens are shared.
    #[cfg(feature = "shared-store")]
    pub(super) shared: Option<Box<crate::store::SharedCache>>,
}

/// The worker's last answer, as callers see it.
#[derive(Clone)]
pub(super) enum Status {
    Idle,
    /// An exchange is under way.
    Fetching,
    /// This token was stored.
    Ready(Arc<CachedToken>),
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
    /// The worker's last answer, numbered.
    pub(super) answer: (u64, Status),
    /// A caller has no token to serve, or a request found the refresh due.
    pub(super) need: bool,
    /// A new token is asked for even if the current one is fresh.
    pub(super) refresh: bool,
    /// When a response last invalidated a token (for pacing).
    pub(super) rejected_at: Option<Instant>,
    /// The token last invalidated, by a response or by a caller.
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

    /// Records an answer. With `clears`, it answers the pending requests,
    /// which are cleared in the same step: a caller reads the answer and
    /// leaves its request under this lock, so it either sees this answer or
    /// leaves its request for the next round. Wake the callers with
    /// [`State::answered`] once the lock is released.
    pub(super) fn set_answer(&mut self, status: Status, clears: bool) {
        if clears {
            self.need = false;
            self.refresh = false;
        }
        self.answer = (self.answer.0.wrapping_add(1), status);
    }
}

impl State {
    pub(super) fn new(options: Options, credentials: ClientCredentials) -> Self {
        let mail = Mail {
            answer: (0, Status::Idle),
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
            #[cfg(feature = "shared-store")]
            shared: None,
        }
    }

    pub(super) fn mail(&self) -> MutexGuard<'_, Mail> {
        lock(&self.mail)
    }

    pub(super) fn publish(&self, status: Status, clears: bool) {
        self.mail().set_answer(status, clears);
        self.answered.notify_waiters();
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
            "the token worker stopped before it finished (is the runtime shutting down?)",
        );
        {
            let mut mail = self.0.mail();
            mail.worker_running = false;
            let status = Status::Failed {
                error,
                retry_at: None,
                generation: u64::MAX,
            };
            mail.set_answer(status, true);
        }
        self.0.answered.notify_waiters();
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent before anything
    // that could panic, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
