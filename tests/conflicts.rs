//! What a duplicate is told while the first request runs: a `Retry-After` that helps.

mod common;

use std::time::Duration;

use http::StatusCode;
use tower_idempotency::{ConflictHint, IdempotencyLayer, MemoryStore};

use common::{eventually, post, send, with_header, Handler};

/// 409 for a duplicate of the gated request, while it runs; the gate then opens.
async fn conflict_with(layer: IdempotencyLayer<MemoryStore>, grpc: bool) -> common::Answer {
    let handler = Handler::new();
    let svc = handler.service(layer);
    // One quick execution first, so the layer knows how long they take here.
    assert_eq!(
        send(&svc, post("/orders", Some("quick"), "{}"))
            .await
            .status,
        StatusCode::CREATED
    );
    let first = tokio::spawn(send(&svc, post("/gated", Some("k"), "{}")));
    eventually("the first request to run", || handler.executions() == 2).await;
    let mut duplicate = post("/gated", Some("k"), "{}");
    if grpc {
        duplicate = with_header(duplicate, "content-type", "application/grpc");
    }
    let answer = send(&svc, duplicate).await;
    handler.open_gate();
    assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
    answer
}

#[tokio::test]
async fn retry_after_is_how_long_such_requests_take_not_the_lease() {
    let answer = conflict_with(IdempotencyLayer::new(MemoryStore::new()), false).await;
    answer.assert_problem(StatusCode::CONFLICT, "in-progress");
    // Executions here take milliseconds: the hint is the floor, 1 s, not the 30 s lease.
    assert_eq!(answer.values("retry-after"), ["1"]);
}

#[tokio::test]
async fn retry_after_can_be_fixed_or_computed() {
    let fixed = IdempotencyLayer::new(MemoryStore::new()).with_retry_after(Duration::from_secs(7));
    assert_eq!(
        conflict_with(fixed, false).await.values("retry-after"),
        ["7"]
    );

    let lease = IdempotencyLayer::new(MemoryStore::new())
        .with_retry_after(|hint: &ConflictHint| hint.lease_left.unwrap_or_default());
    let worst_case: u64 = conflict_with(lease, false).await.values("retry-after")[0]
        .parse()
        .unwrap();
    assert!(
        (25..=30).contains(&worst_case),
        "the rest of a 30 s lease: {worst_case}"
    );

    let grpc = IdempotencyLayer::new(MemoryStore::new()).with_retry_after(Duration::from_secs(3));
    let answer = conflict_with(grpc, true).await;
    assert_eq!(answer.headers["grpc-status"], "10");
    assert_eq!(answer.headers["grpc-retry-pushback-ms"], "3000");
}
