//! Waking waiters when a key changes: the ability of a store to say so, and the in-process hub
//! that hands each change to the requests waiting on that key.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use tokio::sync::watch;

use super::{IdempotencyStore, StoreKey};

/// How often a waiter looks at the store itself while notifications are broken.
pub(crate) const SLOW_POLL: Duration = Duration::from_millis(250);

/// The ability to wake the requests that wait on a key (under
/// [`ConflictPolicy::Wait`](crate::ConflictPolicy::Wait)) the moment it is completed or
/// released, instead of their polling the store.
///
/// An ability of its own, as [`ReplayTier`](super::ReplayTier) is: the layer uses it when told
/// the store has it ([`IdempotencyLayer::with_wait`](crate::IdempotencyLayer::with_wait)), and
/// polls otherwise. `MemoryStore` wakes waiters in process, `RedisStore` by pub/sub from inside
/// its scripts, and the wrappers forward it.
pub trait WatchKeys: IdempotencyStore {
    /// Subscribes to `key`'s next change. The layer subscribes *before* it looks at the key
    /// again, so a change between the look and the wait is never missed.
    fn watch(&self, key: &StoreKey) -> KeyWatch;
}

/// One waiter's subscription to one key's changes; see [`WatchKeys`].
pub struct KeyWatch {
    kind: Kind,
}

enum Kind {
    /// Woken by the hub; `poll` when the hub's notifications were broken at subscription.
    Hub {
        changes: watch::Receiver<u64>,
        health: watch::Receiver<bool>,
        hub: Arc<KeyHub>,
        key: StoreKey,
    },
    /// No notifications: the waiter looks again every `interval`.
    Polling { interval: Duration },
}

impl fmt::Debug for KeyWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Hub { .. } => f
                .debug_struct("KeyWatch")
                .field("poll", &self.poll())
                .finish(),
            Kind::Polling { interval } => {
                f.debug_tuple("KeyWatch::Polling").field(interval).finish()
            }
        }
    }
}

impl KeyWatch {
    /// A watch that is never woken: the waiter looks again every `interval` (a store without
    /// notifications).
    pub fn polling(interval: Duration) -> Self {
        Self {
            kind: Kind::Polling { interval },
        }
    }

    /// How often the waiter must look at the store itself: `None` while notifications work.
    pub fn poll(&self) -> Option<Duration> {
        match &self.kind {
            Kind::Hub { health, .. } => (!*health.borrow()).then_some(SLOW_POLL),
            Kind::Polling { interval } => Some(*interval),
        }
    }

    /// Resolves when the key changed since the subscription (or since the last time this
    /// resolved), or when notifications broke (then [`poll`](Self::poll) says how to go on).
    /// A polling watch never resolves.
    pub async fn changed(&mut self) {
        match &mut self.kind {
            Kind::Hub {
                changes, health, ..
            } => {
                tokio::select! {
                    // A sender dropped with its hub: nothing will ever come; let the waiter poll.
                    changed = changes.changed() => if changed.is_err() { std::future::pending::<()>().await },
                    _ = health.changed() => {}
                }
            }
            Kind::Polling { .. } => std::future::pending().await,
        }
    }
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        if let Kind::Hub { hub, key, .. } = &self.kind {
            hub.forget(key);
        }
    }
}

/// The keys this process waits on, each with a channel that counts its changes, and whether
/// the notifications that feed them work.
pub(crate) struct KeyHub {
    keys: Mutex<HashMap<StoreKey, watch::Sender<u64>>>,
    healthy: AtomicBool,
    health: watch::Sender<bool>,
}

impl fmt::Debug for KeyHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyHub")
            .field("keys", &self.lock().len())
            .field("healthy", &self.healthy.load(Ordering::Relaxed))
            .finish()
    }
}

// Used by the stores that notify; without any of them only the trait remains.
#[cfg_attr(not(feature = "memory"), allow(dead_code))]
impl KeyHub {
    /// A hub whose notifications work from the start (in process), or not yet (a subscriber
    /// connection still to be made).
    pub(crate) fn new(healthy: bool) -> Arc<Self> {
        Arc::new(Self {
            keys: Mutex::new(HashMap::new()),
            healthy: AtomicBool::new(healthy),
            health: watch::Sender::new(healthy),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<StoreKey, watch::Sender<u64>>> {
        // Every change is one map operation: a panic elsewhere cannot leave it half-done.
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A subscription to `key`.
    pub(crate) fn watch(self: &Arc<Self>, key: &StoreKey) -> KeyWatch {
        let changes = self
            .lock()
            .entry(*key)
            .or_insert_with(|| watch::Sender::new(0))
            .subscribe();
        KeyWatch {
            kind: Kind::Hub {
                changes,
                health: self.health.subscribe(),
                hub: Arc::clone(self),
                key: *key,
            },
        }
    }

    /// Wakes everyone waiting on `key`.
    pub(crate) fn notify(&self, key: &StoreKey) {
        if let Some(changes) = self.lock().get(key) {
            changes.send_modify(|count| *count = count.wrapping_add(1));
        }
    }

    /// Whether the notifications work: while they do not, waiters poll; when they break,
    /// every waiter is woken to look (a change may have been missed). For notifications that
    /// travel over a connection that can break; `MemoryStore`'s cannot.
    #[allow(dead_code)] // no store's notifications can break yet (Redis pub/sub is to come)
    pub(crate) fn set_healthy(&self, healthy: bool) {
        if self.healthy.swap(healthy, Ordering::Relaxed) != healthy {
            self.health.send_replace(healthy);
        }
    }

    /// Drops `key`'s channel once its last watcher is gone (called by that watcher, which
    /// still holds its receiver).
    fn forget(&self, key: &StoreKey) {
        let mut keys = self.lock();
        if keys
            .get(key)
            .is_some_and(|changes| changes.receiver_count() <= 1)
        {
            keys.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> StoreKey {
        StoreKey::from_bytes([n; 32])
    }

    #[tokio::test]
    async fn a_change_after_subscribing_is_never_missed() {
        let hub = KeyHub::new(true);
        let mut watch = hub.watch(&key(1));
        // The change lands before the waiter awaits: it is still seen.
        hub.notify(&key(1));
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("woken");
        assert_eq!(watch.poll(), None);
    }

    #[tokio::test]
    async fn other_keys_do_not_wake_and_channels_are_forgotten() {
        let hub = KeyHub::new(true);
        let mut watch = hub.watch(&key(1));
        let other = hub.watch(&key(2));
        hub.notify(&key(2));
        let woken = tokio::time::timeout(Duration::from_millis(20), watch.changed()).await;
        assert!(woken.is_err(), "key 2's change woke key 1's waiter");
        drop(other);
        drop(watch);
        assert!(hub.lock().is_empty());
    }

    #[tokio::test]
    async fn broken_notifications_wake_everyone_to_poll() {
        let hub = KeyHub::new(true);
        let mut watch = hub.watch(&key(1));
        hub.set_healthy(false);
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("woken");
        assert_eq!(watch.poll(), Some(SLOW_POLL));
        hub.set_healthy(true);
        assert_eq!(hub.watch(&key(1)).poll(), None);
    }
}
