//! The layer on a whole axum 0.8 `Router`, as users write it.

use axum::{
    body::Body,
    extract::State,
    http::{Request, StatusCode},
    routing::post,
    Router,
};
use http_body_util::BodyExt;
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};
use tower::ServiceExt;
use tower_idempotency::{FencingToken, IdempotencyLayer, MemoryStore};

async fn create(
    State(count): State<Arc<AtomicUsize>>,
    fence: Option<axum::Extension<FencingToken>>,
) -> (StatusCode, String) {
    let n = count.fetch_add(1, Ordering::SeqCst) + 1;
    let fence = fence.map_or(0, |f| f.0.get());
    (StatusCode::CREATED, format!("order {n}, fence {fence}"))
}

#[tokio::test]
async fn router_layer_runs_each_key_once_and_hands_the_fencing_token_to_extractors() {
    let count = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route("/orders", post(create).get(|| async { "list" }))
        .with_state(Arc::clone(&count))
        .layer(IdempotencyLayer::new(MemoryStore::new()));

    let request = || {
        Request::post("/orders")
            .header("idempotency-key", "order-1")
            .body(Body::from("{\"amount\":1}"))
            .unwrap()
    };
    let first = app.clone().oneshot(request()).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first_body = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(first_body, "order 1, fence 1");

    let retry = app.clone().oneshot(request()).await.unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(
        retry.into_body().collect().await.unwrap().to_bytes(),
        first_body
    );

    let list = app
        .oneshot(Request::get("/orders").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(list.status(), StatusCode::OK);
    assert_eq!(count.load(Ordering::SeqCst), 1);
}
