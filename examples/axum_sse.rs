//! An LLM-style completion API that streams Server-Sent Events behind the idempotency layer, on
//! axum.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example axum_sse
//! ```
//!
//! then ask for a completion (`-N`: print each event as it comes, `-i`: show the headers):
//!
//! ```not_rust
//! curl -N -i localhost:3000/completions -H 'idempotency-key: c-1' \
//!      -H 'content-type: application/json' -d '{"prompt": "why are retries safe"}'
//! ```
//!
//! Watch the events arrive one by one as they are made, about 2 s in all. Send the same command
//! again: the same events (same `id`) come back at once, with `idempotent-replayed: true`.
//!
//! `GET /completions` lists the completions the handler started. Environment: `SSE_EVENTS`
//! (default 20), how many tokens a completion streams before its `done` event; `SSE_INTERVAL_MS`
//! (default 100), the pause between events; and, as for `axum_orders`, `BIND` (default
//! 127.0.0.1:3000), `REDIS_URL`, `DATABASE_URL`, `IDEMPOTENCY_STORE`, `IDEMPOTENCY_CONFLICT`,
//! `IDEMPOTENCY_LEASE_MS` and `IDEMPOTENCY_TTL_S`. `ORDER_DELAY_MS` does not apply: the first
//! event comes as soon as the handler runs.

// This example takes the orders examples' settings, not their order book.
#[allow(dead_code)]
#[path = "support/orders.rs"]
mod orders;
#[path = "support/store.rs"]
mod store;

use std::{
    collections::hash_map::RandomState,
    convert::Infallible,
    env,
    hash::BuildHasher,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::State,
    http::{header, StatusCode},
    response::{
        sse::{Event, Sse},
        IntoResponse, Response,
    },
    routing::post,
    Json, Router,
};
use futures_util::{stream, Stream};
use orders::{problem, Settings};
use serde::Deserialize;
use serde_json::json;

#[derive(Clone)]
struct App {
    completions: Completions,
    shape: Shape,
}

#[tokio::main]
async fn main() {
    orders::main("axum_sse", run()).await;
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings::from_env()?;
    let app = App {
        completions: Completions::default(),
        shape: Shape::from_env()?,
    };
    // Only starting a completion is covered; reads need no key.
    let complete = post(complete);
    let (layer, store) = settings.layer().await?;
    let complete = complete.layer(layer);
    let router = Router::new()
        .route("/completions", complete.get(list_completions))
        .with_state(app);

    let listener = tokio::net::TcpListener::bind(settings.bind).await?;
    tracing::info!(addr = %listener.local_addr()?, store, "axum_sse listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// How a completion streams: `tokens` events `interval` apart, then `done`.
#[derive(Clone, Copy)]
struct Shape {
    tokens: usize,
    interval: Duration,
}

impl Shape {
    /// `SSE_EVENTS` (default 20) and `SSE_INTERVAL_MS` (default 100).
    fn from_env() -> Result<Self, String> {
        Ok(Self {
            tokens: number("SSE_EVENTS", 20)?,
            interval: Duration::from_millis(number("SSE_INTERVAL_MS", 100)?),
        })
    }
}

fn number<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    match env::var(name).ok().filter(|v| !v.is_empty()) {
        Some(v) => v.parse().map_err(|e| format!("{name}: {e}")),
        None => Ok(default),
    }
}

/// The id of every completion this process started, in order.
#[derive(Clone, Default)]
struct Completions {
    ids: Arc<Mutex<Vec<String>>>,
    seed: RandomState,
}

impl Completions {
    /// Counts a new completion and gives it an id.
    fn start(&self) -> String {
        let mut ids = self.lock();
        // Unique across processes too, like the orders examples' ids: a replay shows the id of
        // the run it replays, a second run a new one.
        let id = format!("cmpl_{:016x}", self.seed.hash_one(ids.len()));
        ids.push(id.clone());
        id
    }

    fn all(&self) -> Vec<String> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[derive(Deserialize)]
struct Prompt {
    prompt: String,
}

async fn complete(State(app): State<App>, body: Bytes) -> Response {
    let words: Vec<String> = match serde_json::from_slice::<Prompt>(&body) {
        Ok(p) => p.prompt.split_whitespace().map(str::to_owned).collect(),
        Err(e) => return invalid(&format!("invalid prompt: {e}")),
    };
    if words.is_empty() {
        return invalid("invalid prompt: prompt must not be empty");
    }
    let id = app.completions.start();
    // The handler answers at once; the events follow as they are made.
    Sse::new(completion(id, words, app.shape)).into_response()
}

/// One completion's events: `{"id", "index", "token"}` per token, the prompt's words over and
/// over, then `event: done`.
fn completion(
    id: String,
    words: Vec<String>,
    shape: Shape,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let first = Some((0, id, words));
    stream::unfold(first, move |next| async move {
        let (index, id, words) = next?;
        if index > 0 {
            // Stands for the model making the next token.
            tokio::time::sleep(shape.interval).await;
        }
        if index == shape.tokens {
            let done = json!({ "id": id, "tokens": shape.tokens });
            return Some((
                Ok(Event::default().event("done").data(done.to_string())),
                None,
            ));
        }
        let word = &words[index % words.len()];
        let token = if index == 0 {
            word.clone()
        } else {
            format!(" {word}")
        };
        let data = json!({ "id": id, "index": index, "token": token });
        let event = Event::default().data(data.to_string());
        Some((Ok(event), Some((index + 1, id, words))))
    })
}

async fn list_completions(State(app): State<App>) -> Response {
    let ids = app.completions.all();
    Json(json!({ "started": ids.len(), "ids": ids })).into_response()
}

fn invalid(detail: &str) -> Response {
    let status = StatusCode::BAD_REQUEST;
    (
        status,
        [(header::CONTENT_TYPE, "application/problem+json")],
        problem(status.as_u16(), "Invalid prompt", detail),
    )
        .into_response()
}
