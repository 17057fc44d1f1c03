//! A local replay tier: completed records kept in process, in front of any store.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::time::Instant;

use super::{
    eviction::EvictionQueue, BeginOutcome, IdempotencyStore, KeyWatch, LeaseToken, ReplayTier,
    StoreError, StoreKey, WatchKeys,
};
use crate::{fingerprint::Fingerprint, response::CompletedRecord};

const DEFAULT_MAX_ENTRIES: usize = 10_000;
const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;
/// What one cached record costs besides its headers and body.
const ENTRY_OVERHEAD: usize = 160;

/// Serves replays from this process's memory, in front of any store.
///
/// A completed record never changes before it expires, so once this instance has seen it (as a
/// replay, or by completing it), later replays skip the network. Only completed records are
/// kept, never an in-progress or released one; each is kept no longer than the store said it
/// lives; the cache is bounded in entries and bytes (oldest out first). Everything else, and
/// every miss, goes to the inner store, which alone decides who runs.
///
/// A record deleted from the inner store by hand stays replayable here until it would have
/// expired, on the instances that cached it.
///
/// ```no_run
/// use tower_idempotency::{IdempotencyLayer, RedisStore, ReplayCache};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = ReplayCache::new(RedisStore::connect("redis://127.0.0.1:6379").await?)
///     .with_max_entries(50_000)
///     .with_max_bytes(128 * 1024 * 1024);
/// let layer = IdempotencyLayer::new(store);
/// # Ok(()) }
/// ```
pub struct ReplayCache<St> {
    inner: St,
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    max_entries: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct State {
    entries: HashMap<StoreKey, Cached>,
    order: EvictionQueue<StoreKey>,
    bytes: usize,
}

struct Cached {
    fingerprint: Fingerprint,
    record: CompletedRecord,
    expires_at: Instant,
    bytes: usize,
    generation: u64,
}

impl<St: Clone> Clone for ReplayCache<St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<St: fmt::Debug> fmt::Debug for ReplayCache<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("ReplayCache")
            .field("inner", &self.inner)
            .field("entries", &state.entries.len())
            .field("bytes", &state.bytes)
            .field("max_entries", &self.shared.max_entries)
            .field("max_bytes", &self.shared.max_bytes)
            .finish()
    }
}

impl<St> ReplayCache<St> {
    /// Caches up to 10 000 records and 64 MiB in front of `inner`.
    pub fn new(inner: St) -> Self {
        Self::with_bounds(inner, DEFAULT_MAX_ENTRIES, DEFAULT_MAX_BYTES)
    }

    fn with_bounds(inner: St, max_entries: usize, max_bytes: usize) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                max_entries,
                max_bytes,
            }),
        }
    }

    /// Keeps at most this many records (0 turns the cache off). Drops what is cached.
    pub fn with_max_entries(self, max_entries: usize) -> Self {
        let max_bytes = self.shared.max_bytes;
        Self::with_bounds(self.inner, max_entries, max_bytes)
    }

    /// Keeps at most this many bytes of headers and bodies. Drops what is cached.
    pub fn with_max_bytes(self, max_bytes: usize) -> Self {
        let max_entries = self.shared.max_entries;
        Self::with_bounds(self.inner, max_entries, max_bytes)
    }

    /// The store behind the cache.
    pub fn get_ref(&self) -> &St {
        &self.inner
    }

    /// How many records are cached, and their size in bytes.
    pub fn usage(&self) -> (usize, usize) {
        let state = self.lock();
        (state.entries.len(), state.bytes)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation is a single map or counter update: a panic cannot leave it half done.
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached answer for `key`, if this instance has one.
    fn lookup(&self, key: &StoreKey, fingerprint: &Fingerprint) -> Option<BeginOutcome> {
        let now = Instant::now();
        let mut state = self.lock();
        let cached = state.entries.get(key)?;
        if cached.expires_at <= now {
            state.remove(key);
            return None;
        }
        Some(if cached.fingerprint == *fingerprint {
            BeginOutcome::Completed {
                record: cached.record.clone(),
                expires_in: Some(cached.expires_at - now),
            }
        } else {
            BeginOutcome::Mismatch
        })
    }

    fn insert(
        &self,
        key: StoreKey,
        fingerprint: Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) {
        let bytes = ENTRY_OVERHEAD + record_size(record);
        let shared = &self.shared;
        if shared.max_entries == 0 || bytes > shared.max_bytes {
            return;
        }
        let mut state = self.lock();
        state.remove(&key);
        while state.entries.len() >= shared.max_entries || state.bytes + bytes > shared.max_bytes {
            let Some((oldest, generation)) = state.order.pop() else {
                break;
            };
            if state
                .entries
                .get(&oldest)
                .is_some_and(|c| c.generation == generation)
            {
                state.remove(&oldest);
            }
        }
        let generation = state.order.push(key);
        state.bytes += bytes;
        state.entries.insert(
            key,
            Cached {
                fingerprint,
                record: record.clone(),
                expires_at: Instant::now() + ttl,
                bytes,
                generation,
            },
        );
        let State { entries, order, .. } = &mut *state;
        order.compact(entries.len(), |key, generation| {
            entries.get(key).is_some_and(|c| c.generation == generation)
        });
    }
}

impl State {
    fn remove(&mut self, key: &StoreKey) {
        if let Some(cached) = self.entries.remove(key) {
            self.bytes -= cached.bytes;
        }
    }
}

fn record_size(record: &CompletedRecord) -> usize {
    let headers = |map: &http::HeaderMap| -> usize {
        map.iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 8)
            .sum()
    };
    match record {
        CompletedRecord::Response(response) => {
            headers(&response.headers)
                + response.body.len()
                + response.trailers.as_ref().map_or(0, headers)
        }
        CompletedRecord::Tombstone { .. } | CompletedRecord::Broken { .. } => 0,
    }
}

impl<St: IdempotencyStore> IdempotencyStore for ReplayCache<St> {
    // Every replay it answers carries its expiry, so the default `begin_with_expiry` (which
    // calls this) serves a cache stacked above, too.
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<BeginOutcome, StoreError> {
        if let Some(outcome) = self.lookup(key, fingerprint) {
            return Ok(outcome);
        }
        let outcome = self
            .inner
            .begin_with_expiry(key, fingerprint, token, lease)
            .await?;
        if let BeginOutcome::Completed {
            record,
            expires_in: Some(expires_in),
        } = &outcome
        {
            self.insert(*key, *fingerprint, record, *expires_in);
        }
        Ok(outcome)
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        fingerprint: &Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let started = Instant::now();
        let completed = self
            .inner
            .complete(key, token, fingerprint, record, ttl)
            .await?;
        if completed {
            // Counted from before the call: never later than the store's own expiry.
            let ttl = ttl.saturating_sub(started.elapsed());
            self.insert(*key, *fingerprint, record, ttl);
        }
        Ok(completed)
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

/// A replay cache can be the fast tier of a [`TieredStore`](super::TieredStore): it answers from
/// what this instance has cached, and keeps what it is given.
impl<St: IdempotencyStore> ReplayTier for ReplayCache<St> {
    async fn peek(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
    ) -> Result<Option<BeginOutcome>, StoreError> {
        Ok(self.lookup(key, fingerprint))
    }

    async fn put_completed(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.insert(*key, *fingerprint, record, ttl);
        Ok(true)
    }
}

/// Waiters are woken by the store behind the cache, which decides.
impl<St: WatchKeys> WatchKeys for ReplayCache<St> {
    fn watch(&self, key: &StoreKey) -> KeyWatch {
        self.inner.watch(key)
    }
}
