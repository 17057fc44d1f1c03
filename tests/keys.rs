//! Where keys come from (a header, another header, the JSON body, a closure) and which
//! requests the layer covers.

mod common;

use http::StatusCode;
use tower_idempotency::{IdempotencyKey, IdempotencyLayer, MemoryStore};

use common::{post, send, with_header, Handler};

#[tokio::test]
async fn only_requests_the_rule_accepts_are_covered() {
    let handler = Handler::new();
    let layer = IdempotencyLayer::new(MemoryStore::new()).with_covered_when(
        |parts: &http::request::Parts| parts.uri.path().starts_with("/payments"),
    );
    let svc = handler.service(layer);
    for _ in 0..2 {
        let answer = send(&svc, post("/orders", Some("k"), "{}")).await;
        assert!(!answer.replayed(), "/orders is not covered");
    }
    assert_eq!(handler.executions(), 2);
    let first = send(&svc, post("/payments", Some("k"), "{}")).await;
    let retry = send(&svc, post("/payments", Some("k"), "{}")).await;
    assert!(!first.replayed() && retry.replayed());
    assert_eq!(handler.executions(), 3);
}

#[tokio::test]
async fn a_closure_finds_the_key_in_another_header() {
    let handler = Handler::new();
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .with_key_required(true)
        .with_key(|parts: &http::request::Parts, _body: &[u8]| {
            let delivery = parts.headers.get("x-github-delivery");
            delivery
                .map(|v| IdempotencyKey::parse(v.as_bytes()))
                .transpose()
        });
    let svc = handler.service(layer);
    let delivery = || with_header(post("/hooks", None, "{}"), "x-github-delivery", "72d3162e");
    let first = send(&svc, delivery()).await;
    let retry = send(&svc, delivery()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(retry.replayed());
    send(&svc, post("/hooks", Some("ignored"), "{}"))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "key-missing");
    assert_eq!(handler.executions(), 1);
}

#[cfg(feature = "json")]
#[tokio::test]
async fn a_json_field_is_the_key() {
    use tower_idempotency::JsonKey;

    let handler = Handler::new();
    let layer = IdempotencyLayer::new(MemoryStore::new()).with_key(JsonKey::pointer("/event/id"));
    let svc = handler.service(layer);
    let event = r#"{"event": {"id": "evt_1", "type": "charge.succeeded"}}"#;
    let first = send(&svc, post("/hooks", None, event)).await;
    let retry = send(&svc, post("/hooks", None, event)).await;
    assert!(!first.replayed() && retry.replayed());
    let numbered = r#"{"event": {"id": 42}}"#;
    send(&svc, post("/hooks", None, numbered)).await;
    assert!(send(&svc, post("/hooks", None, numbered)).await.replayed());
    assert_eq!(handler.executions(), 2);

    send(
        &svc,
        post("/hooks", None, r#"{"event": {"id": {"nested": 1}}}"#),
    )
    .await
    .assert_problem(StatusCode::BAD_REQUEST, "key-invalid");
    // No key (not JSON, or no such field): passes through, as a request without the header.
    for keyless in ["not json", r#"{"event": {}}"#] {
        assert!(!send(&svc, post("/hooks", None, keyless)).await.replayed());
        assert!(!send(&svc, post("/hooks", None, keyless)).await.replayed());
    }
    assert_eq!(handler.executions(), 6);
}
