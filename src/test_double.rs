//! A small token exchange double for the crate's own unit tests, which
//! look inside the provider and so cannot use the test kit (a crate of its
//! own that depends on this one, `routera-auth-test`): tests from outside
//! use the test kit's `MockExchange`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tower::Service;

use crate::{ClientCredentials, Token, TokenError, TokenProvider, TokenRequest};

/// The client id of [`TestExchange::credentials`].
pub(crate) const CLIENT_ID: &str = "mock-client";

/// Answers each exchange with `token-N` (N = the call's number) living its
/// lifetime, unless a failure is scripted; holds every exchange until its
/// gate opens if it is [gated](Self::gated). Clones share everything.
#[derive(Clone)]
pub(crate) struct TestExchange {
    lifetime: Duration,
    /// The number of calls so far.
    calls: Arc<watch::Sender<usize>>,
    /// Open unless gated.
    gate: Arc<watch::Sender<bool>>,
    script: Arc<Mutex<Script>>,
}

#[derive(Default)]
struct Script {
    next_failure: Option<TokenError>,
    outage: Option<(Instant, TokenError)>,
    seen: Vec<ClientCredentials>,
}

impl TestExchange {
    pub(crate) fn new(lifetime: Duration) -> Self {
        Self {
            lifetime,
            calls: Arc::new(watch::Sender::new(0)),
            gate: Arc::new(watch::Sender::new(true)),
            script: Arc::default(),
        }
    }

    /// Holds every exchange until [`open_gate`](Self::open_gate).
    pub(crate) fn gated(self) -> Self {
        self.gate.send_replace(false);
        self
    }

    pub(crate) fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    /// Holds the exchanges that start from now on, until
    /// [`open_gate`](Self::open_gate).
    pub(crate) fn close_gate(&self) {
        self.gate.send_replace(false);
    }

    pub(crate) fn fail_next(&self, error: TokenError) {
        self.script().next_failure = Some(error);
    }

    /// Fails every exchange that ends before `until`.
    pub(crate) fn fail_until(&self, until: Instant, error: TokenError) {
        self.script().outage = Some((until, error));
    }

    pub(crate) fn calls(&self) -> usize {
        *self.calls.borrow()
    }

    pub(crate) async fn wait_for_calls(&self, n: usize) {
        let _ = self.calls.subscribe().wait_for(|calls| *calls >= n).await;
    }

    pub(crate) fn credentials_seen(&self) -> Vec<ClientCredentials> {
        self.script().seen.clone()
    }

    pub(crate) fn credentials() -> ClientCredentials {
        ClientCredentials::new(CLIENT_ID, "mock-secret")
    }

    pub(crate) fn provider(&self) -> TokenProvider {
        TokenProvider::new(self.clone(), Self::credentials())
    }

    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Service<TokenRequest> for TestExchange {
    type Response = Token;
    type Error = TokenError;
    type Future = Pin<Box<dyn Future<Output = Result<Token, TokenError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TokenError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: TokenRequest) -> Self::Future {
        let mut n = 0;
        self.calls.send_modify(|calls| {
            *calls += 1;
            n = *calls;
        });
        self.script().seen.push(request.credentials().clone());
        let this = self.clone();
        Box::pin(async move {
            let _ = this.gate.subscribe().wait_for(|open| *open).await;
            let mut script = this.script();
            if let Some(error) = script.next_failure.take() {
                return Err(error);
            }
            if let Some((until, error)) = &script.outage
                && Instant::now() < *until
            {
                return Err(error.clone());
            }
            Ok(Token::new(format!("token-{n}"), this.lifetime))
        })
    }
}
