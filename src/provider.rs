//! [`TokenProvider`]: the shared token cache in front of a token exchange.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::HeaderValue;
use tokio::sync::watch;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use crate::ClientCredentials;
use crate::error::{BoxError, TokenError, TokenErrorKind};
use crate::token::{AccessToken, Token, TokenRequest};

/// Default for [`TokenProviderBuilder::expiry_skew`].
pub const DEFAULT_EXPIRY_SKEW: Duration = Duration::from_secs(30);
/// Default for [`TokenProviderBuilder::assumed_lifetime`].
pub const DEFAULT_ASSUMED_LIFETIME: Duration = Duration::from_secs(60);
/// The longest lifetime a token is trusted for, whatever `expires_in` says.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type Outcome = Option<Result<Arc<CachedToken>, TokenError>>;

/// A shared, self-renewing access token for one set of client credentials.
///
/// `TokenProvider` is a handle: cloning it is one reference count, and every
/// clone shares one cache, so one provider serves every client stack of a
/// process that uses the same credentials.
///
/// - [`token`](TokenProvider::token) answers from the cache while the token
///   is fresh. The check is lock-free and allocation-free: one atomic load
///   and one clock read.
/// - A token is fresh until its `expires_in`, counted from the moment it was
///   requested, minus the [expiry skew](TokenProviderBuilder::expiry_skew).
/// - When there is no fresh token, one exchange runs, whatever the number of
///   callers, and every one of them receives its token or its error. The
///   exchange runs in a task of its own: a caller that gives up (a dropped
///   future, a timeout) cancels nothing for the others.
/// - After a failed exchange the next call starts a new one.
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
    /// The current token; read on every request.
    cache: ArcSwapOption<CachedToken>,
    /// The exchange in flight, if any. Locked only on the slow path.
    flight: Mutex<Option<Flight>>,
    next_flight: AtomicU64,
    exchange: Box<dyn Exchange>,
    credentials: ClientCredentials,
    options: Options,
}

struct Flight {
    id: u64,
    outcome: watch::Receiver<Outcome>,
}

#[derive(Debug, Clone, Copy)]
struct Options {
    expiry_skew: Duration,
    assumed_lifetime: Duration,
}

/// A cached token with its pre-built `Authorization` header value.
pub(crate) struct CachedToken {
    token: AccessToken,
    header: HeaderValue,
    fresh_until: Instant,
}

impl CachedToken {
    fn new(token: Token, requested_at: Instant, options: Options) -> Result<Self, TokenError> {
        let lifetime = token
            .expires_in()
            .unwrap_or(options.assumed_lifetime)
            .min(MAX_TOKEN_LIFETIME);
        // A skew larger than half the lifetime would make short-lived tokens
        // useless; keep at least half of every lifetime.
        let usable = lifetime - options.expiry_skew.min(lifetime / 2);
        let fresh_until = requested_at.checked_add(usable).unwrap_or(requested_at);

        let mut value = Vec::with_capacity("Bearer ".len() + token.access_token().secret().len());
        value.extend_from_slice(b"Bearer ");
        value.extend_from_slice(token.access_token().secret().as_bytes());
        // `from_owner` makes every later clone of the header a reference
        // count, with no allocation on the request path.
        let mut header =
            HeaderValue::from_maybe_shared(Bytes::from_owner(value)).map_err(|_| {
                TokenError::with_detail(
                    TokenErrorKind::InvalidResponse,
                    "the access token has characters that are not allowed in an HTTP header",
                )
            })?;
        header.set_sensitive(true);
        Ok(Self {
            token: token.access_token().clone(),
            header,
            fresh_until,
        })
    }

    fn is_fresh(&self, now: Instant) -> bool {
        now < self.fresh_until
    }

    pub(crate) fn header(&self) -> &HeaderValue {
        &self.header
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
    // Nothing here can leave the guarded data half-written, so a panic
    // elsewhere while the lock was held does not make it unusable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
            options: Options {
                expiry_skew: DEFAULT_EXPIRY_SKEW,
                assumed_lifetime: DEFAULT_ASSUMED_LIFETIME,
            },
        }
    }

    /// The current access token, fetched first if there is no fresh one.
    ///
    /// # Errors
    ///
    /// The [`TokenError`] of the exchange, when there was no fresh token and
    /// the exchange failed; or [`TokenErrorKind::Internal`] when no tokio
    /// runtime is running or it shut down during the exchange.
    pub async fn token(&self) -> Result<AccessToken, TokenError> {
        Ok(self.cached_token().await?.token.clone())
    }

    /// Drops `token` from the cache if it is still the cached token, so the
    /// next call fetches a new one. Returns whether it was dropped.
    ///
    /// Call it when the API rejects `token` (a 401). A newer token, fetched
    /// since `token` was handed out, is never dropped: a burst of 401s for
    /// one token causes one new exchange.
    pub fn invalidate(&self, token: &AccessToken) -> bool {
        let current = self.shared.cache.load();
        match &*current {
            Some(cached) if cached.token == *token => {
                let previous = self.shared.cache.compare_and_swap(&*current, None);
                let dropped = match (&*previous, &*current) {
                    (Some(previous), Some(current)) => Arc::ptr_eq(previous, current),
                    _ => false,
                };
                if dropped {
                    tracing::debug!("cached token invalidated");
                }
                dropped
            }
            _ => false,
        }
    }

    /// The client id this provider fetches tokens for.
    pub fn client_id(&self) -> &str {
        self.shared.credentials.client_id()
    }

    /// The `Authorization` header value of the cached token if it is fresh.
    /// This is the whole request path when the token is fresh: one atomic
    /// load, one clock read, one reference count.
    #[inline]
    pub(crate) fn fresh_header(&self) -> Option<HeaderValue> {
        let guard = self.shared.cache.load();
        match &*guard {
            Some(cached) if cached.is_fresh(Instant::now()) => Some(cached.header.clone()),
            _ => None,
        }
    }

    /// The `Authorization` header value of a fresh token, fetching one if
    /// needed.
    pub(crate) fn header(&self) -> BoxFuture<Result<HeaderValue, TokenError>> {
        let provider = self.clone();
        Box::pin(async move { Ok(provider.cached_token().await?.header().clone()) })
    }

    async fn cached_token(&self) -> Result<Arc<CachedToken>, TokenError> {
        if let Some(cached) = self.fresh_cached() {
            return Ok(cached);
        }
        let mut outcome = match self.fresh_or_join()? {
            Joined::Fresh(cached) => return Ok(cached),
            Joined::Wait(outcome) => outcome,
        };
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

    fn fresh_cached(&self) -> Option<Arc<CachedToken>> {
        self.shared
            .cache
            .load_full()
            .filter(|cached| cached.is_fresh(Instant::now()))
    }

    /// Returns the fresh token, or joins the exchange in flight, or starts
    /// one. Under the flight lock, so that at most one exchange runs.
    fn fresh_or_join(&self) -> Result<Joined, TokenError> {
        let mut flight = lock(&self.shared.flight);
        // Checked under the lock: an exchange that finished since the
        // caller's first look has stored its token before clearing the flight.
        if let Some(cached) = self.fresh_cached() {
            return Ok(Joined::Fresh(cached));
        }
        if let Some(current) = flight.as_ref() {
            // A closed channel means the task is gone without clearing its
            // flight (its runtime shut down); start over rather than wait
            // on it forever.
            if current.outcome.has_changed().is_ok() {
                return Ok(Joined::Wait(current.outcome.clone()));
            }
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            TokenError::with_detail(
                TokenErrorKind::Internal,
                "no tokio runtime is running to fetch the token on",
            )
        })?;
        let id = self.shared.next_flight.fetch_add(1, Ordering::Relaxed);
        let (sender, outcome) = watch::channel(None);
        let request = TokenRequest::new(self.shared.credentials.clone());
        let exchange = self.shared.exchange.exchange(request);
        runtime.spawn(run_exchange(
            Arc::downgrade(&self.shared),
            id,
            exchange,
            self.shared.options,
            sender,
        ));
        *flight = Some(Flight {
            id,
            outcome: outcome.clone(),
        });
        Ok(Joined::Wait(outcome))
    }
}

enum Joined {
    Fresh(Arc<CachedToken>),
    Wait(watch::Receiver<Outcome>),
}

/// One exchange, detached from every caller: stores the token, clears the
/// flight, then hands the outcome to the waiters.
async fn run_exchange(
    shared: Weak<Shared>,
    id: u64,
    exchange: BoxFuture<Result<Token, TokenError>>,
    options: Options,
    sender: watch::Sender<Outcome>,
) {
    let requested_at = Instant::now();
    let outcome = exchange
        .await
        .and_then(|token| CachedToken::new(token, requested_at, options))
        .map(Arc::new);
    match &outcome {
        Ok(cached) => tracing::debug!(
            fresh_for_secs = cached
                .fresh_until
                .saturating_duration_since(Instant::now())
                .as_secs(),
            "token cached"
        ),
        Err(error) => tracing::warn!(
            error = %crate::error::ErrorChain(error),
            status = error.status().map(|status| status.as_u16()),
            error_code = error.error_code(),
            retryable = error.is_retryable(),
            "token exchange failed"
        ),
    }
    if let Some(shared) = shared.upgrade() {
        if let Ok(cached) = &outcome {
            shared.cache.store(Some(Arc::clone(cached)));
        }
        let mut flight = lock(&shared.flight);
        if flight.as_ref().is_some_and(|flight| flight.id == id) {
            *flight = None;
        }
    }
    sender.send_replace(Some(outcome));
}

impl fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProvider")
            .field("client_id", &self.shared.credentials.client_id())
            .field("expiry_skew", &self.shared.options.expiry_skew)
            .field("assumed_lifetime", &self.shared.options.assumed_lifetime)
            .field("has_token", &self.shared.cache.load().is_some())
            .finish()
    }
}

/// Builds a [`TokenProvider`]; from [`TokenProvider::builder`].
pub struct TokenProviderBuilder<S> {
    exchange: S,
    credentials: ClientCredentials,
    options: Options,
}

impl<S> TokenProviderBuilder<S> {
    /// How long before its `expires_in` runs out a token stops being used
    /// (default 30 s), to absorb clock skew and request latency. It is
    /// capped at half of each token's lifetime, so short-lived tokens stay
    /// usable.
    pub fn expiry_skew(mut self, skew: Duration) -> Self {
        self.options.expiry_skew = skew;
        self
    }

    /// The lifetime assumed for a token whose response has no `expires_in`,
    /// or `expires_in: 0` (default 60 s). Short on purpose: such a token is
    /// renewed often rather than used past its real expiry.
    pub fn assumed_lifetime(mut self, lifetime: Duration) -> Self {
        self.options.assumed_lifetime = lifetime;
        self
    }

    /// Builds the provider.
    pub fn build(self) -> TokenProvider
    where
        S: Service<TokenRequest, Response = Token> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        TokenProvider {
            shared: Arc::new(Shared {
                cache: ArcSwapOption::empty(),
                flight: Mutex::new(None),
                next_flight: AtomicU64::new(0),
                exchange: Box::new(ServiceExchange {
                    service: Mutex::new(self.exchange),
                }),
                credentials: self.credentials,
                options: self.options,
            }),
        }
    }
}

impl<S> fmt::Debug for TokenProviderBuilder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenProviderBuilder")
            .field("credentials", &self.credentials)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}
