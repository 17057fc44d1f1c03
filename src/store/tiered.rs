//! A fast store in front of a durable one: the durable store decides, the fast one replays.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::time::Instant;

use super::{
    BeginOutcome, IdempotencyStore, KeyWatch, LeaseToken, ReplayTier, StoreError, StoreKey,
    WatchKeys,
};
use crate::{fingerprint::Fingerprint, response::CompletedRecord};

/// The default bound on one call to the fast tier: 100 ms.
const DEFAULT_FAST_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a failed fast tier is left alone before it is tried again.
const FAST_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Two stores in one: `Durable` holds the locks and the records and alone decides who runs;
/// `Fast` serves replays and is filled when a record is completed or read from `Durable`.
///
/// The fast tier is only a cache. Losing its data (a flush, a restart) costs round trips, never
/// a duplicate run. Its outage is not the service's: each fast call is bounded (100 ms by
/// default, [`with_fast_timeout`](Self::with_fast_timeout)), and a fast tier that failed or
/// timed out is left alone for a second while the durable tier answers alone (logged once when
/// it goes and once when it is back; [`fast_tier_failures`](Self::fast_tier_failures) counts the
/// failures). The fast tier must be a [`ReplayTier`]. The usual pair is Redis in front of
/// PostgreSQL:
///
/// ```no_run
/// # #[cfg(all(feature = "redis", feature = "postgres"))]
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_idempotency::{IdempotencyLayer, PostgresStore, RedisStore, TieredStore};
///
/// let fast = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let durable = PostgresStore::new(sqlx::PgPool::connect("postgres://app@localhost/app").await?);
/// let layer = IdempotencyLayer::new(TieredStore::new(fast, durable));
/// # Ok(()) }
/// ```
///
/// A replay the fast tier knows costs one fast round trip; any other request costs the durable
/// store's round trips, plus one fast `peek` first and one fast fill after a completion or a
/// durable replay.
#[derive(Debug, Clone)]
pub struct TieredStore<Fast, Durable> {
    fast: Fast,
    durable: Durable,
    fast_timeout: Duration,
    health: Arc<FastHealth>,
}

/// Whether the fast tier is worth asking now.
#[derive(Debug, Default)]
struct FastHealth {
    /// When to try a failed fast tier again; `None` while it answers.
    resting_until: Mutex<Option<Instant>>,
    down: AtomicBool,
    failures: AtomicU64,
}

impl FastHealth {
    fn available(&self) -> bool {
        let resting = self.resting_until.lock().unwrap_or_else(|p| p.into_inner());
        resting.is_none_or(|until| Instant::now() >= until)
    }

    fn failed(&self, key: &StoreKey, error: &StoreError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.resting_until.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(Instant::now() + FAST_RETRY_AFTER);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(key = %key, %error, "idempotency: fast tier failed; the durable tier answers alone until it is back");
        }
    }

    fn answered(&self) {
        if self.down.swap(false, Ordering::Relaxed) {
            *self.resting_until.lock().unwrap_or_else(|p| p.into_inner()) = None;
            tracing::info!("idempotency: fast tier is back");
        }
    }
}

impl<Fast, Durable> TieredStore<Fast, Durable> {
    /// `fast` in front of `durable`.
    pub fn new(fast: Fast, durable: Durable) -> Self {
        Self {
            fast,
            durable,
            fast_timeout: DEFAULT_FAST_TIMEOUT,
            health: Arc::default(),
        }
    }

    /// Bounds each call to the fast tier (default 100 ms): past it, the durable tier answers.
    /// Keep it well under the layer's store timeout, which bounds both tiers together.
    pub fn with_fast_timeout(mut self, timeout: Duration) -> Self {
        self.fast_timeout = timeout;
        self
    }

    /// The fast tier.
    pub fn fast(&self) -> &Fast {
        &self.fast
    }

    /// The durable tier.
    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    /// How many fast-tier calls failed or timed out, since this store was made (shared by its
    /// clones): a number to export as a metric.
    pub fn fast_tier_failures(&self) -> u64 {
        self.health.failures.load(Ordering::Relaxed)
    }

    /// Runs one fast-tier call, bounded, unless the fast tier is resting: `None` when it did not
    /// answer.
    async fn ask_fast<T>(
        &self,
        key: &StoreKey,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Option<T> {
        if !self.health.available() {
            return None;
        }
        let answer = tokio::time::timeout(self.fast_timeout, call)
            .await
            .unwrap_or(Err(StoreError::Timeout));
        match answer {
            Ok(value) => {
                self.health.answered();
                Some(value)
            }
            Err(error) => {
                self.health.failed(key, &error);
                None
            }
        }
    }
}

impl<Fast: ReplayTier, Durable: IdempotencyStore> TieredStore<Fast, Durable> {
    async fn fill(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) {
        let fill = self.fast.put_completed(key, fingerprint, record, ttl);
        let _ = self.ask_fast(key, fill).await;
    }
}

impl<Fast: ReplayTier, Durable: IdempotencyStore> IdempotencyStore for TieredStore<Fast, Durable> {
    // Every replay it answers carries its expiry (the fast tier's `peek` and the durable
    // `begin_with_expiry` report it), so the default `begin_with_expiry` serves caches above.
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<BeginOutcome, StoreError> {
        let peeked = self.ask_fast(key, self.fast.peek(key, fingerprint)).await;
        if let Some(Some(outcome)) = peeked {
            return Ok(outcome);
        }
        let outcome = self
            .durable
            .begin_with_expiry(key, fingerprint, token, lease)
            .await?;
        if let BeginOutcome::Completed {
            record,
            expires_in: Some(expires_in),
        } = &outcome
        {
            self.fill(key, fingerprint, record, *expires_in).await;
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
        let completed = self
            .durable
            .complete(key, token, fingerprint, record, ttl)
            .await?;
        if completed {
            self.fill(key, fingerprint, record, ttl).await;
        }
        Ok(completed)
    }

    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<bool, StoreError> {
        self.durable.release(key, token).await
    }

    async fn renew(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.durable.renew(key, token, lease).await
    }
}

/// Tiers stack: a tiered store whose tiers both replay can be a fast tier itself.
impl<Fast: ReplayTier, Durable: ReplayTier> ReplayTier for TieredStore<Fast, Durable> {
    async fn peek(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
    ) -> Result<Option<BeginOutcome>, StoreError> {
        if let Some(Some(outcome)) = self.ask_fast(key, self.fast.peek(key, fingerprint)).await {
            return Ok(Some(outcome));
        }
        self.durable.peek(key, fingerprint).await
    }

    async fn put_completed(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let kept = self
            .durable
            .put_completed(key, fingerprint, record, ttl)
            .await?;
        self.fill(key, fingerprint, record, ttl).await;
        Ok(kept)
    }
}

/// Waiters are woken by the durable tier, which decides.
impl<Fast: ReplayTier, Durable: WatchKeys> WatchKeys for TieredStore<Fast, Durable> {
    fn watch(&self, key: &StoreKey) -> KeyWatch {
        self.durable.watch(key)
    }
}
