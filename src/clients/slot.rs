//! What a keyed set keeps for one client: its provider, when it was last
//! used, and the pacing of the lookups of its credentials after a
//! rejection; and [`Kept`], the cache's entry, filled once by the first
//! request for the client.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::{CredentialSource, CredentialsError};
use crate::TokenProvider;
use crate::clock::AtomicMoment;
use crate::error::ErrorChain;

/// The cache's entry for one client: empty while the first request for it
/// looks its credentials up (the requests that come meanwhile wait on that
/// lookup), then its slot, or the lookup's error for every request that
/// waited on it.
pub(crate) struct Kept<K>(pub(super) Arc<OnceCell<Result<Slot<K>, CredentialsError>>>);

impl<K> Clone for Kept<K> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<K> Kept<K> {
    pub(super) fn empty() -> Self {
        Self(Arc::new(OnceCell::new()))
    }

    /// Whether `other` is this very entry.
    pub(super) fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The client's slot, once its provider is built.
    #[inline]
    pub(crate) fn slot(&self) -> Option<&Slot<K>> {
        self.0.get()?.as_ref().ok()
    }
}

/// A client's failed lookups: the last error is the answer until
/// `retry_at`.
#[derive(Clone)]
pub(super) struct Failed {
    pub(super) error: CredentialsError,
    pub(super) retry_at: Instant,
    /// Failed lookups in a row.
    failures: u32,
}

impl Failed {
    /// A lookup that failed now with `error`, after `before` (the failures
    /// in a row until then, if any): answered for 1 s, doubling with each
    /// failure in a row up to `longest`. A failure whose pause ended
    /// `longest` ago or more starts over.
    fn new(error: CredentialsError, before: Option<Failed>, longest: Duration) -> Self {
        let now = Instant::now();
        let after = |at: Instant, pause| at.checked_add(pause).unwrap_or(at);
        let failures = before
            .filter(|before| now < after(before.retry_at, longest))
            .map_or(1, |before| before.failures.saturating_add(1));
        let pause = Duration::from_secs(1)
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(longest);
        Self {
            error,
            retry_at: after(now, pause),
            failures,
        }
    }
}

/// What every slot of a set shares.
pub(crate) struct SlotShared<K> {
    /// Last-use times count in milliseconds from here, on the tokio clock.
    epoch: Instant,
    source: CredentialSource<K>,
    recheck_interval: u64,
}

impl<K> SlotShared<K> {
    pub(super) fn new(source: CredentialSource<K>, recheck_interval: Duration) -> Self {
        let mut shared = Self {
            epoch: Instant::now(),
            source,
            recheck_interval: 0,
        };
        shared.recheck_interval = shared.millis_of(recheck_interval);
        shared
    }

    /// `now` in milliseconds since the epoch.
    #[inline]
    pub(super) fn millis(&self, now: Instant) -> u64 {
        self.millis_of(now.saturating_duration_since(self.epoch))
    }

    pub(super) fn millis_of(&self, duration: Duration) -> u64 {
        crate::clock::millis(duration)
    }

    /// A lookup that failed now with `error`, after `before`: its pause
    /// is at most the recheck interval.
    pub(super) fn failed(&self, error: CredentialsError, before: Option<Failed>) -> Failed {
        Failed::new(error, before, Duration::from_millis(self.recheck_interval))
    }
}

/// How finely the LRU order tells uses apart, in milliseconds: uses of a
/// client within a second of the last one the cache was told of are not
/// told again.
pub(super) const LRU_RESOLUTION: u64 = 1_000;

/// One client of a set.
pub(crate) struct Slot<K> {
    key: K,
    provider: TokenProvider,
    shared: Arc<SlotShared<K>>,
    /// When a request last used it, in milliseconds since the epoch.
    last_used: AtomicU64,
    /// When the cache's LRU order last heard of a use, in milliseconds
    /// since the epoch.
    ranked: AtomicU64,
    /// When the last lookup after a rejection started, in milliseconds
    /// since the epoch; none before any.
    rechecked: AtomicMoment,
    /// Whether such a lookup runs.
    rechecking: AtomicBool,
}

impl<K> Slot<K> {
    pub(super) fn new(key: K, provider: TokenProvider, shared: Arc<SlotShared<K>>) -> Self {
        let now = shared.millis(Instant::now());
        Self {
            key,
            provider,
            shared,
            last_used: AtomicU64::new(now),
            ranked: AtomicU64::new(now),
            rechecked: AtomicMoment::none(),
            rechecking: AtomicBool::new(false),
        }
    }

    pub(crate) fn provider(&self) -> &TokenProvider {
        &self.provider
    }

    /// Records a use at `now`. Written only when the millisecond changed,
    /// so that threads using one client share its cache line read-only.
    ///
    /// Whether the use should also move the client up the cache's LRU
    /// order: true once per [`LRU_RESOLUTION`], for the first use after
    /// it, so that the cache's bookkeeping (its hash, its read log) costs
    /// a busy client one lookup a second rather than one per request.
    #[inline]
    pub(crate) fn touch(&self, now: Instant) -> bool {
        let now = self.shared.millis(now);
        if self.last_used.load(Ordering::Relaxed) >= now {
            return false;
        }
        self.last_used.store(now, Ordering::Relaxed);
        if now
            < self
                .ranked
                .load(Ordering::Relaxed)
                .saturating_add(LRU_RESOLUTION)
        {
            return false;
        }
        self.ranked.store(now, Ordering::Relaxed);
        true
    }

    /// How long it has gone unused at `now` (milliseconds since the epoch).
    pub(super) fn idle_for(&self, now: u64) -> u64 {
        now.saturating_sub(self.last_used.load(Ordering::Relaxed))
    }
}

impl<K: Clone + Send + Sync + 'static> Kept<K> {
    /// The API or the token endpoint rejected this client: looks its
    /// credentials up again, in a task, unless a lookup runs or one started
    /// less than the recheck interval ago; a different answer rotates the
    /// provider. Without a tokio runtime, nothing happens.
    pub(crate) fn recheck_credentials(&self) {
        let Some(slot) = self.slot() else {
            return;
        };
        slot.recheck_credentials(self);
    }
}

impl<K: Clone + Send + Sync + 'static> Slot<K> {
    fn recheck_credentials(&self, kept: &Kept<K>) {
        let now = self.shared.millis(Instant::now());
        let last = self.rechecked.load(Ordering::Acquire);
        if last.is_some_and(|last| now < last.saturating_add(self.shared.recheck_interval)) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.rechecking.swap(true, Ordering::AcqRel) {
            return;
        }
        self.rechecked.store(Some(now), Ordering::Release);
        let lookup = self.shared.source.lookup(self.key.clone());
        let kept = kept.clone();
        drop(runtime.spawn(async move {
            let Some(slot) = kept.slot() else {
                return;
            };
            let lookup = lookup.await;
            match lookup {
                // The same credentials change nothing.
                Ok(credentials) => slot.provider.set_credentials(credentials),
                Err(error) => {
                    let client_id = slot.provider.client_id();
                    let error = ErrorChain(&*error);
                    tracing::warn!(
                        client_id,
                        %error,
                        "the client was rejected and its credentials could not be looked up again"
                    );
                }
            }
            slot.rechecking.store(false, Ordering::Release);
        }));
    }
}
