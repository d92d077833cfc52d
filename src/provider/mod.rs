//! [`TokenProvider`]: the shared token cache in front of a token exchange.

mod attempt;
mod cached;
mod options;
mod pacing;
mod state;
mod worker;

#[cfg(all(test, feature = "test-util"))]
mod tests;

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::time::Instant;
use tower::Service;

use self::cached::CachedToken;
pub use self::cached::TokenTiming;
pub(crate) use self::options::Options;
pub use self::options::{
    DEFAULT_ASSUMED_LIFETIME, DEFAULT_EXCHANGE_TIMEOUT, DEFAULT_EXPIRY_SKEW, DEFAULT_MAX_BACKOFF,
    DEFAULT_MIN_BACKOFF, DEFAULT_REFRESH_AHEAD, MAX_RETRY_AFTER, MAX_TOKEN_LIFETIME,
    TokenProviderBuilder,
};
use self::state::{Outcome, State, Stopped, lock};
use crate::ClientCredentials;
use crate::error::{BoxError, TokenError, TokenErrorKind};
use crate::metrics::{self, Event};
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
///   `skew = min(expiry_skew, L / 4)`.
/// - Its refresh is due `window` before that, where
///   `window = min(refresh_ahead, L - skew - L / 2)`, shortened by up to
///   20 % at random so a fleet does not refresh in lockstep.
///
/// So every token is served for at least half of its lifetime before its
/// refresh starts, and is never served within the skew of its end. With the
/// defaults (`expiry_skew` 30 s, `refresh_ahead` 5 min): a 1 h token is
/// refreshed 4 to 5 min before it stops being served at 59:30; a 120 s
/// token at 60 s (served until 90 s); a 60 s token at 30 s (served until
/// 45 s); a 3 s token at 1.5 s (served until 2.25 s).
///
/// The refresh is started by requests: a provider nobody uses lets its
/// token lapse, costs no CPU, and its next caller waits for a new token.
/// [`timing`](TokenProvider::timing) tells when the current token was
/// fetched, when its refresh is due and when it stops being served.
///
/// # Worker
///
/// Each provider has one worker task, started on the tokio runtime of its
/// first caller that needs a token and ended when the last handle is
/// dropped. If that runtime shuts down, the next caller starts a new worker
/// on its own runtime. The worker runs only while its runtime is driven: a
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
    shared: Arc<Shared>,
}

/// What the handles share and the worker does not hold: dropping the last
/// handle drops it, which tells the worker to end.
struct Shared {
    state: Arc<State>,
    spawn: Box<SpawnWorker>,
}

/// Starts a worker on a runtime.
type SpawnWorker = dyn Fn(&tokio::runtime::Handle, Stopped) + Send + Sync;

/// What a [`TokenProvider`] has done so far; from [`TokenProvider::stats`].
///
/// The counters are kept on the slow path only: serving a fresh token
/// counts nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProviderStats {
    /// Exchange attempts started.
    pub exchanges: u64,
    /// Exchange attempts that failed.
    pub failures: u64,
    /// Callers that had to wait for an exchange because no token was fresh.
    pub waits: u64,
    /// Tokens dropped by [`TokenProvider::invalidate`] or by a response
    /// that rejected them.
    pub invalidations: u64,
    /// Refreshes started ahead of expiry, while the token was still served.
    pub background_refreshes: u64,
}

/// A request path's own view of the current token: it holds the token and
/// checks on each use, with one plain load, whether the provider replaced
/// it. No reference count moves while the token stays the same.
pub(crate) type TokenCache = arc_swap::Cache<Current, Option<Arc<CachedToken>>>;

/// The current-token slot of a provider, as a [`TokenCache`] reads it.
#[derive(Clone)]
pub(crate) struct Current(Arc<State>);

impl Deref for Current {
    type Target = ArcSwapOption<CachedToken>;

    fn deref(&self) -> &Self::Target {
        &self.0.current
    }
}

/// Which token of which provider a request carried, so that a response
/// rejecting it can invalidate exactly that token.
#[derive(Clone)]
pub(crate) struct TokenTag {
    provider: TokenProvider,
    seq: u64,
}

impl TokenTag {
    /// Drops the token this tag names if it is still the current one and
    /// the pacing of invalidations allows it (a 401 from the API). Returns
    /// whether it was dropped.
    pub(crate) fn reject(&self) -> bool {
        let state = self.provider.state();
        let current = state.current.load();
        let Some(cached) = current.as_ref().filter(|cached| cached.seq == self.seq) else {
            return false;
        };
        let now = Instant::now();
        if now < cached.rejectable_from {
            // Rejected again soon after the last one (a wrong audience, an
            // API that refuses fresh tokens): keep the token for now rather
            // than fetch one per request.
            tracing::debug!("token rejected again soon after the last one; not invalidated yet");
            return false;
        }
        if !self.provider.drop_token(&current, Some(now)) {
            return false;
        }
        state.wake.notify_one();
        true
    }
}

/// What a caller asks of the worker.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Ask {
    /// A token, the current one if it is fresh.
    Need,
    /// A new token, even if the current one is fresh.
    Refresh,
}

impl TokenProvider {
    /// A provider with default options that gets its tokens from `exchange`
    /// for `credentials`.
    ///
    /// `exchange` is any `tower::Service<TokenRequest, Response = Token>`:
    /// an [`HttpTokenExchange`](crate::HttpTokenExchange), the same wrapped
    /// in tower layers (timeout, retry, concurrency limit), or a mock. A
    /// `TokenError` from it reaches callers unchanged; a tower timeout
    /// becomes [`TokenErrorKind::Timeout`], any other error
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
        let spawn = move |runtime: &tokio::runtime::Handle, stopped: Stopped| {
            let exchange = lock(&exchange).clone();
            // Detached: the worker ends when the last handle is dropped.
            drop(runtime.spawn(worker::run(stopped, exchange)));
        };
        let state = State::new(builder.options, builder.credentials);
        let spawn = Box::new(spawn);
        Self {
            shared: Arc::new(Shared {
                state: Arc::new(state),
                spawn,
            }),
        }
    }

    fn state(&self) -> &State {
        &self.shared.state
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
        Ok(self.cached_token().await?.token.clone())
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
        Ok(self.wait(Ask::Refresh).await?.token.clone())
    }

    /// Drops `token` from the cache if it is still the cached token, so the
    /// next call fetches a new one. Returns whether it was dropped.
    ///
    /// Call it when the API rejects `token` (a 401). A newer token, fetched
    /// since `token` was handed out, is never dropped: a burst of 401s for
    /// one token causes one new exchange.
    pub fn invalidate(&self, token: &AccessToken) -> bool {
        let current = self.state().current.load();
        let is_cached = current
            .as_ref()
            .is_some_and(|cached| cached.token == *token);
        is_cached && self.drop_token(&current, None)
    }

    /// Replaces the client credentials, for secret rotation. The next
    /// exchange uses them, and backoff starts over. An exchange still in
    /// flight with the old credentials never stores its token.
    ///
    /// With the same client id, the cached token stays in use until it is
    /// renewed. With a different client id it is dropped at once: it belongs
    /// to another client.
    pub fn set_credentials(&self, credentials: ClientCredentials) {
        let state = self.state();
        let mut mail = state.mail();
        let same_client = mail.credentials.client_id() == credentials.client_id();
        if !same_client {
            // Under the mail lock, which the worker holds from its check for
            // new credentials to storing a token.
            state.current.store(None);
        }
        mail.credentials = credentials;
        mail.generation += 1;
        mail.credentials_changed = true;
        drop(mail);
        tracing::info!(same_client, "client credentials replaced");
        // A worker waiting out a backoff retries now, with the new credentials.
        state.wake.notify_one();
    }

    /// The client id this provider fetches tokens for.
    pub fn client_id(&self) -> String {
        self.state().mail().credentials.client_id().to_owned()
    }

    /// Counters of what the provider has done so far.
    pub fn stats(&self) -> ProviderStats {
        self.state().mail().stats
    }

    /// When the cached token was fetched, when its refresh is due and when
    /// it stops being served; `None` when no token is cached.
    pub fn timing(&self) -> Option<TokenTiming> {
        self.state()
            .current
            .load()
            .as_deref()
            .map(CachedToken::timing)
    }

    /// The `Authorization` header value of the cached token if it may be
    /// served. This is the whole request path when the token is fresh.
    #[inline]
    pub(crate) fn fresh_header(&self, cache: &mut TokenCache) -> Option<(HeaderValue, TokenTag)> {
        let cached = cache.load().as_ref()?;
        self.may_serve(cached)
            .then(|| (cached.header.clone(), self.tag(cached)))
    }

    /// Whether `cached` may be served now; asks for its refresh if due.
    #[inline]
    fn may_serve(&self, cached: &CachedToken) -> bool {
        let now = Instant::now();
        if now < cached.refresh_at {
            return true;
        }
        let fresh = cached.is_fresh(now);
        if fresh && cached.claim_refresh() && self.ask(Ask::Need).is_err() {
            // No runtime here: let a later request on a runtime ask.
            cached.unclaim_refresh();
        }
        fresh
    }

    /// A [`TokenCache`] of this provider's token, for a request path.
    pub(crate) fn token_cache(&self) -> TokenCache {
        arc_swap::Cache::new(Current(Arc::clone(&self.shared.state)))
    }

    /// The `Authorization` header value of a fresh token, fetching one if
    /// needed.
    pub(crate) fn header(&self) -> BoxFuture<Result<(HeaderValue, TokenTag), TokenError>> {
        let provider = self.clone();
        Box::pin(async move {
            let cached = provider.cached_token().await?;
            Ok((cached.header.clone(), provider.tag(&cached)))
        })
    }

    fn tag(&self, cached: &CachedToken) -> TokenTag {
        TokenTag {
            provider: self.clone(),
            seq: cached.seq,
        }
    }

    async fn cached_token(&self) -> Result<Arc<CachedToken>, TokenError> {
        match self.fresh() {
            Some(cached) => Ok(cached),
            None => self.wait(Ask::Need).await,
        }
    }

    fn fresh(&self) -> Option<Arc<CachedToken>> {
        self.state()
            .current
            .load_full()
            .filter(|cached| self.may_serve(cached))
    }

    /// Waits for the worker's answer to `ask`: joins the attempt under
    /// way, fails fast with the last error while the worker backs off, or
    /// asks for a new attempt.
    async fn wait(&self, mut ask: Ask) -> Result<Arc<CachedToken>, TokenError> {
        let state = self.state();
        // The number of the outcome this caller saw when it joined: the
        // next one is its answer.
        let (mut joined, mut counted) = (None, false);
        loop {
            // Registered before the outcome is read: an outcome published
            // after the read wakes this caller.
            let mut answered = std::pin::pin!(state.answered.notified());
            answered.as_mut().enable();
            if joined.is_none() && ask == Ask::Need {
                if let Some(cached) = self.fresh() {
                    return Ok(cached);
                }
            }
            let mut asked = false;
            {
                // The outcome is read and the request left in one critical
                // section; the worker records outcomes and clears requests
                // in one too.
                let mut mail = state.mail();
                if let Some(seen) = joined.filter(|seen| mail.outcome.0 != *seen) {
                    // An answer came since this caller joined. If a token
                    // came, the current one is that token or a newer one,
                    // unless it was dropped or may no longer be served (the
                    // runtime was busy since): then any fresh token will do.
                    let current = state.current.load_full();
                    match (&mail.outcome.1, current) {
                        (_, Some(cached))
                            if mail.last_ready > seen && cached.is_fresh(Instant::now()) =>
                        {
                            return Ok(cached);
                        }
                        (Outcome::Failed { error, .. }, _) => return Err(error.clone()),
                        _ => (ask, joined) = (Ask::Need, None),
                    }
                }
                if joined.is_none() {
                    if let Outcome::Failed {
                        error,
                        retry_at: Some(retry_at),
                        generation,
                    } = &mail.outcome.1
                    {
                        if Instant::now() < *retry_at && *generation == mail.generation {
                            // Backing off: fail fast rather than wait or add
                            // attempts.
                            return Err(error.clone());
                        }
                    }
                    joined = Some(mail.outcome.0);
                    if !mail.fetching {
                        mail.request(ask);
                        asked = true;
                    }
                }
                if ask == Ask::Need && !counted {
                    counted = true;
                    mail.stats.waits += 1;
                    metrics::record(mail.credentials.client_id(), Event::Wait);
                }
            }
            if asked {
                self.wake_worker()?;
            }
            answered.await;
        }
    }

    /// Leaves `ask` in the worker's mailbox and wakes the worker.
    fn ask(&self, ask: Ask) -> Result<(), TokenError> {
        self.state().mail().request(ask);
        self.wake_worker()
    }

    /// Wakes the worker for its mail, starting it on the current runtime
    /// unless it runs.
    fn wake_worker(&self) -> Result<(), TokenError> {
        let state = &self.shared.state;
        let mut mail = state.mail();
        if !mail.worker_running {
            let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
                TokenError::with_detail(
                    TokenErrorKind::Internal,
                    "no tokio runtime is running to fetch the token on",
                )
            })?;
            mail.worker_running = true;
            drop(mail);
            // Spawned outside the lock: a task dropped at once (its runtime
            // is shutting down) takes the lock to say so.
            (self.shared.spawn)(&runtime, Stopped(Arc::clone(state)));
        } else {
            drop(mail);
        }
        state.wake.notify_one();
        Ok(())
    }

    /// Drops the token `current` holds if it is still the current one,
    /// compare-and-swap style: a token stored meanwhile is never dropped.
    /// `rejected_at`: when a response rejected it, for the pacing.
    fn drop_token(
        &self,
        current: &arc_swap::Guard<Option<Arc<CachedToken>>>,
        rejected_at: Option<Instant>,
    ) -> bool {
        let state = self.state();
        let previous = state.current.compare_and_swap(current, None);
        let dropped = match (previous.as_ref(), current.as_ref()) {
            (Some(previous), Some(expected)) => Arc::ptr_eq(previous, expected),
            _ => false,
        };
        if dropped {
            let mut mail = state.mail();
            if rejected_at.is_some() {
                mail.rejected_at = rejected_at;
            }
            mail.invalidated = current.as_ref().map(|cached| cached.token.clone());
            mail.stats.invalidations += 1;
            metrics::record(mail.credentials.client_id(), Event::Invalidation);
            tracing::debug!("cached token invalidated");
        }
        dropped
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // The worker holds the state, not a handle: tell it to end, at once
        // if it is idle or backing off, after the exchange otherwise.
        self.state.mail().closed = true;
        self.state.wake.notify_one();
    }
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProvider")
            .field("client_id", &self.client_id())
            .field("options", &self.state().options)
            .field("timing", &self.timing())
            .finish()
    }
}
