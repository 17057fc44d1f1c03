//! The client side: hyper-util's HTTP client behind `IdempotentRetryLayer`, calling an orders
//! API whose answers get lost on the way back.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example client_retry --features client
//! ```
//!
//! Nothing to install: the orders API runs in this process (axum, `IdempotencyLayer` on the
//! in-memory store). In front of it, a "lossy" layer lets every request through to the handler,
//! but throws every other answer away (here, each order's first) and says 503, as a proxy that
//! timed out after the server did the work would. The client retries with the same key, and
//! the server replays the order it already made instead of making a second one.
//!
//! Each attempt logs an event (`RUST_LOG`, default `info,tower_idempotency=debug`).

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc, Mutex,
};

use axum::{
    body::Bytes,
    extract::{Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tower::{ServiceBuilder, ServiceExt};
use tower_idempotency::{
    client::{Attempts, IdempotentRetryLayer, RetryBody, RetryPolicy},
    IdempotencyLayer, MemoryStore,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_idempotency=debug".into()),
        )
        .init();
    let orders = Orders::default();
    let addr = serve(orders.clone()).await?;

    // The client: any tower HTTP client; the layer adds a key to each POST and retries with it.
    let http = Client::builder(TokioExecutor::new()).build_http::<RetryBody<Full<Bytes>>>();
    let client = ServiceBuilder::new()
        .layer(IdempotentRetryLayer::new(
            RetryPolicy::default().with_max_attempts(4),
        ))
        .service(http);

    for (customer, amount) in [("C001", 1200), ("C002", 450), ("C003", 9900)] {
        let order = http::Request::post(format!("http://{addr}/orders"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(format!(
                r#"{{"customer_id": "{customer}", "amount": {amount}}}"#
            ))))?;
        let response = client.clone().oneshot(order).await?;
        let attempts = response.extensions().get::<Attempts>().cloned();
        let replayed = response.headers().contains_key("idempotent-replayed");
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if let Some(attempts) = attempts {
            println!(
                "{customer}: {status} after {} attempt(s) with key {}{}: {}",
                attempts.count(),
                attempts.key().to_str()?,
                if replayed { " (replayed)" } else { "" },
                String::from_utf8_lossy(&body),
            );
        }
    }
    let made = orders.0.lock().unwrap().clone();
    println!("the server made {} orders, once each: {made:?}", made.len());
    Ok(())
}

/// Every order the server made.
#[derive(Clone, Default)]
struct Orders(Arc<Mutex<Vec<String>>>);

async fn create_order(State(orders): State<Orders>, body: Bytes) -> Response {
    let mut orders = orders.0.lock().unwrap();
    let id = format!("ord_{}", orders.len() + 1);
    orders.push(id.clone());
    let body = format!(
        r#"{{"id": "{id}", "order": {}}}"#,
        String::from_utf8_lossy(&body)
    );
    (
        StatusCode::CREATED,
        [("content-type", "application/json")],
        body,
    )
        .into_response()
}

/// Loses the answer to every other request, after the handler ran.
async fn lossy(State(seen): State<Arc<AtomicUsize>>, req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    if seen.fetch_add(1, Ordering::Relaxed) % 2 == 0 {
        tracing::info!("lossy network: the answer is lost, the client gets 503");
        return (StatusCode::SERVICE_UNAVAILABLE, "answer lost on the way").into_response();
    }
    response
}

/// The orders API on 127.0.0.1 (a free port), records in memory.
async fn serve(orders: Orders) -> std::io::Result<std::net::SocketAddr> {
    let app = Router::new()
        .route("/orders", post(create_order))
        .layer(IdempotencyLayer::new(MemoryStore::new()).with_key_required(true))
        .with_state(orders)
        .layer(middleware::from_fn_with_state(
            Arc::new(AtomicUsize::new(0)),
            lossy,
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}
