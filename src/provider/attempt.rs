//! What surrounds one exchange attempt: a panic of the service caught as a
//! failure, and the failure logged.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::error::{ErrorChain, TokenError};

pub(super) struct Panicked;

/// Polls the exchange, turning a panic into [`Panicked`].
pub(super) struct CatchUnwind<F>(pub(super) F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(future).poll(cx))) {
            Ok(poll) => poll.map(Ok),
            Err(_) => Poll::Ready(Err(Panicked)),
        }
    }
}

/// Permanent errors (bad credentials, bad request) at `error`, transient
/// ones at `warn`; never the token or the secret.
pub(super) fn log_failure(error: &TokenError, elapsed: Duration, failures: u32, delay: Duration) {
    let (status, code) = (error.status().map(|s| s.as_u16()), error.error_code());
    let (error, duration_ms, retryable) = (
        ErrorChain(error),
        elapsed.as_millis() as u64,
        error.is_retryable(),
    );
    if retryable {
        tracing::warn!(%error, status, error_code = code, retryable, duration_ms, "token exchange failed");
    } else {
        tracing::error!(%error, status, error_code = code, retryable, duration_ms, "token exchange failed");
    }
    let retry_in_ms = delay.as_millis() as u64;
    tracing::info!(failures, retry_in_ms, "token exchange backing off");
}
