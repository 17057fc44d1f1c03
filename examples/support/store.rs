//! The store the examples run on, picked from the environment: one `DynStore`, no enum.

use std::time::Duration;

use tower_idempotency::{DynStore, MemoryStore, RedisStore};

/// `MemoryStore` by default; `RedisStore` with `REDIS_URL`; `PostgresStore` with `DATABASE_URL`
/// (feature `postgres`); Redis in front of PostgreSQL with both and `IDEMPOTENCY_STORE=tiered`.
/// Boxed with their ability to wake waiters (`with_watch`). Also names the store, for the
/// start-up log.
pub(crate) async fn from_env(
    redis_url: Option<&str>,
    database_url: Option<&str>,
    tiered: bool,
) -> Result<(DynStore, &'static str), Box<dyn std::error::Error>> {
    let redis = match redis_url {
        Some(url) => Some(RedisStore::connect(url).await?),
        None => None,
    };
    let Some(database_url) = database_url else {
        return Ok(match redis {
            Some(redis) => (DynStore::with_watch(redis), "redis"),
            None => (DynStore::with_watch(MemoryStore::new()), "memory"),
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
                DynStore::with_watch(tower_idempotency::TieredStore::new(redis, postgres)),
                "tiered",
            )),
            _ => Ok((DynStore::with_watch(postgres), "postgres")),
        }
    }
    #[cfg(not(feature = "postgres"))]
    {
        let _ = (database_url, tiered, Duration::ZERO);
        Err(
            "DATABASE_URL needs the postgres feature: cargo run --features postgres --example ..."
                .into(),
        )
    }
}
