//! What only the PostgreSQL store promises: its reaper, and corrupt rows.
#![cfg(feature = "postgres")]

mod common;

use std::time::Duration;

use http::StatusCode;
use tower_idempotency::{IdempotencyLayer, StoreKey, MIGRATION};

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
    // The shipped migration runs twice without harm.
    sqlx::raw_sql(MIGRATION).execute(&pool).await.unwrap();
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
