//! Settings that keep one client's records from another: key formats.

mod common;

use http::StatusCode;
use tower_idempotency::{IdempotencyLayer, KeyFormat, MemoryStore};

use common::{post, send, Handler};

#[tokio::test]
async fn a_key_of_another_format_is_400_naming_the_format() {
    let handler = Handler::new();
    let svc =
        handler.service(IdempotencyLayer::new(MemoryStore::new()).with_key_format(KeyFormat::Uuid));
    let refused = send(&svc, post("/orders", Some("order-1"), "{}")).await;
    refused.assert_problem(StatusCode::BAD_REQUEST, "key-format");
    let detail: serde_json::Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(
        detail["detail"],
        "the idempotency key must be a UUID, such as 0191d6c2-7a8e-7c4f-9a1b-3c5d7e9f1a2b"
    );
    assert_eq!(handler.executions(), 0);

    let uuid = "\"550e8400-e29b-41d4-a716-446655440000\"";
    let created = send(&svc, post("/orders", Some(uuid), "{}")).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(handler.executions(), 1);
}

#[tokio::test]
async fn a_minimum_length_over_an_alphabet() {
    let handler = Handler::new();
    let format = KeyFormat::min_length(22, KeyFormat::BASE64URL);
    let svc = handler.service(IdempotencyLayer::new(MemoryStore::new()).with_key_format(format));
    for short_or_foreign in ["abc", "aaaaaaaaaaaaaaaaaaaaa+", "aaaaaaaaaaaaaaaaaaaaa/"] {
        send(&svc, post("/orders", Some(short_or_foreign), "{}"))
            .await
            .assert_problem(StatusCode::BAD_REQUEST, "key-format");
    }
    let ok = send(&svc, post("/orders", Some("Zm9vYmFyYmF6cXV4cXV1eA"), "{}")).await;
    assert_eq!(ok.status, StatusCode::CREATED);
    assert_eq!(handler.executions(), 1);
}

/// The app's own error format, through one hook: every refusal goes through it, with
/// `Retry-After` kept where the refusal calls for it; gRPC clients still get gRPC statuses.
#[tokio::test]
async fn refusals_take_the_apps_error_format() {
    use bytes::Bytes;
    use tower_idempotency::problems::Refusal;

    let handler = Handler::new();
    let layer = IdempotencyLayer::new(MemoryStore::new())
        .with_key_required(true)
        .with_problem_response(|refusal: &Refusal| {
            let body = format!(
                "{{\"error\":\"{}\",\"status\":{}}}",
                refusal.kind,
                refusal.status.as_u16()
            );
            http::Response::builder()
                .status(refusal.status)
                .header("content-type", "application/vnd.app.error+json")
                .body(Bytes::from(body))
                .unwrap()
        });
    let svc = handler.service(layer);
    let missing = send(&svc, post("/orders", None, "{}")).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        missing.headers["content-type"],
        "application/vnd.app.error+json"
    );
    assert_eq!(missing.text(), "{\"error\":\"key-missing\",\"status\":400}");

    let first = tokio::spawn(send(&svc, post("/gated", Some("k"), "{}")));
    common::eventually("the first request to run", || handler.executions() == 1).await;
    let conflict = send(&svc, post("/gated", Some("k"), "{}")).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    assert_eq!(
        conflict.text(),
        "{\"error\":\"in-progress\",\"status\":409}"
    );
    assert!(
        conflict.headers.contains_key("retry-after"),
        "Retry-After is kept"
    );
    let grpc = common::with_header(
        post("/gated", Some("k"), "{}"),
        "content-type",
        "application/grpc",
    );
    let grpc = send(&svc, grpc).await;
    assert_eq!(
        grpc.headers["grpc-status"], "10",
        "gRPC clients get ABORTED"
    );
    handler.open_gate();
    assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
}
