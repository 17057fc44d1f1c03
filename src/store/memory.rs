//! A bounded, expiring store in this process's memory.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::time::Instant;

use super::{
    eviction::EvictionQueue, BeginOutcome, FencingToken, IdempotencyStore, KeyHub, KeyWatch,
    LeaseToken, ReplayTier, StoreError, StoreKey, WatchKeys,
};
use crate::{
    fingerprint::Fingerprint,
    response::CompletedRecord,
    sync::{AtomicU64, Mutex, MutexGuard, Ordering},
};

/// The default bound on live records.
const DEFAULT_MAX_ENTRIES: usize = 100_000;

/// Keeps records in memory: for tests and single-instance apps.
///
/// Bounded: when `max_entries` live records exist, expired ones are dropped first, then the oldest
/// completed ones (a retry of an evicted key would run again, so size the bound above your
/// traffic per result TTL). In-progress records are never evicted; when only they fill the store,
/// `begin` fails with [`StoreError::Capacity`] and the layer answers 503.
///
/// Cloning is cheap and shares the records.
///
/// ```
/// use tower_idempotency::{IdempotencyLayer, MemoryStore};
///
/// let layer = IdempotencyLayer::new(MemoryStore::with_max_entries(10_000));
/// ```
#[derive(Debug, Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    max_entries: usize,
    /// One counter for every key: growing globally means growing per key.
    fence: AtomicU64,
    /// Wakes the requests waiting on a key when it is completed or released.
    waiters: Arc<KeyHub>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<StoreKey, Entry>,
    /// Completed records in completion order, for eviction.
    completed: EvictionQueue<StoreKey>,
}

#[derive(Debug)]
struct Entry {
    fingerprint: Fingerprint,
    expires_at: Instant,
    slot: Slot,
}

#[derive(Debug)]
enum Slot {
    InProgress {
        token: LeaseToken,
    },
    Completed {
        // Boxed: it keeps map entries small, and the map is what a full store is made of.
        record: Box<CompletedRecord>,
        generation: u64,
        /// Who completed it, so that a `complete` sent twice succeeds twice; `None` for a
        /// record another store completed.
        by: Option<LeaseToken>,
    },
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store bounded to 100 000 live records.
    pub fn new() -> Self {
        Self::with_max_entries(DEFAULT_MAX_ENTRIES)
    }

    /// A store bounded to `max_entries` live records (at least 1).
    pub fn with_max_entries(max_entries: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                max_entries: max_entries.max(1),
                fence: AtomicU64::new(0),
                waiters: KeyHub::in_process(),
            }),
        }
    }

    /// How many records are held now, live or not yet swept.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave `State` half-updated in a way that matters:
        // every mutation is a single map or queue operation.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the caller's in-progress entry, if it still holds `token` and is live.
    fn with_held<T>(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        f: impl FnOnce(&mut State) -> T,
    ) -> Option<T> {
        let mut state = self.lock();
        let held = matches!(
            state.entries.get(key),
            Some(Entry { slot: Slot::InProgress { token: held }, expires_at, .. })
                if held == token && *expires_at > Instant::now()
        );
        held.then(|| f(&mut state))
    }
}

impl State {
    /// Puts a completed record in `key`'s place (which `make_room` made, or which it holds).
    fn insert_completed(
        &mut self,
        key: StoreKey,
        fingerprint: Fingerprint,
        record: &CompletedRecord,
        expires_at: Instant,
        by: Option<LeaseToken>,
    ) {
        let generation = self.completed.push(key);
        let slot = Slot::Completed {
            record: Box::new(record.clone()),
            generation,
            by,
        };
        self.entries.insert(
            key,
            Entry {
                fingerprint,
                expires_at,
                slot,
            },
        );
        let entries = &self.entries;
        self.completed.compact(entries.len(), |key, generation| {
            is_queued(entries, key, generation)
        });
    }

    /// Frees one place, oldest completed record first; `false` when none can go.
    fn make_room(&mut self, max_entries: usize, now: Instant) -> bool {
        while self.entries.len() >= max_entries {
            let Some((key, generation)) = self.completed.pop() else {
                // Only in-progress records left in the queue's view: sweep expired leases.
                self.entries.retain(|_, e| e.expires_at > now);
                return self.entries.len() < max_entries;
            };
            if is_queued(&self.entries, &key, generation) {
                self.entries.remove(&key);
            }
        }
        true
    }
}

/// Whether the queue item (`key`, `generation`) still names a completed record.
fn is_queued(entries: &HashMap<StoreKey, Entry>, key: &StoreKey, generation: u64) -> bool {
    matches!(
        entries.get(key),
        Some(Entry { slot: Slot::Completed { generation: g, .. }, .. }) if *g == generation
    )
}

impl IdempotencyStore for MemoryStore {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<BeginOutcome, StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        match state.entries.get(key) {
            // The same holder asking again (a `begin` whose reply was lost) gets its lease back.
            Some(Entry {
                fingerprint: held_for,
                slot: Slot::InProgress { token: held },
                expires_at,
            }) if *expires_at > now && held == token && held_for == fingerprint => {}
            Some(entry) if entry.expires_at > now => {
                return Ok(if entry.fingerprint != *fingerprint {
                    BeginOutcome::Mismatch
                } else {
                    match &entry.slot {
                        Slot::Completed { record, .. } => BeginOutcome::Completed {
                            record: (**record).clone(),
                            expires_in: Some(entry.expires_at - now),
                        },
                        Slot::InProgress { .. } => BeginOutcome::InProgress {
                            retry_after: Some(entry.expires_at - now),
                        },
                    }
                });
            }
            Some(_) => {
                state.entries.remove(key);
            }
            None => {}
        }
        if !state.make_room(self.shared.max_entries, now) {
            return Err(StoreError::Capacity);
        }
        state.entries.insert(
            *key,
            Entry {
                fingerprint: *fingerprint,
                expires_at: now + lease,
                slot: Slot::InProgress { token: *token },
            },
        );
        let fence = self.shared.fence.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(BeginOutcome::Acquired {
            fencing_token: FencingToken::new(fence),
        })
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        fingerprint: &Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let completed = self.with_held(key, token, |state| {
            let fingerprint = state
                .entries
                .get(key)
                .map_or(*fingerprint, |e| e.fingerprint);
            let expires_at = Instant::now() + ttl;
            state.insert_completed(*key, fingerprint, record, expires_at, Some(*token));
        });
        if completed.is_some() {
            self.shared.waiters.notify(key);
            return Ok(true);
        }
        // Sent twice by the same holder with the same record (its first reply was lost).
        let state = self.lock();
        Ok(matches!(
            state.entries.get(key),
            Some(Entry { slot: Slot::Completed { by: Some(by), record: kept, .. }, expires_at, .. })
                if by == token && **kept == *record && *expires_at > Instant::now()
        ))
    }

    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<bool, StoreError> {
        let released = self
            .with_held(key, token, |state| {
                state.entries.remove(key);
            })
            .is_some();
        if released {
            self.shared.waiters.notify(key);
        }
        Ok(released)
    }

    async fn renew(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        Ok(self
            .with_held(key, token, |state| {
                if let Some(entry) = state.entries.get_mut(key) {
                    entry.expires_at = Instant::now() + lease;
                }
            })
            .is_some())
    }
}

/// In process: a completion or release wakes this key's waiters at once, no polling at all.
impl WatchKeys for MemoryStore {
    fn watch(&self, key: &StoreKey) -> KeyWatch {
        self.shared.waiters.watch(key)
    }
}

impl ReplayTier for MemoryStore {
    async fn peek(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
    ) -> Result<Option<BeginOutcome>, StoreError> {
        let now = Instant::now();
        let state = self.lock();
        Ok(match state.entries.get(key) {
            Some(entry) if entry.expires_at > now => match &entry.slot {
                Slot::Completed { .. } if entry.fingerprint != *fingerprint => {
                    Some(BeginOutcome::Mismatch)
                }
                Slot::Completed { record, .. } => Some(BeginOutcome::Completed {
                    record: (**record).clone(),
                    expires_in: Some(entry.expires_at - now),
                }),
                Slot::InProgress { .. } => None,
            },
            _ => None,
        })
    }

    async fn put_completed(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        match state.entries.get(key) {
            Some(Entry {
                slot: Slot::InProgress { .. },
                expires_at,
                ..
            }) if *expires_at > now => return Ok(false),
            Some(_) => {
                state.entries.remove(key);
            }
            None => {}
        }
        if !state.make_room(self.shared.max_entries, now) {
            return Ok(false);
        }
        state.insert_completed(*key, *fingerprint, record, now + ttl, None);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::response::RecordedResponse;
    use http::StatusCode;

    fn key(n: u8) -> StoreKey {
        StoreKey::from_bytes([n; 32])
    }

    fn record() -> CompletedRecord {
        CompletedRecord::Response(RecordedResponse::new(
            StatusCode::OK,
            Default::default(),
            "ok".into(),
        ))
    }

    const FP: Fingerprint = Fingerprint::from_bytes([7; 32]);
    const LEASE: Duration = Duration::from_secs(10);

    async fn acquire_and_complete(store: &MemoryStore, key: &StoreKey) {
        let token = LeaseToken::generate();
        let outcome = store.begin(key, &FP, &token, LEASE).await.unwrap();
        assert!(
            matches!(outcome, BeginOutcome::Acquired { .. }),
            "{outcome:?}"
        );
        assert!(store
            .complete(key, &token, &FP, &record(), LEASE)
            .await
            .unwrap());
    }

    #[tokio::test]
    async fn evicts_the_oldest_completed_record_when_full() {
        let store = MemoryStore::with_max_entries(3);
        for n in 0..5 {
            acquire_and_complete(&store, &key(n)).await;
        }
        assert_eq!(store.len(), 3);
        let probe = LeaseToken::generate();
        // Keys 0 and 1 went first; 4 is still there.
        assert!(matches!(
            store.begin(&key(4), &FP, &probe, LEASE).await.unwrap(),
            BeginOutcome::Completed { .. }
        ));
        assert!(matches!(
            store.begin(&key(0), &FP, &probe, LEASE).await.unwrap(),
            BeginOutcome::Acquired { .. }
        ));
    }

    #[tokio::test]
    async fn never_evicts_in_progress_records() {
        let store = MemoryStore::with_max_entries(2);
        for n in 0..2 {
            let outcome = store
                .begin(&key(n), &FP, &LeaseToken::generate(), LEASE)
                .await
                .unwrap();
            assert!(matches!(outcome, BeginOutcome::Acquired { .. }));
        }
        let err = store
            .begin(&key(9), &FP, &LeaseToken::generate(), LEASE)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Capacity));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_leases_free_their_place() {
        let store = MemoryStore::with_max_entries(1);
        store
            .begin(&key(1), &FP, &LeaseToken::generate(), LEASE)
            .await
            .unwrap();
        tokio::time::advance(LEASE + Duration::from_millis(1)).await;
        let outcome = store
            .begin(&key(2), &FP, &LeaseToken::generate(), LEASE)
            .await
            .unwrap();
        assert!(matches!(outcome, BeginOutcome::Acquired { .. }));
    }

    #[tokio::test]
    async fn the_eviction_queue_stays_bounded() {
        let store = MemoryStore::with_max_entries(1000);
        for _ in 0..500 {
            let token = LeaseToken::generate();
            let outcome = store.begin(&key(1), &FP, &token, LEASE).await.unwrap();
            assert!(matches!(outcome, BeginOutcome::Acquired { .. }));
            // A zero TTL expires the record at once, so every round completes it anew.
            assert!(store
                .complete(&key(1), &token, &FP, &record(), Duration::ZERO)
                .await
                .unwrap());
        }
        let state = store.lock();
        assert!(
            state.completed.len() <= 2 * state.entries.len() + 65,
            "{}",
            state.completed.len()
        );
    }
}
