//! Stores chosen at run time, and shared ones.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use super::{
    BeginOutcome, IdempotencyStore, KeyWatch, LeaseToken, ReplayTier, StoreError, StoreKey,
    WatchKeys,
};
use crate::{fingerprint::Fingerprint, response::CompletedRecord};

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A store that is shared: every call goes to the one behind the `Arc`.
impl<St: IdempotencyStore> IdempotencyStore for Arc<St> {
    fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: &LeaseToken,
        lease: Duration,
    ) -> impl Future<Output = Result<BeginOutcome, StoreError>> + Send {
        St::begin(self, key, fingerprint, token, lease)
    }

    fn begin_with_expiry(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: &LeaseToken,
        lease: Duration,
    ) -> impl Future<Output = Result<BeginOutcome, StoreError>> + Send {
        St::begin_with_expiry(self, key, fingerprint, token, lease)
    }

    fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        fingerprint: &Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        St::complete(self, key, token, fingerprint, record, ttl)
    }

    fn release(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        St::release(self, key, token)
    }

    fn renew(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        St::renew(self, key, token, lease)
    }
}

impl<St: ReplayTier> ReplayTier for Arc<St> {
    fn peek(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
    ) -> impl Future<Output = Result<Option<BeginOutcome>, StoreError>> + Send {
        St::peek(self, key, fingerprint)
    }

    fn put_completed(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        St::put_completed(self, key, fingerprint, record, ttl)
    }
}

impl<St: WatchKeys> WatchKeys for Arc<St> {
    fn watch(&self, key: &StoreKey) -> KeyWatch {
        St::watch(self, key)
    }
}

/// The calls of [`IdempotencyStore`] with boxed futures, so that a store can sit behind
/// `dyn`: the trait's own `impl Future` returns cannot.
trait ErasedStore: fmt::Debug + Send + Sync + 'static {
    fn begin<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        token: &'a LeaseToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<BeginOutcome, StoreError>>;

    fn begin_with_expiry<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        token: &'a LeaseToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<BeginOutcome, StoreError>>;

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a LeaseToken,
        fingerprint: &'a Fingerprint,
        record: &'a CompletedRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    fn release<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a LeaseToken,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a LeaseToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
}

impl<St: IdempotencyStore> ErasedStore for St {
    fn begin<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        token: &'a LeaseToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<BeginOutcome, StoreError>> {
        Box::pin(IdempotencyStore::begin(
            self,
            key,
            fingerprint,
            token,
            lease,
        ))
    }

    fn begin_with_expiry<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        token: &'a LeaseToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<BeginOutcome, StoreError>> {
        Box::pin(IdempotencyStore::begin_with_expiry(
            self,
            key,
            fingerprint,
            token,
            lease,
        ))
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a LeaseToken,
        fingerprint: &'a Fingerprint,
        record: &'a CompletedRecord,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(IdempotencyStore::complete(
            self,
            key,
            token,
            fingerprint,
            record,
            ttl,
        ))
    }

    fn release<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a LeaseToken,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(IdempotencyStore::release(self, key, token))
    }

    fn renew<'a>(
        &'a self,
        key: &'a StoreKey,
        token: &'a LeaseToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(IdempotencyStore::renew(self, key, token, lease))
    }
}

/// Any store, chosen at run time: one type for a store picked from the environment, with no
/// enum written by hand. Each call costs one allocation (a boxed future). Cheap to clone.
///
/// It is a plain [`IdempotencyStore`]: the optional abilities of the store inside (such as
/// [`ReplayTier`]) do not pass through, so build a [`TieredStore`](super::TieredStore) or
/// [`ReplayCache`](super::ReplayCache) from concrete stores, then box the result.
///
/// ```
/// use tower_idempotency::{DynStore, IdempotencyLayer, MemoryStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = match std::env::var("REDIS_URL") {
///     Ok(url) => DynStore::new(tower_idempotency::RedisStore::connect(&url).await?),
///     Err(_) => DynStore::new(MemoryStore::new()),
/// };
/// let layer = IdempotencyLayer::new(store);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct DynStore {
    store: Arc<dyn ErasedStore>,
    watcher: Option<Arc<Watcher>>,
}

type Watcher = dyn Fn(&StoreKey) -> KeyWatch + Send + Sync;

impl DynStore {
    /// Boxes `store`. Its waiters poll (see [`with_watch`](Self::with_watch)).
    pub fn new(store: impl IdempotencyStore) -> Self {
        Self {
            store: Arc::new(store),
            watcher: None,
        }
    }

    /// Boxes `store` with its [`WatchKeys`] ability, so that waiters are woken by it.
    pub fn with_watch(store: impl WatchKeys) -> Self {
        let store = Arc::new(store);
        let watched = Arc::clone(&store);
        Self {
            store,
            watcher: Some(Arc::new(move |key: &StoreKey| watched.watch(key))),
        }
    }
}

/// The boxed store's watch, when it was boxed [`with_watch`](DynStore::with_watch); else a watch
/// that polls.
impl WatchKeys for DynStore {
    fn watch(&self, key: &StoreKey) -> KeyWatch {
        match &self.watcher {
            Some(watch) => watch(key),
            None => KeyWatch::polling(crate::policy::DEFAULT_POLL),
        }
    }
}

impl fmt::Debug for DynStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynStore")
            .field("store", &self.store)
            .field("watches", &self.watcher.is_some())
            .finish()
    }
}

impl IdempotencyStore for DynStore {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<BeginOutcome, StoreError> {
        self.store.begin(key, fingerprint, token, lease).await
    }

    async fn begin_with_expiry(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<BeginOutcome, StoreError> {
        self.store
            .begin_with_expiry(key, fingerprint, token, lease)
            .await
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        fingerprint: &Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.store
            .complete(key, token, fingerprint, record, ttl)
            .await
    }

    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<bool, StoreError> {
        self.store.release(key, token).await
    }

    async fn renew(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.store.renew(key, token, lease).await
    }
}
