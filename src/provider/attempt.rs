//! One exchange attempt, as the worker runs it: bounded by the exchange
//! timeout, a panic of the service caught as a failure, inside a span that
//! names the client and says why the token is wanted; and how a failure is
//! logged.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Service, ServiceExt};
use tracing::Instrument;

use crate::error::{BoxError, ErrorChain, TokenError, TokenErrorKind};
use crate::token::{Token, TokenReason, TokenRequest};

/// An exchange attempt in flight, owned by the worker.
pub(super) type Attempt = Pin<Box<dyn Future<Output = Result<Token, TokenError>> + Send>>;

/// Sends `request` through `exchange`, for at most `timeout`.
pub(super) fn attempt<S>(exchange: S, request: TokenRequest, timeout: Duration) -> Attempt
where
    S: Service<TokenRequest, Response = Token> + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let span = tracing::debug_span!(
        "token_exchange",
        client_id = request.credentials().client_id(),
        reason = request.reason().as_str()
    );
    let exchange = CatchUnwind {
        future: exchange.oneshot(request),
    };
    let attempt = async move {
        match tokio::time::timeout(timeout, exchange).await {
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
    };
    Box::pin(attempt.instrument(span))
}

struct Panicked;

pin_project_lite::pin_project! {
    /// Polls the exchange, turning a panic into [`Panicked`].
    struct CatchUnwind<F> {
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = self.project().future;
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(poll) => poll.map(Ok),
            Err(_) => Poll::Ready(Err(Panicked)),
        }
    }
}

/// Permanent errors (bad credentials, bad request) at `error`, transient
/// ones at `warn`, with the client id, why the token was wanted and the
/// backoff; never the token or the secret.
pub(super) fn log_failure(
    error: &TokenError,
    client_id: &str,
    reason: &TokenReason,
    elapsed: Duration,
    failures: u32,
    retry_in: Duration,
) {
    let (status, code) = (error.status().map(|s| s.as_u16()), error.error_code());
    let (retryable, reason) = (error.is_retryable(), reason.as_str());
    let (duration_ms, retry_in_ms) = (elapsed.as_millis() as u64, retry_in.as_millis() as u64);
    let error = ErrorChain(error);
    if retryable {
        tracing::warn!(%error, client_id, reason, status, error_code = code, retryable, duration_ms, failures, retry_in_ms, "token exchange failed; backing off");
    } else {
        tracing::error!(%error, client_id, reason, status, error_code = code, retryable, duration_ms, failures, retry_in_ms, "token exchange failed; backing off");
    }
}
