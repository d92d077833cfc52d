//! [`TokenProvider`]: the shared token cache in front of a token exchange.
//!
//! A handle and a worker: handles read the current token from a slot
//! (`ArcSwap`) on every request, and send messages to the provider's
//! worker task (`worker.rs`), which owns the token's life while it has
//! work. Besides the slot and the sender they share what outlives one
//! worker: the latest credentials, the pacing of invalidations and the
//! counters.

mod attempt;
mod builder;
mod cached;
mod request_path;
mod schedule;
mod stats;
mod worker;

#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use arc_swap::ArcSwapOption;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tower::Service;

pub use self::builder::TokenProviderBuilder;
use self::cached::CachedToken;
pub use self::cached::TokenTiming;
pub(crate) use self::request_path::{TokenTag, TokenView};
use self::schedule::Options;
pub use self::schedule::{
    DEFAULT_ASSUMED_LIFETIME, DEFAULT_EXCHANGE_TIMEOUT, DEFAULT_EXPIRY_SKEW, DEFAULT_MAX_BACKOFF,
    DEFAULT_MIN_BACKOFF, DEFAULT_REFRESH_AHEAD, MAX_RETRY_AFTER, MAX_TOKEN_LIFETIME,
};
pub use self::stats::ProviderStats;
use self::worker::{Message, Receiver};
use crate::ClientCredentials;
use crate::error::{BoxError, TokenError, TokenErrorKind};
use crate::metrics::Event;
use crate::token::{AccessToken, Token, TokenRequest};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A shared, self-renewing access token for one set of client credentials.
///
/// `TokenProvider` is a handle: cloning it is one reference count, and every
/// clone shares one cache, so one provider serves every client stack of a
/// process that uses the same credentials.
///
/// - **Fresh token**: [`RouteraAuth`](crate::RouteraAuth) answers from the
///   cache with one pointer load and one clock read against the token's
///   deadline: no lock, no allocation, no await. Whether a token may be sent
///   is decided by that clock read on every request, however busy the
///   runtime is.
/// - **Refresh ahead**: the first request that finds the token's refresh due
///   starts one refresh in the background; the token is still served
///   meanwhile, so a healthy refresh never makes a caller wait.
/// - **Expired or no token**: callers wait, all on the same exchange, and
///   all receive its token or its error. The exchange runs in the provider's
///   worker task: a caller that gives up cancels nothing for the others. It
///   times out after
///   [`exchange_timeout`](TokenProviderBuilder::exchange_timeout).
/// - **Failures**: a failed refresh never discards a valid token. The worker
///   retries with jittered exponential backoff (1 s doubling to 60 s by
///   default, honouring `Retry-After`) until it gets a token; it never gives
///   up on an error. While it backs off with no valid token, callers get the
///   last error at once: the endpoint sees a trickle of attempts, never one
///   per request. A token that arrives when it may no longer be served (the
///   exchange took longer than the token's lifetime less the skew) is one
///   more failure, of kind [`Timeout`](TokenErrorKind::Timeout): a waiting
///   caller never gets a token past its end.
///
/// # Schedule
///
/// A token's lifetime `L` is its `expires_in` (or the
/// [assumed lifetime](TokenProviderBuilder::assumed_lifetime) when the
/// response has none), counted from the moment it was requested.
///
/// - It is served until `L - skew`, where
///   `skew = min(expiry_skew, max(L / 4, min(1 s, L / 2)))`: at most a
///   quarter of its life, but 1 s where half its life allows, since OAuth
///   servers count expiry in whole seconds.
/// - Its refresh is due `window` before that, where
///   `window = min(refresh_ahead, L - skew - L / 2)`, shortened by up to
///   20 % at random so a fleet does not refresh in lockstep.
///
/// So every token is served for at least half of its lifetime before its
/// refresh starts, and is never served within the skew of its end. With the
/// defaults (`expiry_skew` 30 s, `refresh_ahead` 5 min): a 1 h token is
/// refreshed 4 to 5 min before it stops being served at 59:30; a 120 s
/// token at 60 s (served until 90 s); a 60 s token at 30 s (served until
/// 45 s); a 3 s token at 1.5 s (served until 2 s).
///
/// The refresh is started by requests: a provider nobody uses lets its
/// token lapse, costs no CPU, and its next caller waits for a new token.
/// [`timing`](TokenProvider::timing) tells when the current token was
/// fetched, when its refresh is due and when it stops being served.
///
/// | lifetime | refresh due (defaults) | stops being served | exchanges per hour under steady load |
/// |---|---|---|---|
/// | 1 h | 54:30 – 55:30 | 59:30 | 1 |
/// | 120 s | 60 – 66 s | 90 s | 55 – 60 |
/// | 60 s (or `expires_in` missing) | 30 – 33 s | 45 s | 110 – 120 |
/// | 3 s | 1.50 – 1.60 s | 2 s | about 2,300 |
/// | 2 s | 1 s (callers wait for each) | 1 s | 3,600 |
///
/// # Failures
///
/// - **Failing endpoint, valid token**: the token keeps being served while
///   the worker retries with backoff (1 s, 2 s, 4 s, … up to 60 s, or
///   longer if `Retry-After` says so): a 10-minute outage costs at most
///   about 20 exchange attempts and no failed request.
/// - **Failing endpoint, no valid token**: callers get the last
///   [`TokenError`] at once while the backoff runs; a caller that arrives
///   when an attempt is due or under way waits for that attempt.
/// - **Permanent errors** (400, 401: bad request or credentials) back off
///   the same way and are logged at `error` level, transient ones at
///   `warn`. [`set_credentials`](TokenProvider::set_credentials) cuts a
///   backoff short and retries at once with the new credentials; an
///   exchange still in flight with the old ones never stores its token.
/// - **Held back by the exchange stack**: an exchange middleware that sends
///   nothing and says when to call again (the fleet's shared backoff, a
///   client-side rate limiter) answers with a
///   [`deferred`](TokenError::deferred) error; the provider waits out
///   exactly its `retry_after`, gives callers that error meanwhile, and
///   counts no failure of its own.
/// - **Missing or zero `expires_in`**: the token is used for the assumed
///   lifetime (60 s by default, so 45 s with the default skew). A negative
///   `expires_in` is an `InvalidResponse`; one over 24 hours is trusted for
///   24 hours ([`MAX_TOKEN_LIFETIME`]).
/// - **A lost refresh**: a request that asked for a refresh that never came
///   (its worker was lost with its runtime) lets a later request ask again
///   after the exchange timeout.
///
/// # Observability
///
/// [`stats`](TokenProvider::stats) counts exchanges, failures, callers that
/// waited, invalidations and background refreshes, on the slow path only.
/// Tracing events (target `routera_auth`) mark exchange start, success
/// (duration, lifetime, and the token's age when a cache under the
/// exchange handed it over), failure (status, OAuth error code, retryable,
/// why the token was wanted, the backoff), background refreshes and
/// invalidations; each carries the client id, none a secret or a token.
/// With the `metrics` feature, the same on the `metrics` facade (see the
/// `metrics` module).
///
/// # Worker
///
/// Each provider has at most one worker task, which owns the token's life
/// while there is work; handles send it messages over a channel, with a
/// `oneshot` for each answer (as tower's `buffer` sends requests to its
/// worker). Unlike that worker, it does not live as long as its handles:
/// it ends as soon as it has nothing to do (no caller waiting, no exchange
/// wanted or in flight), so an idle provider holds no task, and the next
/// message starts a new one on the tokio runtime of the caller that sends
/// it. It also ends when the last handle is dropped. If its runtime shuts
/// down, a caller waiting on it gets an error at once and the next caller
/// starts a new worker on its own runtime. The worker runs only while its runtime is driven: a
/// current-thread runtime kept for the odd `block_on` runs it only inside
/// `block_on`, so callers on other threads who need a token wait until
/// then. Use the provider from one runtime, or from a multi-thread one.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), routera_auth::TokenError> {
/// use std::time::Duration;
/// use routera_auth::{ClientCredentials, Token, TokenProvider, TokenRequest};
///
/// // Any `Service<TokenRequest, Response = Token>` is an exchange; here, a mock.
/// let exchange = tower::service_fn(|_request: TokenRequest| async {
///     Ok::<_, routera_auth::TokenError>(Token::new("mock-token", Duration::from_secs(3600)))
/// });
/// let provider = TokenProvider::builder(exchange, ClientCredentials::new("id", "secret"))
///     .expiry_skew(Duration::from_secs(60))
///     .build();
///
/// assert_eq!(provider.token().await?.secret(), "mock-token");
/// let timing = provider.timing().expect("a token is cached");
/// assert_eq!(timing.served_until - timing.fetched_at, Duration::from_secs(3540));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TokenProvider {
    handles: Arc<Handles>,
}

/// The part of a provider that only its handles hold (every clone of a
/// [`TokenProvider`] points to one): the sender to the running worker and
/// how to start one, beside what they share with the worker. The worker
/// holds it weakly, so dropping the last handle drops the sender, which
/// ends the worker.
struct Handles {
    shared: Arc<Shared>,
    /// The sender to the running worker, if one runs. Messages are sent
    /// under this lock, and a worker with nothing left to do ends under it
    /// once its channel is empty, so no message is ever lost.
    worker: Mutex<Option<mpsc::UnboundedSender<Message>>>,
    start: Box<StartWorker>,
}

/// Spawns a worker on a runtime.
type StartWorker =
    dyn Fn(&tokio::runtime::Handle, Arc<Shared>, Weak<Handles>, Receiver) + Send + Sync;

/// The part of a provider that its handles and its worker share: the
/// current token, the live state and the options.
pub(super) struct Shared {
    /// The token requests are served, if any.
    current: ArcSwapOption<CachedToken>,
    /// What a new worker starts from; held while a token is stored.
    live: Mutex<LiveState>,
    options: Options,
}

/// The provider's state besides its current token, under one lock: what
/// every worker in turn starts from and leaves to the next (a worker ends
/// when idle), and what callers must see without waiting for one.
struct LiveState {
    /// The latest credentials.
    credentials: ClientCredentials,
    /// The `seq` of the next token stored, whichever worker stores it.
    next_seq: u64,
    pacing: schedule::Pacing,
    /// The token last dropped, until a new one replaces it: the next
    /// exchange says it was rejected.
    rejected: Option<AccessToken>,
    /// The last failure, and when the next attempt starts: until then
    /// callers with no fresh token get it at once.
    backoff: Option<(TokenError, Instant)>,
    /// Counted on the slow path only.
    stats: ProviderStats,
}

impl TokenProvider {
    /// A provider with default options that gets its tokens from `exchange`
    /// for `credentials`.
    ///
    /// `exchange` is any `tower::Service<TokenRequest, Response = Token>`:
    /// an [`HttpTokenExchange`](crate::HttpTokenExchange), the same wrapped
    /// in tower layers (timeout, retry, concurrency limit, a fleet's shared
    /// cache), or a mock. A `TokenError` from it reaches callers unchanged;
    /// a tower timeout becomes [`TokenErrorKind::Timeout`], any other error
    /// [`TokenErrorKind::Transport`].
    pub fn new<S>(exchange: S, credentials: ClientCredentials) -> Self
    where
        S: Service<TokenRequest, Response = Token> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        Self::builder(exchange, credentials).build()
    }

    /// A builder, to set options before the provider is built.
    pub fn builder<S>(exchange: S, credentials: ClientCredentials) -> TokenProviderBuilder<S> {
        TokenProviderBuilder {
            exchange,
            credentials,
            options: Options::default(),
        }
    }

    fn from_builder<S>(builder: TokenProviderBuilder<S>) -> Self
    where
        S: Service<TokenRequest, Response = Token> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        // Each worker gets a clone of the service; this one is the template.
        let exchange = Mutex::new(builder.exchange);
        let start = move |runtime: &tokio::runtime::Handle, shared, handles, messages| {
            let exchange = lock(&exchange).clone();
            // Detached: the worker ends when it has nothing left to do, or
            // when its channel closes.
            drop(runtime.spawn(worker::run(shared, handles, exchange, messages)));
        };
        let live = LiveState {
            credentials: builder.credentials,
            next_seq: 1,
            pacing: schedule::Pacing::default(),
            rejected: None,
            backoff: None,
            stats: ProviderStats::default(),
        };
        let shared = Shared {
            current: ArcSwapOption::empty(),
            live: Mutex::new(live),
            options: builder.options,
        };
        Self {
            handles: Arc::new(Handles {
                shared: Arc::new(shared),
                worker: Mutex::new(None),
                start: Box::new(start),
            }),
        }
    }

    fn shared(&self) -> &Shared {
        &self.handles.shared
    }

    /// The current access token, fetched first if there is no fresh one.
    ///
    /// # Errors
    ///
    /// When there is no fresh token: the [`TokenError`] of the exchange, or
    /// the last one at once while failed exchanges are backing off;
    /// [`TokenErrorKind::Internal`] when no tokio runtime is running or it
    /// shut down during the exchange.
    pub async fn token(&self) -> Result<AccessToken, TokenError> {
        Ok(self.wait(false).await?.token.clone())
    }

    /// Fetches a new token now, even if the cached one is fresh, and returns
    /// it. The cached token is served until the new one replaces it; if the
    /// exchange fails it stays in place.
    ///
    /// Joins the exchange in flight if there is one.
    ///
    /// # Errors
    ///
    /// The [`TokenError`] of the exchange; the last error at once while
    /// failed exchanges are backing off.
    pub async fn refresh(&self) -> Result<AccessToken, TokenError> {
        Ok(self.wait(true).await?.token.clone())
    }

    /// Drops `token` from the cache if it is still the cached token, so the
    /// next call fetches a new one. Returns whether it was dropped.
    ///
    /// Call it when the API rejects `token` (a 401). A newer token, fetched
    /// since `token` was handed out, is never dropped: a burst of 401s for
    /// one token causes one new exchange.
    pub fn invalidate(&self, token: &AccessToken) -> bool {
        let current = self.shared().current.load();
        let is_cached = current
            .as_ref()
            .is_some_and(|cached| cached.token == *token);
        is_cached && self.drop_token(&current, false)
    }

    /// Replaces the client credentials, for secret rotation. The next
    /// exchange uses them, and backoff starts over. An exchange in flight
    /// with the old credentials is dropped, and its token never stored.
    ///
    /// With the same client id, the cached token stays in use until it is
    /// renewed. With a different client id it is dropped at once: it belongs
    /// to another client.
    pub fn set_credentials(&self, credentials: ClientCredentials) {
        let shared = self.shared();
        let mut live = lock(&shared.live);
        if live.credentials == credentials {
            // A reload of the same secret: nothing changes, not even the
            // backoff.
            return;
        }
        let same_client = live.credentials.client_id() == credentials.client_id();
        if !same_client {
            // Under the live state's lock, which the worker holds while it stores a
            // token: a token of the old client is never stored after this.
            shared.current.store(None);
        }
        live.credentials = credentials;
        // Backoff starts over, and nothing of the old secret stays.
        (live.rejected, live.backoff) = (None, None);
        let client_id = Arc::clone(live.credentials.label());
        drop(live);
        let client_id = &*client_id;
        tracing::info!(client_id, same_client, "client credentials replaced");
        // A running worker drops its exchange for the old ones, or retries
        // now if it backs off; the next worker starts with them.
        if let Some(sender) = &*lock(&self.handles.worker) {
            let _ = sender.send(Message::NewCredentials);
        }
    }

    /// The client id this provider fetches tokens for.
    pub fn client_id(&self) -> String {
        lock(&self.shared().live).credentials.client_id().to_owned()
    }

    /// Counters of what the provider has done so far.
    pub fn stats(&self) -> ProviderStats {
        lock(&self.shared().live).stats
    }

    /// When the cached token was fetched, when its refresh is due and when
    /// it stops being served; `None` when no token is cached.
    pub fn timing(&self) -> Option<TokenTiming> {
        self.shared()
            .current
            .load()
            .as_deref()
            .map(CachedToken::timing)
    }

    fn fresh(&self) -> Option<Arc<CachedToken>> {
        self.shared()
            .current
            .load_full()
            .filter(|cached| self.may_serve(cached))
    }

    /// The current token if it may be served; else (or if `refresh`) asks
    /// the worker for one and waits for its answer. Fails at once with the
    /// last error while failed exchanges back off.
    async fn wait(&self, mut refresh: bool) -> Result<Arc<CachedToken>, TokenError> {
        loop {
            if let Some(cached) = (!refresh).then(|| self.fresh()).flatten() {
                return Ok(cached);
            }
            if let Some((error, retry_at)) = &lock(&self.shared().live).backoff
                && Instant::now() < *retry_at
            {
                return Err(error.clone());
            }
            let (answer, answered) = oneshot::channel();
            let message = if refresh {
                // Any token newer than the current one answers it.
                let seen = self.shared().current.load().as_ref().map_or(0, |c| c.seq);
                Message::Refresh(answer, seen)
            } else {
                Message::Need(answer)
            };
            self.send(message)?;
            match answered.await {
                Ok(Ok(cached)) if cached.is_fresh(Instant::now()) => return Ok(cached),
                // Fresh when it was sent, but this caller's runtime was busy
                // past its end since: any fresh token will do.
                Ok(Ok(_)) => refresh = false,
                Ok(Err(error)) => return Err(error),
                Err(_) => return Err(stopped()),
            }
        }
    }

    /// Sends `message` to the worker, starting one on the current runtime
    /// if none runs (never started, or its runtime shut down).
    fn send(&self, message: Message) -> Result<(), TokenError> {
        let mut worker = lock(&self.handles.worker);
        let message = match &*worker {
            Some(sender) => match sender.send(message) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::SendError(message)) => message,
            },
            None => message,
        };
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            TokenError::with_detail(
                TokenErrorKind::Internal,
                "no tokio runtime is running to fetch the token on",
            )
        })?;
        let (sender, messages) = mpsc::unbounded_channel();
        let (shared, handles) = (
            Arc::clone(&self.handles.shared),
            Arc::downgrade(&self.handles),
        );
        (self.handles.start)(&runtime, shared, handles, messages);
        sender.send(message).map_err(|_| stopped())?;
        *worker = Some(sender);
        Ok(())
    }

    /// Drops the token `current` holds if it is still the current one,
    /// compare-and-swap style: a token stored meanwhile is never dropped.
    fn drop_token(
        &self,
        current: &arc_swap::Guard<Option<Arc<CachedToken>>>,
        by_response: bool,
    ) -> bool {
        let shared = self.shared();
        let previous = shared.current.compare_and_swap(current, None);
        let (Some(previous), Some(expected)) = (previous.as_ref(), current.as_ref()) else {
            return false;
        };
        if !Arc::ptr_eq(previous, expected) {
            return false;
        }
        let mut live = lock(&shared.live);
        if by_response {
            let now = Instant::now();
            live.pacing
                .record(now, expected.requested_at, &shared.options);
        }
        // The next exchange says which token was rejected.
        live.rejected = Some(expected.token.clone());
        let client_id = Arc::clone(live.credentials.label());
        drop(live);
        shared.note(Event::Invalidation);
        let client_id = &*client_id;
        tracing::debug!(client_id, by_response, "cached token invalidated");
        true
    }
}

/// The error of a caller whose worker ended before it answered.
fn stopped() -> TokenError {
    TokenError::with_detail(
        TokenErrorKind::Internal,
        "the token worker stopped before it finished: its tokio runtime is shutting \
         down, or was built without a time driver (use `enable_all()` or \
         `enable_time()` on the runtime builder)",
    )
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent before anything
    // that could panic, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProvider")
            .field("client_id", &self.client_id())
            .field("options", &self.shared().options)
            .field("timing", &self.timing())
            .finish()
    }
}
