//! The six operations of [`TokenStore`] on Redis, each one round trip
//! through [`RedisStore::run`], and when a command is tried once more.

use std::time::Duration;

use redis::RedisError;

use super::RedisStore;
use super::scripts::{BACK_OFF, FIELDS, REMOVE, RENEW, SAVE, UNLOCK, millis, parse_token};
use crate::store::{Snapshot, StoreFuture, StoreKeys, StoredToken, TokenStore};

/// When [`RedisStore::run`] tries a command once more.
#[derive(Clone, Copy)]
pub(super) enum RetryWhen {
    /// After a lost or refused connection: the command may have been
    /// applied, but applying it twice changes nothing that matters.
    IfConnectionLost,
    /// Only after a refused connection: the command was not sent.
    IfRefused,
}

impl RetryWhen {
    pub(super) fn applies(self, error: &RedisError) -> bool {
        match self {
            RetryWhen::IfConnectionLost => {
                error.is_connection_refusal() || error.is_connection_dropped()
            }
            RetryWhen::IfRefused => error.is_connection_refusal(),
        }
    }
}

impl TokenStore for RedisStore {
    fn address(&self) -> Option<String> {
        self.inner.server.clone()
    }

    fn load<'a>(&'a self, keys: &'a StoreKeys) -> StoreFuture<'a, Snapshot> {
        Box::pin(async move {
            let (fields, token_ttl, lock_ttl, backoff, cause): Loaded = self
                .run(
                    "load",
                    RetryWhen::IfConnectionLost,
                    |mut connection| async move {
                        // MULTI/EXEC: a save cannot land between the
                        // fields and their time to live.
                        redis::pipe()
                            .atomic()
                            .cmd("HMGET")
                            .arg(keys.token())
                            .arg(&FIELDS[..])
                            .cmd("PTTL")
                            .arg(keys.token())
                            .cmd("PTTL")
                            .arg(keys.lock())
                            .cmd("PTTL")
                            .arg(keys.backoff())
                            .cmd("GET")
                            .arg(keys.backoff())
                            .query_async(&mut connection)
                            .await
                    },
                )
                .await?;
            let token = parse_token(fields);
            Ok(Snapshot {
                token_ttl: token.as_ref().and_then(|_| positive_ms(token_ttl)),
                token,
                lock_ttl: positive_ms(lock_ttl),
                backoff: positive_ms(backoff),
                backoff_cause: cause
                    .filter(|_| backoff > 0)
                    .and_then(|cause| String::from_utf8(cause).ok()),
            })
        })
    }

    fn save<'a>(
        &'a self,
        keys: &'a StoreKeys,
        token: &'a StoredToken,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let Some(ttl_ms) = millis(ttl) else {
                return Ok(false);
            };
            let written: i64 = self
                .run(
                    "save",
                    RetryWhen::IfConnectionLost,
                    |mut connection| async move {
                        SAVE.key(keys.token())
                            .arg(token.issued_at_ms)
                            .arg(token.expires_at_ms)
                            .arg(&token.fingerprint)
                            .arg(&token.sealed[..])
                            .arg(ttl_ms)
                            .invoke_async(&mut connection)
                            .await
                    },
                )
                .await?;
            Ok(written == 1)
        })
    }

    fn remove<'a>(&'a self, keys: &'a StoreKeys, fingerprint: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let removed: i64 = self
                .run(
                    "remove",
                    RetryWhen::IfConnectionLost,
                    |mut connection| async move {
                        REMOVE
                            .key(keys.token())
                            .arg(fingerprint)
                            .invoke_async(&mut connection)
                            .await
                    },
                )
                .await?;
            Ok(removed == 1)
        })
    }

    fn lock<'a>(
        &'a self,
        keys: &'a StoreKeys,
        owner: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let Some(ttl_ms) = millis(ttl) else {
                return Ok(false);
            };
            // `OK` when taken, nil when held: redis reads them as a bool.
            let taken: bool = self
                .run("lock", RetryWhen::IfRefused, |mut connection| async move {
                    redis::cmd("SET")
                        .arg(keys.lock())
                        .arg(owner)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async(&mut connection)
                        .await
                })
                .await?;
            Ok(taken)
        })
    }

    fn renew_lock<'a>(
        &'a self,
        keys: &'a StoreKeys,
        owner: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let Some(ttl_ms) = millis(ttl) else {
                return Ok(false);
            };
            let renewed: i64 = self
                .run(
                    "renew_lock",
                    RetryWhen::IfConnectionLost,
                    |mut connection| async move {
                        RENEW
                            .key(keys.lock())
                            .arg(owner)
                            .arg(ttl_ms)
                            .invoke_async(&mut connection)
                            .await
                    },
                )
                .await?;
            Ok(renewed == 1)
        })
    }

    fn unlock<'a>(&'a self, keys: &'a StoreKeys, owner: &'a str) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let _released: i64 = self
                .run(
                    "unlock",
                    RetryWhen::IfConnectionLost,
                    |mut connection| async move {
                        UNLOCK
                            .key(keys.lock())
                            .arg(owner)
                            .invoke_async(&mut connection)
                            .await
                    },
                )
                .await?;
            Ok(())
        })
    }

    fn back_off<'a>(
        &'a self,
        keys: &'a StoreKeys,
        duration: Duration,
        cause: &'a str,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let Some(duration_ms) = millis(duration) else {
                return Ok(());
            };
            let _set: i64 = self
                .run(
                    "back_off",
                    RetryWhen::IfConnectionLost,
                    |mut connection| async move {
                        BACK_OFF
                            .key(keys.backoff())
                            .arg(duration_ms)
                            .arg(cause)
                            .invoke_async(&mut connection)
                            .await
                    },
                )
                .await?;
            Ok(())
        })
    }
}

/// What `load` reads: the token's fields, the times to live of the token,
/// the lock and the backoff, and the backoff's cause.
type Loaded = (Vec<Option<Vec<u8>>>, i64, i64, i64, Option<Vec<u8>>);

/// A `PTTL` answer as a duration: `None` for no key (-2), no expiry (-1)
/// or an expired one.
fn positive_ms(ms: i64) -> Option<Duration> {
    u64::try_from(ms)
        .ok()
        .filter(|&ms| ms > 0)
        .map(Duration::from_millis)
}
