//! The Redis store: one script call per step, token-checked, cluster-safe.
//!
//! Each idempotency key is one Redis string, `{prefix}{<sha256 hex>}`, whose hash tag is the
//! digest, so the store runs unchanged on Redis Cluster and Valkey. In progress it holds `p`, the
//! first 16 bytes of the request fingerprint and the holder's 16-byte lease token, with the lease
//! as its TTL: 33 bytes, which Redis keeps in one allocation with its header (up to 44 bytes);
//! 128 bits of SHA-256 tell a reused key from a retry as well as 256 do. Completed, it holds `c`,
//! the whole fingerprint and the encoded response, with the result TTL. One string keeps
//! each step to a `GET` and a `SET`, and the client builds every value a script writes or expects,
//! so the scripts compare and store whole strings instead of slicing and joining them in Lua.
//!
//! The fencing token is the Redis server's clock, in microseconds, when the key was acquired: a
//! later acquisition of the same key always comes after the earlier lease ended, so it gets a
//! larger token as long as the server's clock does not step back by more than a lease. It costs
//! no second key and no extra write.

use std::{fmt, io::Write as _, sync::Arc, time::Duration};

use bytes::Bytes;

use redis::{
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisResult, RedisWrite, Script, ServerErrorKind,
    ToRedisArgs, Value,
};

use super::{
    error::Unreachable,
    redis_lanes::Lanes,
    redis_watch::{self, Subscriber},
    BeginOutcome, FencingToken, IdempotencyStore, KeyHub, KeyWatch, LeaseToken, ReplayTier,
    StoreError, StoreKey, WatchKeys,
};
use crate::{
    fingerprint::Fingerprint,
    response::{CompletedRecord, DecodeError},
};

const DEFAULT_PREFIX: &str = "idempotency:";

/// Replay, refuse, or acquire, in one round trip. `ARGV[1]` is the in-progress value the caller
/// would write (`p`, fingerprint, token), `ARGV[2]` the lease, and `ARGV[3]`, when present, asks
/// for a replay's expiry. Returns `{0, fence}`; a completed value alone, or `{1, value, pttl}`
/// when asked (the client checks its fingerprint: the script copies nothing); `{2, pttl}`; `{3}`
/// (another fingerprint) or `{4}` (not a record this store wrote). A replay, the common reply,
/// is one bulk string and one `GET`. A `begin` that the client library sent twice (after a
/// failover, say) finds its own lease and gets it back.
const BEGIN: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  local state = string.byte(v, 1)
  if state == 99 then
    if ARGV[3] then return {1, v, redis.call('PTTL', KEYS[1])} end
    return v
  end
  if state ~= 112 or #v ~= 33 then return {4} end
  if v ~= ARGV[1] then
    if string.sub(v, 2, 17) ~= string.sub(ARGV[1], 2, 17) then return {3} end
    return {2, redis.call('PTTL', KEYS[1])}
  end
end
local now = redis.call('TIME')
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {0, now[1] * 1000000 + now[2]}
";

/// Store the response in place of the caller's in-progress record, and wake the key's waiters
/// (`PUBLISH` on the key's channel, `tower-idempotency:{<digest>}`; see `redis_watch`). The client sends the in-progress value
/// it holds and the whole completed value (`c`, fingerprint, record), so the script compares
/// and writes whole strings. Sending the same value again succeeds, so a `complete` whose reply
/// was lost can be retried; the repeat writes too (the record's expiry), because `WAIT` counts
/// only the replicas that have the writes of its own connection, and a repeat often comes over
/// a new one (found by the protocol model, `model/`).
const COMPLETE: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.pcall('PUBLISH', 'tower-idempotency:' .. string.sub(KEYS[1], -66), '')
  return 1
end
if v == ARGV[2] then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
";

/// Delete the caller's in-progress record, and wake the key's waiters: one of them acquires.
const RELEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if not v or string.byte(v, 1) ~= 112 or string.sub(v, 18) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.pcall('PUBLISH', 'tower-idempotency:' .. string.sub(KEYS[1], -66), '')
return 1
";

/// Extend the caller's lease.
const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
if not v or string.byte(v, 1) ~= 112 or string.sub(v, 18) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
";

/// A completed value, read-only: `{1, value, pttl}` or `{0}`.
const PEEK: &str = r"
local v = redis.call('GET', KEYS[1])
if not v or string.byte(v, 1) ~= 99 then return {0} end
return {1, v, redis.call('PTTL', KEYS[1])}
";

/// Keep a record completed elsewhere (the whole completed value, as for `COMPLETE`), unless a
/// request holds this key here.
const PUT_COMPLETED: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.byte(v, 1) == 112 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
";

struct Scripts {
    begin: Script,
    complete: Script,
    release: Script,
    renew: Script,
    peek: Script,
    put_completed: Script,
}

/// How `complete` and `release` wake waiters: `PUBLISH` on one server; on a cluster
/// `SPUBLISH`, which keeps the message on the key's shard instead of every node (Redis 7.0+;
/// called with `pcall`, so an older server completes and releases all the same, and its
/// waiters poll). A notification never fails a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publish {
    Plain,
    #[cfg_attr(not(feature = "redis-cluster"), allow(dead_code))]
    Sharded,
}

impl Scripts {
    fn new(publish: Publish) -> Self {
        let publishing = |source: &str| match publish {
            Publish::Plain => Script::new(source),
            Publish::Sharded => Script::new(&source.replace("'PUBLISH'", "'SPUBLISH'")),
        };
        Self {
            begin: Script::new(BEGIN),
            complete: publishing(COMPLETE),
            release: publishing(RELEASE),
            renew: Script::new(RENEW),
            peek: Script::new(PEEK),
            put_completed: Script::new(PUT_COMPLETED),
        }
    }

    /// The scripts every request may need; the tier scripts load on first use.
    fn all(&self) -> [&Script; 4] {
        [&self.begin, &self.complete, &self.release, &self.renew]
    }
}

/// How many replicas must hold a write before the store counts on it; see
/// [`RedisStore::with_replica_acks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReplicaAcks {
    replicas: u32,
    timeout: Duration,
}

/// Keeps records in Redis, shared by every instance of your service.
///
/// A replay costs one round trip, a first execution two (`begin` and `complete`), and slow
/// handlers one more per lease renewal. Scripts are sent by SHA (`EVALSHA`) and reloaded when the
/// server lost them. Cloning is cheap and shares the connection.
///
/// ```no_run
/// use tower_idempotency::{IdempotencyLayer, RedisStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
/// let layer = IdempotencyLayer::new(store);
/// # Ok(()) }
/// ```
///
/// Any multiplexed connection works, e.g. a cluster connection, through [`RedisStore::new`].
/// With replicas and failover, see [`RedisStore::with_replica_acks`].
#[derive(Clone)]
pub struct RedisStore<C = ConnectionManager> {
    conn: C,
    prefix: Arc<str>,
    scripts: Arc<Scripts>,
    replica_acks: Option<ReplicaAcks>,
    /// Connections for the calls that wait for replicas, when the store made its own
    /// connection: `WAIT` blocks the connection it is sent on (see `redis_lanes`).
    lanes: Option<Arc<Lanes>>,
    /// The waiters of this process and the subscriber that wakes them, when the store made
    /// its own connection (see [`WatchKeys`]).
    hub: Option<Arc<KeyHub>>,
}

impl<C> fmt::Debug for RedisStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("replica_acks", &self.replica_acks)
            .field("notifications", &self.hub.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisStore<ConnectionManager> {
    /// Connects to `url` through a reconnecting [`ConnectionManager`] and loads the scripts.
    ///
    /// The connection has no response timeout of its own: the layer's store timeout
    /// ([`with_store_timeout`](crate::IdempotencyLayer::with_store_timeout)) bounds every call,
    /// and a second, shorter one underneath would cap it and cost a timer per call. Its socket
    /// sends each request at once (`TCP_NODELAY`; redis-rs leaves Nagle's algorithm on).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let info = url.into_connection_info().map_err(StoreError::backend)?;
        let info = no_delay(info);
        let client = redis::Client::open(info).map_err(StoreError::backend)?;
        // The address alone: the URL may carry a password.
        let addr = client.get_connection_info().addr().to_string();
        let config = ConnectionManagerConfig::new().set_response_timeout(None);
        let conn = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .map_err(|error| {
                StoreError::backend(Unreachable {
                    store: "Redis",
                    addr,
                    source: error.into(),
                })
            })?;
        let mut store = Self::new(conn);
        store.load_scripts().await?;
        store.lanes = Some(Arc::new(Lanes::new(client.clone())));
        store.hub = redis_watch::resp3(&client)
            .ok()
            .and_then(|client| redis_watch::spawn(Subscriber::Server(client)));
        Ok(store)
    }
}

#[cfg(feature = "redis-cluster")]
impl RedisStore<redis::cluster_async::ClusterConnection> {
    /// Connects to a Redis Cluster through any of its nodes and loads the scripts on every
    /// primary. Every key a script touches shares one hash tag, so each call goes to one node.
    ///
    /// ```no_run
    /// use tower_idempotency::RedisStore;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = RedisStore::connect_cluster(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]).await?;
    /// # Ok(()) }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
    pub async fn connect_cluster(
        nodes: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<Self, StoreError> {
        let nodes: Vec<String> = nodes.into_iter().map(|n| n.as_ref().to_owned()).collect();
        let client = redis::cluster::ClusterClientBuilder::new(nodes.clone())
            .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true))
            .build()
            .map_err(StoreError::backend)?;
        let conn = client
            .get_async_connection()
            .await
            .map_err(StoreError::backend)?;
        let mut store = Self::new(conn);
        store.scripts = Arc::new(Scripts::new(Publish::Sharded));
        store.load_scripts().await?;
        store.hub = redis_watch::spawn(Subscriber::Cluster(nodes));
        Ok(store)
    }
}

/// Turns Nagle's algorithm off for the store's connection (redis-rs leaves it on), as hiredis and
/// Go's clients do. With it on, a small request written while an earlier one on the same
/// multiplexed connection is unacknowledged may wait for that acknowledgement, a round trip
/// across a network. (The load runs at 0.5 ms measured no difference either way.)
fn no_delay(info: redis::ConnectionInfo) -> redis::ConnectionInfo {
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    info.set_tcp_settings(tcp)
}

impl<C> RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    /// Uses an existing connection: a [`ConnectionManager`], a `MultiplexedConnection`, or a
    /// cluster connection. Never a connection per request: it is cloned for each call.
    pub fn new(conn: C) -> Self {
        Self {
            conn,
            prefix: Arc::from(DEFAULT_PREFIX),
            scripts: Arc::new(Scripts::new(Publish::Plain)),
            replica_acks: None,
            lanes: None,
            hub: None,
        }
    }

    /// Prefixes every Redis key (default `idempotency:`).
    ///
    /// Braces would start a cluster hash tag, so `{` and `}` in the prefix become `_`.
    pub fn with_key_prefix(mut self, prefix: impl AsRef<str>) -> Self {
        self.prefix = Arc::from(sanitize_prefix(prefix.as_ref()));
        self
    }

    /// Waits, after each write that guards against a second run, until `replicas` replicas hold
    /// it (`WAIT replicas timeout`, sent in the same round trip as the script).
    ///
    /// Redis replicates asynchronously: without this, a primary that dies right after a request
    /// acquired a key can take the lock with it, the promoted replica lets a duplicate in, and
    /// the handler runs twice. With it, the handler runs only once the lock is on `replicas`
    /// replicas; fewer acknowledgements within `timeout` fail the request with 503 (and release
    /// the key), and a response whose record is not yet on enough replicas is written again
    /// until it is, within the lease. Lease renewals are confirmed the same way.
    ///
    /// `WAIT` blocks the connection it is sent on until the replicas answer. A store made by
    /// [`RedisStore::connect`] sends each call that waits on a connection of its own (opened
    /// when first needed, up to 64 in use at once, kept up to 30 s for the next call; all are
    /// closed when one breaks or times out), so `WAIT`s overlap and the store's other requests
    /// never queue behind one. A store made by
    /// [`RedisStore::new`] or [`RedisStore::connect_cluster`] has only its one connection (per
    /// primary): every other request of the process queues behind each `WAIT`, and first
    /// executions go through about one at a time (measured with `scripts/load.sh`, variant
    /// `ca`, 64 connections, 0.5 ms of round trip: 0.04 of the throughput without acks). Either
    /// way, a first execution costs two more round trips, from the primary to a replica.
    ///
    /// Keep `timeout` well below the layer's store timeout. A primary with fewer live replicas
    /// than `replicas` refuses every first execution until they come back, so ask for fewer
    /// replicas than each primary has. This closes the window of asynchronous replication, not
    /// every one: Redis can still lose acknowledged writes in rare failover races; for records
    /// that must survive anything, put `PostgresStore` (feature `postgres`) behind a
    /// [`TieredStore`](crate::TieredStore).
    ///
    /// ```no_run
    /// # #[cfg(feature = "redis-cluster")]
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use tower_idempotency::RedisStore;
    ///
    /// let store = RedisStore::connect_cluster(["redis://10.0.0.1:6379"])
    ///     .await?
    ///     .with_replica_acks(1, Duration::from_millis(100));
    /// # Ok(()) }
    /// ```
    pub fn with_replica_acks(mut self, replicas: u32, timeout: Duration) -> Self {
        self.replica_acks = (replicas > 0).then_some(ReplicaAcks { replicas, timeout });
        self
    }

    /// Sends the scripts to the server now, so the first request does not pay for `SCRIPT LOAD`.
    pub async fn load_scripts(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        for script in self.scripts.all() {
            script
                .load_async(&mut conn)
                .await
                .map_err(StoreError::backend)?;
        }
        Ok(())
    }

    /// The Redis key that holds the record for `key`.
    pub fn record_key(&self, key: &StoreKey) -> String {
        format!("{}{{{}}}", self.prefix, key)
    }

    /// `EVALSHA <script> 1 <record key>`, sized for `args` more arguments of `arg_bytes` in all,
    /// so that adding them never grows the command.
    fn evalsha(&self, script: &Script, key: &StoreKey, args: usize, arg_bytes: usize) -> Cmd {
        let key_len = self.prefix.len() + 66;
        let mut cmd = Cmd::with_capacity(4 + args, 48 + key_len + arg_bytes);
        let digest = key.hex();
        cmd.arg("EVALSHA")
            .arg(script.get_hash())
            .arg(1)
            .arg(Joined([
                self.prefix.as_bytes(),
                b"{",
                digest.as_bytes(),
                b"}",
            ]));
        cmd
    }

    /// Runs one script call; with `confirm` and replica acks on, `WAIT` rides in the same round
    /// trip. The script is loaded and the call sent again when the server lost it.
    async fn invoke(&self, script: &Script, call: Cmd, confirm: bool) -> Result<Reply, StoreError> {
        let request = match self.replica_acks.filter(|_| confirm) {
            None => Request::Plain(call),
            Some(acks) => {
                let mut pipe = redis::pipe();
                pipe.add_command(call)
                    .cmd("WAIT")
                    .arg(acks.replicas)
                    .arg(millis(acks.timeout));
                Request::Confirmed(pipe, acks.replicas)
            }
        };
        match (&request, &self.lanes) {
            // A connection of its own, so that no other request queues behind the `WAIT`.
            (Request::Confirmed(..), Some(lanes)) => {
                let mut lane = lanes.take().await.map_err(StoreError::backend)?;
                let reply = request.send_loading(script, lane.conn()).await;
                lane.finish(&reply);
                reply
            }
            _ => request.send_loading(script, &mut self.conn.clone()).await,
        }
        .map_err(StoreError::backend)
    }

    /// `BEGIN`; `with_expiry` makes a replay also report how long the record lives.
    async fn begin_call(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: &LeaseToken,
        lease: Duration,
        with_expiry: bool,
    ) -> Result<BeginOutcome, StoreError> {
        let script = &self.scripts.begin;
        let mut call = self.evalsha(script, key, 3, IN_PROGRESS_LEN + 20 + 1);
        call.arg(&in_progress_value(fingerprint, token)[..])
            .arg(millis(lease));
        if with_expiry {
            call.arg(1);
        }
        let reply = self.invoke(script, call, true).await?;
        let acks = reply.acks;
        let outcome = parse_begin(reply.value, fingerprint)?;
        // Only a lock must be on the replicas before the handler runs; reads need nothing.
        if matches!(outcome, BeginOutcome::Acquired { .. }) {
            Reply::replicated(acks)?;
        }
        Ok(outcome)
    }
}

/// Byte strings written one after another as one argument, straight into the command's buffer:
/// the record key and the values the scripts store are each built this way, without a copy.
struct Joined<'a, const N: usize>([&'a [u8]; N]);

impl<const N: usize> ToRedisArgs for Joined<'_, N> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        let mut arg = out.writer_for_next_arg();
        for part in self.0 {
            // Writes into the command's own buffer, which cannot fail.
            let _ = arg.write_all(part);
        }
    }
}

/// The length of an in-progress value; the scripts check it, and find the token after byte 17.
const IN_PROGRESS_LEN: usize = 33;

/// An in-progress value: `p`, the fingerprint's first 16 bytes and the holder's lease token.
fn in_progress_value(fingerprint: &Fingerprint, token: &LeaseToken) -> [u8; IN_PROGRESS_LEN] {
    let mut value = [0u8; IN_PROGRESS_LEN];
    value[0] = b'p';
    value[1..17].copy_from_slice(&fingerprint.as_bytes()[..16]);
    value[17..].copy_from_slice(&token.to_bytes());
    value
}

/// The length of a completed value's head: `c` and the whole fingerprint; the record follows.
const COMPLETED_HEAD_LEN: usize = 33;

/// A completed value, written straight into the command: `c`, the fingerprint, the record.
fn completed_value<'a>(fingerprint: &'a Fingerprint, encoded: &'a [u8]) -> Joined<'a, 3> {
    Joined([b"c", fingerprint.as_bytes(), encoded])
}

/// One script call on the wire.
enum Request {
    Plain(Cmd),
    /// The script, then `WAIT` for this many replicas.
    Confirmed(Pipeline, u32),
}

/// A script's reply, and how many replicas hold its writes when that was asked.
struct Reply {
    value: Value,
    acks: Option<Acks>,
}

#[derive(Debug, Clone, Copy)]
struct Acks {
    acked: u64,
    wanted: u32,
}

impl Reply {
    /// Fails when the script's write reached fewer replicas than asked.
    fn replicated(acks: Option<Acks>) -> Result<(), StoreError> {
        match acks {
            Some(Acks { acked, wanted }) if acked < u64::from(wanted) => {
                Err(StoreError::Unreplicated { acked, wanted })
            }
            _ => Ok(()),
        }
    }
}

impl Request {
    /// Sends the request; when the server lost the script, loads it and sends the request again.
    async fn send_loading(
        &self,
        script: &Script,
        conn: &mut impl ConnectionLike,
    ) -> RedisResult<Reply> {
        match self.send(conn).await {
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                script.load_async(conn).await?;
                self.send(conn).await
            }
            result => result,
        }
    }

    async fn send(&self, conn: &mut impl ConnectionLike) -> RedisResult<Reply> {
        match self {
            Self::Plain(call) => Ok(Reply {
                value: call.query_async(conn).await?,
                acks: None,
            }),
            Self::Confirmed(pipe, wanted) => {
                let mut values = conn.req_packed_commands(pipe, 0, 2).await?.into_iter();
                let value = values.next().unwrap_or(Value::Nil).extract_error()?;
                let acked = match values.next().unwrap_or(Value::Nil).extract_error()? {
                    Value::Int(n) => u64::try_from(n).unwrap_or(0),
                    _ => 0,
                };
                Ok(Reply {
                    value,
                    acks: Some(Acks {
                        acked,
                        wanted: *wanted,
                    }),
                })
            }
        }
    }
}

/// Braces in a prefix would start a cluster hash tag before ours.
fn sanitize_prefix(prefix: &str) -> String {
    prefix
        .chars()
        .map(|c| if c == '{' || c == '}' { '_' } else { c })
        .collect()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn unexpected(what: &'static str, value: &Value) -> StoreError {
    StoreError::backend(format!("unexpected reply to {what}: {value:?}"))
}

fn parse_begin(value: Value, fingerprint: &Fingerprint) -> Result<BeginOutcome, StoreError> {
    let mut items = match value {
        Value::BulkString(value) => return completed(value.into(), fingerprint, None),
        Value::Array(items) => items,
        other => return Err(unexpected("begin", &other)),
    };
    match items.as_mut_slice() {
        [Value::Int(0), Value::Int(fence)] => Ok(BeginOutcome::Acquired {
            fencing_token: FencingToken::new(u64::try_from(*fence).unwrap_or(0)),
        }),
        [Value::Int(1), Value::BulkString(value), Value::Int(pttl)] => {
            completed(std::mem::take(value).into(), fingerprint, Some(*pttl))
        }
        [Value::Int(4)] => Err(corrupt_layout()),
        [Value::Int(2), Value::Int(pttl)] => Ok(BeginOutcome::InProgress {
            retry_after: u64::try_from(*pttl).ok().map(Duration::from_millis),
        }),
        [Value::Int(3)] => Ok(BeginOutcome::Mismatch),
        _ => Err(unexpected("begin", &Value::Array(items))),
    }
}

/// A completed value, `c`, the fingerprint and the encoded record: a replay, or a mismatch.
/// The replayed body and headers share the reply's memory. `pttl` is the key's, when asked for.
fn completed(
    value: Bytes,
    fingerprint: &Fingerprint,
    pttl: Option<i64>,
) -> Result<BeginOutcome, StoreError> {
    if value.len() < COMPLETED_HEAD_LEN {
        return Err(corrupt_layout());
    }
    if value[1..COMPLETED_HEAD_LEN] != fingerprint.as_bytes()[..] {
        return Ok(BeginOutcome::Mismatch);
    }
    Ok(BeginOutcome::Completed {
        record: CompletedRecord::decode_shared(value.slice(COMPLETED_HEAD_LEN..))?,
        expires_in: pttl
            .and_then(|pttl| u64::try_from(pttl).ok())
            .map(Duration::from_millis),
    })
}

fn corrupt_layout() -> StoreError {
    StoreError::Corrupt(DecodeError::Invalid("record layout"))
}

fn parse_peek(value: Value, fingerprint: &Fingerprint) -> Result<Option<BeginOutcome>, StoreError> {
    match &value {
        Value::Array(items) if matches!(items.as_slice(), [Value::Int(0)]) => Ok(None),
        _ => parse_begin(value, fingerprint).map(Some),
    }
}

fn parse_flag(what: &'static str, value: Value) -> Result<bool, StoreError> {
    match value {
        Value::Int(1) => Ok(true),
        Value::Int(0) => Ok(false),
        other => Err(unexpected(what, &other)),
    }
}

/// A flag reply to a write that must reach the replicas when it happened.
fn parse_confirmed_flag(what: &'static str, reply: Reply) -> Result<bool, StoreError> {
    let done = parse_flag(what, reply.value)?;
    if done {
        Reply::replicated(reply.acks)?;
    }
    Ok(done)
}

impl<C> IdempotencyStore for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<BeginOutcome, StoreError> {
        self.begin_call(key, fingerprint, token, lease, false).await
    }

    async fn begin_with_expiry(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<BeginOutcome, StoreError> {
        self.begin_call(key, fingerprint, token, lease, true).await
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        fingerprint: &Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let script = &self.scripts.complete;
        let mut call = self.evalsha(
            script,
            key,
            3,
            IN_PROGRESS_LEN + COMPLETED_HEAD_LEN + record.encoded_len() + 20,
        );
        let encoded = record.encode();
        call.arg(&in_progress_value(fingerprint, token)[..])
            .arg(completed_value(fingerprint, &encoded))
            .arg(millis(ttl));
        let reply = self.invoke(script, call, true).await?;
        parse_confirmed_flag("complete", reply)
    }

    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<bool, StoreError> {
        let script = &self.scripts.release;
        let mut call = self.evalsha(script, key, 1, 16);
        call.arg(&token.to_bytes()[..]);
        let reply = self.invoke(script, call, false).await?;
        parse_flag("release", reply.value)
    }

    async fn renew(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let script = &self.scripts.renew;
        let mut call = self.evalsha(script, key, 2, 16 + 20);
        call.arg(&token.to_bytes()[..]).arg(millis(lease));
        let reply = self.invoke(script, call, true).await?;
        parse_confirmed_flag("renew", reply)
    }
}

/// Waiters are woken by pub/sub when the store was made by [`RedisStore::connect`] or
/// [`RedisStore::connect_cluster`] (one subscriber connection per store, shared by every
/// waiter of the process). A store made by [`RedisStore::new`] from a connection of yours has
/// no subscriber: its waiters poll.
impl<C> WatchKeys for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    fn watch(&self, key: &StoreKey) -> KeyWatch {
        match &self.hub {
            Some(hub) => hub.watch(key),
            None => KeyWatch::polling(crate::policy::DEFAULT_POLL),
        }
    }
}

impl<C> ReplayTier for RedisStore<C>
where
    C: ConnectionLike + Clone + Send + Sync + 'static,
{
    async fn peek(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
    ) -> Result<Option<BeginOutcome>, StoreError> {
        let script = &self.scripts.peek;
        // The client checks the fingerprint: the script takes no argument.
        let call = self.evalsha(script, key, 0, 0);
        let reply = self.invoke(script, call, false).await?;
        parse_peek(reply.value, fingerprint)
    }

    async fn put_completed(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let script = &self.scripts.put_completed;
        let mut call = self.evalsha(
            script,
            key,
            2,
            COMPLETED_HEAD_LEN + record.encoded_len() + 20,
        );
        let encoded = record.encode();
        call.arg(completed_value(fingerprint, &encoded))
            .arg(millis(ttl));
        let reply = self.invoke(script, call, false).await?;
        parse_flag("put_completed", reply.value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_cannot_open_a_hash_tag() {
        assert_eq!(sanitize_prefix("a{b}:"), "a_b_:");
        assert_eq!(sanitize_prefix("idempotency:"), "idempotency:");
    }

    #[test]
    fn in_progress_values_fit_the_scripts_and_one_redis_allocation() {
        let fp = Fingerprint::from_bytes([7; 32]);
        let token = LeaseToken::generate();
        let value = in_progress_value(&fp, &token);
        assert!(value.len() <= 44, "Redis embeds strings of up to 44 bytes");
        assert!(BEGIN.contains(&format!("#v ~= {}", value.len())));
        // Lua counts from 1: the token starts at byte 18.
        assert_eq!(value[17..], token.to_bytes());
        assert!(RELEASE.contains("string.sub(v, 18)") && RENEW.contains("string.sub(v, 18)"));
        assert_eq!(value[1..17], fp.as_bytes()[..16]);
    }

    #[test]
    fn begin_replies_parse() {
        let fp = Fingerprint::from_bytes([7; 32]);
        assert_eq!(
            parse_begin(Value::Array(vec![Value::Int(0), Value::Int(7)]), &fp).unwrap(),
            BeginOutcome::Acquired {
                fencing_token: FencingToken::new(7)
            }
        );
        assert_eq!(
            parse_begin(Value::Array(vec![Value::Int(3)]), &fp).unwrap(),
            BeginOutcome::Mismatch
        );
        let record = CompletedRecord::Tombstone {
            status: http::StatusCode::CREATED,
        };
        let value = |fingerprint: [u8; 32], record: &[u8]| {
            let mut value = b"c".to_vec();
            value.extend_from_slice(&fingerprint);
            value.extend_from_slice(record);
            Value::Array(vec![
                Value::Int(1),
                Value::BulkString(value),
                Value::Int(1000),
            ])
        };
        assert_eq!(
            parse_begin(value([7; 32], &record.encode()), &fp).unwrap(),
            BeginOutcome::Completed {
                record: record.clone(),
                expires_in: Some(Duration::from_secs(1)),
            }
        );
        let mut bare = b"c".to_vec();
        bare.extend_from_slice(&[7; 32]);
        bare.extend_from_slice(&record.encode());
        assert_eq!(
            parse_begin(Value::BulkString(bare), &fp).unwrap(),
            BeginOutcome::Completed {
                record: record.clone(),
                expires_in: None,
            },
            "a replay nobody asked the expiry of is the value alone"
        );
        assert_eq!(
            parse_begin(value([8; 32], &record.encode()), &fp).unwrap(),
            BeginOutcome::Mismatch,
            "the client checks a completed record's fingerprint"
        );
        assert!(matches!(
            parse_begin(value([7; 32], b"junk"), &fp),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(
            parse_begin(
                Value::Array(vec![
                    Value::Int(1),
                    Value::BulkString(b"c12".to_vec()),
                    Value::Int(1)
                ]),
                &fp
            ),
            Err(StoreError::Corrupt(_))
        ));
        assert!(parse_begin(Value::Nil, &fp).is_err());
    }
}
