//! [`OwnExchange`]: an exchange this replica makes, and what it leaves for
//! the fleet afterwards: its token in the store, or the endpoint's
//! `Retry-After` as the fleet's backoff; then the lock's release.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Sealer;
use super::StoreKeys;
use super::fleet::{Fleet, millis};
use super::held_lock::HeldLock;
use crate::error::TokenError;
use crate::token::{AccessToken, Token, TokenRequest};
use crate::{MAX_RETRY_AFTER, MAX_TOKEN_LIFETIME};

/// An exchange of this replica's, and what it owes the fleet afterwards:
/// the keys it was made under and the fleet's lock if it holds it.
pub(super) struct OwnExchange {
    pub(super) fleet: Arc<Fleet>,
    /// `None` when the credentials have no keys: nothing to share.
    pub(super) keyed: Option<(StoreKeys, Arc<Sealer>)>,
    pub(super) lock: Option<HeldLock>,
    /// When the caller asked, by the fleet's clock and by tokio's: the
    /// caller counts the token's lifetime from then at the latest, and so
    /// does the store.
    pub(super) asked: (u64, Instant),
}

/// What an exchange leaves for the fleet.
enum Publication {
    Token {
        token: AccessToken,
        issued_ms: u64,
        lifetime: Duration,
        /// How long it may still be served: the entry's time to live.
        ttl: Duration,
    },
    BackOff(Duration),
    Nothing,
}

impl OwnExchange {
    /// Runs the exchange `work`, renewing the fleet's lock meanwhile if
    /// this replica holds it.
    pub(super) async fn run<F: Future>(&self, work: F) -> F::Output {
        match &self.lock {
            Some(lock) => lock.renew_while(work).await,
            None => work.await,
        }
    }

    /// After the exchange: shares its token, or, after a failure with the
    /// endpoint's `Retry-After`, makes the fleet back off that long if this
    /// replica held the lock; then releases the lock. Other failures only
    /// release it, for a waiter to take over. This runs in a task of its
    /// own, off the caller's path.
    pub(super) async fn settle(self, result: &Result<Token, TokenError>, request: &TokenRequest) {
        let publication = match result {
            Ok(token) => {
                let (asked_ms, asked_at) = self.asked;
                let issued_ms = asked_ms.saturating_sub(millis(token.age()));
                if self.keyed.is_some() {
                    self.fleet.hold(issued_ms);
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
            Err(error) if self.lock.is_some() && !error.is_deferred() => error
                .retry_after()
                .map_or(Publication::Nothing, Publication::BackOff),
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
        let fleet = &self.fleet;
        let Some((keys, sealer)) = &self.keyed else {
            return;
        };
        match publication {
            Publication::Token {
                token,
                issued_ms,
                lifetime,
                ttl,
            } if !ttl.is_zero() && !fleet.breaker_open() => {
                let expires_ms = issued_ms.saturating_add(millis(lifetime));
                if let Some(stored) = sealer.seal(token.secret(), issued_ms, expires_ms) {
                    let save = fleet.config.store.save(keys, &stored, ttl);
                    if fleet.call(save).await == Some(true) {
                        tracing::debug!("token shared with the fleet");
                    }
                }
            }
            Publication::BackOff(retry_after) => {
                let retry_after = retry_after.min(MAX_RETRY_AFTER);
                let back_off = fleet.config.store.back_off(keys, retry_after);
                fleet.call(back_off).await;
            }
            _ => {}
        }
        if let Some(lock) = self.lock {
            lock.release().await;
        }
    }
}
