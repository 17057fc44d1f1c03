//! The local replay tier: replays skip the store, expiry holds, and the cache stays bounded.

mod common;

use std::time::Duration;

use http::StatusCode;
use tower_idempotency::{IdempotencyLayer, MemoryStore, ReplayCache};

use common::{counting_store::CountingStore, post, send, Handler};

#[tokio::test]
async fn replays_after_a_completion_skip_the_store() {
    let inner = CountingStore::new(MemoryStore::new());
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(ReplayCache::new(inner.clone())));
    assert_eq!(
        send(&svc, post("/orders", Some("k"), "{}")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(inner.begins(), 1);
    for _ in 0..5 {
        assert!(send(&svc, post("/orders", Some("k"), "{}"))
            .await
            .replayed());
    }
    send(&svc, post("/orders", Some("k"), "{\"other\":1}"))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "key-reused");
    assert_eq!(
        inner.begins(),
        1,
        "replays and mismatches were answered locally"
    );
    assert_eq!(handler.executions(), 1);
}

#[tokio::test]
async fn another_instance_fills_its_cache_on_the_first_replay() {
    let shared = CountingStore::new(MemoryStore::new());
    let handler = Handler::new();
    let a = handler.service(IdempotencyLayer::new(ReplayCache::new(shared.clone())));
    let b = handler.service(IdempotencyLayer::new(ReplayCache::new(shared.clone())));
    assert_eq!(
        send(&a, post("/orders", Some("k"), "{}")).await.status,
        StatusCode::CREATED
    );
    assert!(send(&b, post("/orders", Some("k"), "{}")).await.replayed());
    assert_eq!(shared.begins(), 2, "b's first replay asks the store");
    for _ in 0..3 {
        assert!(send(&b, post("/orders", Some("k"), "{}")).await.replayed());
    }
    assert_eq!(shared.begins(), 2, "then b answers from its cache");
}

#[tokio::test(start_paused = true)]
async fn a_cached_record_lives_no_longer_than_the_store_keeps_it() {
    let handler = Handler::new();
    let layer = IdempotencyLayer::new(ReplayCache::new(MemoryStore::new()))
        .with_result_ttl(Duration::from_secs(10));
    let svc = handler.service(layer);
    assert_eq!(
        send(&svc, post("/orders", Some("k"), "{}")).await.status,
        StatusCode::CREATED
    );
    tokio::time::advance(Duration::from_millis(9_900)).await;
    assert!(send(&svc, post("/orders", Some("k"), "{}"))
        .await
        .replayed());
    tokio::time::advance(Duration::from_millis(200)).await;
    let after = send(&svc, post("/orders", Some("k"), "{}")).await;
    assert!(!after.replayed(), "the record expired: the key runs again");
    assert_eq!(handler.executions(), 2);
}

#[tokio::test]
async fn the_cache_is_bounded_in_entries_and_bytes() {
    let handler = Handler::new();
    let by_count = ReplayCache::new(MemoryStore::new()).with_max_entries(3);
    let svc = handler.service(IdempotencyLayer::new(by_count.clone()));
    for n in 0..6 {
        send(&svc, post("/orders", Some(&format!("k{n}")), "{}")).await;
    }
    assert_eq!(by_count.usage().0, 3);

    let by_size = ReplayCache::new(MemoryStore::new()).with_max_bytes(10_000);
    let svc = handler.service(IdempotencyLayer::new(by_size.clone()));
    for n in 0..6 {
        // 4 KiB bodies: two fit, a third would not.
        send(&svc, post("/big", Some(&format!("k{n}")), "{}")).await;
    }
    let (entries, bytes) = by_size.usage();
    assert_eq!(entries, 2);
    assert!(bytes <= 10_000, "{bytes} bytes");
}
