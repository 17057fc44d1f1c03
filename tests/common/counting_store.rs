//! A store wrapper that counts `begin` calls: it lets a test know every request has arrived.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tower_idempotency::{
    BeginOutcome, CompletedRecord, Fingerprint, IdempotencyStore, LeaseToken, StoreError, StoreKey,
};

#[derive(Debug, Clone)]
pub struct CountingStore<St> {
    inner: St,
    begins: Arc<AtomicUsize>,
}

impl<St> CountingStore<St> {
    pub fn new(inner: St) -> Self {
        Self {
            inner,
            begins: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn begins(&self) -> usize {
        self.begins.load(Ordering::SeqCst)
    }
}

impl<St: IdempotencyStore> IdempotencyStore for CountingStore<St> {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<BeginOutcome, StoreError> {
        let outcome = self.inner.begin(key, fingerprint, token, lease).await;
        self.begins.fetch_add(1, Ordering::SeqCst);
        outcome
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        record: &CompletedRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.inner.complete(key, token, record, ttl).await
    }

    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<bool, StoreError> {
        self.inner.release(key, token).await
    }

    async fn renew(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.inner.renew(key, token, lease).await
    }
}
