//! A real Redis for tower-idempotency's tests and benches, found or started in this order:
//!
//! 1. `REDIS_URL`, when set: a server you run yourself (shared: tests isolate by key prefix).
//! 2. A `redis-server` binary (`$REDIS_SERVER_BIN`, else on `PATH`): spawned per test on a unix
//!    socket in a temporary directory, with persistence off, and killed on drop.
//! 3. With the `testcontainers` feature and a reachable Docker engine: a `redis` container.
//!
//! Without any of them, [`TestRedis::start`] panics with a message that says how to get one:
//! Redis tests never skip silently.
//!
//! One module per kind of server: [`server`] (one Redis), [`cluster`] (a Redis Cluster, with
//! replicas if asked), [`postgres`] (a throwaway PostgreSQL cluster).

pub mod cluster;
pub mod postgres;
pub mod server;

pub use cluster::TestCluster;
pub use postgres::TestPostgres;
pub use server::{
    connections_accepted, pause_all_clients, unique_prefix, RedisServer, SpawnError, TestRedis,
};
