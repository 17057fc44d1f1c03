//! Redis in front of PostgreSQL: replays from Redis, decisions in PostgreSQL, and a flushed
//! Redis never lets a duplicate run.
#![cfg(feature = "postgres")]

mod common;

use http::StatusCode;
use tokio::task::JoinSet;
use tower_idempotency::{IdempotencyLayer, TieredStore};

use common::{counting_store::CountingStore, eventually, post, send, Handler, DEADLINE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_come_from_the_fast_tier_and_survive_its_loss() {
    let (fast, redis) = common::redis_store().await;
    let (durable, _pg) = common::postgres_store().await;
    let durable = CountingStore::new(durable);
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(TieredStore::new(
        fast,
        durable.clone(),
    )));

    assert_eq!(
        send(&svc, post("/orders", Some("k"), "{}")).await.status,
        StatusCode::CREATED
    );
    for _ in 0..3 {
        assert!(send(&svc, post("/orders", Some("k"), "{}"))
            .await
            .replayed());
    }
    assert_eq!(durable.begins(), 1, "replays were served by Redis");

    let mut probe = redis.connection().await;
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut probe)
        .await
        .unwrap();
    for _ in 0..3 {
        assert!(send(&svc, post("/orders", Some("k"), "{}"))
            .await
            .replayed());
    }
    assert_eq!(durable.begins(), 2, "one durable read refilled Redis");
    assert_eq!(handler.executions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushing_the_fast_tier_mid_run_never_lets_a_duplicate_run() {
    let (store, (redis, _pg)) = common::tiered_store().await;
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    let mut probe = redis.connection().await;

    let mut tasks = JoinSet::new();
    for _ in 0..32 {
        tasks.spawn(send(&svc, post("/gated", Some("once"), "{}")));
    }
    eventually("the first request to start", || handler.executions() == 1).await;
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut probe)
        .await
        .unwrap();
    for _ in 0..32 {
        tasks.spawn(send(&svc, post("/gated", Some("once"), "{}")));
    }
    let mut answers = Vec::new();
    while answers.len() < 63 {
        let next = tokio::time::timeout(DEADLINE, tasks.join_next())
            .await
            .expect("answers");
        answers.push(next.unwrap().unwrap());
    }
    handler.open_gate();
    answers.push(tasks.join_next().await.unwrap().unwrap());
    let () = redis::cmd("FLUSHALL")
        .query_async(&mut probe)
        .await
        .unwrap();
    answers.push(send(&svc, post("/gated", Some("once"), "{}")).await);

    assert_eq!(handler.executions(), 1);
    let created: Vec<_> = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .collect();
    assert_eq!(created.iter().filter(|a| !a.replayed()).count(), 1);
    assert!(created.iter().filter(|a| a.replayed()).count() >= 1);
    assert_eq!(
        answers.len() - created.len(),
        63,
        "all others were refused while it ran"
    );
}
