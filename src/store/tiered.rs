//! A fast store in front of a durable one: the durable store decides, the fast one replays.

use std::time::Duration;

use super::{BeginOutcome, IdempotencyStore, LeaseToken, StoreError, StoreKey};
use crate::{fingerprint::Fingerprint, response::CompletedRecord};

/// Two stores in one: `Durable` holds the locks and the records and alone decides who runs;
/// `Fast` serves replays and is filled when a record is completed or read from `Durable`.
///
/// The fast tier is only a cache. Losing its data (a flush, a restart) costs round trips, never
/// a duplicate run; a fast tier that fails is logged and skipped. The usual pair is Redis in
/// front of PostgreSQL:
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
}

impl<Fast, Durable> TieredStore<Fast, Durable> {
    /// `fast` in front of `durable`.
    pub fn new(fast: Fast, durable: Durable) -> Self {
        Self { fast, durable }
    }

    /// The fast tier.
    pub fn fast(&self) -> &Fast {
        &self.fast
    }

    /// The durable tier.
    pub fn durable(&self) -> &Durable {
        &self.durable
    }
}

impl<Fast: IdempotencyStore, Durable: IdempotencyStore> TieredStore<Fast, Durable> {
    async fn fill(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) {
        if let Err(error) = self.fast.put_completed(key, fingerprint, record, ttl).await {
            tracing::warn!(key = %key, %error, "idempotency: could not fill the fast tier");
        }
    }
}

impl<Fast: IdempotencyStore, Durable: IdempotencyStore> IdempotencyStore
    for TieredStore<Fast, Durable>
{
    // Every replay it answers carries its expiry (the fast tier's `peek` and the durable
    // `begin_with_expiry` report it), so the default `begin_with_expiry` serves caches above.
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<BeginOutcome, StoreError> {
        match self.fast.peek(key, fingerprint).await {
            Ok(Some(outcome)) => return Ok(outcome),
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(key = %key, %error, "idempotency: fast tier failed; asking the durable one");
            }
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

    async fn peek(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
    ) -> Result<Option<BeginOutcome>, StoreError> {
        match self.fast.peek(key, fingerprint).await {
            Ok(Some(outcome)) => Ok(Some(outcome)),
            _ => self.durable.peek(key, fingerprint).await,
        }
    }
}
