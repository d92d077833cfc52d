//! Test doubles shared by the integration tests.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use routera_auth::{ClientCredentials, Token, TokenError, TokenProvider, TokenRequest};
use tokio::sync::Semaphore;

/// What the mock exchange answers.
#[derive(Clone)]
pub enum Answer {
    Token(Token),
    Error(TokenError),
}

/// A token exchange mock: counts calls, waits `delay` (paused time makes
/// that instant) or for a gate, then answers the next scripted answer, or
/// a fresh token `token-N` living `lifetime` once the script is empty.
#[derive(Clone)]
pub struct MockExchange {
    state: Arc<State>,
}

struct State {
    calls: AtomicUsize,
    finished: AtomicUsize,
    script: Mutex<VecDeque<Answer>>,
    delay: Mutex<Duration>,
    lifetime: Mutex<Duration>,
    gate: Mutex<Option<Arc<Semaphore>>>,
    seen: Mutex<Vec<ClientCredentials>>,
    outage: Mutex<Option<(tokio::time::Instant, TokenError)>>,
}

impl MockExchange {
    pub fn new(lifetime: Duration) -> Self {
        Self {
            state: Arc::new(State {
                calls: AtomicUsize::new(0),
                finished: AtomicUsize::new(0),
                script: Mutex::new(VecDeque::new()),
                delay: Mutex::new(Duration::from_millis(10)),
                lifetime: Mutex::new(lifetime),
                gate: Mutex::new(None),
                seen: Mutex::new(Vec::new()),
                outage: Mutex::new(None),
            }),
        }
    }

    pub fn with_delay(self, delay: Duration) -> Self {
        *self.state.delay.lock().unwrap() = delay;
        self
    }

    /// Exchanges wait until `open_gate` is called.
    pub fn gated(self) -> Self {
        *self.state.gate.lock().unwrap() = Some(Arc::new(Semaphore::new(0)));
        self
    }

    pub fn open_gate(&self) {
        if let Some(gate) = self.state.gate.lock().unwrap().as_ref() {
            gate.add_permits(Semaphore::MAX_PERMITS / 2);
        }
    }

    pub fn then(&self, answer: Answer) -> &Self {
        self.state.script.lock().unwrap().push_back(answer);
        self
    }

    pub fn fail_next(&self, error: TokenError) -> &Self {
        self.then(Answer::Error(error))
    }

    /// Every exchange that ends before `until` fails with `error`.
    pub fn outage(&self, until: tokio::time::Instant, error: TokenError) {
        *self.state.outage.lock().unwrap() = Some((until, error));
    }

    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    pub fn finished(&self) -> usize {
        self.state.finished.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<ClientCredentials> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn provider(&self) -> TokenProvider {
        TokenProvider::new(self.clone(), credentials())
    }

    async fn answer(self, request: TokenRequest) -> Result<Token, TokenError> {
        let n = self.state.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.state
            .seen
            .lock()
            .unwrap()
            .push(request.credentials().clone());
        let gate = self.state.gate.lock().unwrap().clone();
        if let Some(gate) = gate {
            let _permit = gate.acquire().await.unwrap();
        }
        let delay = *self.state.delay.lock().unwrap();
        tokio::time::sleep(delay).await;
        let answer = self.state.script.lock().unwrap().pop_front();
        self.state.finished.fetch_add(1, Ordering::SeqCst);
        if let Some((until, error)) = self.state.outage.lock().unwrap().clone() {
            if tokio::time::Instant::now() < until {
                return Err(error);
            }
        }
        match answer {
            Some(Answer::Token(token)) => Ok(token),
            Some(Answer::Error(error)) => Err(error),
            None => Ok(Token::new(
                format!("token-{n}"),
                *self.state.lifetime.lock().unwrap(),
            )),
        }
    }
}

impl tower::Service<TokenRequest> for MockExchange {
    type Response = Token;
    type Error = TokenError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Token, TokenError>> + Send>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), TokenError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: TokenRequest) -> Self::Future {
        Box::pin(self.clone().answer(request))
    }
}

pub fn credentials() -> ClientCredentials {
    ClientCredentials::new("test-client", "test-secret-value")
}

/// The error a real `HttpTokenExchange` makes of one canned HTTP answer
/// (a response, or a transport error).
pub async fn exchange_error(
    answer: Result<http::Response<bytes::Bytes>, std::io::Error>,
) -> TokenError {
    use http_body_util::Full;
    use tower::ServiceExt;

    let answer = std::sync::Arc::new(std::sync::Mutex::new(Some(answer)));
    let http = tower::service_fn(move |_: http::Request<Full<bytes::Bytes>>| {
        let answer = answer.lock().unwrap().take().expect("one request");
        std::future::ready(answer.map(|response| response.map(Full::new)))
    });
    routera_auth::HttpTokenExchange::new(http)
        .oneshot(TokenRequest::new(credentials()))
        .await
        .unwrap_err()
}

/// A `TokenError` of the given status, as the HTTP exchange makes it.
pub async fn status_error(status: u16, body: &str) -> TokenError {
    let response = http::Response::builder()
        .status(status)
        .body(bytes::Bytes::from(body.to_owned()))
        .unwrap();
    exchange_error(Ok(response)).await
}

/// A transport `TokenError`, as the HTTP exchange makes it when the
/// connection fails.
pub async fn transport_error() -> TokenError {
    let reset = std::io::Error::new(
        std::io::ErrorKind::ConnectionReset,
        "connection reset by peer",
    );
    exchange_error(Err(reset)).await
}
