//! White-box tests of the callers' side of the answer protocol: outcomes
//! set by hand in the mailbox, as the worker would leave them in races that
//! a test cannot schedule from outside.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, advance};

use super::state::Outcome;
use super::{Ask, TokenProvider};
use crate::test_util::MockExchange;
use crate::{TokenError, TokenErrorKind};

const MINUTE: Duration = Duration::from_secs(60);

/// A caller waiting on a provider whose exchange is held at the gate.
async fn waiter_on_a_held_exchange() -> (
    MockExchange,
    TokenProvider,
    tokio::task::JoinHandle<Result<String, TokenError>>,
) {
    let exchange = MockExchange::new(MINUTE).gated();
    let provider = exchange.provider();
    let waiter = tokio::spawn({
        let provider = provider.clone();
        async move { Ok(provider.token().await?.secret().to_owned()) }
    });
    exchange.wait_for_calls(1).await;
    (exchange, provider, waiter)
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_the_answer_even_if_the_next_attempt_starts_before_the_waiter_reads_it() {
    let (exchange, provider, waiter) = waiter_on_a_held_exchange().await;
    {
        // What a worker retrying at once leaves behind, all before the
        // waiter runs: the failure, then the next attempt under way.
        let state = provider.state();
        let mut mail = state.mail();
        let generation = mail.generation;
        mail.set_outcome(Outcome::Failed {
            error: TokenError::new(TokenErrorKind::ServerError),
            retry_at: Some(Instant::now()),
            generation,
        });
        mail.fetching = true;
        drop(mail);
        state.answered.notify_waiters();
    }
    let answer = tokio::time::timeout(MINUTE, waiter).await;
    let answer = answer.expect("the waiter got its answer").unwrap();
    assert_eq!(answer.unwrap_err().kind(), TokenErrorKind::ServerError);
    exchange.open_gate();
}

#[tokio::test(start_paused = true)]
async fn a_waiter_never_gets_a_token_that_may_no_longer_be_served() {
    let exchange = MockExchange::new(MINUTE).with_delay(Duration::from_secs(1));
    let provider = exchange.provider();
    provider.token().await.unwrap();
    let stale = provider.state().current.load_full().unwrap();
    // Served for 45 s (a quarter of the minute is the skew): now past it.
    advance(Duration::from_secs(50)).await;

    let waiter = tokio::spawn({
        let provider = provider.clone();
        async move { provider.wait(Ask::Need).await }
    });
    // Exchange 2 is under way, for a second.
    exchange.wait_for_calls(2).await;
    {
        // The outcome as a waiter would find it had its runtime been busy
        // past the token's end since the worker stored it.
        let state = provider.state();
        let mut mail = state.mail();
        state.current.store(Some(Arc::clone(&stale)));
        mail.set_outcome(Outcome::Ready);
        drop(mail);
        state.answered.notify_waiters();
    }
    let answer = tokio::time::timeout(MINUTE, waiter).await;
    let answer = answer.expect("the waiter got its answer").unwrap().unwrap();
    assert!(answer.is_fresh(Instant::now()));
    assert_eq!(answer.token.secret(), "token-2");
}
