//! The background task of a provider: exchange attempts, one at a time,
//! until one succeeds, with backoff between failures.
//!
//! It holds the provider only weakly, except for the moment it reads or
//! writes the shared state, so dropping the last handle ends it: at once
//! if it is waiting out a backoff, after the attempt otherwise (bounded by
//! the exchange timeout).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::{Pin, pin};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::Instrument;

use super::options::random_unit;
use super::{CachedToken, Outcome, Shared, lock};
use crate::error::{ErrorChain, TokenError, TokenErrorKind};
use crate::token::TokenRequest;

pub(super) async fn run(
    shared: Weak<Shared>,
    wake: Arc<Notify>,
    first: watch::Sender<Outcome>,
    alive: Arc<()>,
) {
    // Dropped with the task, however it ends (returned, or dropped with its
    // runtime): marks the task dead and releases callers waiting on it.
    let _guard = TaskGuard {
        shared: shared.clone(),
        alive,
    };
    let mut waiters = Some(first);
    let mut attempt: u64 = 0;
    loop {
        attempt += 1;
        // Start an attempt with the current credentials.
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let (exchange, generation, client_id, sender) = {
            let mut control = lock(&strong.control);
            let refresher = control.refresher.as_mut();
            let pending = refresher.and_then(|refresher| {
                refresher.retry_at = None;
                refresher.pending.take()
            });
            let sender = match waiters.take().or(pending) {
                Some(sender) => sender,
                None => {
                    let (sender, outcome) = watch::channel(None);
                    if let Some(refresher) = control.refresher.as_mut() {
                        refresher.attempt = Some(outcome);
                    }
                    sender
                }
            };
            let request = TokenRequest::new(control.credentials.clone());
            let client_id = control.credentials.client_id().to_owned();
            (
                strong.exchange.exchange(request),
                control.generation,
                client_id,
                sender,
            )
        };
        strong.stats.exchanges.fetch_add(1, Ordering::Relaxed);
        let options = strong.options;
        drop(strong);

        let span = tracing::debug_span!("token_exchange", client_id = %client_id, attempt);
        let requested_at = Instant::now();
        let result = async {
            tracing::debug!("token exchange attempt started");
            match tokio::time::timeout(options.exchange_timeout, CatchUnwind(exchange)).await {
                Ok(Ok(result)) => result,
                Ok(Err(Panicked)) => Err(TokenError::with_detail(
                    TokenErrorKind::Internal,
                    "the token exchange service panicked",
                )),
                Err(_) => Err(TokenError::with_detail(
                    TokenErrorKind::Timeout,
                    format!(
                        "no answer within {} ms",
                        options.exchange_timeout.as_millis()
                    ),
                )),
            }
        }
        .instrument(span.clone())
        .await;
        let elapsed = requested_at.elapsed();
        let outcome = result
            .and_then(|token| {
                let schedule = options.schedule(&token, random_unit());
                CachedToken::new(token, requested_at, schedule)
            })
            .map(Arc::new);

        let Some(strong) = shared.upgrade() else {
            // The provider is gone, and with it every caller.
            return;
        };
        // Created before the lock is taken, enabled while it is held, so new
        // credentials or a drop right after the failure are not missed.
        let mut woken = pin!(wake.notified());
        let next = {
            let mut control = lock(&strong.control);
            if control.generation != generation {
                // New credentials arrived during the attempt: its result is
                // for the old ones. Try again at once, for the same waiters.
                Next::Again(sender)
            } else {
                match outcome {
                    Ok(cached) => {
                        cached.arm();
                        strong.cache.store(Some(Arc::clone(&cached)));
                        control.failures = 0;
                        control.last_error = None;
                        control.refresher = None;
                        Next::Done(sender, cached)
                    }
                    Err(error) => {
                        control.failures = control.failures.saturating_add(1);
                        let delay =
                            options.backoff(control.failures, error.retry_after(), random_unit());
                        control.last_error = Some(error.clone());
                        if let Some(refresher) = control.refresher.as_mut() {
                            refresher.attempt = None;
                            refresher.retry_at = Instant::now().checked_add(delay);
                        }
                        strong.stats.failures.fetch_add(1, Ordering::Relaxed);
                        woken.as_mut().enable();
                        Next::Backoff {
                            sender,
                            error,
                            failures: control.failures,
                            delay,
                        }
                    }
                }
            }
        };
        drop(strong);
        match next {
            Next::Again(sender) => {
                span.in_scope(|| {
                    tracing::debug!(
                        "credentials changed during the exchange; its result is discarded"
                    )
                });
                waiters = Some(sender);
            }
            Next::Done(sender, cached) => {
                span.in_scope(|| {
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
                    )
                });
                sender.send_replace(Some(Ok(cached)));
                return;
            }
            Next::Backoff {
                sender,
                error,
                failures,
                delay,
            } => {
                span.in_scope(|| log_failure(&error, elapsed, failures, delay));
                sender.send_replace(Some(Err(error)));
                // Back off until the delay has passed or something wakes us.
                let _ = tokio::time::timeout(delay, woken).await;
            }
        }
    }
}

/// Ends the task's part in the provider's state when the task ends: a
/// caller's sender still waiting for the task to take it over is dropped,
/// so that caller is told at once instead of waiting forever.
struct TaskGuard {
    shared: Weak<Shared>,
    alive: Arc<()>,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut control = lock(&shared.control);
        if let Some(refresher) = control.refresher.as_mut() {
            if std::ptr::eq(refresher.alive.as_ptr(), Arc::as_ptr(&self.alive)) {
                refresher.pending = None;
                refresher.attempt = None;
            }
        }
    }
}

enum Next {
    Again(watch::Sender<Outcome>),
    Done(watch::Sender<Outcome>, Arc<CachedToken>),
    Backoff {
        sender: watch::Sender<Outcome>,
        error: TokenError,
        failures: u32,
        delay: Duration,
    },
}

/// A panic in the exchange service, caught so the task survives it.
struct Panicked;

/// Polls the exchange, turning a panic into [`Panicked`]: a panicking
/// exchange service is one more failed attempt, not the end of the task.
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
    if error.is_retryable() {
        tracing::warn!(
            error = %ErrorChain(error),
            status,
            error_code = error.error_code(),
            retryable = true,
            duration_ms = elapsed.as_millis() as u64,
            "token exchange failed"
        );
    } else {
        tracing::error!(
            error = %ErrorChain(error),
            status,
            error_code = error.error_code(),
            retryable = false,
            duration_ms = elapsed.as_millis() as u64,
            "token exchange failed"
        );
    }
    tracing::info!(
        failures,
        retry_in_ms = delay.as_millis() as u64,
        "token exchange backing off"
    );
}
