//! Waking waiters when a key changes: the ability of a store to say so, and the in-process hub
//! that hands each change to the requests waiting on that key.

use std::{collections::HashMap, fmt, sync::Arc, time::Duration};

use tokio::sync::{mpsc, watch};

use super::{IdempotencyStore, StoreKey};
use crate::sync::{Mutex, MutexGuard};

/// How often a waiter looks at the store itself while notifications are broken.
const SLOW_POLL: Duration = Duration::from_millis(250);

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
    /// Woken by the hub; polls while the hub's notifications are broken.
    Hub {
        changes: watch::Receiver<KeyState>,
        health: watch::Receiver<Health>,
        hub: Arc<KeyHub>,
        key: StoreKey,
    },
    /// No notifications: the waiter looks again every `interval`.
    Polling { interval: Duration },
}

/// What a key's channel says: how often it changed, and whether the store delivers its
/// changes yet (a remote subscription is confirmed after the waiter subscribed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyState {
    changes: u64,
    subscribed: bool,
}

/// Whether a hub's notifications reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Health {
    /// The subscriber connection is being made for the first time.
    Connecting,
    /// Every watched key's changes arrive.
    Up,
    /// The subscriber connection broke: changes may be missed, waiters poll.
    Down,
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
            kind: Kind::Polling {
                interval: interval.max(MIN_POLL),
            },
        }
    }

    /// How often the waiter must look at the store itself: `None` while notifications work.
    pub fn poll(&self) -> Option<Duration> {
        match &self.kind {
            Kind::Hub { health, .. } => (*health.borrow() != Health::Up).then_some(SLOW_POLL),
            Kind::Polling { interval } => Some(*interval),
        }
    }

    /// Resolves once the store delivers this key's changes (a remote subscription is
    /// confirmed and its connection is up), or its notifications are broken. The waiter looks at the key only after
    /// this, so a change between that look and the wait cannot be missed.
    pub async fn ready(&mut self) {
        if let Kind::Hub {
            changes, health, ..
        } = &mut self.kind
        {
            let mut connected = health.clone();
            let delivered = async {
                // An error: the sender went with its hub; nothing will come, the waiter polls.
                let _ = changes.wait_for(|state| state.subscribed).await;
                // A listener started by this very wait may still be connecting.
                let _ = connected
                    .wait_for(|health| *health != Health::Connecting)
                    .await;
            };
            tokio::select! {
                () = delivered => {}
                _ = health.wait_for(|health| *health == Health::Down) => {}
            }
            // The waiter looks at the key next: a change of health until now is no news.
            health.borrow_and_update();
        }
    }

    /// Resolves when the key changed since the subscription (or since the last time this
    /// resolved), or when the notifications broke or came back (then [`poll`](Self::poll)
    /// says how to go on). A polling watch never resolves.
    pub async fn changed(&mut self) {
        match &mut self.kind {
            Kind::Hub {
                changes, health, ..
            } => {
                tokio::select! {
                    // A sender dropped with its hub: nothing will ever come; let the waiter poll.
                    changed = changes.changed() => if changed.is_err() { std::future::pending::<()>().await },
                    changed = health.changed() => if changed.is_err() { std::future::pending::<()>().await },
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

/// The shortest polling interval: a zero interval would spin.
const MIN_POLL: Duration = Duration::from_millis(1);

/// The keys this process waits on, each with a channel that counts its changes, and whether
/// the notifications that feed them work.
pub(crate) struct KeyHub {
    keys: Mutex<HashMap<StoreKey, watch::Sender<KeyState>>>,
    health: watch::Sender<Health>,
    /// Where a remote hub reports the keys whose watchers came or went, for its subscriber to
    /// subscribe or unsubscribe; `None` in process, where every key is delivered at once.
    subscriptions: Option<mpsc::UnboundedSender<StoreKey>>,
}

impl fmt::Debug for KeyHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyHub")
            .field("keys", &self.lock().len())
            .field("health", &*self.health.borrow())
            .finish()
    }
}

// Used by the stores that notify; without any of them only the trait remains.
#[cfg_attr(
    not(all(feature = "memory", any(feature = "redis", feature = "postgres"))),
    allow(dead_code)
)]
impl KeyHub {
    /// A hub fed in process: every change is delivered the moment it is made.
    pub(crate) fn in_process() -> Arc<Self> {
        Arc::new(Self {
            keys: Mutex::new(HashMap::new()),
            health: watch::Sender::new(Health::Up),
            subscriptions: None,
        })
    }

    /// A hub fed by a subscriber connection: it gets, through the receiver, each key whose
    /// watchers came or went, subscribes or unsubscribes, and then confirms
    /// ([`confirm`](Self::confirm)) and reports its health.
    pub(crate) fn remote() -> (Arc<Self>, mpsc::UnboundedReceiver<StoreKey>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let hub = Arc::new(Self {
            keys: Mutex::new(HashMap::new()),
            health: watch::Sender::new(Health::Connecting),
            subscriptions: Some(sender),
        });
        (hub, receiver)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<StoreKey, watch::Sender<KeyState>>> {
        // Every change is one map operation: a panic elsewhere cannot leave it half-done.
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A subscription to `key`.
    pub(crate) fn watch(self: &Arc<Self>, key: &StoreKey) -> KeyWatch {
        let changes = {
            let mut keys = self.lock();
            let changes = keys.entry(*key).or_insert_with(|| {
                if let Some(subscriptions) = &self.subscriptions {
                    // The subscriber is gone only with the store's last handle.
                    let _ = subscriptions.send(*key);
                }
                watch::Sender::new(KeyState {
                    changes: 0,
                    subscribed: self.subscriptions.is_none(),
                })
            });
            changes.subscribe()
        };
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
            changes.send_modify(|state| state.changes = state.changes.wrapping_add(1));
        }
    }

    /// Whether anyone waits on `key`.
    pub(crate) fn is_watched(&self, key: &StoreKey) -> bool {
        self.lock().contains_key(key)
    }

    /// Every key waited on.
    pub(crate) fn watched(&self) -> Vec<StoreKey> {
        self.lock().keys().copied().collect()
    }

    /// The store now delivers these keys' changes: their waiters may look at them and wait.
    pub(crate) fn confirm(&self, keys: &[StoreKey]) {
        let map = self.lock();
        for key in keys {
            if let Some(changes) = map.get(key) {
                changes.send_if_modified(|state| !std::mem::replace(&mut state.subscribed, true));
            }
        }
    }

    /// Whether the notifications reach the hub: while they do not, waiters poll; when they
    /// break or come back, every waiter is woken to look (a change may have been missed).
    pub(crate) fn set_health(&self, health: Health) {
        self.health.send_if_modified(|current| {
            let changed = *current != health;
            *current = health;
            changed
        });
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
            if let Some(subscriptions) = &self.subscriptions {
                let _ = subscriptions.send(*key);
            }
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
        let hub = KeyHub::in_process();
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
        let hub = KeyHub::in_process();
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
        let hub = KeyHub::in_process();
        let mut watch = hub.watch(&key(1));
        hub.set_health(Health::Down);
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("woken");
        assert_eq!(watch.poll(), Some(SLOW_POLL));
        hub.set_health(Health::Up);
        assert_eq!(hub.watch(&key(1)).poll(), None);
    }

    #[tokio::test]
    async fn a_remote_key_is_ready_once_its_subscription_is_confirmed() {
        let (hub, mut subscriptions) = KeyHub::remote();
        hub.set_health(Health::Up);
        let mut watch = hub.watch(&key(1));
        assert_eq!(subscriptions.recv().await, Some(key(1)));
        let early = tokio::time::timeout(Duration::from_millis(20), watch.ready()).await;
        assert!(
            early.is_err(),
            "ready before the subscription was confirmed"
        );
        hub.confirm(&[key(1)]);
        tokio::time::timeout(Duration::from_secs(5), watch.ready())
            .await
            .expect("ready");
        // The confirmation itself is no change of the key.
        let woken = tokio::time::timeout(Duration::from_millis(20), watch.changed()).await;
        assert!(woken.is_err(), "the confirmation woke the waiter");
        drop(watch);
        assert_eq!(
            subscriptions.recv().await,
            Some(key(1)),
            "the last watcher left"
        );
        assert!(!hub.is_watched(&key(1)));
    }

    #[tokio::test]
    async fn a_remote_key_waits_no_longer_than_the_notifications_work() {
        let (hub, _subscriptions) = KeyHub::remote();
        let mut watch = hub.watch(&key(1));
        hub.set_health(Health::Down);
        tokio::time::timeout(Duration::from_secs(5), watch.ready())
            .await
            .expect("ready: the waiter polls");
        assert_eq!(watch.poll(), Some(SLOW_POLL));
    }
}
