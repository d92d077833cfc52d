//! [`TokenStore`]: the backend of a [`SharedCache`](super::SharedCache),
//! and what its operations take and return.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::error::BoxError;

/// The future a [`TokenStore`] operation returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A backend for [`SharedCache`](super::SharedCache): where the replicas of a fleet keep their
/// shared token, the lock around its exchange and the fleet's backoff.
///
/// Every operation is on the keys of one client, [`StoreKeys`], which share
/// one Redis Cluster hash tag. The shared cache bounds each call with its
/// operation timeout, so an implementation need not; an error or a timeout
/// only makes the replica exchange on its own.
pub trait TokenStore: Send + Sync + 'static {
    /// The stored token with its time to live, the lock's time left and
    /// the fleet's backoff, if any.
    fn load<'a>(&'a self, keys: &'a StoreKeys) -> StoreFuture<'a, Snapshot>;

    /// Stores `token` under [`StoreKeys::token`] for `ttl`, unless the
    /// stored token was issued at the same time or later
    /// ([`StoredToken::issued_at_ms`]). Returns whether it was stored.
    fn save<'a>(
        &'a self,
        keys: &'a StoreKeys,
        token: &'a StoredToken,
        ttl: Duration,
    ) -> StoreFuture<'a, bool>;

    /// Removes the stored token if its fingerprint is `fingerprint` (a
    /// replica saw it rejected). Returns whether it was removed.
    fn remove<'a>(&'a self, keys: &'a StoreKeys, fingerprint: &'a str) -> StoreFuture<'a, bool>;

    /// Takes the exchange lock [`StoreKeys::lock`] for `owner` for `ttl`, if
    /// no one holds it. Returns whether it was taken.
    fn lock<'a>(
        &'a self,
        keys: &'a StoreKeys,
        owner: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool>;

    /// Extends the lock to `ttl` from now if `owner` still holds it: the
    /// holder renews its lease while it exchanges. Returns whether it did.
    fn renew_lock<'a>(
        &'a self,
        keys: &'a StoreKeys,
        owner: &'a str,
        ttl: Duration,
    ) -> StoreFuture<'a, bool>;

    /// Releases the lock if `owner` still holds it.
    fn unlock<'a>(&'a self, keys: &'a StoreKeys, owner: &'a str) -> StoreFuture<'a, ()>;

    /// Asks the whole fleet to make no exchange for `duration`, under
    /// [`StoreKeys::backoff`]: the exchange of the lock's holder failed,
    /// and `cause` says how, as a short name (`rate_limited`,
    /// `server_error`, `timeout`, …) that [`load`](Self::load) gives back
    /// in [`Snapshot::backoff_cause`]. A backoff is never shortened: if the
    /// key already has longer to live, it is left as it is.
    fn back_off<'a>(
        &'a self,
        keys: &'a StoreKeys,
        duration: Duration,
        cause: &'a str,
    ) -> StoreFuture<'a, ()>;

    /// Where the store is, for the shared cache's logs: a host and port, a
    /// socket path or a cluster's nodes, never a user name or a password.
    /// `None` (the default) if it cannot tell.
    fn address(&self) -> Option<String> {
        None
    }
}

/// The names of one client's entries in a [`TokenStore`].
///
/// They are `<prefix>:{<tag>}:token`, `…:lock` and `…:backoff`, where the
/// tag is a keyed hash of the token URL, client id and auth method: it
/// reveals none of them, and the braces put all three on one Redis Cluster
/// slot.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreKeys {
    token: String,
    lock: String,
    backoff: String,
}

impl StoreKeys {
    /// The names `<prefix>:{<tag>}:token`, `…:lock` and `…:backoff`. The
    /// shared cache makes its own from the client's keyed hash; this is for
    /// tests of a [`TokenStore`] implementation.
    pub fn new(prefix: &str, tag: &str) -> Self {
        let name = |suffix: &str| format!("{prefix}:{{{tag}}}:{suffix}");
        Self {
            token: name("token"),
            lock: name("lock"),
            backoff: name("backoff"),
        }
    }

    /// Where the sealed token is kept.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The exchange lock: its value is the owner's id.
    pub fn lock(&self) -> &str {
        &self.lock
    }

    /// Present while the fleet backs off.
    pub fn backoff(&self) -> &str {
        &self.backoff
    }
}

impl fmt::Debug for StoreKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreKeys")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// A token as a [`TokenStore`] keeps it: sealed, with what the store
/// compares in the clear.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredToken {
    /// When the exchange that fetched it was sent, in milliseconds since the
    /// Unix epoch: a newer token has a larger value.
    pub issued_at_ms: u64,
    /// When it expires, in milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
    /// A keyed hash of the token, to remove it only if it is the one a
    /// replica saw rejected. It reveals nothing of the token.
    pub fingerprint: String,
    /// The token, encrypted and authenticated; opaque to the store.
    pub sealed: Vec<u8>,
}

impl fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredToken")
            .field("issued_at_ms", &self.issued_at_ms)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("fingerprint", &self.fingerprint)
            .field("sealed", &format_args!("[{} bytes]", self.sealed.len()))
            .finish()
    }
}

/// What [`TokenStore::load`] found. Times left are counted by the store
/// itself, so that replicas whose clocks disagree agree on them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The stored token, if any.
    pub token: Option<StoredToken>,
    /// How long the stored token has left in the store (its time to live,
    /// which is the time it may still be served). `None` if the store cannot
    /// tell: the shared cache then counts from [`StoredToken::issued_at_ms`] on
    /// its own clock.
    pub token_ttl: Option<Duration>,
    /// How long the exchange lock is still held, if it is.
    pub lock_ttl: Option<Duration>,
    /// How long the fleet still backs off, if it does.
    pub backoff: Option<Duration>,
    /// What the fleet backs off after: the `cause` of
    /// [`TokenStore::back_off`], if the store keeps it (`None` reads as the
    /// endpoint's `Retry-After`).
    pub backoff_cause: Option<String>,
}

/// A failed [`TokenStore`] operation. The shared cache counts it and exchanges
/// on its own; it never reaches a request.
#[derive(Debug)]
pub struct StoreError {
    source: BoxError,
}

impl StoreError {
    /// An error of the store, with its cause.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self {
            source: source.into(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shared token store: {}", self.source)
    }
}

impl std::error::Error for StoreError {
    /// The cause's own cause: the cause is in the message already, so that
    /// an error chain names it once.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.source()
    }
}
