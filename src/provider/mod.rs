//! [`TokenProvider`]: the shared token cache in front of a token exchange.

mod header;
mod options;
mod refresher;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use self::header::ShardedHeader;
pub use self::options::{
    DEFAULT_ASSUMED_LIFETIME, DEFAULT_EXCHANGE_TIMEOUT, DEFAULT_EXPIRY_SKEW, DEFAULT_MAX_BACKOFF,
    DEFAULT_MIN_BACKOFF, DEFAULT_REFRESH_AHEAD, MAX_RETRY_AFTER, MAX_TOKEN_LIFETIME,
    TokenProviderBuilder,
};
use self::options::{Options, Schedule};
use crate::ClientCredentials;
use crate::error::{BoxError, TokenError, TokenErrorKind};
use crate::token::{AccessToken, Token, TokenRequest};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
/// What the callers waiting on one exchange attempt receive.
type Outcome = Option<Result<Arc<CachedToken>, TokenError>>;

/// A shared, self-renewing access token for one set of client credentials.
///
/// `TokenProvider` is a handle: cloning it is one reference count, and every
/// clone shares one cache, so one provider serves every client stack of a
/// process that uses the same credentials.
///
/// - **Fresh token**: [`RouteraAuth`](crate::RouteraAuth) answers from the
///   cache with two plain loads (the token pointer and a flag) and one
///   reference count on a per-thread copy of the header: no lock, no
///   allocation, no clock read until the token's refresh is due, no write to
///   memory other threads use. [`token`](TokenProvider::token) adds a clock
///   read.
/// - **Refresh ahead**: inside the [refresh-ahead
///   window](TokenProviderBuilder::refresh_ahead) (default 5 min before
///   expiry, with jitter), the token is still served and one background
///   refresh starts. Healthy refreshes never make a caller wait.
/// - **Expired or no token**: callers wait, all on the same exchange, and
///   all receive its token or its error. The exchange runs in a task of its
///   own: a caller that gives up cancels nothing for the others. It times out
///   after [`exchange_timeout`](TokenProviderBuilder::exchange_timeout).
/// - **Failures**: a failed refresh never discards a valid token. The
///   background task retries with jittered exponential backoff (1 s doubling
///   to 60 s by default, honouring `Retry-After`) until it gets a token; it
///   never gives up on an error. While it backs off with no valid token,
///   callers get the last error at once: the endpoint sees a trickle of
///   attempts, never one per request.
/// - A token is used until its `expires_in`, counted from the moment it was
///   requested, minus the [expiry skew](TokenProviderBuilder::expiry_skew).
///
/// Dropping the last handle stops the background task.
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
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TokenProvider {
    shared: Arc<Shared>,
}

struct Shared {
    /// Unique in the process; finds the provider from a [`TokenTag`].
    id: u64,
    /// The current token; read on every request, through a [`TokenCache`].
    cache: Arc<ArcSwapOption<CachedToken>>,
    /// Everything else; locked only on the slow path.
    control: Mutex<Control>,
    /// Wakes the background task from a backoff (new credentials, drop).
    wake: Arc<Notify>,
    exchange: Box<dyn Exchange>,
    options: Options,
    stats: Counters,
    /// Paces invalidations caused by rejected requests.
    rejections: Rejections,
}

/// Paces the invalidations that responses cause (401, gRPC
/// UNAUTHENTICATED): the first one after a quiet period goes through at
/// once; one following soon after another waits out a delay that doubles
/// like the exchange backoff. A burst of rejections for one token costs one
/// exchange, and an API that rejects every token costs a trickle of
/// exchanges, never one per request. Touched only on rejected responses.
#[derive(Default)]
struct Rejections {
    state: Mutex<RejectionState>,
}

#[derive(Default)]
struct RejectionState {
    last: Option<Instant>,
    streak: u32,
}

impl Rejections {
    /// Whether an invalidation may go through now; records it if so.
    fn lock_admit(&self, options: &Options) -> bool {
        let mut state = lock(&self.state);
        let now = Instant::now();
        let Some(last) = state.last else {
            state.last = Some(now);
            state.streak = 1;
            return true;
        };
        let since = now.saturating_duration_since(last);
        if since >= options.max_backoff.saturating_mul(2) {
            state.streak = 0;
        } else if since < options.backoff(state.streak, None, 0.0) {
            return false;
        }
        state.last = Some(now);
        state.streak = state.streak.saturating_add(1);
        true
    }
}

struct Control {
    credentials: ClientCredentials,
    /// Bumped on every credential change; an attempt started before a change
    /// never stores its token.
    generation: u64,
    refresher: Option<Refresher>,
    /// Failures in a row since the last success.
    failures: u32,
    last_error: Option<TokenError>,
}

/// The background task that runs exchange attempts until one succeeds.
struct Refresher {
    /// The attempt in flight or about to start; `None` while the task waits
    /// out a backoff.
    attempt: Option<watch::Receiver<Outcome>>,
    /// The sender of `attempt` when a caller opened it after the backoff
    /// ended but before the task woke up; the task takes it over.
    pending: Option<watch::Sender<Outcome>>,
    /// When the backoff ends.
    retry_at: Option<Instant>,
    /// Dead once the task is gone (its runtime shut down).
    alive: Weak<()>,
}

impl Refresher {
    fn is_alive(&self) -> bool {
        self.alive.strong_count() > 0
    }
}

/// Counters of the slow path. The fresh-token path never touches them.
#[derive(Default)]
struct Counters {
    exchanges: AtomicU64,
    failures: AtomicU64,
    waits: AtomicU64,
    invalidations: AtomicU64,
    background_refreshes: AtomicU64,
}

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
    /// Tokens dropped by [`TokenProvider::invalidate`].
    pub invalidations: u64,
    /// Refreshes started ahead of expiry, while the token was still served.
    pub background_refreshes: u64,
}

/// A handle's own view of the cached token: it holds the current token and
/// checks on each use, with one plain load, whether the provider replaced
/// it. No reference count moves while the token stays the same.
pub(crate) type TokenCache =
    arc_swap::Cache<Arc<ArcSwapOption<CachedToken>>, Option<Arc<CachedToken>>>;

/// Which token of which provider a request carried: two plain numbers,
/// so that remembering it costs the request path nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TokenTag {
    provider: u64,
    token: u64,
}

impl TokenTag {
    /// Drops the token this tag names from its provider's cache, if it is
    /// still the cached one (a 401 from the API). The provider is found in
    /// the process-wide registry, so a request needs no handle to it.
    pub(crate) fn invalidate(self) -> bool {
        let Some(shared) = registry::find(self.provider) else {
            return false;
        };
        let is_cached = |cached: &CachedToken| cached.seq == self.token;
        if !shared.cache.load().as_deref().is_some_and(is_cached) {
            return false;
        }
        if !shared.rejections.lock_admit(&shared.options) {
            // Tokens rejected again and again (a wrong audience, an API
            // that refuses fresh tokens): keep the token for now rather
            // than fetch one per request.
            tracing::debug!("token rejected again soon after the last one; not invalidated yet");
            return false;
        }
        shared.invalidate_if(is_cached)
    }
}

/// A cached token with its pre-built `Authorization` header value.
pub(crate) struct CachedToken {
    /// Unique among the tokens of one provider.
    seq: u64,
    token: AccessToken,
    header: ShardedHeader,
    /// From then on a background refresh is due.
    refresh_at: Instant,
    /// From then on the token is not served.
    fresh_until: Instant,
    /// Set by the first request that sees the refresh due, so that one
    /// token starts one background refresh.
    refresh_started: AtomicBool,
    /// Whether the request path must read the clock. Clear while a timer
    /// armed for `refresh_at` is pending: until then the token is fresh and
    /// requests skip the clock read. The timer sets it when it fires, and
    /// also when it is dropped unfired (its runtime shut down), so a token is
    /// never served past its time unchecked.
    check_clock: AtomicBool,
    /// Dropped with the token, which ends its timer task early.
    disarm: std::sync::OnceLock<tokio::sync::oneshot::Sender<()>>,
}

impl CachedToken {
    fn new(token: Token, requested_at: Instant, schedule: Schedule) -> Result<Self, TokenError> {
        static NEXT_SEQ: AtomicU64 = AtomicU64::new(1);
        let at = |offset| requested_at.checked_add(offset).unwrap_or(requested_at);
        let header = ShardedHeader::bearer(token.access_token().secret()).ok_or_else(|| {
            TokenError::with_detail(
                TokenErrorKind::InvalidResponse,
                "the access token has characters that are not allowed in an HTTP header",
            )
        })?;
        Ok(Self {
            seq: NEXT_SEQ.fetch_add(1, Ordering::Relaxed),
            token: token.access_token().clone(),
            header,
            refresh_at: at(schedule.refresh_after),
            fresh_until: at(schedule.fresh_for),
            refresh_started: AtomicBool::new(false),
            check_clock: AtomicBool::new(true),
            disarm: std::sync::OnceLock::new(),
        })
    }

    pub(crate) fn header(&self) -> &HeaderValue {
        self.header.get()
    }

    /// Lets the request path skip the clock until `refresh_at`, with a timer
    /// on the current multi-thread runtime that turns the clock check back on
    /// then. Elsewhere, the clock is always checked.
    fn arm(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // A current-thread runtime runs its timers only while something
        // drives it, which nothing guarantees (a runtime used for the odd
        // `block_on`): there, keep reading the clock on every request.
        if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread {
            return;
        }
        if Instant::now() >= self.refresh_at {
            return;
        }
        let (disarm, disarmed) = tokio::sync::oneshot::channel();
        if self.disarm.set(disarm).is_err() {
            return;
        }
        let guard = CheckClockOnDrop(Arc::downgrade(self));
        let refresh_at = self.refresh_at;
        self.check_clock.store(false, Ordering::Release);
        runtime.spawn(async move {
            // Until the refresh is due, or until the token is dropped.
            let _ = tokio::time::timeout_at(refresh_at, disarmed).await;
            drop(guard);
        });
    }
}

/// Turns the clock check of a token back on when the timer task ends,
/// whether its sleep completed or the task was dropped with its runtime.
struct CheckClockOnDrop(Weak<CachedToken>);

impl Drop for CheckClockOnDrop {
    fn drop(&mut self) {
        if let Some(cached) = self.0.upgrade() {
            cached.check_clock.store(true, Ordering::Release);
        }
    }
}

impl Shared {
    /// Drops the cached token if `matches` says it is the one to drop,
    /// compare-and-swap style: a token cached meanwhile is never dropped.
    fn invalidate_if(&self, matches: impl Fn(&CachedToken) -> bool) -> bool {
        let current = self.cache.load();
        let Some(cached) = current.as_ref() else {
            return false;
        };
        if !matches(cached) {
            return false;
        }
        let previous = self.cache.compare_and_swap(&*current, None);
        let dropped = previous
            .as_ref()
            .is_some_and(|previous| Arc::ptr_eq(previous, cached));
        if dropped {
            self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
            tracing::debug!("cached token invalidated");
        }
        dropped
    }
}

/// Live providers by id, for [`TokenTag::invalidate`]. Touched when a
/// provider is built or dropped, and on a 401: never on the request path.
mod registry {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock, Weak};

    use super::{Shared, lock};

    fn providers() -> &'static Mutex<HashMap<u64, Weak<Shared>>> {
        static PROVIDERS: OnceLock<Mutex<HashMap<u64, Weak<Shared>>>> = OnceLock::new();
        PROVIDERS.get_or_init(Mutex::default)
    }

    pub(super) fn register(shared: &Arc<Shared>) {
        lock(providers()).insert(shared.id, Arc::downgrade(shared));
    }

    pub(super) fn unregister(id: u64) {
        lock(providers()).remove(&id);
    }

    pub(super) fn find(id: u64) -> Option<Arc<Shared>> {
        lock(providers()).get(&id).and_then(Weak::upgrade)
    }
}

/// A type-erased exchange service.
trait Exchange: Send + Sync {
    fn exchange(&self, request: TokenRequest) -> BoxFuture<Result<Token, TokenError>>;
}

struct ServiceExchange<S> {
    service: Mutex<S>,
}

impl<S> Exchange for ServiceExchange<S>
where
    S: Service<TokenRequest, Response = Token> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    fn exchange(&self, request: TokenRequest) -> BoxFuture<Result<Token, TokenError>> {
        let service = lock(&self.service).clone();
        Box::pin(async move {
            service
                .oneshot(request)
                .await
                .map_err(|err| TokenError::from_service_error(err.into()))
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves the data consistent before anything
    // that could panic, so a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

enum Joined {
    Fresh(Arc<CachedToken>),
    Wait(watch::Receiver<Outcome>),
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
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let provider = Self {
            shared: Arc::new(Shared {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                cache: Arc::new(ArcSwapOption::empty()),
                control: Mutex::new(Control {
                    credentials: builder.credentials,
                    generation: 0,
                    refresher: None,
                    failures: 0,
                    last_error: None,
                }),
                wake: Arc::new(Notify::new()),
                exchange: Box::new(ServiceExchange {
                    service: Mutex::new(builder.exchange),
                }),
                options: builder.options,
                stats: Counters::default(),
                rejections: Rejections::default(),
            }),
        };
        registry::register(&provider.shared);
        provider
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
        let outcome = match self.join(false)? {
            Joined::Fresh(cached) => return Ok(cached.token.clone()),
            Joined::Wait(outcome) => outcome,
        };
        Ok(wait(outcome).await?.token.clone())
    }

    /// Drops `token` from the cache if it is still the cached token, so the
    /// next call fetches a new one. Returns whether it was dropped.
    ///
    /// Call it when the API rejects `token` (a 401). A newer token, fetched
    /// since `token` was handed out, is never dropped: a burst of 401s for
    /// one token causes one new exchange.
    pub fn invalidate(&self, token: &AccessToken) -> bool {
        self.shared.invalidate_if(|cached| cached.token == *token)
    }

    /// Replaces the client credentials, for secret rotation. The next
    /// exchange uses them, and backoff starts over. An exchange still in
    /// flight with the old credentials never stores its token.
    ///
    /// With the same client id, the cached token stays in use until it is
    /// renewed. With a different client id it is dropped at once: it belongs
    /// to another client.
    pub fn set_credentials(&self, credentials: ClientCredentials) {
        let mut control = lock(&self.shared.control);
        let same_client = control.credentials.client_id() == credentials.client_id();
        control.credentials = credentials;
        control.generation += 1;
        control.failures = 0;
        if let Some(refresher) = control.refresher.as_mut() {
            // Callers from now on wait for the attempt with the new
            // credentials instead of getting the old error.
            refresher.retry_at = None;
        }
        if !same_client {
            self.shared.cache.store(None);
        }
        drop(control);
        tracing::info!(same_client, "client credentials replaced");
        // A task waiting out a backoff retries now, with the new credentials.
        self.shared.wake.notify_waiters();
    }

    /// The client id this provider fetches tokens for.
    pub fn client_id(&self) -> String {
        lock(&self.shared.control)
            .credentials
            .client_id()
            .to_owned()
    }

    /// Counters of what the provider has done so far.
    pub fn stats(&self) -> ProviderStats {
        let stats = &self.shared.stats;
        ProviderStats {
            exchanges: stats.exchanges.load(Ordering::Relaxed),
            failures: stats.failures.load(Ordering::Relaxed),
            waits: stats.waits.load(Ordering::Relaxed),
            invalidations: stats.invalidations.load(Ordering::Relaxed),
            background_refreshes: stats.background_refreshes.load(Ordering::Relaxed),
        }
    }

    /// The `Authorization` header value of the cached token if it may be
    /// served. This is the whole request path when the token is fresh.
    #[inline]
    pub(crate) fn fresh_header(&self, cache: &mut TokenCache) -> Option<(HeaderValue, TokenTag)> {
        let cached = cache.load().as_ref()?;
        // Until its refresh is due, a token's timer keeps the clock out of
        // the request path; from then on every request checks the time.
        if cached.check_clock.load(Ordering::Acquire) {
            let now = Instant::now();
            if now >= cached.refresh_at {
                if now >= cached.fresh_until {
                    return None;
                }
                self.refresh_ahead(cached);
            }
        }
        Some((cached.header.get().clone(), self.tag(cached)))
    }

    /// A [`TokenCache`] of this provider's token, for a request path.
    pub(crate) fn token_cache(&self) -> TokenCache {
        arc_swap::Cache::new(Arc::clone(&self.shared.cache))
    }

    /// The `Authorization` header value of a fresh token, fetching one if
    /// needed.
    pub(crate) fn header(&self) -> BoxFuture<Result<(HeaderValue, TokenTag), TokenError>> {
        let provider = self.clone();
        Box::pin(async move {
            let cached = provider.cached_token().await?;
            Ok((cached.header().clone(), provider.tag(&cached)))
        })
    }

    fn tag(&self, cached: &CachedToken) -> TokenTag {
        TokenTag {
            provider: self.shared.id,
            token: cached.seq,
        }
    }

    async fn cached_token(&self) -> Result<Arc<CachedToken>, TokenError> {
        if let Some(cached) = self.fresh_cached() {
            return Ok(cached);
        }
        match self.join(true)? {
            Joined::Fresh(cached) => Ok(cached),
            Joined::Wait(outcome) => {
                self.shared.stats.waits.fetch_add(1, Ordering::Relaxed);
                wait(outcome).await
            }
        }
    }

    /// The cached token if it may be served, starting a background refresh
    /// if one is due.
    fn fresh_cached(&self) -> Option<Arc<CachedToken>> {
        let (cached, refresh_due) = self.load_fresh()?;
        if refresh_due {
            self.refresh_ahead(&cached);
        }
        Some(cached)
    }

    /// The cached token if it may be served, and whether its refresh is due.
    fn load_fresh(&self) -> Option<(Arc<CachedToken>, bool)> {
        let cached = self.shared.cache.load_full()?;
        let now = Instant::now();
        if now >= cached.fresh_until {
            return None;
        }
        let refresh_due = now >= cached.refresh_at;
        Some((cached, refresh_due))
    }

    /// Starts the background refresh of `cached`, once per token.
    #[cold]
    fn refresh_ahead(&self, cached: &CachedToken) {
        if claim_refresh(cached) {
            let mut control = lock(&self.shared.control);
            self.start_background_refresh(&mut control, cached);
        }
    }

    /// Starts the background task for a token still served, unless it runs.
    fn start_background_refresh(&self, control: &mut Control, cached: &CachedToken) {
        if control.refresher.as_ref().is_some_and(Refresher::is_alive) {
            return;
        }
        self.shared
            .stats
            .background_refreshes
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            fresh_for_secs = cached
                .fresh_until
                .saturating_duration_since(Instant::now())
                .as_secs(),
            "token refresh started ahead of expiry"
        );
        if let Err(error) = self.spawn_refresher(control) {
            // No runtime here: let a later request on a runtime try again.
            cached.refresh_started.store(false, Ordering::Release);
            tracing::debug!(error = %error, "background refresh not started");
        }
    }

    /// Joins the attempt in flight, or fails fast with the last error while
    /// backing off, or starts the background task. With `need_token`, a
    /// fresh token is returned instead if there is one (checked under the
    /// lock: an attempt that finished meanwhile stored its token first).
    fn join(&self, need_token: bool) -> Result<Joined, TokenError> {
        let mut control = lock(&self.shared.control);
        if need_token {
            if let Some((cached, refresh_due)) = self.load_fresh() {
                if refresh_due && claim_refresh(&cached) {
                    self.start_background_refresh(&mut control, &cached);
                }
                return Ok(Joined::Fresh(cached));
            }
        }
        let last_error = control.last_error.clone();
        if let Some(refresher) = control.refresher.as_mut().filter(|r| r.is_alive()) {
            if let Some(outcome) = &refresher.attempt {
                return Ok(Joined::Wait(outcome.clone()));
            }
            if refresher.retry_at.is_some_and(|at| Instant::now() < at) {
                // Backing off: fail fast rather than wait or add attempts.
                return Err(last_error.unwrap_or_else(|| TokenError::new(TokenErrorKind::Internal)));
            }
            // The backoff is over and the task is about to start the next
            // attempt: wait for that one.
            let (sender, outcome) = watch::channel(None);
            refresher.attempt = Some(outcome.clone());
            refresher.pending = Some(sender);
            return Ok(Joined::Wait(outcome));
        }
        // No task, or one that died with its runtime: start over.
        self.spawn_refresher(&mut control).map(Joined::Wait)
    }

    fn spawn_refresher(
        &self,
        control: &mut Control,
    ) -> Result<watch::Receiver<Outcome>, TokenError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            TokenError::with_detail(
                TokenErrorKind::Internal,
                "no tokio runtime is running to fetch the token on",
            )
        })?;
        let (sender, outcome) = watch::channel(None);
        let alive = Arc::new(());
        control.refresher = Some(Refresher {
            attempt: Some(outcome.clone()),
            pending: None,
            retry_at: None,
            alive: Arc::downgrade(&alive),
        });
        runtime.spawn(refresher::run(
            Arc::downgrade(&self.shared),
            Arc::clone(&self.shared.wake),
            sender,
            alive,
        ));
        Ok(outcome)
    }
}

/// Whether this caller is the first to see `cached` due for a refresh.
fn claim_refresh(cached: &CachedToken) -> bool {
    // Read first: every later request in the window only reads.
    !cached.refresh_started.load(Ordering::Relaxed)
        && !cached.refresh_started.swap(true, Ordering::AcqRel)
}

/// Waits for the outcome of an attempt.
async fn wait(mut outcome: watch::Receiver<Outcome>) -> Result<Arc<CachedToken>, TokenError> {
    let outcome = outcome.wait_for(Option::is_some).await.map_err(|_| {
        TokenError::with_detail(
            TokenErrorKind::Internal,
            "the token exchange task ended before it finished (is the runtime shutting down?)",
        )
    })?;
    match &*outcome {
        Some(result) => result.clone(),
        // `wait_for` returns only once the predicate holds.
        None => Err(TokenError::new(TokenErrorKind::Internal)),
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        registry::unregister(self.id);
        // The background task holds only a weak reference; wake it from its
        // backoff so it sees the provider is gone and ends.
        self.wake.notify_waiters();
    }
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let control = lock(&self.shared.control);
        f.debug_struct("TokenProvider")
            .field("client_id", &control.credentials.client_id())
            .field("options", &self.shared.options)
            .field("has_token", &self.shared.cache.load().is_some())
            .field("failures", &control.failures)
            .finish()
    }
}
