//! Every outcome reaches the user's hook and produces a `tracing` event that carries the key's
//! hash, never the raw key.

mod common;

use std::sync::{Arc, Mutex};

use http::StatusCode;
use tower_idempotency::{IdempotencyLayer, MemoryStore, Outcome, StoreKey};

use common::{eventually, logs, post, send, Handler};

type Seen = Arc<Mutex<Vec<Outcome>>>;

fn take(seen: &Seen) -> Vec<Outcome> {
    std::mem::take(&mut *seen.lock().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_reaches_the_hook() {
    let seen: Seen = Arc::default();
    let hook = Arc::clone(&seen);
    let handler = Handler::new();
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .with_key_required(true)
        .with_body_limit(64)
        .with_record_limit(1024)
        .with_on_outcome(move |outcome: Outcome| hook.lock().unwrap().push(outcome));
    let svc = handler.service(layer);

    send(&svc, post("/orders", Some("a"), "{}")).await;
    assert_eq!(take(&seen), [Outcome::Acquired, Outcome::Recorded]);
    send(&svc, post("/orders", Some("a"), "{}")).await;
    assert_eq!(take(&seen), [Outcome::Replayed]);
    send(&svc, post("/orders", Some("a"), "{\"x\":1}")).await;
    assert_eq!(take(&seen), [Outcome::Mismatch]);
    send(&svc, post("/fail", Some("b"), "{}")).await;
    assert_eq!(take(&seen), [Outcome::Acquired, Outcome::Released]);
    send(&svc, post("/big", Some("c"), "{}")).await;
    assert_eq!(take(&seen), [Outcome::Acquired, Outcome::Tombstoned]);
    send(&svc, post("/orders", None, "{}")).await;
    send(&svc, post("/orders", Some("d"), vec![b'x'; 65])).await;
    assert_eq!(take(&seen), [Outcome::Refused, Outcome::Refused]);

    let first = tokio::spawn(send(&svc, post("/gated", Some("e"), "{}")));
    eventually("the first request to start", || handler.executions() == 4).await;
    let conflict = send(&svc, post("/gated", Some("e"), "{}")).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    handler.open_gate();
    first.await.unwrap();
    assert_eq!(
        take(&seen),
        [Outcome::Acquired, Outcome::Conflict, Outcome::Recorded]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_are_tracing_events_with_the_key_hash_in_a_span() {
    logs::capture();
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(MemoryStore::new()));
    let raw_key = "observed-key-7c1f";
    send(&svc, post("/orders", Some(raw_key), "{}")).await;
    send(&svc, post("/orders", Some(raw_key), "{}")).await;
    send(&svc, post("/orders", Some(raw_key), "{\"other\":1}")).await;
    send(&svc, post("/fail", Some(raw_key), "{}")).await;

    let hash = StoreKey::derive(None, "POST", "/orders", raw_key).to_hex();
    for event in [
        "acquired",
        "recorded",
        "replayed",
        "key reused with another request",
    ] {
        let lines = logs::lines_with(&[&format!("idempotency: {event}"), &hash]);
        assert_eq!(lines.len(), 1, "{event}: {lines:?}");
        assert!(
            lines[0].contains("idempotency{key="),
            "the span names the key: {}",
            lines[0]
        );
    }
    let fail_hash = StoreKey::derive(None, "POST", "/fail", raw_key).to_hex();
    assert_eq!(
        logs::lines_with(&["not recordable; releasing", &fail_hash]).len(),
        1
    );
    assert!(
        logs::lines_with(&[raw_key]).is_empty(),
        "the raw key never reaches a log line"
    );
}

/// Every refusal is a log line, whatever refused it: a missing key, a body over the limit, a
/// scope at its cap. And the key's hash appears once per line (in the span), not twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_a_log_line_and_the_key_hash_appears_once() {
    logs::capture();
    let handler = Handler::new();
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .with_key_required(true)
        .with_body_limit(8);
    let svc = handler.service(layer);
    send(&svc, post("/refusals", None, "{}"))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "key-missing");
    send(&svc, post("/refusals", Some("too-large"), "0123456789"))
        .await
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large");
    for status in ["status=400", "status=413"] {
        assert_eq!(
            logs::lines_with(&["idempotency: request refused", status]).len(),
            1,
            "{status}"
        );
    }
    send(&svc, post("/orders", Some("hash-once"), "{}")).await;
    let hash = StoreKey::derive(None, "POST", "/orders", "hash-once").to_hex();
    let lines = logs::lines_with(&[&hash]);
    assert!(!lines.is_empty());
    for line in lines {
        assert_eq!(line.matches(&hash).count(), 1, "{line}");
    }
}
