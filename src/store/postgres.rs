//! The PostgreSQL store: records in the database you already run, one statement per step.

use std::{fmt, sync::Arc, time::Duration};

use sqlx::{postgres::PgRow, PgPool, Row};

pub use super::postgres_schema::{MIGRATION, MIGRATIONS};
use super::{
    postgres_schema::schema_error, postgres_watch, BeginOutcome, FencingToken, IdempotencyStore,
    KeyHub, KeyWatch, LeaseToken, StoreError, StoreKey, WatchKeys,
};
use crate::{
    fingerprint::Fingerprint,
    response::{CompletedRecord, DecodeError},
};

/// How often `begin` retries when a concurrent insert was not yet visible to its snapshot.
const BEGIN_ATTEMPTS: usize = 5;

/// The most rows one `reap_expired` deletes: one statement stays short (about 0.1 s), so a
/// live request waiting on a row it locks waits no longer.
const REAP_BATCH: u64 = 10_000;

/// How long the reaper leaves a row waited on after it expired. Its waiters take the key over
/// within milliseconds of the release or the lease's end that woke them (seconds while they
/// poll); deleted before that, the row's mark would go with it, and the execution that takes
/// the key over would wake none of the waiters still waiting.
const WAITED_ON_KEPT_SECS: u64 = 60;

/// Keeps records in PostgreSQL, on an sqlx pool you already have.
///
/// One table with a unique key; `begin` is one statement (`INSERT ... ON CONFLICT DO UPDATE ...
/// WHERE expired`), and `complete`, `release` and `renew` are token-checked `UPDATE`/`DELETE`s.
/// Expiry is honoured on every read, by the database's clock; [`PostgresStore::reap_expired`]
/// (or [`PostgresStore::spawn_reaper`]) deletes old rows. Fencing tokens come from one
/// sequence, so they grow per key.
///
/// ```no_run
/// use tower_idempotency::{IdempotencyLayer, PostgresStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let pool = sqlx::PgPool::connect("postgres://app@localhost/app").await?;
/// let store = PostgresStore::new(pool);
/// store.migrate().await?; // or ship MIGRATION with your own migrations
/// store.spawn_reaper(std::time::Duration::from_secs(60));
/// let layer = IdempotencyLayer::new(store);
/// # Ok(()) }
/// ```
///
/// # The pool
///
/// Each statement takes a connection from the pool and gives it back, so nothing is held while a
/// handler runs: a first execution takes one twice (`begin`, then `complete`), a replay once. On
/// top of each statement's round trip, sqlx's pool checks a connection when it is taken
/// (`PgPoolOptions::test_before_acquire`, on by default: one more round trip before the
/// statement) and when it is given back (always, sqlx 0.8: after the answer, but the connection
/// is busy until it returns). On loopback neither shows; with the database across a network,
/// the first doubles the latency the store adds, and both limit what a pool of a given size
/// serves (README, "Across a network"). Across a network, consider
///
/// ```no_run
/// # async fn run() -> Result<(), sqlx::Error> {
/// let pool = sqlx::postgres::PgPoolOptions::new()
///     // A broken connection then fails the one statement that finds it (503, the handler not
///     // run; a failed `complete` is retried), and the pool replaces it.
///     .test_before_acquire(false)
///     // Each statement holds a connection for about two round trips.
///     .max_connections(32)
///     .connect("postgres://app@db.internal/app")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    queries: Arc<Queries>,
    /// The waiters of this process and the listener that wakes them (see [`WatchKeys`]).
    hub: Option<Arc<KeyHub>>,
}

struct Queries {
    begin: String,
    complete: String,
    release: String,
    renew: String,
    reap: String,
    /// Marks keys as waited on (their rows, whatever their state).
    mark: String,
    /// The channel `complete` and `release` notify on.
    channel: String,
}

impl Queries {
    fn for_table(table: &str) -> Self {
        let channel = format!("{table}_changed");
        // A row waited on outlives its expiry a while, so that the request that takes the key
        // over (one of its waiters, woken by the release) finds it and keeps its mark.
        let reapable = format!(
            "expires_at <= now()
             AND (NOT waiting OR expires_at <= now() - {WAITED_ON_KEPT_SECS} * interval '1 second')"
        );
        // A row the mark made for a key that had none: never a record nor a lease, whatever
        // its expiry says. (It is made already expired, but by the mark's clock: a `begin`
        // whose transaction started a moment earlier would see it live, and answer 422.)
        let mark_only = |row: &str| format!("({row}state = 'p' AND {row}token IS NULL)");
        let (mark_only, mark_only_t) = (mark_only(""), mark_only("t."));
        // Notifies, in the statement that changed the row, only when a process waits on it.
        let notify = format!(
            "SELECT count(*) AS changed,
                    count(CASE WHEN waiting
                          THEN (SELECT 1 FROM pg_notify('{channel}', encode(key, 'hex'))) END)
                        AS notified
             FROM changed"
        );
        Self {
            // A live row the caller may not take (a record, another's lease) is only read:
            // without `held`, `ON CONFLICT DO UPDATE` would lock it even when its `WHERE` then
            // refuses, so that every replay and every 409 wrote WAL and queued on the row lock.
            begin: format!(
                "WITH held AS (
                    SELECT 1 FROM {table}
                    WHERE key = $1 AND expires_at > now() AND NOT {mark_only}
                      AND NOT (state = 'p' AND token = $3 AND fingerprint = $2)
                ), acquired AS (
                    INSERT INTO {table} AS t (key, state, fingerprint, token, record, expires_at)
                    SELECT $1, 'p', $2, $3, NULL, now() + $4 * interval '1 millisecond'
                    WHERE NOT EXISTS (SELECT 1 FROM held)
                    ON CONFLICT (key) DO UPDATE
                        SET state = 'p', fingerprint = EXCLUDED.fingerprint,
                            token = EXCLUDED.token, record = NULL,
                            expires_at = EXCLUDED.expires_at
                        WHERE t.expires_at <= now() OR {mark_only_t}
                           OR (t.state = 'p' AND t.token = EXCLUDED.token
                               AND t.fingerprint = EXCLUDED.fingerprint)
                    RETURNING nextval('{table}_fence') AS fence
                )
                SELECT 'a' AS outcome, fence, NULL::bytea AS fingerprint, NULL::text AS state,
                       NULL::bytea AS record, NULL::bigint AS remaining_ms
                FROM acquired
                UNION ALL
                SELECT 'e', NULL, fingerprint, state, record,
                       (extract(epoch FROM expires_at - now()) * 1000)::bigint
                FROM {table}
                WHERE key = $1 AND expires_at > now() AND NOT {mark_only}
                  AND NOT EXISTS (SELECT 1 FROM acquired)"
            ),
            complete: format!(
                "WITH changed AS (
                    UPDATE {table}
                    SET state = 'c', record = $3,
                        expires_at = now() + $4 * interval '1 millisecond'
                    WHERE key = $1 AND token = $2 AND (state = 'p' OR record = $3)
                      AND expires_at > now()
                    RETURNING key, waiting
                 ) {notify}"
            ),
            // The lease ends now rather than the row going: a later holder keeps the mark of
            // the processes still waiting on the key.
            release: format!(
                "WITH changed AS (
                    UPDATE {table} SET expires_at = now() - interval '1 millisecond'
                    WHERE key = $1 AND state = 'p' AND token = $2 AND expires_at > now()
                    RETURNING key, waiting
                 ) {notify}"
            ),
            renew: format!(
                "UPDATE {table} SET expires_at = now() + $3 * interval '1 millisecond'
                 WHERE key = $1 AND state = 'p' AND token = $2 AND expires_at > now()"
            ),
            // The batch as an array, found first: as `key IN (SELECT ...)` the planner joined
            // it against the whole table, one full scan per call (reaper bench: 1,000,000
            // expired rows in 44 s that way). The outer `expires_at` is checked again on the
            // row as it is when deleted: a key a `begin` took over meanwhile is live, and stays.
            reap: format!(
                "DELETE FROM {table} WHERE key = ANY(ARRAY(
                    SELECT key FROM {table} WHERE {reapable} LIMIT {REAP_BATCH}
                 )) AND {reapable}"
            ),
            // The mark is the key's, not one execution's: it marks the key's row whatever its
            // state (a release may have ended the lease the waiter saw), and where the key has
            // no row, leaves an expired one that carries it (`mark_only`: no token). A takeover
            // by `begin` keeps it.
            mark: format!(
                "INSERT INTO {table} AS t (key, state, fingerprint, expires_at, waiting)
                 SELECT key, 'p', ''::bytea, now() - interval '1 millisecond', true
                 FROM unnest($1::bytea[]) AS key
                 ON CONFLICT (key) DO UPDATE SET waiting = true WHERE NOT t.waiting"
            ),
            channel,
        }
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore").finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Uses the `idempotency_records` table (see [`MIGRATIONS`]) through `pool`. Within a
    /// Tokio runtime, once a request first waits on a key (under
    /// [`ConflictPolicy::Wait`](crate::ConflictPolicy::Wait)), the store also listens for the
    /// changes of keys its waiters wait on, on one connection of its own (`LISTEN`, made with the
    /// pool's options, not taken from the pool).
    pub fn new(pool: PgPool) -> Self {
        let queries = Arc::new(Queries::for_table("idempotency_records"));
        let hub = postgres_watch::spawn(
            pool.clone(),
            postgres_watch::Channel {
                name: queries.channel.clone(),
                mark: queries.mark.clone(),
            },
        );
        Self { pool, queries, hub }
    }

    /// Creates the table, its index, its fencing sequence and its `waiting` column where they
    /// do not exist ([`MIGRATIONS`]).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        for migration in MIGRATIONS {
            sqlx::raw_sql(migration)
                .execute(&self.pool)
                .await
                .map_err(StoreError::backend)?;
        }
        Ok(())
    }

    /// Deletes up to 10 000 expired rows in one statement; returns how many went. Reads ignore
    /// expired rows anyway: this only keeps the table small. A row a process waits on stays a
    /// minute past its expiry, for the waiter that takes its key over to keep its mark.
    pub async fn reap_expired(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(&self.queries.reap)
            .execute(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        Ok(done.rows_affected())
    }

    /// The statement [`reap_expired`](Self::reap_expired) runs, so that the reaper bench
    /// explains the statement itself, not a copy.
    #[doc(hidden)]
    pub fn reap_statement(&self) -> &str {
        &self.queries.reap
    }

    /// The statements `begin` and `complete` run (`$1` key, `$2` fingerprint, `$3` token, `$4`
    /// lease in ms; `$1` key, `$2` token, `$3` record, `$4` result TTL in ms), so that the load
    /// comparison's hand-made variant makes the store's own statements, not copies that drift.
    #[doc(hidden)]
    pub fn begin_and_complete_statements(&self) -> (&str, &str) {
        (&self.queries.begin, &self.queries.complete)
    }

    /// Every `every`, on the current Tokio runtime, deletes the expired rows, a
    /// [`reap_expired`](Self::reap_expired) batch at a time until a batch comes back short,
    /// until the returned handle is aborted. (One batch per tick would fall behind any
    /// application that makes more than 10 000 keys per tick.)
    pub fn spawn_reaper(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every.max(Duration::from_millis(1)));
            loop {
                ticker.tick().await;
                loop {
                    match store.reap_expired().await {
                        Ok(deleted) if deleted >= REAP_BATCH => {}
                        Ok(_) => break,
                        Err(error) => {
                            tracing::warn!(%error, "idempotency: reaping expired records failed");
                            break;
                        }
                    }
                }
            }
        })
    }

    /// Runs a token-checked statement; `true` when it touched the caller's row.
    async fn changed_one(&self, query: PgQuery<'_>) -> Result<bool, StoreError> {
        let done = query
            .execute(&self.pool)
            .await
            .map_err(StoreError::backend)?;
        Ok(done.rows_affected() == 1)
    }

    /// Runs a token-checked statement that reports, as `changed`, how many rows it touched
    /// (and notifies waiters); `true` when it touched the caller's row.
    async fn changed_and_notified(&self, query: PgQuery<'_>) -> Result<bool, StoreError> {
        let row = query.fetch_one(&self.pool).await.map_err(schema_error)?;
        let changed: i64 = row.try_get("changed").map_err(StoreError::backend)?;
        Ok(changed == 1)
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1)
}

fn parse_begin(row: &PgRow, fingerprint: &Fingerprint) -> Result<BeginOutcome, StoreError> {
    let get = |e: sqlx::Error| StoreError::backend(e);
    let outcome: String = row.try_get("outcome").map_err(get)?;
    if outcome == "a" {
        let fence: i64 = row.try_get("fence").map_err(get)?;
        return Ok(BeginOutcome::Acquired {
            fencing_token: FencingToken::new(u64::try_from(fence).unwrap_or(0)),
        });
    }
    let stored: Vec<u8> = row.try_get("fingerprint").map_err(get)?;
    let remaining: Option<i64> = row.try_get("remaining_ms").map_err(get)?;
    let remaining = remaining
        .and_then(|ms| u64::try_from(ms).ok())
        .map(Duration::from_millis);
    if stored != fingerprint.as_bytes() {
        return Ok(BeginOutcome::Mismatch);
    }
    let state: String = row.try_get("state").map_err(get)?;
    match state.as_str() {
        "c" => {
            let record: Option<Vec<u8>> = row.try_get("record").map_err(get)?;
            let record = record.ok_or(DecodeError::Truncated)?;
            Ok(BeginOutcome::Completed {
                record: CompletedRecord::decode_shared(record.into())?,
                expires_in: remaining,
            })
        }
        "p" => Ok(BeginOutcome::InProgress {
            retry_after: remaining,
        }),
        _ => Err(StoreError::Corrupt(DecodeError::Invalid("record state"))),
    }
}

impl IdempotencyStore for PostgresStore {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<BeginOutcome, StoreError> {
        for _ in 0..BEGIN_ATTEMPTS {
            let row = sqlx::query(&self.queries.begin)
                .bind(&key.as_bytes()[..])
                .bind(&fingerprint.as_bytes()[..])
                .bind(&token.to_bytes()[..])
                .bind(millis(lease))
                .fetch_optional(&self.pool)
                .await
                .map_err(StoreError::backend)?;
            // No row: a concurrent insert won, after this statement's snapshot was taken.
            if let Some(row) = row {
                return parse_begin(&row, fingerprint);
            }
        }
        Err(StoreError::backend(
            "begin found neither a free key nor a visible record; retries exhausted",
        ))
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        _fingerprint: &Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.changed_and_notified(
            sqlx::query(&self.queries.complete)
                .bind(&key.as_bytes()[..])
                .bind(&token.to_bytes()[..])
                .bind(&record.encode()[..])
                .bind(millis(ttl)),
        )
        .await
    }

    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<bool, StoreError> {
        self.changed_and_notified(
            sqlx::query(&self.queries.release)
                .bind(&key.as_bytes()[..])
                .bind(&token.to_bytes()[..]),
        )
        .await
    }

    async fn renew(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.changed_one(
            sqlx::query(&self.queries.renew)
                .bind(&key.as_bytes()[..])
                .bind(&token.to_bytes()[..])
                .bind(millis(lease)),
        )
        .await
    }
}

/// Waiters are woken by `LISTEN`/`NOTIFY`: a waiting process marks the key's row, and
/// `complete` and `release` notify, in the same statement, only for marked rows (see
/// `migrations/0002_idempotency_waiting.sql`).
impl WatchKeys for PostgresStore {
    fn watch(&self, key: &StoreKey) -> KeyWatch {
        match &self.hub {
            Some(hub) => hub.watch(key),
            None => KeyWatch::polling(crate::policy::DEFAULT_POLL),
        }
    }
}
