//! A cap on the keys one scope holds in progress at once, in this process.
//!
//! Each in-progress key is a lease in the store and a handler running; without a cap one client
//! can open thousands of them. Only scopes count: an unscoped request has no identity a client
//! could not change at will (a fresh token, a fresh cookie), so a cap on it would only let one
//! client fill a shared bucket for everyone. Counting happens in the process, not the store: a store-wide
//! count would need a second key per scope, which no single Redis Cluster script can touch
//! together with the record.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use sha2::{Digest, Sha256};

/// Whom a cap counts against: a scope, as a digest (no raw scope is kept).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Bucket([u8; 32]);

impl Bucket {
    pub(crate) fn of(scope: &str) -> Self {
        Self(Sha256::digest(scope.as_bytes()).into())
    }
}

/// How many keys each bucket holds in progress, up to `max`.
#[derive(Debug)]
pub(crate) struct InProgressLimit {
    max: usize,
    counts: Mutex<HashMap<Bucket, usize>>,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bucket(..)")
    }
}

impl InProgressLimit {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// A place for one more in-progress key in `bucket`, or `None` at the cap.
    pub(crate) fn try_acquire(self: &Arc<Self>, bucket: Bucket) -> Option<InProgressPermit> {
        let mut counts = self.lock();
        let count = counts.entry(bucket).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(InProgressPermit {
            limit: Arc::clone(self),
            bucket,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Bucket, usize>> {
        // Every change is one map operation: a panic elsewhere cannot leave it half-done.
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One counted in-progress key; the place frees when it is dropped.
#[derive(Debug)]
pub(crate) struct InProgressPermit {
    limit: Arc<InProgressLimit>,
    bucket: Bucket,
}

impl Drop for InProgressPermit {
    fn drop(&mut self) {
        let mut counts = self.limit.lock();
        if let Some(count) = counts.get_mut(&self.bucket) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.bucket);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_bucket_has_its_own_cap_and_places_come_back() {
        let limit = Arc::new(InProgressLimit::new(2));
        let alice = Bucket::of("alice");
        let bob = Bucket::of("bob");
        let a1 = limit.try_acquire(alice).unwrap();
        let _a2 = limit.try_acquire(alice).unwrap();
        assert!(limit.try_acquire(alice).is_none());
        assert!(limit.try_acquire(bob).is_some());
        drop(a1);
        assert!(limit.try_acquire(alice).is_some());
    }

    #[test]
    fn an_empty_bucket_is_forgotten() {
        let limit = Arc::new(InProgressLimit::new(1));
        drop(limit.try_acquire(Bucket::of("alice")).unwrap());
        assert!(limit.lock().is_empty());
    }
}
