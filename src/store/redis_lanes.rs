//! Connections of their own for the calls that wait for replicas.
//!
//! `WAIT` blocks the connection it is sent on until the replicas answer, and `WAIT` only counts
//! the writes of its own connection, so a confirmed call sends its script and its `WAIT` on one
//! connection. On the store's shared multiplexed connection, every other request of the
//! process queued behind each `WAIT`: with 64 requests in flight, 0.24 of the throughput
//! without acks on loopback and 0.04 at 0.5 ms of round trip (`scripts/load.sh`, variant `ca`).
//! Here each confirmed call takes a connection no other call uses while it waits, so `WAIT`s
//! overlap and nothing else queues behind them. Connections are opened when first needed, up
//! to [`MAX_LANES`] in use at once, and kept idle for the next call, for at most [`MAX_IDLE`].
//!
//! A lane goes back to the idle ones only when its call was answered, an error reply included.
//! A call that broke off (a connection error, the layer's store timeout) drops its lane and
//! the idle ones too: a broken connection most often means the server went away (a restart, a
//! failover, a silent host), and every idle lane would otherwise fail a request of its own,
//! each after a full store timeout when the server went silent. Calls that had already taken
//! an idle lane when the server went away fail each on its own.

use std::{
    sync::{Mutex, MutexGuard},
    time::{Duration, Instant},
};

use redis::{
    aio::MultiplexedConnection, AsyncConnectionConfig, Client, ErrorKind, RedisError, RedisResult,
};
use tokio::sync::{Semaphore, SemaphorePermit};

/// The most confirmed calls in flight at once; more wait for a lane. Each holds a connection
/// for about one round trip to Redis plus one from Redis to its replicas.
pub(super) const MAX_LANES: usize = 64;

/// How long a lane stays idle before it is closed instead of reused: a connection unused for
/// long may have been closed by the server (`timeout`) or a load balancer in between without a
/// word, and the call that found out would fail. Reopening costs one connection's set-up.
pub(super) const MAX_IDLE: Duration = Duration::from_secs(30);

pub(super) struct Lanes {
    client: Client,
    /// Most recently given back last.
    idle: Mutex<Vec<IdleLane>>,
    permits: Semaphore,
}

struct IdleLane {
    conn: MultiplexedConnection,
    since: Instant,
}

/// A connection no other call uses until it is given back (or dropped, with its connection).
pub(super) struct Lane<'a> {
    lanes: &'a Lanes,
    conn: MultiplexedConnection,
    given_back: bool,
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
        let idle = self.take_idle();
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
            given_back: false,
            _permit: permit,
        })
    }

    /// The most recently used idle lane, unless it (and so every other) sat idle too long.
    fn take_idle(&self) -> Option<MultiplexedConnection> {
        let mut idle = self.lock_idle();
        let lane = idle.pop()?;
        if lane.since.elapsed() < MAX_IDLE {
            Some(lane.conn)
        } else {
            idle.clear();
            None
        }
    }

    fn lock_idle(&self) -> MutexGuard<'_, Vec<IdleLane>> {
        // The list is valid whatever a panicking holder did: a push, a pop or a clear.
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Lane<'_> {
    pub(super) fn conn(&mut self) -> &mut MultiplexedConnection {
        &mut self.conn
    }

    /// Ends the call: the lane goes back for the next call when the server answered it, and is
    /// dropped otherwise (see the module's docs).
    pub(super) fn finish<T>(mut self, reply: &RedisResult<T>) {
        if reply.as_ref().err().is_none_or(answered) {
            let conn = self.conn.clone();
            let mut idle = self.lanes.lock_idle();
            idle.push(IdleLane {
                conn,
                since: Instant::now(),
            });
            self.given_back = true;
        }
    }
}

impl Drop for Lane<'_> {
    /// A lane not given back may hold a broken connection or an answer still on its way; the
    /// idle lanes most likely lead to the same server, gone: all are closed.
    fn drop(&mut self) {
        if !self.given_back {
            self.lanes.lock_idle().clear();
        }
    }
}

/// Whether `error` is the server's reply, read whole, after which the connection is as good as
/// before (an `OOM`, a `BUSY`, a script's error), rather than a connection that broke.
fn answered(error: &RedisError) -> bool {
    matches!(error.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
}

#[cfg(test)]
mod tests {
    use test_support::{connections_accepted, TestRedis};

    use super::*;

    /// An idle lane is reused while fresh; one that sat idle [`MAX_IDLE`] is closed, and the
    /// call gets a new connection.
    #[tokio::test]
    async fn a_lane_idle_too_long_is_closed_not_reused() {
        let redis = TestRedis::start_own().await;
        let mut probe = redis.connection().await;
        let lanes = Lanes::new(Client::open(redis.url()).expect("client"));
        let answered: RedisResult<()> = Ok(());
        let accepted = connections_accepted(&mut probe).await;
        lanes.take().await.expect("lane").finish(&answered);
        lanes.take().await.expect("lane").finish(&answered);
        assert_eq!(
            connections_accepted(&mut probe).await - accepted,
            1,
            "a fresh idle lane was not reused"
        );

        // As if it had sat idle that long (the guard let go before the next call takes it).
        {
            let mut idle = lanes.lock_idle();
            let since = &mut idle[0].since;
            *since = since
                .checked_sub(MAX_IDLE)
                .expect("up longer than MAX_IDLE");
        }
        lanes.take().await.expect("lane").finish(&answered);
        assert_eq!(
            connections_accepted(&mut probe).await - accepted,
            2,
            "a lane idle for MAX_IDLE was reused"
        );
        assert_eq!(lanes.lock_idle().len(), 1, "the stale lane was kept");
    }
}
