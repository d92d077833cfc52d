//! The worker task of a provider: it owns the token's life.
//!
//! Handles and worker share only [`State`]: the current token (read by
//! every request), a mailbox (the requests to the worker, coalesced, and its
//! last answer, which callers wait on) and the counters. Everything else (the exchange service, the credentials in
//! use, failures and backoff, the pacing of invalidations) lives in the
//! task and is touched by nothing else.
//!
//! The worker runs one exchange at a time. It starts one when a caller
//! needs a token or a request finds the refresh due; after a failure it
//! retries with backoff until an exchange succeeds, then it sleeps until
//! the mailbox has something for it. No timer of its decides whether a
//! token may be served: the request path compares the clock with the
//! token's deadline itself.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tracing::Instrument;

use super::Ask;
use super::cached::CachedToken;
use super::options::{Options, random_unit};
use crate::ClientCredentials;
use crate::error::{BoxError, ErrorChain, TokenError, TokenErrorKind};
use crate::token::{Token, TokenRequest};

/// What handles and the worker share.
pub(super) struct State {
    /// The token requests are served, if any.
    pub(super) current: ArcSwapOption<CachedToken>,
    /// Requests to the worker and its last answer.
    pub(super) mail: Mutex<Mail>,
    /// Wakes the worker when there is mail.
    pub(super) wake: Notify,
    /// Wakes the callers waiting for an answer when there is a new one.
    pub(super) answered: Notify,
    pub(super) stats: Counters,
    pub(super) options: Options,
    /// The `seq` of the next token stored, whichever worker stores it.
    next_seq: AtomicU64,
}

/// What the worker last did, as callers see it.
#[derive(Clone, Default)]
pub(super) enum Status {
    /// Nothing yet.
    #[default]
    Idle,
    /// An exchange is under way.
    Fetching,
    /// This token was stored.
    Ready(Arc<CachedToken>),
    /// The last exchange failed; the next one starts at `retry_at` (`None`:
    /// when asked). `generation` counts credential changes: an error for
    /// older credentials is not served to callers.
    Failed {
        error: TokenError,
        retry_at: Option<Instant>,
        generation: u64,
    },
}

/// The mailbox. Requests are coalesced: a thousand callers that need a
/// token are one request.
#[derive(Default)]
pub(super) struct Mail {
    /// The worker's last answer, and how many answers came before it.
    pub(super) answer: (u64, Status),
    /// A caller has no token to serve, or a request found the refresh due.
    pub(super) need: bool,
    /// [`TokenProvider::refresh`](super::TokenProvider::refresh): a new
    /// token even if the current one is fresh.
    pub(super) refresh: bool,
    /// When a response last invalidated a token (for pacing).
    pub(super) rejected_at: Option<Instant>,
    /// New credentials and their generation.
    pub(super) credentials: Option<(ClientCredentials, u64)>,
    /// The generation of the latest credentials, bumped by every change.
    pub(super) generation: u64,
    /// The last handle is gone.
    pub(super) closed: bool,
    /// A worker is running or about to: set by the handle that starts it,
    /// cleared when its task ends.
    pub(super) worker_running: bool,
}

impl Mail {
    /// Leaves a caller's request.
    pub(super) fn request(&mut self, ask: Ask) {
        match ask {
            Ask::Need => self.need = true,
            Ask::Refresh => self.refresh = true,
        }
    }

    /// Records the worker's answer `status`. With `clears`, it answers the
    /// requests in the mailbox, which are cleared in the same step: a caller
    /// reads the answer and leaves its request under the same lock, so it
    /// either sees this answer or leaves its request for the next round.
    /// Callers are woken by [`State::answered`] once the lock is released.
    fn set_answer(&mut self, status: Status, clears: bool) {
        if clears {
            self.need = false;
            self.refresh = false;
        }
        self.answer = (self.answer.0.wrapping_add(1), status);
    }
}

/// Counters of the slow path. The fresh-token path never touches them.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) exchanges: AtomicU64,
    pub(super) failures: AtomicU64,
    pub(super) waits: AtomicU64,
    pub(super) invalidations: AtomicU64,
    pub(super) background_refreshes: AtomicU64,
}

impl State {
    pub(super) fn new(options: Options) -> Self {
        Self {
            current: ArcSwapOption::empty(),
            mail: Mutex::default(),
            wake: Notify::new(),
            answered: Notify::new(),
            stats: Counters::default(),
            options,
            next_seq: AtomicU64::new(1),
        }
    }

    pub(super) fn mail(&self) -> MutexGuard<'_, Mail> {
        lock(&self.mail)
    }

    /// Publishes `status` (see [`Mail::set_answer`]) and wakes the callers
    /// waiting for it.
    fn publish(&self, status: Status, clears: bool) {
        self.mail().set_answer(status, clears);
        self.answered.notify_waiters();
    }
}

/// Runs the worker of `state` until the last handle is dropped. `stopped`
/// is made before the task is spawned, so that even a task dropped before
/// it first ran says so.
pub(super) async fn run<S>(
    stopped: Stopped,
    exchange: S,
    credentials: ClientCredentials,
    generation: u64,
) where
    S: Service<TokenRequest, Response = Token> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    // Boxed, as the exchange below: the task itself stays small whatever
    // the exchange service is.
    let mut worker = Box::new(Worker {
        state: Arc::clone(&stopped.0),
        _stopped: stopped,
        exchange,
        credentials,
        generation,
        failures: 0,
        pacing: Pacing::default(),
    });
    loop {
        let wanted = {
            let state = Arc::clone(&worker.state);
            let mut mail = state.mail();
            if mail.closed {
                return;
            }
            worker.read(&mut mail);
            worker.wanted(&mail)
        };
        match wanted {
            Wanted::Nothing => worker.state.wake.notified().await,
            Wanted::Republish(cached) => worker.state.publish(Status::Ready(cached), true),
            Wanted::Exchange { background } => {
                if background {
                    let stats = &worker.state.stats;
                    stats.background_refreshes.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!("token refresh started ahead of expiry");
                }
                // Boxed: an idle worker keeps only what waiting needs.
                if Box::pin(worker.renew()).await.is_break() {
                    return;
                }
            }
        }
    }
}

/// When the worker task ends, however it ends (its runtime shut down, or
/// the last handle was dropped), callers still waiting on it are released
/// with an error, and the next caller starts a new worker.
pub(super) struct Stopped(pub(super) Arc<State>);

impl Drop for Stopped {
    fn drop(&mut self) {
        {
            let mut mail = self.0.mail();
            mail.worker_running = false;
            mail.set_answer(
                Status::Failed {
                    error: TokenError::with_detail(
                        TokenErrorKind::Internal,
                        "the token worker stopped before it finished (is the runtime shutting down?)",
                    ),
                    retry_at: None,
                    generation: u64::MAX,
                },
                true,
            );
        }
        self.0.answered.notify_waiters();
    }
}

enum Wanted {
    Nothing,
    /// A caller asked while the current token is fresh: it raced with the
    /// token's arrival, and gets it again.
    Republish(Arc<CachedToken>),
    Exchange {
        background: bool,
    },
}

struct Worker<S> {
    state: Arc<State>,
    exchange: S,
    credentials: ClientCredentials,
    generation: u64,
    /// Failed exchanges in a row.
    failures: u32,
    pacing: Pacing,
    /// Declared last: dropped after the rest of the worker.
    _stopped: Stopped,
}

/// How an attempt ended, for [`Worker::renew`].
enum Concluded {
    /// The last handle is gone.
    Closed,
    /// The credentials changed during the attempt.
    Again,
    Stored,
    Failed {
        retry_at: Option<Instant>,
    },
}

/// Whether the worker goes on.
type Flow<T = ()> = std::ops::ControlFlow<(), T>;

impl<S> Worker<S>
where
    S: Service<TokenRequest, Response = Token> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    /// Takes the messages that need no answer: new credentials, rejections.
    /// Returns whether the credentials changed.
    fn read(&mut self, mail: &mut Mail) -> bool {
        if let Some(at) = mail.rejected_at.take() {
            self.pacing.record(at, &self.state.options);
        }
        let Some((credentials, generation)) = mail.credentials.take() else {
            return false;
        };
        self.credentials = credentials;
        self.generation = generation;
        self.failures = 0;
        tracing::debug!("the token worker took the new credentials");
        true
    }

    /// Reads the mail during an exchange or a backoff: stops if the last
    /// handle is gone, else says whether the credentials changed.
    fn read_mail(&mut self) -> Flow<bool> {
        let state = Arc::clone(&self.state);
        let mut mail = state.mail();
        if mail.closed {
            return Flow::Break(());
        }
        Flow::Continue(self.read(&mut mail))
    }

    fn wanted(&self, mail: &Mail) -> Wanted {
        if mail.refresh {
            return Wanted::Exchange { background: false };
        }
        if !mail.need {
            return Wanted::Nothing;
        }
        let now = Instant::now();
        match self.state.current.load_full() {
            Some(cached) if now < cached.refresh_at => Wanted::Republish(cached),
            Some(cached) if cached.is_fresh(now) => Wanted::Exchange { background: true },
            _ => Wanted::Exchange { background: false },
        }
    }

    /// Exchanges until a token is stored, backing off between failures.
    async fn renew(&mut self) -> Flow {
        loop {
            self.state.publish(Status::Fetching, false);
            let requested_at = Instant::now();
            let result = self.attempt().await;
            let elapsed = requested_at.elapsed();
            let retry_at = match self.conclude(result, requested_at, elapsed) {
                Concluded::Closed => return Flow::Break(()),
                Concluded::Again => continue,
                Concluded::Stored => return Flow::Continue(()),
                Concluded::Failed { retry_at } => retry_at,
            };
            self.back_off(retry_at).await?;
        }
    }

    /// Stores the token or records the failure of an attempt and answers
    /// the callers, in one critical section from the mail check to the
    /// answer: new credentials can never slip in between and have a token
    /// of the old ones stored after they were set.
    fn conclude(
        &mut self,
        result: Result<Token, TokenError>,
        requested_at: Instant,
        elapsed: Duration,
    ) -> Concluded {
        let state = Arc::clone(&self.state);
        let mut mail = state.mail();
        if mail.closed {
            return Concluded::Closed;
        }
        if self.read(&mut mail) {
            // Its result is for the old credentials: try again at once.
            return Concluded::Again;
        }
        let concluded = match result.and_then(|token| self.store(&token, requested_at)) {
            Ok(cached) => {
                self.failures = 0;
                tracing::debug!(
                    duration_ms = elapsed.as_millis() as u64,
                    fresh_for_secs = cached
                        .fresh_until
                        .saturating_duration_since(requested_at)
                        .as_secs(),
                    refresh_in_secs = cached
                        .refresh_at
                        .saturating_duration_since(Instant::now())
                        .as_secs(),
                    "token exchange succeeded"
                );
                mail.set_answer(Status::Ready(cached), true);
                Concluded::Stored
            }
            Err(error) => {
                self.failures = self.failures.saturating_add(1);
                state.stats.failures.fetch_add(1, Ordering::Relaxed);
                let delay =
                    state
                        .options
                        .backoff(self.failures, error.retry_after(), random_unit());
                let retry_at = Instant::now().checked_add(delay);
                log_failure(&error, elapsed, self.failures, delay);
                let generation = self.generation;
                mail.set_answer(
                    Status::Failed {
                        error,
                        retry_at,
                        generation,
                    },
                    true,
                );
                Concluded::Failed { retry_at }
            }
        };
        drop(mail);
        state.answered.notify_waiters();
        concluded
    }

    /// Waits until `retry_at`, or less if new credentials arrive.
    async fn back_off(&mut self, retry_at: Option<Instant>) -> Flow {
        let Some(retry_at) = retry_at else {
            return Flow::Continue(());
        };
        loop {
            let woken = tokio::time::timeout_at(retry_at, self.state.wake.notified()).await;
            if woken.is_err() {
                return Flow::Continue(());
            }
            let credentials_changed = match self.read_mail() {
                Flow::Break(()) => return Flow::Break(()),
                Flow::Continue(changed) => changed,
            };
            if credentials_changed || Instant::now() >= retry_at {
                return Flow::Continue(());
            }
            // Callers that ask meanwhile get the last error until `retry_at`.
        }
    }

    /// One exchange, bounded by the exchange timeout, with a panic of the
    /// service turned into an error.
    async fn attempt(&mut self) -> Result<Token, TokenError> {
        self.state.stats.exchanges.fetch_add(1, Ordering::Relaxed);
        let timeout = self.state.options.exchange_timeout;
        let request = TokenRequest::new(self.credentials.clone());
        let exchange = Box::pin(self.exchange.clone().oneshot(request));
        let span = tracing::debug_span!(
            "token_exchange",
            client_id = %self.credentials.client_id(),
            failures = self.failures,
        );
        async {
            tracing::debug!("token exchange attempt started");
            match tokio::time::timeout(timeout, CatchUnwind(exchange)).await {
                Ok(Ok(result)) => result.map_err(|err| TokenError::from_service_error(err.into())),
                Ok(Err(Panicked)) => Err(TokenError::with_detail(
                    TokenErrorKind::Internal,
                    "the token exchange service panicked",
                )),
                Err(_) => Err(TokenError::with_detail(
                    TokenErrorKind::Timeout,
                    format!("no answer within {} ms", timeout.as_millis()),
                )),
            }
        }
        .instrument(span)
        .await
    }

    /// Makes `token` the current token.
    fn store(
        &mut self,
        token: &Token,
        requested_at: Instant,
    ) -> Result<Arc<CachedToken>, TokenError> {
        let options = &self.state.options;
        let schedule = options.schedule(token, random_unit());
        let rejectable_from = self.pacing.next(options).unwrap_or(requested_at);
        let seq = self.state.next_seq.fetch_add(1, Ordering::Relaxed);
        let cached = CachedToken::new(seq, token, requested_at, schedule, rejectable_from)?;
        let cached = Arc::new(cached);
        self.state.current.store(Some(Arc::clone(&cached)));
        Ok(cached)
    }
}

/// Paces the invalidations that responses cause (401, gRPC
/// UNAUTHENTICATED): the first one after a quiet period goes through at
/// once; one following soon after another waits out a delay that doubles
/// like the exchange backoff. A burst of rejections for one token costs one
/// exchange, and an API that rejects every token costs a trickle of
/// exchanges, never one per request.
#[derive(Default)]
struct Pacing {
    last: Option<Instant>,
    streak: u32,
}

impl Pacing {
    fn record(&mut self, at: Instant, options: &Options) {
        let quiet = options.max_backoff.saturating_mul(2);
        if self
            .last
            .is_some_and(|last| at.saturating_duration_since(last) >= quiet)
        {
            self.streak = 0;
        }
        self.last = Some(at);
        self.streak = self.streak.saturating_add(1);
    }

    /// From when a rejection may invalidate the next token, if not at once.
    fn next(&self, options: &Options) -> Option<Instant> {
        let last = self.last?;
        last.checked_add(options.backoff(self.streak, None, 0.0))
    }
}

/// A panic in the exchange service, caught so the worker survives it.
struct Panicked;

/// Polls the exchange, turning a panic into [`Panicked`]: a panicking
/// exchange service is one more failed attempt, not the end of the worker.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(future).poll(cx))) {
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(Panicked)),
        }
    }
}

fn log_failure(error: &TokenError, elapsed: Duration, failures: u32, delay: Duration) {
    let status = error.status().map(|status| status.as_u16());
    let duration_ms = elapsed.as_millis() as u64;
    if error.is_retryable() {
        tracing::warn!(
            error = %ErrorChain(error),
            status,
            error_code = error.error_code(),
            retryable = true,
            duration_ms,
            "token exchange failed"
        );
    } else {
        tracing::error!(
            error = %ErrorChain(error),
            status,
            error_code = error.error_code(),
            retryable = false,
            duration_ms,
            "token exchange failed"
        );
    }
    tracing::info!(
        failures,
        retry_in_ms = delay.as_millis() as u64,
        "token exchange backing off"
    );
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent before anything
    // that could panic, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
