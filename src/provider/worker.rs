//! The worker task of a provider, which owns the token's life.
//!
//! Handles and worker share only [`State`](super::state::State): the
//! current token, read by every request, and a mailbox, which holds the
//! callers' requests (coalesced: a thousand callers that need a token are
//! one request) and the worker's last answer, which callers wait on. The
//! exchange service,
//! the credentials in use, failures, backoff and the pacing of
//! invalidations live in the task alone.
//!
//! The worker runs one exchange at a time: when a caller needs a token or a
//! request finds the refresh due. After a failure it retries with backoff
//! until an exchange succeeds; then it sleeps until it has mail. No timer of
//! its decides whether a token is served: the request path compares the
//! clock with the token's deadline itself.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tracing::Instrument;

use super::attempt::{CatchUnwind, Panicked, log_failure};
use super::cached::CachedToken;
use super::pacing::Pacing;
use super::state::{Mail, Outcome, State, Stopped, lock};
use crate::ClientCredentials;
use crate::clock::{later, random_unit};
use crate::error::{BoxError, TokenError, TokenErrorKind};
use crate::metrics::{self, Event};
use crate::token::{AccessToken, Token, TokenReason, TokenRequest};

/// Runs a provider's worker until the last handle is dropped.
pub(super) async fn run<S>(stopped: Stopped, exchange: S)
where
    S: Service<TokenRequest, Response = Token> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    // Boxed, as the exchange is: the task stays small whatever the service.
    let (credentials, generation) = {
        let mut mail = stopped.0.mail();
        mail.credentials_changed = false;
        (mail.credentials.clone(), mail.generation)
    };
    let mut worker = Box::new(Worker {
        state: Arc::clone(&stopped.0),
        exchange,
        rejected: None,
        credentials,
        generation,
        failures: 0,
        pacing: Pacing::default(),
        _stopped: stopped,
    });
    loop {
        let state = Arc::clone(&worker.state);
        let background = {
            let mut mail = state.mail();
            if mail.closed {
                return;
            }
            worker.read(&mut mail);
            let now = Instant::now();
            match state.current.load_full() {
                _ if mail.refresh => Some(false),
                _ if !mail.need => None,
                // A caller raced with this token's arrival: answer again.
                Some(cached) if now < cached.refresh_at => {
                    mail.set_outcome(Outcome::Ready);
                    state.answered.notify_waiters();
                    continue;
                }
                Some(cached) => Some(cached.is_fresh(now)),
                None => Some(false),
            }
        };
        match background {
            None => state.wake.notified().await,
            Some(background) => {
                if background {
                    lock(&state.mail).stats.background_refreshes += 1;
                    let client_id = worker.credentials.client_id();
                    metrics::record(client_id, Event::BackgroundRefresh);
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

struct Worker<S> {
    state: Arc<State>,
    exchange: S,
    /// The token last invalidated, for the next request to name.
    rejected: Option<AccessToken>,
    credentials: ClientCredentials,
    generation: u64,
    /// Failed exchanges in a row.
    failures: u32,
    pacing: Pacing,
    /// Dropped last.
    _stopped: Stopped,
}

/// What [`Worker::obtain`] got.
struct Obtained {
    result: Result<Token, TokenError>,
    /// When the token's lifetime started.
    requested_at: Instant,
    /// The token was issued before it was handed over (a cache), or the
    /// error is a deferral: no exchange of this worker's.
    from_cache: bool,
}

/// How an attempt of [`Worker::renew`] ended.
enum Answered {
    /// The last handle is gone.
    Gone,
    /// The credentials changed meanwhile: the result is not for them.
    Stale,
    /// The token stored, or when to retry after a failure.
    Done(Result<Arc<CachedToken>, Instant>),
}

/// `Break` once the last handle is gone.
type Flow = std::ops::ControlFlow<()>;

impl<S> Worker<S>
where
    S: Service<TokenRequest, Response = Token> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    /// Takes the mail that needs no answer (new credentials, rejections);
    /// returns whether the credentials changed.
    fn read(&mut self, mail: &mut Mail) -> bool {
        if let Some(at) = mail.rejected_at.take() {
            self.pacing.record(at, &self.state.options);
        }
        if let Some(token) = mail.invalidated.take() {
            self.rejected = Some(token);
        }
        if !mail.credentials_changed {
            return false;
        }
        mail.credentials_changed = false;
        self.credentials = mail.credentials.clone();
        (self.generation, self.failures) = (mail.generation, 0);
        true
    }

    /// Exchanges until a token is stored, backing off between failures.
    async fn renew(&mut self) -> Flow {
        loop {
            self.state.mail().fetching = true;
            let Obtained {
                result,
                requested_at,
                from_cache,
            } = self.obtain().await;
            let state = Arc::clone(&self.state);
            // From the mail check to the answer in one critical section:
            // new credentials can never slip in between and see a token of
            // the old ones stored after them.
            let answered = 'answer: {
                let mut mail = state.mail();
                if mail.closed {
                    break 'answer Answered::Gone;
                }
                if self.read(&mut mail) {
                    break 'answer Answered::Stale;
                }
                let elapsed = requested_at.elapsed();
                match result.and_then(|token| self.store(&token, requested_at)) {
                    Ok(cached) => {
                        self.failures = 0;
                        if from_cache {
                            tracing::debug!("token issued earlier, taken from a cache");
                        } else {
                            let event = Event::ExchangeSucceeded { took: elapsed };
                            metrics::record(self.credentials.client_id(), event);
                            tracing::debug!(
                                duration_ms = elapsed.as_millis() as u64,
                                refresh_in_secs = (cached.refresh_at - requested_at).as_secs(),
                                "token exchange succeeded"
                            );
                        }
                        mail.set_outcome(Outcome::Ready);
                        Answered::Done(Ok(cached))
                    }
                    Err(error) => {
                        if !from_cache {
                            mail.stats.failures += 1;
                            let event = Event::ExchangeFailed {
                                took: elapsed,
                                kind: error.kind(),
                            };
                            metrics::record(self.credentials.client_id(), event);
                        }
                        let delay = match error.retry_after().filter(|_| from_cache) {
                            // A deferral (the fleet backs off): wait out
                            // what is left of it; no failure of this
                            // replica's, so its own backoff does not grow.
                            Some(left) => {
                                tracing::debug!(
                                    retry_in_ms = left.as_millis() as u64,
                                    "the fleet backs off"
                                );
                                left
                            }
                            None => {
                                self.failures = self.failures.saturating_add(1);
                                let (failures, asked) = (self.failures, error.retry_after());
                                let delay = state.options.backoff(failures, asked, random_unit());
                                log_failure(&error, elapsed, failures, delay);
                                delay
                            }
                        };
                        let retry_at = later(Instant::now(), delay);
                        let generation = self.generation;
                        mail.set_outcome(Outcome::Failed {
                            error,
                            retry_at: Some(retry_at),
                            generation,
                        });
                        Answered::Done(Err(retry_at))
                    }
                }
            };
            let outcome = match answered {
                Answered::Gone => return Flow::Break(()),
                // A result for the old credentials: try again.
                Answered::Stale => continue,
                Answered::Done(outcome) => outcome,
            };
            state.answered.notify_waiters();
            match outcome {
                Ok(_) => return Flow::Continue(()),
                Err(retry_at) => self.back_off(retry_at).await?,
            }
        }
    }

    /// Waits until `retry_at`, or less if new credentials arrive. Callers
    /// that ask meanwhile get the last error.
    async fn back_off(&mut self, retry_at: Instant) -> Flow {
        while tokio::time::timeout_at(retry_at, self.state.wake.notified())
            .await
            .is_ok()
        {
            let state = Arc::clone(&self.state);
            let mut mail = state.mail();
            if mail.closed {
                return Flow::Break(());
            }
            if self.read(&mut mail) || Instant::now() >= retry_at {
                break;
            }
        }
        Flow::Continue(())
    }

    /// A token from the exchange service, with when its lifetime started.
    async fn obtain(&mut self) -> Obtained {
        let state = Arc::clone(&self.state);
        let options = &state.options;
        let now = Instant::now();
        let fresh_until = (state.current.load().as_ref())
            .map(|cached| cached.fresh_until)
            .filter(|until| now < *until);
        let forced = state.mail().refresh;
        let reason = match (self.rejected.take(), fresh_until) {
            (Some(token), _) => TokenReason::Rejected(token),
            (None, None) => TokenReason::Missing,
            (None, Some(_)) if forced => TokenReason::Forced,
            (None, Some(_)) => TokenReason::RefreshDue,
        };
        let mut request = TokenRequest::new(self.credentials.clone())
            .with_reason(reason)
            .with_timeout(options.exchange_timeout)
            .with_expiry_skew(options.expiry_skew);
        if let Some(until) = fresh_until {
            request = request.with_needed_by(until);
        }
        let sent_at = Instant::now();
        let result = self.attempt(request).await;
        let age = result.as_ref().map_or(Duration::ZERO, Token::age);
        let from_cache = match &result {
            Ok(token) => !token.age().is_zero(),
            Err(error) => error.is_deferred(),
        };
        // A token issued before it was handed over lives from its issue
        // time; never from later than the request.
        let requested_at = Instant::now()
            .checked_sub(age)
            .map_or(sent_at, |issued| issued.min(sent_at));
        Obtained {
            result,
            requested_at,
            from_cache,
        }
    }

    /// One exchange, bounded by the exchange timeout; a panic of the
    /// service is one more failure, not the end of the worker. Dropped,
    /// and so cancelled, when the last handle goes or new credentials come.
    async fn attempt(&mut self, request: TokenRequest) -> Result<Token, TokenError> {
        lock(&self.state.mail).stats.exchanges += 1;
        metrics::record(self.credentials.client_id(), Event::ExchangeStarted);
        let timeout = self.state.options.exchange_timeout;
        let exchange = CatchUnwind(Box::pin(self.exchange.clone().oneshot(request)));
        let span = tracing::debug_span!(
            "token_exchange",
            client_id = %self.credentials.client_id(),
            failures = self.failures,
        );
        let exchange = tokio::time::timeout(timeout, exchange).instrument(span);
        let mut exchange = std::pin::pin!(exchange);
        let result = loop {
            let mut woken = std::pin::pin!(self.state.wake.notified());
            let ended = std::future::poll_fn(|cx| match exchange.as_mut().poll(cx) {
                Poll::Ready(result) => Poll::Ready(Some(result)),
                Poll::Pending => woken.as_mut().poll(cx).map(|()| None),
            });
            if let Some(result) = ended.await {
                break result;
            }
            let mail = self.state.mail();
            if mail.closed || mail.credentials_changed {
                // `renew` sees why.
                return Err(TokenError::with_detail(
                    TokenErrorKind::Internal,
                    "exchange called off",
                ));
            }
        };
        match result {
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
        let cached = Arc::new(CachedToken::new(
            seq,
            token,
            requested_at,
            schedule,
            rejectable_from,
        )?);
        if !cached.is_fresh(Instant::now()) {
            // It arrived when it may no longer be served: storing it would
            // hand waiting callers a token at or past its end.
            return Err(TokenError::with_detail(
                TokenErrorKind::Timeout,
                format!(
                    "the token arrived after the time it may be served: it was \
                     requested {} ms ago and may be served for {} ms (its lifetime \
                     less the expiry skew)",
                    requested_at.elapsed().as_millis(),
                    schedule.fresh_for.as_millis()
                ),
            ));
        }
        self.state.current.store(Some(Arc::clone(&cached)));
        let served_until = cached.fresh_until;
        metrics::record(
            self.credentials.client_id(),
            Event::TokenStored { served_until },
        );
        Ok(cached)
    }
}
