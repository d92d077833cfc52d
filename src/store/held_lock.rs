//! [`HeldLock`]: the fleet's lock while this replica holds it, released
//! even if the future that holds it is dropped.

use std::sync::Arc;

use super::StoreKeys;
use super::coordination::Coordinator;

/// The fleet's lock, held by this replica.
///
/// Released by [`HeldLock::release`]; if it is dropped instead (the
/// caller dropped the exchange's future: new credentials, the provider
/// gone, its timeout), a task on the current tokio runtime releases it at
/// once. Best effort: with no runtime, or if that task fails, the lock
/// runs out after its time.
pub(super) struct HeldLock {
    fleet: Arc<Coordinator>,
    keys: StoreKeys,
    armed: bool,
}

impl HeldLock {
    pub(super) fn new(fleet: Arc<Coordinator>, keys: StoreKeys) -> Self {
        Self {
            fleet,
            keys,
            armed: true,
        }
    }

    /// Forgets the lock: it was not taken.
    pub(super) fn disarm(mut self) {
        self.armed = false;
    }

    /// Releases the lock, within the operation timeout.
    pub(super) async fn release(mut self) {
        let unlock = self
            .fleet
            .config
            .store
            .unlock(&self.keys, &self.fleet.owner);
        self.fleet.run(unlock).await;
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
        let fleet = Arc::clone(&self.fleet);
        let keys = self.keys.clone();
        drop(runtime.spawn(async move {
            let unlock = fleet.config.store.unlock(&keys, &fleet.owner);
            let _ = tokio::time::timeout(fleet.config.operation_timeout, unlock).await;
        }));
    }
}
