//! The store the examples run on, picked from the environment, as one type.

use std::time::Duration;

use tower_idempotency::{
    BeginOutcome, CompletedRecord, Fingerprint, IdempotencyStore, LeaseToken, MemoryStore,
    RedisStore, StoreError, StoreKey,
};

/// `MemoryStore` by default; `RedisStore` with `REDIS_URL`; `PostgresStore` with `DATABASE_URL`
/// (feature `postgres`); Redis in front of PostgreSQL with both and `IDEMPOTENCY_STORE=tiered`.
#[derive(Debug, Clone)]
pub(crate) enum AnyStore {
    Memory(MemoryStore),
    Redis(RedisStore),
    #[cfg(feature = "postgres")]
    Postgres(tower_idempotency::PostgresStore),
    #[cfg(feature = "postgres")]
    Tiered(tower_idempotency::TieredStore<RedisStore, tower_idempotency::PostgresStore>),
}

impl AnyStore {
    pub(crate) async fn from_env(
        redis_url: Option<&str>,
        database_url: Option<&str>,
        tiered: bool,
    ) -> Result<(Self, &'static str), Box<dyn std::error::Error>> {
        let redis = match redis_url {
            Some(url) => Some(RedisStore::connect(url).await?),
            None => None,
        };
        let Some(database_url) = database_url else {
            return Ok(match redis {
                Some(redis) => (Self::Redis(redis), "redis"),
                None => (Self::Memory(MemoryStore::new()), "memory"),
            });
        };
        #[cfg(feature = "postgres")]
        {
            let pool = sqlx::PgPool::connect(database_url).await?;
            let postgres = tower_idempotency::PostgresStore::new(pool);
            postgres.migrate().await?;
            postgres.spawn_reaper(Duration::from_secs(60));
            match redis {
                Some(redis) if tiered => Ok((
                    Self::Tiered(tower_idempotency::TieredStore::new(redis, postgres)),
                    "tiered",
                )),
                _ => Ok((Self::Postgres(postgres), "postgres")),
            }
        }
        #[cfg(not(feature = "postgres"))]
        {
            let _ = (database_url, tiered);
            Err("DATABASE_URL needs the postgres feature: cargo run --features postgres --example ...".into())
        }
    }
}

/// Calls the same method on whichever store this is.
macro_rules! each {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Memory($store) => $call.await,
            AnyStore::Redis($store) => $call.await,
            #[cfg(feature = "postgres")]
            AnyStore::Postgres($store) => $call.await,
            #[cfg(feature = "postgres")]
            AnyStore::Tiered($store) => $call.await,
        }
    };
}

impl IdempotencyStore for AnyStore {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<BeginOutcome, StoreError> {
        each!(self, s => s.begin(key, fingerprint, token, lease))
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        fingerprint: &Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        each!(self, s => s.complete(key, token, fingerprint, record, ttl))
    }

    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<bool, StoreError> {
        each!(self, s => s.release(key, token))
    }

    async fn renew(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        each!(self, s => s.renew(key, token, lease))
    }
}
