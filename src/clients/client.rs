//! What a keyed set keeps for one client, [`Client`]: its provider, when
//! it was last used, and when its credentials were last looked up again
//! after a rejection; [`FailedLookup`], the pause after a client's
//! lookups failed; and [`SetContext`], what every client of a set refers
//! to.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{CredentialSource, CredentialsError};
use crate::TokenProvider;
use crate::clock::{AtomicMoment, later, millis};
use crate::error::ErrorChain;

/// What every client of a set refers to: the credential source, the
/// recheck interval, the idle timeout, and the epoch that the clients'
/// times count from, in milliseconds on the tokio clock.
pub(crate) struct SetContext<K> {
    epoch: Instant,
    source: CredentialSource<K>,
    /// The recheck interval, in milliseconds.
    recheck_interval: u64,
    /// The idle timeout, in milliseconds.
    idle_timeout: u64,
}

impl<K> SetContext<K> {
    pub(super) fn new(
        source: CredentialSource<K>,
        recheck_interval: Duration,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            epoch: Instant::now(),
            source,
            recheck_interval: millis(recheck_interval),
            idle_timeout: millis(idle_timeout),
        }
    }

    /// `now` in milliseconds since the epoch.
    #[inline]
    pub(super) fn millis(&self, now: Instant) -> u64 {
        millis(now.saturating_duration_since(self.epoch))
    }

    pub(super) fn source(&self) -> &CredentialSource<K> {
        &self.source
    }

    pub(super) fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout)
    }

    /// A lookup that failed now with `error`, after `before`: its pause
    /// is at most the recheck interval.
    pub(super) fn failed(
        &self,
        error: CredentialsError,
        before: Option<FailedLookup>,
    ) -> FailedLookup {
        let longest = Duration::from_millis(self.recheck_interval);
        FailedLookup::new(error, before, longest)
    }
}

/// A client whose credential lookups failed: the last error is the answer
/// until `retry_at`.
#[derive(Clone)]
pub(super) struct FailedLookup {
    pub(super) error: CredentialsError,
    /// When the last lookup failed.
    pub(super) at: Instant,
    pub(super) retry_at: Instant,
    /// Failed lookups in a row.
    failures: u32,
}

impl FailedLookup {
    /// A lookup that failed now with `error`, after `before` (the failures
    /// in a row until then, if any): answered for 1 s, doubling with each
    /// failure in a row up to `longest`. A failure whose pause ended
    /// `longest` ago or more starts over.
    fn new(error: CredentialsError, before: Option<FailedLookup>, longest: Duration) -> Self {
        let now = Instant::now();
        let failures = before
            .filter(|before| now < later(before.retry_at, longest))
            .map_or(1, |before| before.failures.saturating_add(1));
        let pause = Duration::from_secs(1)
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(longest);
        Self {
            error,
            at: now,
            retry_at: later(now, pause),
            failures,
        }
    }
}

/// One client of a set, as its cache holds it (behind an `Arc`, which a
/// request clones to look the credentials up again if it is rejected).
pub(crate) struct Client<K> {
    key: K,
    provider: TokenProvider,
    context: Arc<SetContext<K>>,
    /// When a request last used it, in milliseconds since the epoch.
    last_used: AtomicU64,
    /// When its credentials were last looked up again after a rejection,
    /// in milliseconds since the epoch; none before any.
    rechecked: AtomicMoment,
}

impl<K> Client<K> {
    pub(super) fn new(key: K, provider: TokenProvider, context: Arc<SetContext<K>>) -> Self {
        let now = context.millis(Instant::now());
        Self {
            key,
            provider,
            context,
            last_used: AtomicU64::new(now),
            rechecked: AtomicMoment::none(),
        }
    }

    pub(crate) fn provider(&self) -> &TokenProvider {
        &self.provider
    }

    /// A use at `now`, if the client is live: false, and nothing recorded,
    /// once it went unused for the idle timeout, after which it is never
    /// used again. The time is written only when the millisecond changed,
    /// so that threads using one client share its cache line read-only.
    #[inline]
    pub(crate) fn use_at(&self, now: Instant) -> bool {
        let now = self.context.millis(now);
        let last = self.last_used.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= self.context.idle_timeout {
            return false;
        }
        if last < now {
            self.last_used.store(now, Ordering::Relaxed);
        }
        true
    }

    /// Whether it went unused for the idle timeout at `now`.
    pub(super) fn is_idle(&self, now: Instant) -> bool {
        let idle = self
            .context
            .millis(now)
            .saturating_sub(self.last_used.load(Ordering::Relaxed));
        idle >= self.context.idle_timeout
    }
}

impl<K: Clone + Send + Sync + 'static> Client<K> {
    /// The API or the token endpoint rejected this client: looks its
    /// credentials up again, in a task, unless a lookup started less than
    /// the recheck interval ago; a different answer rotates the provider.
    /// Without a tokio runtime, nothing happens.
    pub(crate) fn recheck_credentials(self: &Arc<Self>) {
        let now = self.context.millis(Instant::now());
        let last = self.rechecked.load(Ordering::Acquire);
        if last.is_some_and(|last| now < last.saturating_add(self.context.recheck_interval)) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // One of the requests rejected at once starts the lookup.
        if !self.rechecked.compare_exchange(last, now) {
            return;
        }
        let lookup = self.context.source.lookup(self.key.clone());
        let client = Arc::clone(self);
        drop(runtime.spawn(async move {
            match lookup.await {
                // The same credentials change nothing.
                Ok(credentials) => client.provider.set_credentials(credentials),
                Err(error) => {
                    let client_id = client.provider.client_id();
                    let error = ErrorChain(&*error);
                    tracing::warn!(
                        client_id,
                        %error,
                        "the client was rejected and its credentials could not be looked up again"
                    );
                }
            }
        }));
    }
}
