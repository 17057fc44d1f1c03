//! Releasing a lease that nobody else will release.

use std::{sync::Arc, time::Duration};

use crate::{
    config::Shared,
    store::{IdempotencyStore, LeaseToken, StoreKey},
};

/// Holds the duty to release a key until it is handed off by [`disarm`](Self::disarm).
///
/// If the future that owns it is dropped (the client went away during `begin`, a timeout fired,
/// the handler panicked), the release is spawned on the runtime, so the key is not left locked
/// until its lease runs out. The release is token-checked: when `begin` had not acquired the
/// key, it deletes nothing.
pub(crate) struct ReleaseGuard<St: IdempotencyStore> {
    shared: Arc<Shared<St>>,
    pub(crate) key: StoreKey,
    pub(crate) token: LeaseToken,
    /// When the request began to claim the key: how long a first execution took is counted
    /// from here.
    pub(crate) since: tokio::time::Instant,
    armed: bool,
}

impl<St: IdempotencyStore> ReleaseGuard<St> {
    pub(crate) fn new(shared: Arc<Shared<St>>, key: StoreKey, token: LeaseToken) -> Self {
        Self {
            shared,
            key,
            token,
            since: tokio::time::Instant::now(),
            armed: true,
        }
    }

    /// The lease is settled elsewhere: do nothing on drop.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }

    /// Releases now, so a retry may run the handler again.
    pub(crate) async fn release(mut self) {
        self.armed = false;
        let timeout = self.shared.config.store_timeout;
        release(&*self.shared.store, &self.key, &self.token, timeout).await;
    }
}

impl<St: IdempotencyStore> Drop for ReleaseGuard<St> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(key = %self.key, "idempotency: no runtime to release the key; it stays locked until its lease ends");
            return;
        };
        let (shared, key, token) = (Arc::clone(&self.shared), self.key, self.token);
        runtime.spawn(async move {
            let timeout = shared.config.store_timeout;
            release(&*shared.store, &key, &token, timeout).await;
        });
    }
}

async fn release<St: IdempotencyStore>(
    store: &St,
    key: &StoreKey,
    token: &LeaseToken,
    timeout: Duration,
) {
    match tokio::time::timeout(timeout, store.release(key, token)).await {
        Ok(Ok(true)) => tracing::debug!(key = %key, "idempotency: released"),
        Ok(Ok(false)) => tracing::debug!(key = %key, "idempotency: nothing to release"),
        Ok(Err(error)) => {
            tracing::warn!(key = %key, %error, "idempotency: release failed; the key stays locked until its lease ends");
        }
        Err(_) => {
            tracing::warn!(key = %key, "idempotency: release timed out; the key stays locked until its lease ends")
        }
    }
}
