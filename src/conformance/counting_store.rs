//! A store wrapper that counts calls and can stall an acquisition: it lets a test know every
//! request has arrived, see renewals happen, and drop a request while its `begin` is in flight.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::{
    BeginOutcome, CompletedRecord, Fingerprint, IdempotencyStore, KeyWatch, LeaseToken, StoreError,
    StoreKey, WatchKeys,
};
use tokio::sync::Semaphore;

/// `St`, counting its calls; see the module docs.
#[derive(Debug, Clone)]
pub struct CountingStore<St> {
    inner: St,
    begins: Arc<AtomicUsize>,
    renewals: Arc<AtomicUsize>,
    stall_next_acquire: Arc<AtomicBool>,
    stalled: Arc<AtomicUsize>,
    /// Never given permits: a stalled `begin` waits until its future is dropped.
    never: Arc<Semaphore>,
}

impl<St> CountingStore<St> {
    /// Counts `inner`'s calls.
    pub fn new(inner: St) -> Self {
        Self {
            inner,
            begins: Arc::new(AtomicUsize::new(0)),
            renewals: Arc::new(AtomicUsize::new(0)),
            stall_next_acquire: Arc::new(AtomicBool::new(false)),
            stalled: Arc::new(AtomicUsize::new(0)),
            never: Arc::new(Semaphore::new(0)),
        }
    }

    /// How many `begin` calls it passed on.
    pub fn begins(&self) -> usize {
        self.begins.load(Ordering::SeqCst)
    }

    /// How many `renew` calls it passed on.
    pub fn renewals(&self) -> usize {
        self.renewals.load(Ordering::SeqCst)
    }

    /// The next `begin` that acquires a key does so in the store, then never returns.
    pub fn stall_next_acquire(&self) {
        self.stall_next_acquire.store(true, Ordering::SeqCst);
    }

    /// How many `begin` calls are stalled after acquiring.
    pub fn stalled(&self) -> usize {
        self.stalled.load(Ordering::SeqCst)
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
        if matches!(outcome, Ok(BeginOutcome::Acquired { .. }))
            && self.stall_next_acquire.swap(false, Ordering::SeqCst)
        {
            self.stalled.fetch_add(1, Ordering::SeqCst);
            let _never = self.never.acquire().await;
        }
        outcome
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        fingerprint: &Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.inner
            .complete(key, token, fingerprint, record, ttl)
            .await
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
        self.renewals.fetch_add(1, Ordering::SeqCst);
        self.inner.renew(key, token, lease).await
    }
}

impl<St: WatchKeys> WatchKeys for CountingStore<St> {
    fn watch(&self, key: &StoreKey) -> KeyWatch {
        self.inner.watch(key)
    }
}
