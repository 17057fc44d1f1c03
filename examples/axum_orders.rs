//! An orders API behind the idempotency layer, on axum.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example axum_orders
//! ```
//!
//! then create an order; send it twice and the second answer is a replay of the first:
//!
//! ```not_rust
//! curl -i localhost:3000/orders -H 'idempotency-key: k-1' -H 'content-type: application/json' \
//!      -d '{"customer_id": "C001", "amount": 1200}'
//! ```
//!
//! Keys are required: without `idempotency-key` the answer is 400. Keys are scoped by the
//! caller (a demo authentication layer reads `Authorization: Bearer <user>-<token>`): every
//! token of one user shares its keys, another user's same key is simply another order.
//!
//! ```not_rust
//! curl -i localhost:3000/orders -H 'authorization: Bearer alice-1' -H 'idempotency-key: k-1' \
//!      -H 'content-type: application/json' -d '{"customer_id": "C001", "amount": 1200}'
//! curl -i localhost:3000/orders   # every order created, once each
//! ```
//!
//! Environment: `BIND` (default 127.0.0.1:3000); `REDIS_URL` to keep records in Redis (default:
//! in memory); `DATABASE_URL` for PostgreSQL (feature `postgres`), and with both,
//! `IDEMPOTENCY_STORE=tiered` for Redis in front of PostgreSQL; `ORDER_DELAY_MS` (default 300), how long creating an order takes;
//! `IDEMPOTENCY_CONFLICT` = `reject` (default) or `wait`; `IDEMPOTENCY_LEASE_MS`;
//! `IDEMPOTENCY_TTL_S`.

#[path = "support/auth.rs"]
mod auth;
#[path = "support/orders.rs"]
mod orders;
#[path = "support/store.rs"]
mod store;

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Extension, Json, Router,
};
use orders::{problem, OrderBook, Settings};
use tower_idempotency::{FencingToken, IdempotencyKey};

#[derive(Clone)]
struct App {
    book: OrderBook,
    delay: std::time::Duration,
}

#[tokio::main]
async fn main() {
    orders::main("axum_orders", run()).await;
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings::from_env()?;
    let app = App {
        book: OrderBook::default(),
        delay: settings.order_delay,
    };
    // Only creating an order is covered; reads need no key. The caller is known before the
    // idempotency layer runs (`.layer` wraps: the last one added runs first), and keys are
    // scoped by it.
    let (layer, store) = settings.layer().await?;
    let create = post(create_order)
        .layer(layer.with_scope_from_extension::<auth::User>())
        .layer(axum::middleware::from_fn(auth::authenticate));
    let router = Router::new()
        .route("/orders", create.get(list_orders))
        .route("/orders/{id}", get(get_order))
        .with_state(app);

    let listener = settings.listen().await?;
    tracing::info!(addr = %listener.local_addr()?, store, "axum_orders listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Creates an order. The layer put the request's `IdempotencyKey` and `FencingToken` in its
/// extensions (absent only when the store failed and the layer lets requests through).
async fn create_order(
    State(app): State<App>,
    key: Option<Extension<IdempotencyKey>>,
    fence: Option<Extension<FencingToken>>,
    body: Bytes,
) -> Response {
    if let Some(Extension(key)) = &key {
        tracing::debug!(key_len = key.as_str().len(), "creating an order");
    }
    orders::work(app.delay).await;
    match app
        .book
        .create(&body, fence.map(|Extension(fence)| fence.get()))
    {
        Ok(order) => (
            StatusCode::CREATED,
            [(header::LOCATION, format!("/orders/{}", order.id))],
            Json(order),
        )
            .into_response(),
        Err(detail) => problem_response(StatusCode::BAD_REQUEST, "Invalid order", &detail),
    }
}

async fn list_orders(State(app): State<App>) -> Response {
    Json(app.book.all()).into_response()
}

async fn get_order(State(app): State<App>, Path(id): Path<String>) -> Response {
    match app.book.get(&id) {
        Some(order) => Json(order).into_response(),
        None => problem_response(
            StatusCode::NOT_FOUND,
            "Order not found",
            &format!("no order {id}"),
        ),
    }
}

fn problem_response(status: StatusCode, title: &str, detail: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        problem(status.as_u16(), title, detail),
    )
        .into_response()
}
