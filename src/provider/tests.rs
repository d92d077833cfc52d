//! White-box tests of the callers' side of the channel protocol: a test
//! stands in for the worker, to answer as a worker would in races that a
//! test cannot schedule from outside.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, advance};

use super::worker::Message;
use super::{TokenProvider, lock};
use crate::test_double::TestExchange as MockExchange;
use crate::{TokenError, TokenErrorKind};

const MINUTE: Duration = Duration::from_secs(60);

/// Puts the test in the worker's place: the messages of `provider`'s
/// handles arrive on the returned receiver.
fn stand_in_worker(provider: &TokenProvider) -> mpsc::UnboundedReceiver<Message> {
    let (sender, messages) = mpsc::unbounded_channel();
    *lock(&provider.handles.worker) = Some(sender);
    messages
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_the_answer_even_if_the_next_attempt_starts_at_once() {
    let exchange = MockExchange::new(MINUTE).gated();
    exchange.fail_next(TokenError::new(TokenErrorKind::ServerError));
    let provider = TokenProvider::builder(exchange.clone(), MockExchange::credentials())
        .backoff(Duration::from_millis(10), Duration::from_millis(10))
        .build();
    let waiter = tokio::spawn({
        let provider = provider.clone();
        async move { provider.token().await }
    });
    exchange.wait_for_calls(1).await;
    exchange.open_gate();
    // The retry starts 10 ms (or 8 ms, jittered) later, and succeeds.
    exchange.wait_for_calls(2).await;
    let answer = waiter.await.unwrap();
    assert_eq!(answer.unwrap_err().kind(), TokenErrorKind::ServerError);
    assert_eq!(provider.token().await.unwrap().secret(), "token-2");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_never_gets_a_token_that_may_no_longer_be_served() {
    let exchange = MockExchange::new(MINUTE);
    let provider = exchange.provider();
    provider.token().await.unwrap();
    let stale = provider.shared().current.load_full().unwrap();
    // Served for 45 s (a quarter of the minute is the skew): now past it.
    advance(Duration::from_secs(50)).await;
    let fresh = {
        exchange.provider().token().await.unwrap();
        let other = exchange.provider();
        other.token().await.unwrap();
        other.shared().current.load_full().unwrap()
    };
    let mut messages = stand_in_worker(&provider);

    let waiter = tokio::spawn({
        let provider = provider.clone();
        async move { provider.wait(false).await }
    });
    // The answer as a waiter would find it had its runtime been busy past
    // the token's end since the worker sent it.
    let Some(Message::Need(answer)) = messages.recv().await else {
        panic!("the waiter did not ask for a token");
    };
    answer.send(Ok(Arc::clone(&stale))).ok().unwrap();
    // It asks again rather than take it.
    let Some(Message::Need(answer)) = messages.recv().await else {
        panic!("the waiter did not ask again");
    };
    answer.send(Ok(Arc::clone(&fresh))).ok().unwrap();
    let answer = waiter.await.unwrap().unwrap();
    assert!(answer.is_fresh(Instant::now()));
    assert!(Arc::ptr_eq(&answer, &fresh));
}

#[tokio::test(start_paused = true)]
async fn a_waiter_whose_worker_ends_without_answering_gets_an_error_at_once() {
    let provider = MockExchange::new(MINUTE).provider();
    let mut messages = stand_in_worker(&provider);
    let waiter = tokio::spawn({
        let provider = provider.clone();
        async move { provider.token().await }
    });
    let Some(Message::Need(answer)) = messages.recv().await else {
        panic!("the waiter did not ask for a token");
    };
    // The worker's task is dropped (its runtime shuts down).
    drop((answer, messages));
    let error = waiter.await.unwrap().unwrap_err();
    assert_eq!(error.kind(), TokenErrorKind::Internal);
    assert!(error.to_string().contains("worker stopped"), "{error}");
    // The next call starts a new worker.
    assert_eq!(provider.token().await.unwrap().secret(), "token-1");
}

/// A provider with `token-1` cached, whose next exchange (a refresh the
/// first caller asked for) has started and is held at the exchange's gate.
async fn refreshing() -> (MockExchange, TokenProvider, tokio::task::JoinHandle<String>) {
    let exchange = MockExchange::new(MINUTE);
    let provider = exchange.provider();
    assert_eq!(provider.token().await.unwrap().secret(), "token-1");
    exchange.close_gate();
    let first = tokio::spawn({
        let provider = provider.clone();
        async move { provider.refresh().await.unwrap().secret().to_owned() }
    });
    exchange.wait_for_calls(2).await;
    (exchange, provider, first)
}

#[tokio::test(start_paused = true)]
async fn a_refresh_sent_as_the_exchange_ends_is_answered_by_that_exchanges_token() {
    let (exchange, provider, first) = refreshing().await;
    // The exchange ends, and a refresh is sent before the worker has run:
    // both are ready when it next runs. It takes the exchange's end first,
    // then the refresh, asked when token-1 was current: token-2 answers it.
    exchange.open_gate();
    let mut second = tokio_test::task::spawn(provider.refresh());
    tokio_test::assert_pending!(second.poll());
    settle().await;

    let second = second.await.unwrap();
    assert_eq!(second.secret(), "token-2", "not a second exchange's token");
    assert_eq!(first.await.unwrap(), "token-2");
    assert_eq!(exchange.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_read_while_the_exchange_runs_joins_it() {
    let (exchange, provider, first) = refreshing().await;
    // The worker reads the refresh while the exchange is held: it joins.
    let second = tokio::spawn({
        let provider = provider.clone();
        async move { provider.refresh().await.unwrap().secret().to_owned() }
    });
    settle().await;
    exchange.open_gate();

    assert_eq!(second.await.unwrap(), "token-2");
    assert_eq!(first.await.unwrap(), "token-2");
    assert_eq!(exchange.calls(), 2);
}

/// Lets the worker and the exchange run on the current-thread runtime.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_deferral_without_retry_after_waits_the_first_backoff_not_a_busy_loop() {
    let exchange = MockExchange::new(MINUTE);
    exchange.fail_next(TokenError::new(TokenErrorKind::RateLimited).deferred());
    let provider = exchange.provider();
    assert!(provider.token().await.unwrap_err().is_deferred());
    settle().await;
    assert_eq!(exchange.calls(), 1);
    advance(Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(exchange.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_due_message_for_a_token_not_due_starts_nothing() {
    let exchange = MockExchange::new(MINUTE);
    let provider = exchange.provider();
    provider.token().await.unwrap();
    // Sent for the token before this one, by a request that loaded it
    // just before it was replaced.
    provider.send(Message::RefreshDue).unwrap();
    settle().await;
    assert_eq!(exchange.calls(), 1);
    assert_eq!(provider.stats().background_refreshes, 0);
}

#[tokio::test(start_paused = true)]
async fn a_failure_for_replaced_credentials_reaches_no_waiter() {
    let exchange = MockExchange::new(MINUTE).gated();
    exchange.fail_next(TokenError::new(TokenErrorKind::InvalidClient));
    let provider = exchange.provider();
    let waiter = tokio::spawn({
        let provider = provider.clone();
        async move { provider.token().await }
    });
    exchange.wait_for_calls(1).await;
    // The credentials change, and the exchange with the old ones fails,
    // before the worker reads the message that says so.
    let rotated = crate::ClientCredentials::new(crate::test_double::CLIENT_ID, "rotated");
    lock(&provider.shared().live).credentials = rotated.clone();
    exchange.open_gate();
    let token = waiter
        .await
        .unwrap()
        .expect("a token for the new credentials");
    assert_eq!(token.secret(), "token-2");
    assert_eq!(exchange.credentials_seen()[1], rotated);
}

#[tokio::test(start_paused = true)]
async fn the_same_credentials_again_do_not_cut_a_backoff_short() {
    let exchange = MockExchange::new(MINUTE);
    exchange.fail_until(
        Instant::now() + MINUTE,
        TokenError::new(TokenErrorKind::ServerError),
    );
    let provider = exchange.provider();
    assert!(provider.token().await.is_err());
    for _ in 0..10 {
        provider.set_credentials(MockExchange::credentials());
        settle().await;
    }
    assert_eq!(exchange.calls(), 1);
    assert!(provider.token().await.is_err(), "still backing off");
}

#[tokio::test(start_paused = true)]
async fn a_due_refresh_is_asked_once_a_second_at_most_whatever_the_exchange_timeout() {
    let exchange = MockExchange::new(MINUTE);
    let provider = TokenProvider::builder(exchange, MockExchange::credentials())
        .exchange_timeout(Duration::ZERO)
        .build();
    // The first token, through a worker that answers at once.
    let mut messages = stand_in_worker(&provider);
    let fetch = tokio::spawn({
        let provider = provider.clone();
        async move { provider.token().await }
    });
    let Some(Message::Need(answer)) = messages.recv().await else {
        panic!("no request for the first token");
    };
    let token = {
        let other = MockExchange::new(MINUTE).provider();
        other.token().await.unwrap();
        other.shared().current.load_full().unwrap()
    };
    provider.shared().current.store(Some(Arc::clone(&token)));
    answer.send(Ok(token)).ok().unwrap();
    fetch.await.unwrap().unwrap();
    // Past its refresh time (30 to 33 s into a minute, with the jitter),
    // before it stops being served (45 s): a hundred requests.
    advance(Duration::from_secs(34)).await;
    for _ in 0..100 {
        provider.token().await.unwrap();
    }
    let mut asked = 0;
    while let Ok(message) = messages.try_recv() {
        assert!(matches!(message, Message::RefreshDue));
        asked += 1;
    }
    assert_eq!(asked, 1);
}
