//! [`RedisStoreError`], the source of every [`StoreError`] a
//! [`RedisStore`](super::RedisStore) returns.

use std::error::Error as StdError;
use std::fmt;

use redis::RedisError;

use crate::store::StoreError;

/// What went wrong in a [`RedisStore`], the source of its [`StoreError`].
///
/// [`RedisStore`]: super::RedisStore
#[derive(Debug)]
pub(super) struct RedisStoreError {
    message: String,
    source: Option<RedisError>,
}

impl RedisStoreError {
    pub(super) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    pub(super) fn with_source(message: impl Into<String>, source: RedisError) -> Self {
        Self {
            message: message.into(),
            source: Some(source),
        }
    }

    pub(super) fn operation(operation: &'static str, source: RedisError) -> Self {
        let what = if source.is_timeout() {
            "Redis did not answer in time"
        } else if source.is_connection_refusal()
            || source.is_connection_dropped()
            || source.is_io_error()
            || source.kind() == redis::ErrorKind::ClusterConnectionNotFound
        {
            // An I/O error is one of connecting: a TLS handshake that
            // failed, a host that could not be resolved.
            "no connection to Redis"
        } else {
            "Redis refused or failed it"
        };
        Self::with_source(format!("{operation}: {what}"), source)
    }
}

impl fmt::Display for RedisStoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The cause is not repeated here: it is `source()`.
        f.write_str(&self.message)
    }
}

impl StdError for RedisStoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_ref()
            .map(|source| source as &(dyn StdError + 'static))
    }
}

impl From<RedisStoreError> for StoreError {
    fn from(error: RedisStoreError) -> Self {
        StoreError::new(error)
    }
}
