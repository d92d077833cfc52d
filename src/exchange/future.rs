//! The future of one token exchange: send the request, read the body up to
//! the limit, parse.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};
use http_body_util::combinators::Collect;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use pin_project_lite::pin_project;

use super::parse::{self, MAX_BODY_BYTES};
use crate::ClientCredentials;
use crate::error::{BoxError, TokenError};
use crate::token::Token;

pin_project! {
    /// Response future of [`HttpTokenExchange`](super::HttpTokenExchange).
    pub struct ExchangeFuture<F, B>
    where
        B: http_body::Body,
        B::Error: Into<BoxError>,
    {
        #[pin]
        state: State<F, B>,
        credentials: Option<ClientCredentials>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B>
    where
        B: http_body::Body,
        B::Error: Into<BoxError>,
    {
        Sending {
            #[pin]
            future: F,
        },
        Reading {
            #[pin]
            body: Collect<Limited<B>>,
            status: StatusCode,
            headers: HeaderMap,
        },
        Failed {
            error: Option<TokenError>,
        },
    }
}

impl<F, B> ExchangeFuture<F, B>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    pub(super) fn new(future: F, credentials: ClientCredentials) -> Self {
        Self {
            state: State::Sending { future },
            credentials: Some(credentials),
        }
    }

    pub(super) fn failed(error: TokenError) -> Self {
        Self {
            state: State::Failed { error: Some(error) },
            credentials: None,
        }
    }
}

impl<F, B, E> Future for ExchangeFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    type Output = Result<Token, TokenError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Sending { future } => {
                    let response = ready!(future.poll(cx)).map_err(|err| {
                        let error = http_error(err.into());
                        tracing::debug!(error = %crate::error::ErrorChain(&error), "token exchange failed");
                        error
                    })?;
                    let (parts, body) = response.into_parts();
                    let too_large = parts
                        .headers
                        .get(header::CONTENT_LENGTH)
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| value.parse::<u64>().ok())
                        .is_some_and(|length| length > MAX_BODY_BYTES as u64);
                    if parts.status.is_redirection() || too_large {
                        // Nothing in the body is needed, or it is too large
                        // to read: drop it unread.
                        return Poll::Ready(Err(finish_without_body(parts.status, &parts.headers)));
                    }
                    this.state.set(State::Reading {
                        body: Limited::new(body, MAX_BODY_BYTES).collect(),
                        status: parts.status,
                        headers: parts.headers,
                    });
                }
                StateProj::Reading {
                    body,
                    status,
                    headers,
                } => {
                    let status = *status;
                    let collected = ready!(body.poll(cx));
                    let secret = this
                        .credentials
                        .as_ref()
                        .map(ClientCredentials::client_secret)
                        .unwrap_or_default();
                    let result = match collected {
                        Ok(collected) => finish(status, headers, collected.to_bytes(), secret),
                        Err(err) if err.is::<LengthLimitError>() => {
                            Err(finish_without_body(status, headers))
                        }
                        Err(err) => Err(TokenError::transport(err)),
                    };
                    log_outcome(&result, status);
                    return Poll::Ready(result);
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or_else(|| {
                        TokenError::with_detail(
                            crate::error::TokenErrorKind::Internal,
                            "the token exchange future was polled after it completed",
                        )
                    })));
                }
            }
        }
    }
}

/// The error of the HTTP client service: a [`TokenError`] it returned (such
/// as `ReqwestService`'s for a followed redirect) as it is, anything else a
/// transport failure.
fn http_error(err: BoxError) -> TokenError {
    match err.downcast::<TokenError>() {
        Ok(error) => *error,
        Err(err) => TokenError::transport(err),
    }
}

fn finish(
    status: StatusCode,
    headers: &HeaderMap,
    body: Bytes,
    secret: &str,
) -> Result<Token, TokenError> {
    if status.is_success() {
        parse::parse_token(status, &body)
    } else {
        Err(parse::parse_error(status, headers, Some(&body), secret))
    }
}

fn finish_without_body(status: StatusCode, headers: &HeaderMap) -> TokenError {
    let error = if status.is_success() {
        TokenError::invalid_response(
            status,
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        )
    } else {
        parse::parse_error(status, headers, None, "")
    };
    tracing::debug!(status = status.as_u16(), error = %crate::error::ErrorChain(&error), "token exchange failed");
    error
}

fn log_outcome(result: &Result<Token, TokenError>, status: StatusCode) {
    match result {
        Ok(token) => tracing::debug!(
            status = status.as_u16(),
            expires_in = token.expires_in().map(|lifetime| lifetime.as_secs()),
            "token exchange succeeded"
        ),
        Err(error) => tracing::debug!(
            status = status.as_u16(),
            error_code = error.error_code(),
            retryable = error.is_retryable(),
            error = %crate::error::ErrorChain(error),
            "token exchange failed"
        ),
    }
}

impl<F, B> fmt::Debug for ExchangeFuture<F, B>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeFuture").finish_non_exhaustive()
    }
}
