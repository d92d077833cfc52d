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

use std::sync::Arc;
use std::sync::atomic::Ordering;
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
use crate::token::{Token, TokenRequest};

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
    #[cfg(feature = "shared-store")]
    let fleet = (stopped.0.shared.clone())
        .map(|cache| Box::new(crate::store::Fleet::new(*cache, &credentials)));
    let mut worker = Box::new(Worker {
        state: Arc::clone(&stopped.0),
        exchange,
        #[cfg(feature = "shared-store")]
        fleet,
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
    /// Where the fleet's token is shared, if it is.
    #[cfg(feature = "shared-store")]
    fleet: Option<Box<crate::store::Fleet>>,
    credentials: ClientCredentials,
    generation: u64,
    /// Failed exchanges in a row.
    failures: u32,
    pacing: Pacing,
    /// Dropped last.
    _stopped: Stopped,
}

/// What [`Worker::obtain`] got, and what the fleet is owed for it.
struct Obtained {
    result: Result<Token, TokenError>,
    /// When the token's lifetime started.
    requested_at: Instant,
    ticket: Ticket,
    /// The token, or the error, came from the fleet's store.
    from_store: bool,
}

/// With a shared store: the fleet's part of an exchange of this worker's
/// (`None` for a token taken from the store).
#[cfg(feature = "shared-store")]
type Ticket = Option<crate::store::Ticket>;
#[cfg(not(feature = "shared-store"))]
type Ticket = ();

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
        #[cfg(feature = "shared-store")]
        if let (Some(token), Some(fleet)) = (mail.invalidated.take(), &mut self.fleet) {
            fleet.rejected(token.secret());
        }
        if !mail.credentials_changed {
            return false;
        }
        mail.credentials_changed = false;
        self.credentials = mail.credentials.clone();
        (self.generation, self.failures) = (mail.generation, 0);
        #[cfg(feature = "shared-store")]
        if let Some(fleet) = &mut self.fleet {
            fleet.set_credentials(&self.credentials);
        }
        true
    }

    /// Exchanges until a token is stored, backing off between failures.
    async fn renew(&mut self) -> Flow {
        loop {
            self.state.mail().fetching = true;
            let Obtained {
                result,
                requested_at,
                ticket,
                from_store,
            } = self.obtain().await;
            let lifetime = result
                .as_ref()
                .ok()
                .map(|token| self.state.options.lifetime(token));
            let retry_after = result.as_ref().err().and_then(TokenError::retry_after);
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
                self.count_store(&mut mail);
                let elapsed = requested_at.elapsed();
                match result.and_then(|token| self.store(&token, requested_at)) {
                    Ok(cached) => {
                        self.failures = 0;
                        if from_store {
                            tracing::debug!("token taken from the shared store");
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
                        if !from_store {
                            mail.stats.failures += 1;
                            let event = Event::ExchangeFailed {
                                took: elapsed,
                                kind: error.kind(),
                            };
                            metrics::record(self.credentials.client_id(), event);
                        }
                        let delay = match error.retry_after().filter(|_| from_store) {
                            // The fleet backs off: wait out what is left of
                            // it, as one of the fleet; no failure of this
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
            // The fleet's lock, if this worker held it, is released in
            // every case.
            let outcome = match answered {
                Answered::Gone => {
                    self.release(ticket).await;
                    return Flow::Break(());
                }
                Answered::Stale => {
                    // A result for the old credentials: try again.
                    self.release(ticket).await;
                    continue;
                }
                Answered::Done(outcome) => outcome,
            };
            state.answered.notify_waiters();
            self.share(ticket, &outcome, lifetime, retry_after).await;
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

    /// A token from the fleet's store, or from an exchange of this worker's.
    async fn obtain(&mut self) -> Obtained {
        #[cfg(feature = "shared-store")]
        if let Some(fleet) = &mut self.fleet {
            use crate::store::Acquired;
            let state = Arc::clone(&self.state);
            let stop = || {
                let mail = state.mail();
                mail.closed || mail.credentials_changed
            };
            let now = Instant::now();
            let current = state.current.load();
            let cold = current.as_ref().is_none_or(|cached| !cached.is_fresh(now));
            drop(current);
            let ticket = match fleet.acquire(&state.options, cold, stop).await {
                Acquired::Shared(token, requested_at) => {
                    return Obtained {
                        result: Ok(token),
                        requested_at,
                        ticket: None,
                        from_store: true,
                    };
                }
                Acquired::HoldOff(error) => {
                    return Obtained {
                        result: Err(error),
                        requested_at: now,
                        ticket: None,
                        from_store: true,
                    };
                }
                Acquired::Exchange(ticket) => ticket,
            };
            if stop() {
                // The last handle went, or new credentials came, while this
                // worker waited on the fleet: no exchange; `renew` sees why.
                let off = TokenError::with_detail(TokenErrorKind::Internal, "exchange called off");
                return Obtained {
                    result: Err(off),
                    requested_at: now,
                    ticket,
                    from_store: true,
                };
            }
            let requested_at = Instant::now();
            return Obtained {
                result: self.attempt().await,
                requested_at,
                ticket,
                from_store: false,
            };
        }
        let requested_at = Instant::now();
        Obtained {
            result: self.attempt().await,
            requested_at,
            ticket: Default::default(),
            from_store: false,
        }
    }

    /// Moves the store's counts into the stats.
    fn count_store(&mut self, _mail: &mut Mail) {
        #[cfg(feature = "shared-store")]
        if let Some(fleet) = &mut self.fleet {
            fleet.count(&mut _mail.stats);
        }
    }

    /// Releases the fleet's lock if this worker's exchange held it, with
    /// nothing to share.
    #[cfg_attr(not(feature = "shared-store"), allow(clippy::unused_async))]
    async fn release(&mut self, ticket: Ticket) {
        #[cfg(feature = "shared-store")]
        if let (Some(fleet), Some(ticket)) = (&mut self.fleet, ticket) {
            fleet.release(ticket).await;
        }
        #[cfg(not(feature = "shared-store"))]
        let () = ticket;
    }

    /// After this worker's own exchange: shares its token with the fleet,
    /// or after a failure the endpoint's `Retry-After` (if it held the
    /// lock), and releases the lock.
    #[cfg_attr(not(feature = "shared-store"), allow(clippy::unused_async))]
    async fn share(
        &mut self,
        ticket: Ticket,
        outcome: &Result<Arc<CachedToken>, Instant>,
        lifetime: Option<Duration>,
        retry_after: Option<Duration>,
    ) {
        #[cfg(feature = "shared-store")]
        if let (Some(fleet), Some(ticket)) = (&mut self.fleet, ticket) {
            let now = Instant::now();
            let shared = match (outcome, lifetime) {
                (Ok(cached), Some(lifetime)) => Ok(crate::store::Shared {
                    token: cached.token.secret(),
                    lifetime,
                    served_for: cached.fresh_until.saturating_duration_since(now),
                }),
                _ => Err(retry_after),
            };
            fleet.publish(shared, ticket).await;
            let mut mail = self.state.mail();
            fleet.count(&mut mail.stats);
        }
        #[cfg(not(feature = "shared-store"))]
        let _ = (ticket, outcome, lifetime, retry_after);
    }

    /// One exchange, bounded by the exchange timeout; a panic of the
    /// service is one more failure, not the end of the worker.
    async fn attempt(&mut self) -> Result<Token, TokenError> {
        lock(&self.state.mail).stats.exchanges += 1;
        metrics::record(self.credentials.client_id(), Event::ExchangeStarted);
        let timeout = self.state.options.exchange_timeout;
        let request = TokenRequest::new(self.credentials.clone());
        let exchange = CatchUnwind(Box::pin(self.exchange.clone().oneshot(request)));
        let span = tracing::debug_span!(
            "token_exchange",
            client_id = %self.credentials.client_id(),
            failures = self.failures,
        );
        let result = tokio::time::timeout(timeout, exchange)
            .instrument(span)
            .await;
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
