//! Shared by the integration tests: a counting handler, request helpers, and the stores.
#![allow(dead_code, unreachable_pub)]

pub mod example_process;
pub mod logs;

#[allow(unused_imports)]
pub use tower_idempotency::conformance::{counting_store, harness::*};

use test_support::{unique_prefix, TestRedis};
use tower_idempotency::{MemoryStore, RedisStore, ReplayCache};

/// A fresh in-memory store.
pub async fn memory_store() -> (MemoryStore, ()) {
    (MemoryStore::new(), ())
}

/// A Redis store on a test server, with a key prefix of its own.
pub async fn redis_store() -> (RedisStore, TestRedis) {
    let redis = TestRedis::start().await;
    let store = RedisStore::connect(redis.url())
        .await
        .expect("connect to the test Redis")
        .with_key_prefix(unique_prefix("conformance"));
    (store, redis)
}

/// A fresh in-memory store behind a local replay cache.
pub async fn cached_memory_store() -> (ReplayCache<MemoryStore>, ()) {
    (ReplayCache::new(MemoryStore::new()), ())
}

/// A Redis store behind a local replay cache.
pub async fn cached_redis_store() -> (ReplayCache<RedisStore>, TestRedis) {
    let (store, redis) = redis_store().await;
    (ReplayCache::new(store), redis)
}

/// A Redis store on a local three-primary cluster.
#[cfg(feature = "redis-cluster")]
pub async fn cluster_store() -> (
    RedisStore<redis::cluster_async::ClusterConnection>,
    test_support::TestCluster,
) {
    let cluster = tokio::task::spawn_blocking(test_support::TestCluster::start)
        .await
        .expect("cluster start-up");
    let store = RedisStore::connect_cluster(cluster.urls())
        .await
        .expect("connect to the test cluster")
        .with_key_prefix(unique_prefix("cluster"));
    (store, cluster)
}

/// A PostgreSQL store on a throwaway cluster, migrated.
#[cfg(feature = "postgres")]
pub async fn postgres_store() -> (tower_idempotency::PostgresStore, test_support::TestPostgres) {
    let pg = tokio::task::spawn_blocking(test_support::TestPostgres::start)
        .await
        .expect("PostgreSQL start-up");
    let pool = sqlx::PgPool::connect(pg.url())
        .await
        .expect("connect to the test PostgreSQL");
    let store = tower_idempotency::PostgresStore::new(pool);
    store.migrate().await.expect("migrate");
    (store, pg)
}

/// Redis in front of PostgreSQL.
#[cfg(feature = "postgres")]
pub async fn tiered_store() -> (
    tower_idempotency::TieredStore<RedisStore, tower_idempotency::PostgresStore>,
    (TestRedis, test_support::TestPostgres),
) {
    let (fast, redis) = redis_store().await;
    let (durable, pg) = postgres_store().await;
    (
        tower_idempotency::TieredStore::new(fast, durable),
        (redis, pg),
    )
}
