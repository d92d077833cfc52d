//! [`OwnExchange`]: an exchange this replica makes, bounded by the
//! caller's timeout, and what it leaves for the fleet afterwards: its token
//! in the store, or its failure as the fleet's backoff; then the lock's
//! release.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Sealer;
use super::StoreKeys;
use super::held_lock::HeldLock;
use super::replica::{Replica, millis};
use crate::clock::later;
use crate::error::{TokenError, TokenErrorKind};
use crate::token::{AccessToken, Token, TokenRequest};
use crate::{MAX_RETRY_AFTER, MAX_TOKEN_LIFETIME};

/// An exchange of this replica's, and what it owes the fleet afterwards:
/// the keys it was made under and the fleet's lock if it holds it.
pub(super) struct OwnExchange {
    pub(super) replica: Arc<Replica>,
    /// `None` when the credentials have no keys: nothing to share.
    pub(super) keyed: Option<(StoreKeys, Arc<Sealer>)>,
    pub(super) lock: Option<HeldLock>,
    pub(super) asked: Asked,
}

/// When the caller asked, by the fleet's clock and by tokio's (it counts
/// the token's lifetime from then at the latest, and so does the store),
/// and how long it waits for the answer.
#[derive(Clone, Copy)]
pub(super) struct Asked {
    pub(super) ms: u64,
    pub(super) at: Instant,
    pub(super) timeout: Duration,
}

impl Asked {
    pub(super) fn now(replica: &Replica, request: &TokenRequest) -> Self {
        Self {
            ms: replica.now_ms(),
            at: Instant::now(),
            timeout: request.timeout(),
        }
    }

    /// When this layer answers at the latest: a little before the caller
    /// gives up, so that an exchange that runs too long fails here, where
    /// its holder can still publish the failure for the fleet.
    pub(super) fn answer_by(&self) -> Instant {
        let margin = (self.timeout / 10).min(ANSWER_MARGIN);
        later(self.at, self.timeout - margin)
    }
}

/// How much earlier than the caller's timeout this layer answers at most.
const ANSWER_MARGIN: Duration = Duration::from_millis(10);

/// What an exchange leaves for the fleet.
enum Publication {
    Token {
        token: AccessToken,
        issued_ms: u64,
        lifetime: Duration,
        /// How long it may still be served: the entry's time to live.
        ttl: Duration,
    },
    /// The fleet backs off this long after a failure of this kind (its
    /// label).
    BackOff(Duration, &'static str),
    Nothing,
}

impl OwnExchange {
    /// Runs the exchange `work` until the caller's timeout, renewing the
    /// fleet's lock meanwhile if this replica holds it.
    pub(super) async fn run<F>(&self, work: F) -> Result<Token, TokenError>
    where
        F: Future<Output = Result<Token, TokenError>>,
    {
        let work = tokio::time::timeout_at(self.asked.answer_by(), work);
        let result = match &self.lock {
            Some(lock) => lock.renew_while(work).await,
            None => work.await,
        };
        result.unwrap_or_else(|_| {
            let timeout = self.asked.timeout.as_millis();
            let detail = format!("no answer within {timeout} ms");
            Err(TokenError::with_detail(TokenErrorKind::Timeout, detail))
        })
    }

    /// After the exchange: shares its token; or, if this replica held the
    /// lock, publishes its failure, so that the fleet backs off as long as
    /// this replica does (the endpoint's `Retry-After`, or the caller's
    /// [backoff](TokenRequest::backoff)); then releases the lock. This runs
    /// in a task of its own, off the caller's path.
    pub(super) async fn settle(self, result: &Result<Token, TokenError>, request: &TokenRequest) {
        let publication = match result {
            Ok(token) => {
                let Asked {
                    ms: asked_ms,
                    at: asked_at,
                    ..
                } = self.asked;
                let issued_ms = asked_ms.saturating_sub(millis(token.age()));
                if self.keyed.is_some() {
                    self.replica.hold(issued_ms);
                }
                match token.expires_in().filter(|lifetime| !lifetime.is_zero()) {
                    // Its lifetime is the provider's guess: not shared.
                    None => Publication::Nothing,
                    Some(lifetime) => {
                        let lifetime = lifetime.min(MAX_TOKEN_LIFETIME);
                        let age = asked_at.elapsed().saturating_add(token.age());
                        Publication::Token {
                            token: token.access_token().clone(),
                            issued_ms,
                            lifetime,
                            ttl: request.served_for(lifetime).saturating_sub(age),
                        }
                    }
                }
            }
            // The endpoint's own answer, not another layer's deferral.
            Err(error) if self.lock.is_some() && !error.is_deferred() => {
                let asked = error.retry_after().unwrap_or_default();
                let backoff = request.backoff().max(asked.min(MAX_RETRY_AFTER));
                Publication::BackOff(backoff, error.kind().label())
            }
            Err(_) => Publication::Nothing,
        };
        // Off the caller's path: the token goes to the provider at once,
        // whatever the store's latency.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            drop(runtime.spawn(self.publish(publication)));
            return;
        }
        self.publish(publication).await;
    }

    async fn publish(self, publication: Publication) {
        let replica = &self.replica;
        let Some((keys, sealer)) = &self.keyed else {
            return;
        };
        match publication {
            Publication::Token {
                token,
                issued_ms,
                lifetime,
                ttl,
            } if !ttl.is_zero() && !replica.breaker_open() => {
                let expires_ms = issued_ms.saturating_add(millis(lifetime));
                if let Some(stored) = sealer.seal(token.secret(), issued_ms, expires_ms) {
                    let save = replica.config.store.save(keys, &stored, ttl);
                    if replica.call(save).await == Some(true) {
                        tracing::debug!("token shared with the fleet");
                    }
                }
            }
            Publication::BackOff(backoff, cause) => {
                let back_off = replica.config.store.back_off(keys, backoff, cause);
                if replica.call(back_off).await.is_some() {
                    let backoff_ms = backoff.as_millis() as u64;
                    tracing::debug!(cause, backoff_ms, "the fleet backs off after this failure");
                }
            }
            _ => {}
        }
        if let Some(lock) = self.lock {
            lock.release().await;
        }
    }
}
