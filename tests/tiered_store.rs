//! Redis in front of PostgreSQL: replays from Redis, decisions in PostgreSQL, and a flushed
//! Redis never lets a duplicate run.
#![cfg(feature = "postgres")]

mod common;

use std::time::Duration;

use http::StatusCode;
use test_support::TestRedis;
use tokio::task::JoinSet;
use tower_idempotency::{IdempotencyLayer, MemoryStore, RedisStore, ReplayCache, TieredStore};

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

/// Any `ReplayTier` can be the fast tier: memory and a local replay cache in front of
/// PostgreSQL fill, and replay without touching it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_a_replay_cache_serve_as_fast_tiers() {
    let (durable, _pg) = common::postgres_store().await;
    let durable = CountingStore::new(durable);
    let memory_first = TieredStore::new(MemoryStore::new(), durable.clone());
    let cache_first = TieredStore::new(ReplayCache::new(MemoryStore::new()), durable.clone());
    for (name, svc) in [
        (
            "memory",
            Handler::new().service(IdempotencyLayer::new(memory_first)),
        ),
        (
            "replay cache",
            Handler::new().service(IdempotencyLayer::new(cache_first)),
        ),
    ] {
        let key = format!("fast-{}", name.replace(' ', "-"));
        let begins = durable.begins();
        let first = send(&svc, post("/orders", Some(&key), "{}")).await;
        assert_eq!(first.status, StatusCode::CREATED);
        for _ in 0..3 {
            let replay = send(&svc, post("/orders", Some(&key), "{}")).await;
            assert!(replay.replayed());
            assert_eq!(replay.body, first.body);
        }
        assert_eq!(
            durable.begins(),
            begins + 1,
            "{name}: replays never reached PostgreSQL"
        );
    }
}

/// A fast tier that goes down is not the service's outage: replays come from PostgreSQL and new
/// keys run, each fast call bounded; once Redis is back, it fills and replays again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_tier_outage_degrades_to_the_durable_tier() {
    let mut redis = TestRedis::start_own().await;
    let fast = RedisStore::connect(redis.url()).await.unwrap();
    let (durable, _pg) = common::postgres_store().await;
    let durable = CountingStore::new(durable);
    let store =
        TieredStore::new(fast, durable.clone()).with_fast_timeout(Duration::from_millis(50));
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store.clone()));
    let first = send(&svc, post("/orders", Some("recorded"), "{}")).await;
    assert_eq!(first.status, StatusCode::CREATED);

    // A fast tier that hangs (paused for longer than the layer's 2 s store timeout): each fast
    // call gives up after 50 ms, and the durable tier answers in time.
    let mut probe = redis.connection().await;
    test_support::pause_all_clients(&mut probe, Duration::from_millis(3000)).await;
    let replay = send(&svc, post("/orders", Some("recorded"), "{}")).await;
    assert!(
        replay.replayed(),
        "the durable tier replays: {}",
        replay.text()
    );
    assert_eq!(replay.body, first.body);

    // A fast tier that is gone (the pause is over by then, or ends with the process): the same.
    redis.server().expect("a spawned server").stop();
    let replay = send(&svc, post("/orders", Some("recorded"), "{}")).await;
    assert!(
        replay.replayed(),
        "the durable tier replays: {}",
        replay.text()
    );
    assert_eq!(replay.body, first.body);
    let during = send(&svc, post("/orders", Some("during"), "{}")).await;
    assert_eq!(during.status, StatusCode::CREATED);
    assert!(store.fast_tier_failures() >= 1);
    assert_eq!(handler.executions(), 2);

    redis.server().unwrap().start().unwrap();
    // Once the fast tier answers again, a durable replay fills it, and then it replays alone.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let begins = durable.begins();
        assert!(send(&svc, post("/orders", Some("during"), "{}"))
            .await
            .replayed());
        if durable.begins() == begins {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the fast tier never filled again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(handler.executions(), 2);
}
