//! What only the PostgreSQL store promises: its reaper, and corrupt rows.
#![cfg(feature = "postgres")]

mod common;

use std::time::Duration;

use http::StatusCode;
use tower_idempotency::{IdempotencyLayer, StoreKey, MIGRATION, MIGRATIONS};

use common::{post, send, Handler, DEADLINE};

async fn rows(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM idempotency_records")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_deletes_expired_rows_and_reads_ignore_them_before() {
    let (store, pg) = common::postgres_store().await;
    let pool = sqlx::PgPool::connect(pg.url()).await.unwrap();
    // The shipped migrations run twice without harm.
    for migration in MIGRATIONS {
        sqlx::raw_sql(migration).execute(&pool).await.unwrap();
    }
    let handler = Handler::new();
    let layer = IdempotencyLayer::new(store.clone()).with_result_ttl(Duration::from_millis(200));
    let svc = handler.service(layer);
    for n in 0..3 {
        send(&svc, post("/orders", Some(&format!("k{n}")), "{}")).await;
    }
    assert_eq!(rows(&pool).await, 3);

    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut reaped = 0;
    while reaped < 3 {
        assert!(tokio::time::Instant::now() < deadline, "rows never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
        reaped += store.reap_expired().await.unwrap();
    }
    assert_eq!(rows(&pool).await, 0);
    // Expired means gone for the protocol too: the key runs again.
    assert!(!send(&svc, post("/orders", Some("k0"), "{}"))
        .await
        .replayed());
    assert_eq!(handler.executions(), 4);
}

/// A key taken over while the reaper deletes it stays: the reaper found it expired, but by the
/// time it reached the row a `begin` had made it live again (here a transaction holding the
/// row, committed once the reaper waits for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_leaves_a_key_taken_over_while_it_runs() {
    let (store, pg) = common::postgres_store().await;
    let pool = sqlx::PgPool::connect(pg.url()).await.unwrap();
    let handler = Handler::new();
    let layer = IdempotencyLayer::new(store.clone()).with_result_ttl(Duration::from_millis(1));
    let svc = handler.service(layer);
    send(&svc, post("/orders", Some("k"), "{}")).await;
    let key = StoreKey::derive(None, "POST", "/orders", "k");
    let expired = || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT expires_at <= now() FROM idempotency_records WHERE key = $1",
        )
        .bind(&key.as_bytes()[..])
        .fetch_optional(&pool)
        .await
        .unwrap()
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while expired().await != Some(true) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the record never expired"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut takeover = pool.begin().await.unwrap();
    sqlx::query(
        "UPDATE idempotency_records SET expires_at = now() + interval '1 hour' WHERE key = $1",
    )
    .bind(&key.as_bytes()[..])
    .execute(&mut *takeover)
    .await
    .unwrap();
    let reaper = tokio::spawn({
        let store = store.clone();
        async move { store.reap_expired().await }
    });
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'DELETE%'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reaper never reached the row"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    takeover.commit().await.unwrap();
    assert_eq!(
        reaper.await.unwrap().unwrap(),
        0,
        "the reaper deleted a live row"
    );
    assert_eq!(expired().await, Some(false));
}

/// A replay, and a duplicate refused while the first runs, only read: no row lock, no WAL (before,
/// the statement's `ON CONFLICT DO UPDATE` locked the row, 56 bytes of WAL and a commit flush each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_and_refused_duplicates_write_nothing() {
    let (store, pg) = common::postgres_store().await;
    let pool = sqlx::PgPool::connect(pg.url()).await.unwrap();
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    let first = send(&svc, post("/orders", Some("k"), "{}")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let running = tokio::spawn(send(&svc, post("/gated", Some("g"), "{}")));
    common::eventually("the gated request to run", || handler.executions() == 2).await;

    let wal = || async {
        sqlx::query_scalar::<_, i64>("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = wal().await;
    for _ in 0..50 {
        assert!(send(&svc, post("/orders", Some("k"), "{}"))
            .await
            .replayed());
        send(&svc, post("/gated", Some("g"), "{}"))
            .await
            .assert_problem(StatusCode::CONFLICT, "in-progress");
    }
    let written = wal().await - before;
    // 100 calls that locked their row would write at least 5,600 bytes; allow for background work.
    assert!(written < 1_000, "100 reads wrote {written} bytes of WAL");
    handler.open_gate();
    assert_eq!(running.await.unwrap().status, StatusCode::CREATED);
    assert_eq!(handler.executions(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_row_is_500_and_never_reruns_the_handler() {
    let (store, pg) = common::postgres_store().await;
    let pool = sqlx::PgPool::connect(pg.url()).await.unwrap();
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    assert_eq!(
        send(&svc, post("/orders", Some("k"), "{}")).await.status,
        StatusCode::CREATED
    );

    let key = StoreKey::derive(None, "POST", "/orders", "k");
    sqlx::query("UPDATE idempotency_records SET record = 'garbage' WHERE key = $1")
        .bind(&key.as_bytes()[..])
        .execute(&pool)
        .await
        .unwrap();
    send(&svc, post("/orders", Some("k"), "{}"))
        .await
        .assert_problem(StatusCode::INTERNAL_SERVER_ERROR, "record-corrupt");
    assert_eq!(handler.executions(), 1);
}

/// A table of 0.1's schema (no `waiting` column): the store says what to run, and after
/// `migrate` the same key completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_the_waiting_column_names_the_migration() {
    let pg = tokio::task::spawn_blocking(test_support::TestPostgres::start)
        .await
        .expect("PostgreSQL start-up");
    let pool = sqlx::PgPool::connect(pg.url()).await.unwrap();
    sqlx::raw_sql(MIGRATION).execute(&pool).await.unwrap();
    let store = tower_idempotency::PostgresStore::new(pool.clone());
    common::logs::capture();
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store.clone()));
    send(&svc, post("/orders", Some("k"), "{}")).await;
    assert!(
        !common::logs::lines_with(&["PostgresStore::migrate()"]).is_empty(),
        "no log line names the migration"
    );
    store.migrate().await.unwrap();
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    assert_eq!(
        send(&svc, post("/orders", Some("k2"), "{}")).await.status,
        StatusCode::CREATED
    );
}

/// What the store's docs promise for a pool without sqlx's check on acquire
/// (`test_before_acquire(false)`, advised across a network): a connection the server closed
/// fails the one request that finds it, without running its handler, and the next request gets
/// a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_pools_check_a_broken_connection_fails_one_request_and_runs_nothing() {
    let pg = tokio::task::spawn_blocking(test_support::TestPostgres::start)
        .await
        .expect("PostgreSQL start-up");
    // Named, so that the test finds its pool's connection on a server other tests share.
    let application = "broken-connection-test";
    let options: sqlx::postgres::PgConnectOptions = pg.url().parse().unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .test_before_acquire(false)
        .max_connections(1)
        .connect_with(options.application_name(application))
        .await
        .unwrap();
    let store = tower_idempotency::PostgresStore::new(pool.clone());
    store.migrate().await.unwrap();
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    assert_eq!(
        send(&svc, post("/orders", Some("k1"), "{}")).await.status,
        StatusCode::CREATED
    );

    // The server ends the pool's one connection while it sits idle in the pool.
    let admin = sqlx::PgPool::connect(pg.url()).await.unwrap();
    let pool_backend: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE application_name = $1")
            .bind(application)
            .fetch_all(&admin)
            .await
            .unwrap();
    assert_eq!(pool_backend.len(), 1, "the pool holds one connection");
    // Returns once the backend has exited (PostgreSQL 14 and later).
    sqlx::query("SELECT pg_terminate_backend($1, 5000)")
        .bind(pool_backend[0])
        .execute(&admin)
        .await
        .unwrap();

    let failed = send(&svc, post("/orders", Some("k2"), "{}")).await;
    assert_eq!(
        failed.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        failed.text()
    );
    assert_eq!(
        handler.executions(),
        1,
        "the request that failed ran nothing"
    );
    let retried = send(&svc, post("/orders", Some("k2"), "{}")).await;
    assert_eq!(retried.status, StatusCode::CREATED, "{}", retried.text());
    assert_eq!(handler.executions(), 2);
}

/// `spawn_reaper` keeps up with more expired rows than one batch (10 000) per tick: it deletes
/// batch after batch until one comes back short. (It used to delete one batch per tick: with a
/// tick of a minute, an application making more than 167 keys a second outgrew it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_deletes_every_expired_row_each_tick_not_one_batch() {
    let (store, pg) = common::postgres_store().await;
    let pool = sqlx::PgPool::connect(pg.url()).await.unwrap();
    sqlx::query(
        "INSERT INTO idempotency_records (key, state, fingerprint, token, record, expires_at)
         SELECT sha256(int4send(n)), 'c', '\\x00', '\\x00', '\\x00', now() - interval '1 hour'
         FROM generate_series(1, 25000) AS n",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Its own rows only: other tests may share the table.
    let left = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM idempotency_records
             WHERE key IN (SELECT sha256(int4send(n)) FROM generate_series(1, 25000) AS n)",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(left().await, 25_000);

    // The first tick comes at once; the next one in an hour, long after this test.
    let reaper = store.spawn_reaper(Duration::from_secs(3600));
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while left().await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} expired rows left after the first tick",
            left().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reaper.abort();
}

/// A row waited on stays a minute past its expiry, so that the waiter that takes the key over
/// keeps its mark (and its fellow waiters their wake-up); an expired row nobody waits on, and a
/// row waited on that expired longer ago, go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_leaves_a_row_waited_on_a_minute_past_its_expiry() {
    let (store, pg) = common::postgres_store().await;
    let pool = sqlx::PgPool::connect(pg.url()).await.unwrap();
    // (n, waiting, expired this long ago)
    let rows = [
        (1, true, "1 second"),
        (2, true, "2 minutes"),
        (3, false, "1 second"),
    ];
    for (n, waiting, ago) in rows {
        sqlx::query(
            "INSERT INTO idempotency_records (key, state, fingerprint, expires_at, waiting)
             VALUES (sha256(int4send(800000 + $1)), 'p', '\\x00', now() - $3::interval, $2)",
        )
        .bind(n)
        .bind(waiting)
        .bind(ago)
        .execute(&pool)
        .await
        .unwrap();
    }
    // Batch after batch, as `spawn_reaper` does: other tests' rows may fill one.
    while store.reap_expired().await.unwrap() >= 10_000 {}
    // Its own rows only: other tests may share the table.
    let left: Vec<i32> = sqlx::query_scalar(
        "SELECT n FROM generate_series(1, 3) AS n
         WHERE EXISTS (SELECT 1 FROM idempotency_records WHERE key = sha256(int4send(800000 + n)))",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(left, [1], "rows left after the reaper");
}

/// A row the waiters' mark made for a key that had none is neither a record nor a lease, even
/// while its expiry (the mark's clock) still looks live to a statement that started earlier:
/// the request runs, and takes the row over with its mark. (Read as a row like any other, it
/// answered 422: its empty fingerprint matches no request.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_made_by_the_mark_is_taken_over_with_its_mark() {
    let (store, pg) = common::postgres_store().await;
    let pool = sqlx::PgPool::connect(pg.url()).await.unwrap();
    let key = StoreKey::derive(None, "POST", "/orders", "marked");
    // As the mark makes it, but with an expiry a later clock would call live.
    sqlx::query(
        "INSERT INTO idempotency_records (key, state, fingerprint, expires_at, waiting)
         VALUES ($1, 'p', '', now() + interval '1 hour', true)",
    )
    .bind(&key.as_bytes()[..])
    .execute(&pool)
    .await
    .unwrap();
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    let answer = send(&svc, post("/orders", Some("marked"), "{}")).await;
    assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    assert_eq!(handler.executions(), 1);
    let (state, waiting): (String, bool) =
        sqlx::query_as("SELECT state, waiting FROM idempotency_records WHERE key = $1")
            .bind(&key.as_bytes()[..])
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), waiting), ("c", true), "the mark went");
    assert!(send(&svc, post("/orders", Some("marked"), "{}"))
        .await
        .replayed());
}
