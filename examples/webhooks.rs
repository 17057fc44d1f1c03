//! Webhook receivers that handle each delivery once, behind the idempotency layer, on axum.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --features json --example webhooks
//! ```
//!
//! Senders deliver an event again when they are not sure it arrived (a timeout, a 5xx), so a
//! receiver must not act on it twice. Two conventions, two routes:
//!
//! - Standard Webhooks (Svix and others) name each delivery in the `webhook-id` header:
//!
//!   ```not_rust
//!   curl -i localhost:3000/webhooks/standard -H 'webhook-id: msg_2KWPBgLlAfxdpx2AI54pPJ85f4W' \
//!        -H 'content-type: application/json' -d '{"type": "invoice.paid", "data": {"amount": 1200}}'
//!   ```
//!
//! - Stripe-style events carry their id in the JSON body:
//!
//!   ```not_rust
//!   curl -i localhost:3000/webhooks/stripe -H 'content-type: application/json' \
//!        -d '{"id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "type": "charge.succeeded"}'
//!   ```
//!
//! Send either twice: the second answer is the first one again, with `idempotent-replayed:
//! true`, and `GET /webhooks/handled` lists each event once. A real receiver verifies the
//! sender's signature in a layer outside this one, so that nothing unsigned reaches the store.
//!
//! Environment: as `axum_orders` (`BIND`, `REDIS_URL`, `DATABASE_URL`, `IDEMPOTENCY_STORE`, ...).

// The webhooks take the orders examples' settings, not their order book.
#[allow(dead_code)]
#[path = "support/orders.rs"]
mod orders;
#[path = "support/store.rs"]
mod store;

use std::sync::{Arc, Mutex};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderName},
    routing::{get, post},
    Json, Router,
};
use orders::Settings;
use serde_json::{json, Value};
use tower_idempotency::JsonKey;

/// Every event the receivers acted on, in order.
#[derive(Clone, Default)]
struct Handled(Arc<Mutex<Vec<Value>>>);

impl Handled {
    fn push(&self, event: Value) -> usize {
        let mut events = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        events.push(event);
        events.len()
    }

    fn all(&self) -> Vec<Value> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

#[tokio::main]
async fn main() {
    orders::main("webhooks", run()).await;
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings::from_env()?;
    let (layer, store) = settings.layer().await?;
    // One store, two keys: the delivery id header, or the event id in the body.
    let standard = post(standard_webhook).layer(
        layer
            .clone()
            .with_header_name(HeaderName::from_static("webhook-id")),
    );
    let stripe = post(stripe_webhook).layer(layer.with_key(JsonKey::pointer("/id")));
    let router = Router::new()
        .route("/webhooks/standard", standard)
        .route("/webhooks/stripe", stripe)
        .route("/webhooks/handled", get(list_handled))
        .with_state(Handled::default());

    let listener = tokio::net::TcpListener::bind(settings.bind).await?;
    tracing::info!(addr = %listener.local_addr()?, store, "webhooks listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Acts on one Standard Webhooks delivery: runs once per `webhook-id`.
async fn standard_webhook(
    State(handled): State<Handled>,
    headers: HeaderMap,
    body: Bytes,
) -> Json<Value> {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = handled.push(json!({ "source": "standard", "id": id, "type": event["type"] }));
    Json(json!({ "received": true, "handled": n }))
}

/// Acts on one Stripe-style event: runs once per event `id`.
async fn stripe_webhook(State(handled): State<Handled>, body: Bytes) -> Json<Value> {
    let event: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let n = handled.push(json!({ "source": "stripe", "id": event["id"], "type": event["type"] }));
    Json(json!({ "received": true, "handled": n }))
}

async fn list_handled(State(handled): State<Handled>) -> Json<Vec<Value>> {
    Json(handled.all())
}
