//! [`MockExchange`]: a token exchange for unit tests, without sockets.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tower::Service;

use routera_auth::{ClientCredentials, Token, TokenError, TokenProvider, TokenRequest};

/// The client id of [`MockExchange::credentials`].
pub const MOCK_CLIENT_ID: &str = "mock-client";
/// The client secret of [`MockExchange::credentials`].
pub const MOCK_CLIENT_SECRET: &str = "mock-secret";

/// One scripted answer of a [`MockExchange`].
#[derive(Debug, Clone)]
pub enum MockAnswer {
    /// Answer with this token.
    Token(Token),
    /// Fail with this error.
    Error(TokenError),
    /// Panic: the exchange's future panics when polled (calling the service
    /// does not), as an exchange with a bug would. For testing that the
    /// code above the exchange contains the panic: the provider, for one,
    /// makes it an [`Internal`](routera_auth::TokenErrorKind::Internal) error and
    /// keeps serving later exchanges. The exchange counts as finished.
    Panic,
}

/// A token exchange for unit tests: a
/// `Service<TokenRequest, Response = Token, Error = TokenError>` that opens
/// no socket.
///
/// It counts its calls and records the credentials of each, answers from a
/// script of tokens, errors and panics ([`queue`](Self::queue)) and, once the
/// script is empty, with a new token `token-N` (N = the call's number)
/// living the lifetime it was made with. It can wait before answering
/// ([`with_delay`](Self::with_delay), instant on paused tokio time), hold
/// every exchange until a gate opens ([`gated`](Self::gated)), or fail every
/// exchange for a while ([`fail_until`](Self::fail_until)). Clones share
/// all of that.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::time::Duration;
/// use routera_auth::TokenErrorKind;
/// use routera_auth_test::MockExchange;
///
/// let exchange = MockExchange::new(Duration::from_secs(3600));
/// exchange.fail_next(routera_auth::TokenError::new(TokenErrorKind::ServerError));
/// let provider = exchange.provider();
///
/// let err = provider.token().await.unwrap_err();
/// assert_eq!(err.kind(), TokenErrorKind::ServerError);
/// // While the provider backs off, callers get the last error at once.
/// assert!(provider.token().await.is_err());
/// tokio::time::sleep(Duration::from_secs(1)).await;
/// assert_eq!(provider.token().await.unwrap().secret(), "token-2");
/// assert_eq!(exchange.calls(), 2);
/// assert_eq!(exchange.credentials_seen()[0], MockExchange::credentials());
/// # }
/// ```
#[derive(Clone)]
pub struct MockExchange {
    state: Arc<MockState>,
}

struct MockState {
    calls: AtomicUsize,
    /// Woken at each call.
    called: Notify,
    finished: AtomicUsize,
    lifetime: Duration,
    script: Mutex<Script>,
}

#[derive(Default)]
struct Script {
    answers: VecDeque<MockAnswer>,
    delay: Duration,
    gate: Option<Arc<Semaphore>>,
    outage: Option<(Instant, TokenError)>,
    seen: Vec<TokenRequest>,
}

impl MockExchange {
    /// A mock whose tokens live `lifetime`, answering at once.
    pub fn new(lifetime: Duration) -> Self {
        Self {
            state: Arc::new(MockState {
                calls: AtomicUsize::new(0),
                called: Notify::new(),
                finished: AtomicUsize::new(0),
                lifetime,
                script: Mutex::default(),
            }),
        }
    }

    /// Every exchange takes `delay` before it answers (on paused tokio time,
    /// the runtime skips it at once).
    pub fn with_delay(self, delay: Duration) -> Self {
        self.script().delay = delay;
        self
    }

    /// Every exchange waits until [`open_gate`](Self::open_gate) is called:
    /// to hold exchanges in flight.
    pub fn gated(self) -> Self {
        self.script().gate = Some(Arc::new(Semaphore::new(0)));
        self
    }

    /// Lets every exchange held at the gate, and every later one, through.
    pub fn open_gate(&self) {
        if let Some(gate) = &self.script().gate {
            gate.add_permits(Semaphore::MAX_PERMITS / 2);
        }
    }

    /// Queues `answer` for the next exchange that has none queued before it.
    pub fn queue(&self, answer: MockAnswer) -> &Self {
        self.script().answers.push_back(answer);
        self
    }

    /// Queues a failure with `error`.
    pub fn fail_next(&self, error: TokenError) -> &Self {
        self.queue(MockAnswer::Error(error))
    }

    /// Every exchange that ends before `until` fails with `error`, whatever
    /// the script says (an outage of the token endpoint).
    pub fn fail_until(&self, until: Instant, error: TokenError) {
        self.script().outage = Some((until, error));
    }

    /// Exchanges started so far.
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Waits until at least `calls` exchanges have started: to act while
    /// one is in flight, without polling.
    pub async fn wait_for_calls(&self, calls: usize) {
        loop {
            let called = self.state.called.notified();
            if self.calls() >= calls {
                return;
            }
            called.await;
        }
    }

    /// Exchanges that have answered so far (a scripted
    /// [`Panic`](MockAnswer::Panic) counts as an answer).
    pub fn finished(&self) -> usize {
        self.state.finished.load(Ordering::SeqCst)
    }

    /// The credentials of every exchange so far, in order: those of call N
    /// (which answers `token-N` by default) at index N - 1.
    pub fn credentials_seen(&self) -> Vec<ClientCredentials> {
        let seen = &self.script().seen;
        seen.iter()
            .map(|request| request.credentials().clone())
            .collect()
    }

    /// Every request so far, in order, with why the token was wanted and
    /// by when ([`TokenRequest::reason`], [`TokenRequest::needed_by`]).
    pub fn requests_seen(&self) -> Vec<TokenRequest> {
        self.script().seen.clone()
    }

    /// The credentials [`provider`](Self::provider) uses:
    /// [`MOCK_CLIENT_ID`] and [`MOCK_CLIENT_SECRET`].
    pub fn credentials() -> ClientCredentials {
        ClientCredentials::new(MOCK_CLIENT_ID, MOCK_CLIENT_SECRET)
    }

    /// A provider with default options over this mock, for
    /// [`credentials`](Self::credentials).
    pub fn provider(&self) -> TokenProvider {
        TokenProvider::new(self.clone(), Self::credentials())
    }

    fn script(&self) -> MutexGuard<'_, Script> {
        self.state
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn answer(self, request: TokenRequest) -> Result<Token, TokenError> {
        let (call, gate, delay) = {
            // Numbered under the lock: the credentials of call N are
            // `credentials_seen()[N - 1]`, and its default token `token-N`.
            let mut script = self.script();
            let call = self.state.calls.fetch_add(1, Ordering::SeqCst) + 1;
            script.seen.push(request.clone());
            self.state.called.notify_waiters();
            (call, script.gate.clone(), script.delay)
        };
        if let Some(gate) = gate {
            // The gate is never closed: acquiring never fails.
            let _permit = gate.acquire().await;
        }
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let (answer, outage) = {
            let mut script = self.script();
            (script.answers.pop_front(), script.outage.clone())
        };
        self.state.finished.fetch_add(1, Ordering::SeqCst);
        if let Some((until, error)) = outage
            && Instant::now() < until
        {
            return Err(error);
        }
        match answer {
            Some(MockAnswer::Token(token)) => Ok(token),
            Some(MockAnswer::Error(error)) => Err(error),
            // What the test asked for: unwind, as a panic does (without
            // the panic hook's message).
            Some(MockAnswer::Panic) => {
                std::panic::resume_unwind(Box::new("MockExchange: scripted MockAnswer::Panic"))
            }
            None => Ok(Token::new(format!("token-{call}"), self.state.lifetime)),
        }
    }
}

impl Service<TokenRequest> for MockExchange {
    type Response = Token;
    type Error = TokenError;
    type Future = Pin<Box<dyn Future<Output = Result<Token, TokenError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TokenError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: TokenRequest) -> Self::Future {
        Box::pin(self.clone().answer(request))
    }
}

impl fmt::Debug for MockExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockExchange")
            .field("calls", &self.calls())
            .field("lifetime", &self.state.lifetime)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower::{Service, ServiceExt};

    use super::{MockAnswer, MockExchange};
    use routera_auth::{Token, TokenRequest};

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn a_scripted_panic_panics_in_the_future_and_the_script_goes_on() {
        let exchange = MockExchange::new(HOUR);
        exchange
            .queue(MockAnswer::Panic)
            .queue(MockAnswer::Token(Token::new("after-panic", HOUR)));

        // Calling the service does not panic; polling its future does.
        let future = exchange
            .clone()
            .call(TokenRequest::new(MockExchange::credentials()));
        let panicked = tokio::spawn(future).await.unwrap_err();
        assert!(panicked.is_panic(), "{panicked:?}");
        let payload = panicked.into_panic();
        let message = payload.downcast_ref::<&str>().copied().unwrap_or_default();
        assert!(message.contains("MockAnswer::Panic"), "{message:?}");
        assert_eq!((exchange.calls(), exchange.finished()), (1, 1));

        let request = || TokenRequest::new(MockExchange::credentials());
        let next = exchange.clone().oneshot(request()).await.unwrap();
        assert_eq!(next.access_token().secret(), "after-panic");
        let default = exchange.clone().oneshot(request()).await.unwrap();
        assert_eq!(default.access_token().secret(), "token-3");
        assert_eq!(exchange.credentials_seen().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_for_calls_returns_once_an_exchange_is_in_flight() {
        let exchange = MockExchange::new(HOUR).gated();
        let provider = exchange.provider();
        let waiting = tokio::spawn({
            let provider = provider.clone();
            async move { provider.token().await }
        });
        exchange.wait_for_calls(1).await;
        assert_eq!((exchange.calls(), exchange.finished()), (1, 0));
        assert!(!waiting.is_finished());
        exchange.open_gate();
        assert_eq!(waiting.await.unwrap().unwrap().secret(), "token-1");
        // Already reached: at once.
        exchange.wait_for_calls(1).await;
    }
}
