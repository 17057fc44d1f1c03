//! Connections of their own for the calls that wait for replicas.
//!
//! `WAIT` blocks the connection it is sent on until the replicas answer, and `WAIT` only counts
//! the writes of its own connection, so a confirmed call sends its script and its `WAIT` on one
//! connection. On the store's shared multiplexed connection, every other request of the
//! process queued behind each `WAIT`: with 64 requests in flight, 0.24 of the throughput
//! without acks on loopback and 0.04 at 0.5 ms of round trip (`scripts/load.sh`, variant `ca`).
//! Here each confirmed call takes a connection no other call uses while it waits, so `WAIT`s
//! overlap and nothing else queues behind them. Connections are opened when first needed, up
//! to [`MAX_LANES`] in use at once, and kept idle for the next call; a failed call drops its
//! lane and the idle ones.

use std::sync::{Mutex, MutexGuard};

use redis::{aio::MultiplexedConnection, AsyncConnectionConfig, Client, RedisResult};
use tokio::sync::{Semaphore, SemaphorePermit};

/// The most confirmed calls in flight at once; more wait for a lane. Each holds a connection
/// for about one round trip to Redis plus one from Redis to its replicas.
pub(super) const MAX_LANES: usize = 64;

pub(super) struct Lanes {
    client: Client,
    idle: Mutex<Vec<MultiplexedConnection>>,
    permits: Semaphore,
}

/// A connection no other call uses until it is given back (or dropped, with its connection).
pub(super) struct Lane<'a> {
    lanes: &'a Lanes,
    conn: MultiplexedConnection,
    _permit: Option<SemaphorePermit<'a>>,
}

impl Lanes {
    /// Lanes to the server `client` connects to; none is opened yet.
    pub(super) fn new(client: Client) -> Self {
        Self {
            client,
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(MAX_LANES),
        }
    }

    /// An idle lane, or a new connection once fewer than [`MAX_LANES`] are in use.
    pub(super) async fn take(&self) -> RedisResult<Lane<'_>> {
        // `None` only if the semaphore were closed, which it never is.
        let permit = self.permits.acquire().await.ok();
        let idle = self.lock_idle().pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                // No response timeout of its own, as the store's connection: the layer's store
                // timeout bounds the call (and drops the lane with it).
                let config = AsyncConnectionConfig::new().set_response_timeout(None);
                self.client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?
            }
        };
        Ok(Lane {
            lanes: self,
            conn,
            _permit: permit,
        })
    }

    fn lock_idle(&self) -> MutexGuard<'_, Vec<MultiplexedConnection>> {
        // The list is valid whatever a panicking holder did: a push or a pop.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Lane<'_> {
    pub(super) fn conn(&mut self) -> &mut MultiplexedConnection {
        &mut self.conn
    }

    /// For the next call, once this one has its answer.
    pub(super) fn give_back(self) {
        self.lanes.lock_idle().push(self.conn);
    }

    /// After a failed call: this lane may hold a broken connection, or an answer still on its
    /// way, so it goes; and a failure most often means the server went away (a restart, a
    /// failover), so the idle lanes go too, instead of failing one request each in turn.
    pub(super) fn discard(self) {
        self.lanes.lock_idle().clear();
    }
}
