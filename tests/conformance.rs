//! The conformance suite (exported as `tower_idempotency::conformance`), run against every
//! store the crate ships.

mod common;

tower_idempotency::conformance_tests! {
    memory => common::memory_store;
    redis => common::redis_store;
    cached_memory => common::cached_memory_store;
    cached_redis => common::cached_redis_store;
}

#[cfg(feature = "redis-cluster")]
tower_idempotency::conformance_tests! {
    redis_cluster => common::cluster_store;
}

#[cfg(feature = "postgres")]
tower_idempotency::conformance_tests! {
    postgres => common::postgres_store;
    tiered => common::tiered_store;
}
