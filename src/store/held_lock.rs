//! [`HeldLock`]: the fleet's lock while this replica holds it: a lease,
//! renewed while the exchange runs, and released even if the future that
//! holds it is dropped.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;

use super::StoreKeys;
use super::replica::Replica;

/// The fleet's lock, held by this replica: a lease of
/// [`Replica::lease`], which lapses unless renewed
/// ([`HeldLock::renew_while`]), so that a holder that dies holds up the
/// fleet that long at most.
///
/// Released by [`HeldLock::release`]; if it is dropped instead (the
/// caller dropped the exchange's future: new credentials, the provider
/// gone, its timeout), a task on the current tokio runtime releases it at
/// once. Best effort: with no runtime, or if that task fails, the lock
/// runs out after its time.
pub(super) struct HeldLock {
    replica: Arc<Replica>,
    keys: StoreKeys,
    armed: bool,
}

impl HeldLock {
    pub(super) fn new(replica: Arc<Replica>, keys: StoreKeys) -> Self {
        Self {
            replica,
            keys,
            armed: true,
        }
    }

    /// Forgets the lock: it was not taken.
    pub(super) fn disarm(mut self) {
        self.armed = false;
    }

    /// Runs `work`, renewing the lease every third of its time until
    /// `work` ends. A renewal that fails, or finds that another replica
    /// holds the lock (the lease lapsed), ends the renewals; `work` goes on.
    pub(super) async fn renew_while<F: Future>(&self, work: F) -> F::Output {
        let replica = &self.replica;
        let lease = replica.lease();
        let renewals = async {
            loop {
                tokio::time::sleep(lease / 3).await;
                let renew = replica
                    .config
                    .store
                    .renew_lock(&self.keys, &replica.owner, lease);
                if replica.call(renew).await != Some(true) {
                    tracing::debug!("the lease on the fleet's lock was not renewed");
                    return;
                }
            }
        };
        let mut work = pin!(work);
        tokio::select! {
            output = &mut work => return output,
            () = renewals => {}
        }
        work.await
    }

    /// Releases the lock, within the operation timeout.
    pub(super) async fn release(mut self) {
        let unlock = self
            .replica
            .config
            .store
            .unlock(&self.keys, &self.replica.owner);
        self.replica.call(unlock).await;
        self.armed = false;
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let replica = Arc::clone(&self.replica);
        let keys = self.keys.clone();
        drop(runtime.spawn(async move {
            let unlock = replica.config.store.unlock(&keys, &replica.owner);
            let _ = tokio::time::timeout(replica.config.operation_timeout, unlock).await;
        }));
    }
}
