//! The worker task of a provider, which owns the token's life.
//!
//! Handles send it [`Message`]s over an unbounded `mpsc` channel; a caller
//! that needs an answer sends a `oneshot` with its message. Everything
//! else is the worker's own: the credentials in use, the callers waiting,
//! the exchange in flight, failures, backoff and the pacing of
//! invalidations. Its loop is one `select!` over the next message, the
//! exchange in flight and the end of a backoff.
//!
//! It ends when the channel closes (the last handle is gone), and as soon
//! as it has nothing left to do: no caller waiting, no exchange wanted or
//! in flight. It checks that its channel is empty and leaves under the lock
//! that handles send under, so a message is never lost: the next one
//! starts a new worker. An idle provider has no task and no channel.
//!
//! The worker runs one exchange at a time, when a caller needs a token, a
//! request found the refresh due or `refresh()` asks; after a failure it
//! retries with backoff until an exchange succeeds. No timer of its decides
//! whether a token is served: the request path compares the clock with the
//! token's deadline itself.

use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tower::Service;

use super::attempt::{Failure, InFlight, attempt, log_failure};
use super::cached::CachedToken;
use super::{Inner, Shared, lock};
use crate::ClientCredentials;
use crate::clock::{later, random_unit};
use crate::error::{BoxError, TokenError, TokenErrorKind};
use crate::metrics::{self, Event};
use crate::token::{Token, TokenReason, TokenRequest};

/// Where the worker answers a caller: a fresh token, or the error of the
/// exchange the caller waited for.
pub(super) type Answer = oneshot::Sender<Result<Arc<CachedToken>, TokenError>>;

/// What a handle tells the worker.
pub(super) enum Message {
    /// A token, the current one if it may be served.
    Need(Answer),
    /// A new token, even if the current one may be served.
    Refresh(Answer),
    /// A request found the current token's refresh due.
    RefreshDue,
    /// The credentials in [`Shared::seed`] changed.
    NewCredentials,
}

/// What the worker wants next.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    /// A token: there is none that may be served, or its refresh is due.
    Token,
    /// A new token even if the current one may be served.
    Forced,
}

/// Runs a provider's worker until it has nothing left to do or its
/// channel closes.
pub(super) async fn run<S>(
    shared: Arc<Shared>,
    handles: Weak<Inner>,
    exchange: S,
    mut messages: Receiver,
) where
    S: Service<TokenRequest, Response = Token> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let (credentials, label) = {
        let seed = lock(&shared.seed);
        (seed.credentials.clone(), Arc::clone(&seed.label))
    };
    let mut worker = Worker {
        label,
        credentials,
        shared,
        exchange,
        waiters: Vec::new(),
        wanted: None,
        failures: 0,
    };
    let mut in_flight: Option<(InFlight, TokenReason, Instant)> = None;
    loop {
        if in_flight.is_none() {
            in_flight = worker.start();
        }
        if in_flight.is_none() && worker.idle() {
            let Some(inner) = handles.upgrade() else {
                return;
            };
            let mut sender = lock(&inner.worker);
            match messages.try_recv() {
                Ok(message) => {
                    drop(sender);
                    worker.read(message, false);
                    continue;
                }
                Err(_) => {
                    // Nothing was sent, and nothing can be until the next
                    // handle that sends starts a new worker.
                    *sender = None;
                    return;
                }
            }
        }
        let retry_at = worker.retry_at().filter(|_| in_flight.is_none());
        tokio::select! {
            biased;
            message = messages.recv() => {
                let Some(message) = message else { return };
                if worker.read(message, in_flight.is_some()) {
                    // New credentials: the exchange for the old ones is
                    // dropped, and asked again for the new ones.
                    if let Some((_, _, _)) = in_flight.take() {
                        worker.want(Want::Token);
                    }
                }
            }
            result = async { match &mut in_flight {
                Some((exchange, _, _)) => exchange.await,
                None => std::future::pending().await,
            } } => {
                if let Some((_, reason, sent_at)) = in_flight.take() {
                    worker.finish(result, &reason, sent_at);
                }
            }
            () = async { match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            } } => {}
        }
    }
}

pub(super) type Receiver = mpsc::UnboundedReceiver<Message>;

struct Worker<S> {
    shared: Arc<Shared>,
    exchange: S,
    credentials: ClientCredentials,
    /// The client id, for logs and metric labels.
    label: Arc<str>,
    /// Callers waiting for the exchange in flight, or the next one.
    waiters: Vec<Answer>,
    /// An exchange is wanted.
    wanted: Option<Want>,
    /// Failed exchanges in a row.
    failures: u32,
}

impl<S> Worker<S>
where
    S: Service<TokenRequest, Response = Token> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    /// Takes a message; returns whether the credentials changed.
    fn read(&mut self, message: Message, busy: bool) -> bool {
        let now = Instant::now();
        let fresh = || {
            let current = self.shared.current.load_full();
            current.filter(|cached| cached.is_fresh(now))
        };
        match message {
            Message::Need(answer) => match fresh() {
                Some(cached) => drop(answer.send(Ok(cached))),
                None => self.join(answer, Want::Token, busy, now),
            },
            Message::Refresh(answer) => self.join(answer, Want::Forced, busy, now),
            Message::RefreshDue => {
                if fresh().is_some() && self.wanted.is_none() && !busy {
                    self.count(|stats| stats.background_refreshes += 1);
                    metrics::record(&self.label, Event::BackgroundRefresh);
                    let client_id = &*self.label;
                    tracing::debug!(client_id, "token refresh started ahead of expiry");
                    self.want(Want::Token);
                }
            }
            Message::NewCredentials => {
                let seed = lock(&self.shared.seed);
                if seed.credentials == self.credentials {
                    return false;
                }
                (self.credentials, self.label) =
                    (seed.credentials.clone(), Arc::clone(&seed.label));
                // Backoff starts over (the handle cleared it).
                self.failures = 0;
                return true;
            }
        }
        false
    }

    /// A caller waits for the next outcome, or gets the last error at once
    /// while failed exchanges back off.
    fn join(&mut self, answer: Answer, want: Want, busy: bool, now: Instant) {
        if let Some((error, retry_at)) = &lock(&self.shared.seed).backoff {
            if !busy && now < *retry_at {
                drop(answer.send(Err(error.clone())));
                return;
            }
        }
        if want == Want::Token {
            self.count(|stats| stats.waits += 1);
            metrics::record(&self.label, Event::Wait);
        }
        self.waiters.push(answer);
        if !busy {
            // Otherwise it joins the exchange in flight.
            self.want(want);
        }
    }

    fn want(&mut self, want: Want) {
        self.wanted = Some(match self.wanted {
            Some(Want::Forced) => Want::Forced,
            _ => want,
        });
    }

    /// Whether nothing is left to do: no caller waits, no exchange is
    /// wanted (none is after a failure: it is retried until a token comes).
    fn idle(&self) -> bool {
        self.wanted.is_none() && self.waiters.is_empty()
    }

    /// When the next attempt may start, if one is wanted and failures back
    /// it off.
    fn retry_at(&self) -> Option<Instant> {
        self.wanted?;
        let seed = lock(&self.shared.seed);
        seed.backoff.as_ref().map(|(_, retry_at)| *retry_at)
    }

    /// Starts the exchange wanted, unless failures back it off.
    fn start(&mut self) -> Option<(InFlight, TokenReason, Instant)> {
        let want = self.wanted?;
        let now = Instant::now();
        if self.retry_at().is_some_and(|retry_at| now < retry_at) {
            return None;
        }
        self.wanted = None;
        let current = self.shared.current.load_full();
        let current = current.filter(|cached| cached.is_fresh(now));
        let rejected = lock(&self.shared.seed).rejected.clone();
        let reason = match (&current, want, rejected) {
            (Some(_), Want::Forced, _) => TokenReason::Forced,
            (Some(_), Want::Token, _) => TokenReason::RefreshDue,
            (None, _, Some(rejected)) => TokenReason::Rejected(rejected),
            (None, _, None) => TokenReason::Missing,
        };
        let options = &self.shared.options;
        let mut request = TokenRequest::new(self.credentials.clone())
            .with_reason(reason.clone())
            .with_timeout(options.exchange_timeout)
            .with_expiry_skew(options.expiry_skew);
        if let Some(cached) = current {
            request = request.with_needed_by(cached.fresh_until);
        }
        self.count(|stats| stats.exchanges += 1);
        metrics::record(&self.label, Event::ExchangeStarted);
        let exchange = self.exchange.clone();
        let in_flight = attempt(exchange, request, options.exchange_timeout, &self.label);
        Some((in_flight, reason, now))
    }

    /// Stores the token of an exchange, or backs off after its failure, and
    /// answers the callers waiting.
    fn finish(
        &mut self,
        result: Result<Token, TokenError>,
        reason: &TokenReason,
        sent_at: Instant,
    ) {
        let elapsed = sent_at.elapsed();
        let label = Arc::clone(&self.label);
        let client_id = &*label;
        let outcome = match result {
            Ok(token) => match self.store(&token, sent_at) {
                Some(stored) => stored.map(|cached| (cached, token.age())),
                // For credentials replaced meanwhile: the message saying so
                // is on its way; ask again then.
                None => return self.want(Want::Token),
            },
            Err(error) => Err(error),
        };
        let answer = match outcome {
            Ok((cached, age)) => {
                self.failures = 0;
                let duration_ms = elapsed.as_millis() as u64;
                let refresh_in_secs = (cached.refresh_at - Instant::now()).as_secs();
                if age.is_zero() {
                    metrics::record(&self.label, Event::ExchangeSucceeded { took: elapsed });
                    tracing::debug!(
                        client_id,
                        duration_ms,
                        refresh_in_secs,
                        "token exchange succeeded"
                    );
                } else {
                    let age_ms = age.as_millis() as u64;
                    tracing::debug!(
                        client_id,
                        duration_ms,
                        age_ms,
                        refresh_in_secs,
                        "token taken from a cache"
                    );
                }
                Ok(cached)
            }
            Err(error) => {
                let retry_in = if error.is_deferred() {
                    // Held back for others (a fleet's backoff): wait out
                    // exactly that; no failure of this provider's.
                    let retry_in = error.retry_after().unwrap_or_default();
                    let retry_in_ms = retry_in.as_millis() as u64;
                    tracing::debug!(client_id, retry_in_ms, "token exchange deferred");
                    retry_in
                } else {
                    self.failures = self.failures.saturating_add(1);
                    self.count(|stats| stats.failures += 1);
                    let kind = error.kind();
                    metrics::record(
                        &self.label,
                        Event::ExchangeFailed {
                            took: elapsed,
                            kind,
                        },
                    );
                    let (options, asked) = (&self.shared.options, error.retry_after());
                    let retry_in = options.backoff(self.failures, asked, random_unit());
                    let failures = self.failures;
                    let failure = Failure {
                        client_id,
                        reason,
                        elapsed,
                        failures,
                        retry_in,
                    };
                    log_failure(&error, &failure);
                    retry_in
                };
                let retry_at = later(Instant::now(), retry_in);
                let mut seed = lock(&self.shared.seed);
                if seed.credentials == self.credentials {
                    seed.backoff = Some((error.clone(), retry_at));
                }
                drop(seed);
                // Retried until a token comes, whoever waits.
                self.want(Want::Token);
                Err(error)
            }
        };
        for waiter in self.waiters.drain(..) {
            drop(waiter.send(answer.clone()));
        }
    }

    /// Makes `token` the current token: `Some(Ok(..))` once stored, `None`
    /// when the credentials changed since it was asked for.
    fn store(
        &mut self,
        token: &Token,
        sent_at: Instant,
    ) -> Option<Result<Arc<CachedToken>, TokenError>> {
        let options = &self.shared.options;
        let now = Instant::now();
        // A token from a cache counts its lifetime from when it was issued.
        let issued_at = now
            .checked_sub(token.age())
            .map_or(sent_at, |at| at.min(sent_at));
        let schedule = options.schedule(token, random_unit());
        // Held while the token is stored: new credentials are either seen
        // here or stored after this token, which their handle then drops.
        let mut seed = lock(&self.shared.seed);
        if seed.credentials != self.credentials {
            return None;
        }
        let rejectable_from = seed.pacing.next(options).unwrap_or(issued_at);
        let seq = seed.next_seq;
        let cached = CachedToken::new(seq, token, issued_at, schedule, rejectable_from);
        let cached = match cached {
            Ok(cached) => Arc::new(cached),
            Err(error) => return Some(Err(error)),
        };
        if !cached.is_fresh(now) {
            // It arrived when it may no longer be served: storing it would
            // hand waiting callers a token at or past its end.
            let detail = format!(
                "the token arrived after the time it may be served: it was issued {} ms ago \
                 and may be served for {} ms (its lifetime less the expiry skew)",
                now.saturating_duration_since(issued_at).as_millis(),
                schedule.fresh_for.as_millis()
            );
            return Some(Err(TokenError::with_detail(
                TokenErrorKind::Timeout,
                detail,
            )));
        }
        seed.next_seq += 1;
        (seed.rejected, seed.backoff) = (None, None);
        self.shared.current.store(Some(Arc::clone(&cached)));
        drop(seed);
        let served_until = cached.fresh_until;
        metrics::record(&self.label, Event::TokenStored { served_until });
        Some(Ok(cached))
    }

    fn count(&self, count: impl FnOnce(&mut crate::ProviderStats)) {
        count(&mut lock(&self.shared.stats));
    }
}
