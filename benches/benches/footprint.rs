//! Memory per idempotency record, in each store (issue #18, point 3).
//!
//! `cargo bench -p benches --bench footprint`
//!
//! Every record is a `201` with a `content-type: application/json` header and a 200-byte JSON
//! body, written through the store itself (`begin`, then `complete`), in three places:
//!
//! - **Redis** (a spawned `redis-server`, or `REDIS_URL`): every key `RedisStore` wrote for one
//!   completed and one in-progress record (found by `SCAN` before and after), each with its
//!   `MEMORY USAGE <key> SAMPLES 0`; and the same for the "seed design" the issue compares
//!   against: a JSON cache entry `{"RequestHash":..,"StatusCode":201,"ContentType":..,"Body":..}`
//!   under a key as long as ours (`SET key value PX ttl`), and a `lock:<key>` holding a UUID
//!   (`SET .. NX PX 30000`) while in progress. `MEMORY USAGE` leaves out the hash tables' own
//!   share (the bucket arrays of the key space and of the expiry table, the expiry entry), so
//!   `FOOTPRINT_REDIS_RECORDS` (10 000) records of each design and state are written too, and
//!   the growth of `INFO memory`'s `used_memory` divided by their number is reported. On a
//!   spawned server each run starts from `FLUSHALL SYNC`; on `REDIS_URL` (shared, never
//!   flushed) only this run's keys are deleted, and other clients make the deltas noisy.
//! - **PostgreSQL** (a PostgreSQL of its own, initdb'd in a temporary directory;
//!   `BENCH_DATABASE_URL` points it at a throwaway database instead, never `DATABASE_URL`):
//!   `FOOTPRINT_PG_RECORDS` (100 000) `begin`s, measured, then their `complete`s, measured as
//!   left (each completed row leaves the dead in-progress version of itself behind until vacuum)
//!   and after `VACUUM FULL` (the live rows alone). Per record: `avg(pg_column_size(t.*))`, and
//!   the relation sizes (heap, table with TOAST, FSM and VM, indexes, total) over the row count.
//! - **MemoryStore**: resident memory (`VmRSS`, as the soak bench reads it) before and after
//!   `FOOTPRINT_MEMORY_RECORDS` (100 000) `begin`s, then after their `complete`s, over the count.
//!
//! `FOOTPRINT_CONCURRENCY` (64) store calls are in flight at once. A missing server skips its
//! section with a message. Read the final table's `ours/seed` column: below 1 means a record of
//! ours takes less Redis memory than the seed design's. The figures depend on the allocator's
//! size classes (jemalloc in Redis), so they move in steps, not bytes.

use std::{
    collections::BTreeSet,
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header::CONTENT_TYPE, HeaderMap, HeaderValue, StatusCode};
use redis::aio::MultiplexedConnection;
use sqlx::{postgres::PgPoolOptions, PgPool, Row};
use test_support::{RedisServer, SpawnError, TestPostgres};
use tower_idempotency::{
    BeginOutcome, CompletedRecord, Fingerprint, IdempotencyStore, LeaseToken, MemoryStore,
    PostgresStore, RecordedResponse, RedisStore, StoreKey,
};

/// The lease of an in-progress record: the seed design's lock lives 30 s too.
const LEASE: Duration = Duration::from_secs(30);
/// The result TTL of a completed record, in both designs.
const TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Leases long enough that PostgreSQL's in-progress rows outlive the measurement.
const LONG_LEASE: Duration = Duration::from_secs(60 * 60);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// The response body: 200 bytes of JSON.
fn response_body() -> String {
    let mut body = String::from(
        r#"{"id":"ord_8f14e45fceea167a","status":"created","amount":4200,"currency":"EUR","customer":"cus_45c48cce2e2d7fbd","created_at":"2024-05-01T12:00:00Z","note":""#,
    );
    while body.len() < 198 {
        body.push('x');
    }
    body.push_str(r#""}"#);
    assert_eq!(body.len(), 200, "the response body is 200 bytes");
    body
}

/// The record the store keeps for the response; a fresh body and header map each time, as
/// every response has its own.
fn completed_record(body: &str) -> CompletedRecord {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    CompletedRecord::Response(RecordedResponse::new(
        StatusCode::CREATED,
        headers,
        Bytes::copy_from_slice(body.as_bytes()),
    ))
}

/// One request's identity: its key, fingerprint and lease token.
struct Request {
    key: StoreKey,
    fingerprint: Fingerprint,
    token: LeaseToken,
}

impl Request {
    fn new(run: &str, i: usize) -> Self {
        Self {
            key: StoreKey::derive(None, "POST", "/orders", &format!("{run}-{i}")),
            fingerprint: Fingerprint::sha256(format!("{run}-body-{i}").as_bytes()),
            token: LeaseToken::generate(),
        }
    }

    async fn begin(&self, store: &impl IdempotencyStore, lease: Duration) -> Result<(), BoxError> {
        match store
            .begin(&self.key, &self.fingerprint, &self.token, lease)
            .await?
        {
            BeginOutcome::Acquired { .. } => Ok(()),
            other => Err(format!("begin did not acquire a fresh key: {other:?}").into()),
        }
    }

    async fn complete(
        &self,
        store: &impl IdempotencyStore,
        record: &CompletedRecord,
    ) -> Result<(), BoxError> {
        if store
            .complete(&self.key, &self.token, &self.fingerprint, record, TTL)
            .await?
        {
            Ok(())
        } else {
            Err("complete found the lease lost".into())
        }
    }
}

/// Runs `f(0..n)` with `concurrency` calls in flight; the first error stops it.
async fn for_each_concurrently<F, Fut>(n: usize, concurrency: usize, f: F) -> Result<(), BoxError>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let f = Arc::new(f);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let (next, f) = (next.clone(), f.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, BoxError>(());
                }
                if let Err(error) = f(i).await {
                    next.store(n, Ordering::Relaxed);
                    return Err(error);
                }
            }
        });
    }
    let mut result = Ok(());
    while let Some(done) = tasks.join_next().await {
        let done = done.map_err(BoxError::from).and_then(|r| r);
        if result.is_ok() {
            result = done;
        }
    }
    result
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `s` as the inside of a JSON string (the body is ASCII).
fn json_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

fn uuid(value: u128) -> String {
    let h = format!("{value:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------

/// The seed design's keys and values for one request.
struct SeedRecord {
    cache_key: String,
    lock_key: String,
    value: String,
    lock: String,
}

impl SeedRecord {
    /// `ours_key_len` keeps the cache key as long as ours, so only the layouts differ.
    fn new(run: &str, i: usize, body: &str, ours_key_len: usize) -> Self {
        let request = Request::new(run, i);
        let name = format!("k-{}", request.key.to_hex());
        // `idempotency:k-<64 hex>`: as long as ours, `idempotency:{<64 hex>}`.
        let mut cache_key = format!("idempotency:{name}");
        while cache_key.len() < ours_key_len {
            cache_key.push('0');
        }
        let value = format!(
            r#"{{"RequestHash":"{}","StatusCode":201,"ContentType":"application/json","Body":"{}"}}"#,
            hex(request.fingerprint.as_bytes()),
            json_escape(body)
        );
        Self {
            lock_key: format!("lock:{}", &cache_key["idempotency:".len()..]),
            cache_key,
            value,
            lock: uuid(request.token.as_u128()),
        }
    }

    fn set_lock(&self, pipe: &mut redis::Pipeline) {
        pipe.cmd("SET")
            .arg(&self.lock_key)
            .arg(&self.lock)
            .arg("NX")
            .arg("PX")
            .arg(millis(LEASE))
            .ignore();
    }

    fn set_cache(&self, pipe: &mut redis::Pipeline) {
        pipe.cmd("SET")
            .arg(&self.cache_key)
            .arg(&self.value)
            .arg("PX")
            .arg(millis(TTL))
            .ignore();
    }
}

/// Every key on the server (`SCAN`).
async fn scan_keys(conn: &mut MultiplexedConnection) -> Result<BTreeSet<String>, BoxError> {
    let mut keys = BTreeSet::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// One Redis key as measured: name, value length, encoding and `MEMORY USAGE`.
struct KeyFigure {
    design: &'static str,
    state: &'static str,
    key: String,
    value_len: i64,
    encoding: String,
    usage: i64,
}

async fn measure_key(
    conn: &mut MultiplexedConnection,
    design: &'static str,
    state: &'static str,
    key: String,
) -> Result<KeyFigure, BoxError> {
    let usage: Option<i64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&key)
        .arg("SAMPLES")
        .arg(0)
        .query_async(conn)
        .await?;
    let value_len: i64 = redis::cmd("STRLEN").arg(&key).query_async(conn).await?;
    let encoding: Option<String> = redis::cmd("OBJECT")
        .arg("ENCODING")
        .arg(&key)
        .query_async(conn)
        .await?;
    Ok(KeyFigure {
        design,
        state,
        key,
        value_len,
        encoding: encoding.unwrap_or_else(|| "?".into()),
        usage: usage.unwrap_or(0),
    })
}

/// The keys `write` added, each measured.
async fn keys_written<Fut>(
    conn: &mut MultiplexedConnection,
    design: &'static str,
    state: &'static str,
    write: Fut,
) -> Result<Vec<KeyFigure>, BoxError>
where
    Fut: Future<Output = Result<(), BoxError>>,
{
    let before = scan_keys(conn).await?;
    write.await?;
    let after = scan_keys(conn).await?;
    let mut figures = Vec::new();
    for key in after.difference(&before) {
        figures.push(measure_key(conn, design, state, key.clone()).await?);
    }
    if figures.is_empty() {
        return Err(format!("{design} {state}: SCAN found no new key").into());
    }
    Ok(figures)
}

/// `used_memory` and `mem_clients_normal` from `INFO memory`, and `DBSIZE`.
async fn used_memory(conn: &mut MultiplexedConnection) -> Result<(i64, i64, i64), BoxError> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(conn).await?;
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<i64>().ok())
            .unwrap_or(0)
    };
    let keys: i64 = redis::cmd("DBSIZE").query_async(conn).await?;
    Ok((field("used_memory"), field("mem_clients_normal"), keys))
}

/// `used_memory`'s growth per record over `n` records written by `write`.
struct BulkFigure {
    design: &'static str,
    state: &'static str,
    records: usize,
    keys: i64,
    per_record: f64,
    per_record_without_clients: f64,
}

struct RedisFigures {
    keys: Vec<KeyFigure>,
    bulk: Vec<BulkFigure>,
    url_is_shared: bool,
}

impl RedisFigures {
    fn usage(&self, design: &str, state: &str) -> i64 {
        self.keys
            .iter()
            .filter(|k| k.design == design && k.state == state)
            .map(|k| k.usage)
            .sum()
    }

    fn bulk(&self, design: &str, state: &str) -> Option<&BulkFigure> {
        self.bulk
            .iter()
            .find(|b| b.design == design && b.state == state)
    }
}

/// A Redis to measure: `REDIS_URL`, else a spawned server; `None`, with a message, when neither.
fn redis_server() -> Option<(String, Option<RedisServer>)> {
    if let Some(url) = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()) {
        return Some((url, None));
    }
    match RedisServer::spawn() {
        Ok(server) => Some((server.url(), Some(server))),
        Err(SpawnError::NoBinary) => {
            eprintln!(
                "footprint: skipping Redis: no redis-server binary on PATH (install redis-server, \
                 set REDIS_SERVER_BIN, or set REDIS_URL)"
            );
            None
        }
        Err(SpawnError::Failed(why)) => {
            eprintln!("footprint: skipping Redis: redis-server would not start: {why}");
            None
        }
    }
}

async fn redis_section(
    url: &str,
    shared: bool,
    records: usize,
    concurrency: usize,
    body: &str,
) -> Result<RedisFigures, BoxError> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let store = RedisStore::connect(url).await?;
    let run = format!(
        "footprint-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let ours_key_len = store.record_key(&Request::new(&run, 0).key).len();
    let mut keys = Vec::new();

    // One record of each design and state, each from a fresh request: every key it wrote.
    let held = Request::new(&run, 0);
    keys.extend(keys_written(&mut conn, "ours", "in progress", held.begin(&store, LEASE)).await?);
    let done = Request::new(&run, 1);
    keys.extend(
        keys_written(&mut conn, "ours", "completed", async {
            done.begin(&store, LEASE).await?;
            done.complete(&store, &completed_record(body)).await
        })
        .await?,
    );
    let mut seed_conn = conn.clone();
    let seed_held = SeedRecord::new(&run, 2, body, ours_key_len);
    keys.extend(
        keys_written(&mut conn, "seed", "in progress", async {
            let mut pipe = redis::pipe();
            seed_held.set_lock(&mut pipe);
            pipe.query_async::<()>(&mut seed_conn).await?;
            Ok(())
        })
        .await?,
    );
    let mut seed_conn = conn.clone();
    let seed_done = SeedRecord::new(&run, 3, body, ours_key_len);
    keys.extend(
        keys_written(&mut conn, "seed", "completed", async {
            // Lock, cache the response, unlock: the cache entry is what stays.
            let mut pipe = redis::pipe();
            seed_done.set_lock(&mut pipe);
            seed_done.set_cache(&mut pipe);
            pipe.cmd("DEL").arg(&seed_done.lock_key).ignore();
            pipe.query_async::<()>(&mut seed_conn).await?;
            Ok(())
        })
        .await?,
    );
    let singles: Vec<String> = keys.iter().map(|k| k.key.clone()).collect();
    redis::cmd("DEL")
        .arg(singles)
        .query_async::<()>(&mut conn)
        .await?;

    // `records` of each, through `used_memory`.
    let mut bulk = Vec::new();
    for (design, state) in [
        ("ours", "completed"),
        ("seed", "completed"),
        ("ours", "in progress"),
        ("seed", "in progress"),
    ] {
        let phase = format!("{run}-{design}-{state}").replace(' ', "-");
        if !shared {
            redis::cmd("FLUSHALL")
                .arg("SYNC")
                .query_async::<()>(&mut conn)
                .await?;
        }
        let (before, clients_before, keys_before) = used_memory(&mut conn).await?;
        let written: Vec<String> = match design {
            "ours" => {
                let (shared_store, shared_body, shared_phase) = (
                    store.clone(),
                    Arc::<str>::from(body),
                    Arc::<str>::from(phase.as_str()),
                );
                let complete = state == "completed";
                for_each_concurrently(records, concurrency, move |i| {
                    let (store, body, phase) = (
                        shared_store.clone(),
                        shared_body.clone(),
                        shared_phase.clone(),
                    );
                    async move {
                        let request = Request::new(&phase, i);
                        request.begin(&store, LEASE).await?;
                        if complete {
                            request.complete(&store, &completed_record(&body)).await?;
                        }
                        Ok(())
                    }
                })
                .await?;
                (0..records)
                    .map(|i| store.record_key(&Request::new(&phase, i).key))
                    .collect()
            }
            _ => {
                let mut written = Vec::with_capacity(records);
                for chunk in (0..records).collect::<Vec<_>>().chunks(1000) {
                    let mut pipe = redis::pipe();
                    for &i in chunk {
                        let seed = SeedRecord::new(&phase, i, body, ours_key_len);
                        if state == "completed" {
                            seed.set_cache(&mut pipe);
                            written.push(seed.cache_key);
                        } else {
                            seed.set_lock(&mut pipe);
                            written.push(seed.lock_key);
                        }
                    }
                    pipe.query_async::<()>(&mut conn).await?;
                }
                written
            }
        };
        // Redis grows its hash tables by rehashing them step by step, the old and new bucket
        // arrays both allocated meanwhile: let its cron finish that before reading.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (after, clients_after, keys_after) = used_memory(&mut conn).await?;
        let n = records.max(1) as f64;
        bulk.push(BulkFigure {
            design,
            state,
            records,
            keys: keys_after - keys_before,
            per_record: (after - before) as f64 / n,
            per_record_without_clients: ((after - clients_after) - (before - clients_before))
                as f64
                / n,
        });
        for chunk in written.chunks(1000) {
            redis::cmd("DEL")
                .arg(chunk)
                .query_async::<()>(&mut conn)
                .await?;
        }
    }
    Ok(RedisFigures {
        keys,
        bulk,
        url_is_shared: shared,
    })
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------------

struct PgFigure {
    state: &'static str,
    rows: i64,
    avg_row: f64,
    avg_record: f64,
    heap: i64,
    table: i64,
    indexes: i64,
    total: i64,
}

async fn pg_measure(pool: &PgPool, state: &'static str) -> Result<PgFigure, BoxError> {
    let row = sqlx::query(
        "SELECT count(*) AS rows,
                coalesce(avg(pg_column_size(t.*)), 0)::float8 AS avg_row,
                coalesce(avg(coalesce(octet_length(t.record), 0)), 0)::float8 AS avg_record,
                pg_relation_size('idempotency_records') AS heap,
                pg_table_size('idempotency_records') AS tbl,
                pg_indexes_size('idempotency_records') AS idx,
                pg_total_relation_size('idempotency_records') AS total
         FROM idempotency_records t",
    )
    .fetch_one(pool)
    .await?;
    Ok(PgFigure {
        state,
        rows: row.try_get("rows")?,
        avg_row: row.try_get("avg_row")?,
        avg_record: row.try_get("avg_record")?,
        heap: row.try_get("heap")?,
        table: row.try_get("tbl")?,
        indexes: row.try_get("idx")?,
        total: row.try_get("total")?,
    })
}

/// A PostgreSQL of this bench's own, or why there is none (`TestPostgres::start` panics with
/// it: the message is kept, the panic's report and backtrace are not).
fn start_postgres() -> Result<TestPostgres, String> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = std::panic::catch_unwind(TestPostgres::start);
    std::panic::set_hook(previous);
    started.map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "it would not start".into())
    })
}

/// A PostgreSQL of this bench's own; `None`, with a message, when none can start.
async fn postgres_server() -> Option<(String, Option<TestPostgres>)> {
    if let Some(url) = std::env::var("BENCH_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        return Some((url, None));
    }
    match tokio::task::spawn_blocking(start_postgres).await {
        Ok(Ok(pg)) => Some((pg.url().to_owned(), Some(pg))),
        Ok(Err(why)) => {
            eprintln!("footprint: skipping PostgreSQL: {why}");
            None
        }
        Err(error) => {
            eprintln!("footprint: skipping PostgreSQL: {error}");
            None
        }
    }
}

async fn postgres_section(
    url: &str,
    records: usize,
    concurrency: usize,
    body: &str,
) -> Result<Vec<PgFigure>, BoxError> {
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(url)
        .await?;
    let store = PostgresStore::new(pool.clone());
    store.migrate().await?;
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_records")
        .fetch_one(&pool)
        .await?;
    if existing != 0 {
        return Err(format!(
            "idempotency_records already holds {existing} rows: the figures need an empty table"
        )
        .into());
    }
    let run = format!("footprint-pg-{}", std::process::id());
    let requests: Arc<Vec<Request>> =
        Arc::new((0..records).map(|i| Request::new(&run, i)).collect());
    let mut figures = Vec::new();

    let started = Instant::now();
    {
        let (store, requests) = (store.clone(), requests.clone());
        for_each_concurrently(records, concurrency, move |i| {
            let (store, requests) = (store.clone(), requests.clone());
            async move { requests[i].begin(&store, LONG_LEASE).await }
        })
        .await?;
    }
    eprintln!(
        "footprint: PostgreSQL: {records} begins in {:.1?}",
        started.elapsed()
    );
    figures.push(pg_measure(&pool, "in progress").await?);

    let started = Instant::now();
    {
        let (store, requests, body) = (store.clone(), requests.clone(), Arc::<str>::from(body));
        for_each_concurrently(records, concurrency, move |i| {
            let (store, requests, body) = (store.clone(), requests.clone(), body.clone());
            async move { requests[i].complete(&store, &completed_record(&body)).await }
        })
        .await?;
    }
    eprintln!(
        "footprint: PostgreSQL: {records} completes in {:.1?}",
        started.elapsed()
    );
    figures.push(pg_measure(&pool, "completed, as left").await?);
    sqlx::raw_sql("VACUUM FULL idempotency_records")
        .execute(&pool)
        .await?;
    figures.push(pg_measure(&pool, "completed, VACUUM FULL").await?);
    pool.close().await;
    Ok(figures)
}

// ---------------------------------------------------------------------------------------------
// MemoryStore
// ---------------------------------------------------------------------------------------------

/// `VmRSS` from `/proc/self/status`, in bytes.
fn resident_bytes() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map_or(0, |kib| kib * 1024)
}

struct MemoryFigures {
    records: usize,
    in_progress: f64,
    completed: f64,
}

async fn memory_section(records: usize, body: &str) -> Result<MemoryFigures, BoxError> {
    let store = MemoryStore::with_max_entries(records.max(1));
    let requests: Vec<Request> = (0..records)
        .map(|i| Request::new("footprint-memory", i))
        .collect();
    let start = resident_bytes();
    for request in &requests {
        request.begin(&store, LONG_LEASE).await?;
    }
    let in_progress = resident_bytes();
    for request in &requests {
        // Each record is built, kept (the store clones it) and dropped here, as the layer does.
        request.complete(&store, &completed_record(body)).await?;
    }
    let completed = resident_bytes();
    if store.len() != records {
        return Err(format!("the store holds {} records, not {records}", store.len()).into());
    }
    let n = records.max(1) as f64;
    Ok(MemoryFigures {
        records,
        in_progress: (in_progress - start) as f64 / n,
        completed: (completed - start) as f64 / n,
    })
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn ratio(ours: f64, seed: f64) -> String {
    if seed > 0.0 {
        format!("{:.2}", ours / seed)
    } else {
        "n/a".into()
    }
}

fn main() {
    // Before any thread starts: `TestPostgres::start` would take DATABASE_URL's server.
    if std::env::var_os("DATABASE_URL").is_some() {
        eprintln!(
            "footprint: ignoring DATABASE_URL (this bench fills idempotency_records and measures \
             the whole table); set BENCH_DATABASE_URL to use a throwaway server instead"
        );
        std::env::remove_var("DATABASE_URL");
    }
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime.block_on(run()),
        Err(error) => eprintln!("footprint: no Tokio runtime: {error}"),
    }
}

async fn run() {
    let started = Instant::now();
    let concurrency = env_usize("FOOTPRINT_CONCURRENCY", 64);
    let redis_records = env_usize("FOOTPRINT_REDIS_RECORDS", 10_000);
    let pg_records = env_usize("FOOTPRINT_PG_RECORDS", 100_000);
    let memory_records = env_usize("FOOTPRINT_MEMORY_RECORDS", 100_000);
    let body = response_body();
    let encoded_len = completed_record(&body).encode().len();

    // First, before any connection allocates: resident memory is the whole process's.
    let memory = match memory_section(memory_records, &body).await {
        Ok(figures) => Some(figures),
        Err(error) => {
            eprintln!("footprint: MemoryStore failed: {error}");
            None
        }
    };
    eprintln!("footprint: MemoryStore done at {:.1?}", started.elapsed());

    let redis = match redis_server() {
        Some((url, server)) => {
            let result =
                redis_section(&url, server.is_none(), redis_records, concurrency, &body).await;
            drop(server);
            result
                .map_err(|error| eprintln!("footprint: Redis failed: {error}"))
                .ok()
        }
        None => None,
    };
    eprintln!("footprint: Redis done at {:.1?}", started.elapsed());

    let postgres = match postgres_server().await {
        Some((url, server)) => {
            let result = postgres_section(&url, pg_records, concurrency, &body).await;
            if let Some(server) = server {
                let _ = tokio::task::spawn_blocking(move || drop(server)).await;
            }
            result
                .map_err(|error| eprintln!("footprint: PostgreSQL failed: {error}"))
                .ok()
        }
        None => None,
    };

    println!();
    println!(
        "## Footprint of one record: a 201, `content-type: application/json`, a {}-byte JSON body \
         (encoded record: {encoded_len} bytes)",
        body.len()
    );
    if let Some(redis) = &redis {
        println!();
        println!("### Redis: every key written, `MEMORY USAGE <key> SAMPLES 0`");
        println!();
        println!("| design | state | key | key bytes | value bytes | encoding | MEMORY USAGE |");
        println!("|---|---|---|---:|---:|---|---:|");
        for k in &redis.keys {
            println!(
                "| {} | {} | `{}` | {} | {} | {} | {} |",
                k.design,
                k.state,
                k.key,
                k.key.len(),
                k.value_len,
                k.encoding,
                k.usage
            );
        }
        println!();
        println!("### Redis: `used_memory` growth per record, over many records");
        println!();
        println!(
            "| design | state | records | keys added | bytes/record | bytes/record without client buffers |"
        );
        println!("|---|---|---:|---:|---:|---:|");
        for b in &redis.bulk {
            println!(
                "| {} | {} | {} | {} | {:.1} | {:.1} |",
                b.design, b.state, b.records, b.keys, b.per_record, b.per_record_without_clients
            );
        }
        if redis.url_is_shared {
            println!();
            println!("(REDIS_URL: a shared server, not flushed between runs; other clients' writes are in these deltas.)");
        }
    }
    if let Some(pg) = &postgres {
        println!();
        println!("### PostgreSQL: `idempotency_records`, per row");
        println!();
        println!("| state | rows | avg pg_column_size(t.*) | avg record bytes | heap/row | table (+TOAST, FSM, VM)/row | indexes/row | total/row |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        for f in pg {
            let n = f.rows.max(1) as f64;
            println!(
                "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
                f.state,
                f.rows,
                f.avg_row,
                f.avg_record,
                f.heap as f64 / n,
                f.table as f64 / n,
                f.indexes as f64 / n,
                f.total as f64 / n
            );
        }
    }

    println!();
    println!("### Summary: bytes per record");
    println!();
    println!("| store | state | measure | ours | seed design | ours/seed |");
    println!("|---|---|---|---:|---:|---:|");
    if let Some(redis) = &redis {
        for state in ["completed", "in progress"] {
            let (ours, seed) = (redis.usage("ours", state), redis.usage("seed", state));
            println!(
                "| Redis | {state} | MEMORY USAGE, all keys | {ours} | {seed} | {} |",
                ratio(ours as f64, seed as f64)
            );
            if let (Some(ours), Some(seed)) = (redis.bulk("ours", state), redis.bulk("seed", state))
            {
                println!(
                    "| Redis | {state} | used_memory delta / record ({} records) | {:.1} | {:.1} | {} |",
                    ours.records,
                    ours.per_record,
                    seed.per_record,
                    ratio(ours.per_record, seed.per_record)
                );
            }
        }
    }
    if let Some(pg) = &postgres {
        for f in pg {
            let n = f.rows.max(1) as f64;
            println!(
                "| PostgreSQL | {} | avg pg_column_size(t.*) | {:.1} | — | — |",
                f.state, f.avg_row
            );
            println!(
                "| PostgreSQL | {} | pg_total_relation_size / rows | {:.1} | — | — |",
                f.state,
                f.total as f64 / n
            );
        }
    }
    if let Some(m) = &memory {
        println!(
            "| MemoryStore | in progress | VmRSS delta / record ({} records) | {:.1} | — | — |",
            m.records, m.in_progress
        );
        println!(
            "| MemoryStore | completed | VmRSS delta / record ({} records) | {:.1} | — | — |",
            m.records, m.completed
        );
    }
    println!();
    println!("footprint: done in {:.1?}", started.elapsed());
}
