//! The worker task of a provider, which owns the token's life.
//!
//! Handles send it [`Message`]s over an unbounded `mpsc` channel; a caller
//! that needs an answer sends a `oneshot` with its message. The worker owns
//! the callers waiting, the exchange in flight, and the count of failures
//! in a row. Its loop is one `select!` over the exchange in flight, the
//! next message and the end of a backoff, in that order when several are
//! ready: a message read after an exchange ended sees its token.
//!
//! It runs one exchange at a time, when a caller needs a token, a request
//! found the refresh due or `refresh()` asks; after a failure it retries
//! with backoff until an exchange succeeds. No timer of its decides whether
//! a token is served: the request path compares the clock with the token's
//! deadline itself.
//!
//! It ends when the channel closes (the last handle is gone), and as soon
//! as it has nothing left to do: no caller waiting, no exchange wanted or
//! in flight. It checks that its channel is empty and leaves under the lock
//! that handles send under, so a message is never lost: the next one
//! starts a new worker. An idle provider has no task and no channel.

use std::future::pending;
use std::sync::{Arc, Weak};

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tower::Service;

use super::attempt::{Attempt, attempt, log_failure};
use super::cached::CachedToken;
use super::{Handles, Shared, lock};
use crate::ClientCredentials;
use crate::clock::{later, random_unit};
use crate::error::{BoxError, TokenError, TokenErrorKind};
use crate::metrics::Event;
use crate::token::{Token, TokenReason, TokenRequest};

/// Where the worker answers a caller: a fresh token, or the error of the
/// exchange the caller waited for.
pub(super) type Answer = oneshot::Sender<Result<Arc<CachedToken>, TokenError>>;

pub(super) type Receiver = mpsc::UnboundedReceiver<Message>;

/// What a handle tells the worker.
pub(super) enum Message {
    /// A token, the current one if it may be served.
    Need(Answer),
    /// A token newer than the one whose `seq` this is (0: none), even if
    /// the current one may be served: the current token if an exchange
    /// stored it since the caller looked, else the next exchange's.
    Refresh(Answer, u64),
    /// A request found the current token's refresh due.
    RefreshDue,
    /// The credentials in the live state changed.
    NewCredentials,
}

/// An exchange in flight, and what it was asked with.
struct InFlight {
    attempt: Attempt,
    reason: TokenReason,
    credentials: ClientCredentials,
    sent_at: Instant,
    /// The jitter of the backoff that follows if it fails, drawn when it
    /// starts so that the request can say how long that backoff is.
    jitter: f64,
}

/// Runs a provider's worker until it has nothing left to do or its
/// channel closes.
pub(super) async fn run<S>(
    shared: Arc<Shared>,
    handles: Weak<Handles>,
    exchange: S,
    mut messages: Receiver,
) where
    S: Service<TokenRequest, Response = Token> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let mut worker = Worker {
        shared,
        exchange,
        waiters: Vec::new(),
        wanted: None,
        failures: 0,
    };
    let mut in_flight: Option<InFlight> = None;
    loop {
        if in_flight.is_none() {
            in_flight = worker.start();
        }
        if in_flight.is_none() && worker.wanted.is_none() && worker.waiters.is_empty() {
            let Some(inner) = handles.upgrade() else {
                return;
            };
            let mut sender = lock(&inner.worker);
            let Ok(message) = messages.try_recv() else {
                // Nothing was sent, and nothing can be until the next
                // handle that sends starts a new worker.
                *sender = None;
                return;
            };
            drop(sender);
            worker.read(message, false);
            continue;
        }
        let retry_at = worker.retry_at().filter(|_| in_flight.is_none());
        // In this order when several are ready: the end of the exchange
        // first, so that its waiters are answered and a message read after
        // it sees its token (a refresh asked before that token was stored
        // is answered by it); then the messages; then the backoff's end.
        tokio::select! {
            biased;
            result = async {
                match &mut in_flight {
                    Some(flight) => flight.attempt.as_mut().await,
                    None => pending().await,
                }
            } => {
                if let Some(flight) = in_flight.take() {
                    worker.finish(result, flight);
                }
            }
            message = messages.recv() => {
                let Some(message) = message else { return };
                worker.read(message, in_flight.is_some());
                // An exchange for credentials replaced meanwhile is dropped,
                // and asked again with the new ones.
                if in_flight.as_ref().is_some_and(|flight| !worker.current(&flight.credentials)) {
                    in_flight = None;
                    worker.want(Some(false));
                }
            }
            () = async {
                match retry_at {
                    Some(at) => sleep_until(at).await,
                    None => pending().await,
                }
            } => {}
        }
    }
}

struct Worker<S> {
    shared: Arc<Shared>,
    exchange: S,
    /// Callers waiting for the exchange in flight, or the next one.
    waiters: Vec<Answer>,
    /// An exchange is wanted: `Some(true)` for a new token even if the
    /// current one may be served.
    wanted: Option<bool>,
    /// Failed exchanges in a row.
    failures: u32,
}

impl<S> Worker<S>
where
    S: Service<TokenRequest, Response = Token> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    /// Takes a message; `busy` while an exchange is in flight.
    fn read(&mut self, message: Message, busy: bool) {
        let now = Instant::now();
        let current = self.shared.current.load_full();
        let fresh = current.filter(|cached| cached.is_fresh(now));
        match message {
            Message::Need(answer) => match fresh {
                Some(cached) => drop(answer.send(Ok(cached))),
                None => self.join(answer, false, busy, now),
            },
            // A token stored since the caller asked answers it: an
            // exchange that ended just as the refresh was sent.
            Message::Refresh(answer, seen) => match fresh.filter(|cached| cached.seq > seen) {
                Some(cached) => drop(answer.send(Ok(cached))),
                None => self.join(answer, true, busy, now),
            },
            Message::RefreshDue => {
                let due = fresh.is_some_and(|cached| now >= cached.refresh_at);
                if due && self.wanted.is_none() && !busy {
                    self.shared.note(Event::BackgroundRefresh);
                    tracing::debug!(
                        client_id = self.client_id(),
                        "token refresh started ahead of expiry"
                    );
                    self.want(Some(false));
                }
            }
            // Backoff starts over (the handle cleared it in the live state).
            Message::NewCredentials => self.failures = 0,
        }
    }

    /// A caller waits for the exchange in flight or the next one, or gets
    /// the last error at once while failed exchanges back off.
    fn join(&mut self, answer: Answer, forced: bool, busy: bool, now: Instant) {
        if let Some((error, retry_at)) = &lock(&self.shared.live).backoff
            && !busy
            && now < *retry_at
        {
            drop(answer.send(Err(error.clone())));
            return;
        }
        if !forced {
            self.shared.note(Event::Wait);
        }
        self.waiters.push(answer);
        if !busy {
            self.want(Some(forced));
        }
    }

    fn want(&mut self, forced: Option<bool>) {
        self.wanted = self.wanted.max(forced);
    }

    fn client_id(&self) -> String {
        lock(&self.shared.live).credentials.client_id().to_owned()
    }

    /// Whether `credentials` are still the provider's.
    fn current(&self, credentials: &ClientCredentials) -> bool {
        lock(&self.shared.live).credentials == *credentials
    }

    /// When the next attempt may start, if one is wanted and failures back
    /// it off.
    fn retry_at(&self) -> Option<Instant> {
        self.wanted?;
        let live = lock(&self.shared.live);
        live.backoff.as_ref().map(|(_, retry_at)| *retry_at)
    }

    /// Starts the exchange wanted, unless failures back it off.
    fn start(&mut self) -> Option<InFlight> {
        let forced = self.wanted?;
        let now = Instant::now();
        if self.retry_at().is_some_and(|retry_at| now < retry_at) {
            return None;
        }
        self.wanted = None;
        let current = self.shared.current.load_full();
        let current = current.filter(|cached| cached.is_fresh(now));
        let (credentials, rejected) = {
            let live = lock(&self.shared.live);
            (live.credentials.clone(), live.rejected.clone())
        };
        let reason = match (&current, rejected) {
            (Some(_), _) if forced => TokenReason::Forced,
            (Some(_), _) => TokenReason::RefreshDue,
            (None, Some(rejected)) => TokenReason::Rejected(rejected),
            (None, None) => TokenReason::Missing,
        };
        let options = &self.shared.options;
        let jitter = random_unit();
        let backoff = options.backoff(self.failures.saturating_add(1), None, jitter);
        let mut request = TokenRequest::new(credentials.clone())
            .with_reason(reason.clone())
            .with_timeout(options.exchange_timeout)
            .with_expiry_skew(options.expiry_skew)
            .with_backoff(backoff.max(super::schedule::SHORTEST_BACKOFF));
        if let Some(cached) = current {
            request = request.with_needed_by(cached.fresh_until);
        }
        self.shared.note(Event::ExchangeStarted);
        let timeout = options.exchange_timeout;
        let attempt = attempt(self.exchange.clone(), request, timeout);
        Some(InFlight {
            attempt,
            reason,
            credentials,
            sent_at: now,
            jitter,
        })
    }

    /// Stores the token of an exchange, or backs off after its failure, and
    /// answers the callers waiting. A result for credentials replaced
    /// meanwhile answers no one: the exchange is asked again with the new
    /// ones.
    fn finish(&mut self, result: Result<Token, TokenError>, flight: InFlight) {
        let InFlight {
            reason,
            credentials,
            sent_at,
            jitter,
            ..
        } = flight;
        let (elapsed, client_id) = (sent_at.elapsed(), &**credentials.label());
        let answer = match result.and_then(|token| self.store(&token, &credentials, sent_at)) {
            Ok(None) => return self.want(Some(false)),
            Ok(Some((cached, age))) => {
                self.failures = 0;
                if age.is_zero() {
                    self.shared.note(Event::ExchangeSucceeded { took: elapsed });
                }
                let (duration_ms, age_ms) = (elapsed.as_millis() as u64, age.as_millis() as u64);
                let refresh_in_secs = (cached.refresh_at - Instant::now()).as_secs();
                // A token with an age came from a cache under the exchange.
                tracing::debug!(
                    client_id,
                    duration_ms,
                    age_ms,
                    refresh_in_secs,
                    "token exchange succeeded"
                );
                Ok(cached)
            }
            Err(error) => {
                let mut live = lock(&self.shared.live);
                if live.credentials != credentials {
                    drop(live);
                    return self.want(Some(false));
                }
                let options = &self.shared.options;
                let retry_in = if error.is_deferred() {
                    // Held back for others (a fleet's backoff): wait out
                    // exactly that, and no failure of this provider's.
                    let retry_in = error.retry_after().unwrap_or(options.min_backoff);
                    let retry_in_ms = retry_in.as_millis() as u64;
                    tracing::debug!(client_id, retry_in_ms, "token exchange deferred");
                    retry_in
                } else {
                    self.failures = self.failures.saturating_add(1);
                    let asked = error.retry_after();
                    let retry_in = options.backoff(self.failures, asked, jitter);
                    log_failure(&error, client_id, &reason, elapsed, self.failures, retry_in);
                    retry_in
                };
                // Never a retry at once: a failing exchange is no busy loop.
                let retry_in = retry_in.max(super::schedule::SHORTEST_BACKOFF);
                live.backoff = Some((error.clone(), later(Instant::now(), retry_in)));
                drop(live);
                if !error.is_deferred() {
                    let kind = error.kind();
                    self.shared.note(Event::ExchangeFailed {
                        took: elapsed,
                        kind,
                    });
                }
                // Retried until a token comes, whoever waits.
                self.want(Some(false));
                Err(error)
            }
        };
        for waiter in self.waiters.drain(..) {
            drop(waiter.send(answer.clone()));
        }
    }

    /// Makes `token` the current token, with its age; `None` when the
    /// credentials it was asked with were replaced since.
    fn store(
        &self,
        token: &Token,
        credentials: &ClientCredentials,
        sent_at: Instant,
    ) -> Result<Option<(Arc<CachedToken>, std::time::Duration)>, TokenError> {
        let options = &self.shared.options;
        let now = Instant::now();
        // A token from a cache counts its lifetime from when it was issued.
        let issued_at = now
            .checked_sub(token.age())
            .map_or(sent_at, |at| at.min(sent_at));
        let schedule = options.schedule(token, random_unit());
        // Held while the token is stored: new credentials are either seen
        // here, or stored after this token, which their handle then drops.
        let mut live = lock(&self.shared.live);
        if live.credentials != *credentials {
            return Ok(None);
        }
        let rejectable_from = live.pacing.next(options).unwrap_or(issued_at);
        let cached = CachedToken::new(live.next_seq, token, issued_at, schedule, rejectable_from)?;
        if !cached.is_fresh(now) {
            // It arrived when it may no longer be served: storing it would
            // hand waiting callers a token at or past its end.
            let detail = format!(
                "the token arrived after the time it may be served: it was issued {} ms ago \
                 and may be served for {} ms (its lifetime less the expiry skew)",
                now.saturating_duration_since(issued_at).as_millis(),
                schedule.fresh_for.as_millis()
            );
            return Err(TokenError::with_detail(TokenErrorKind::Timeout, detail));
        }
        let cached = Arc::new(cached);
        live.next_seq += 1;
        (live.rejected, live.backoff) = (None, None);
        self.shared.current.store(Some(Arc::clone(&cached)));
        drop(live);
        let served_until = cached.fresh_until;
        self.shared.note(Event::TokenStored { served_until });
        Ok(Some((cached, token.age())))
    }
}
