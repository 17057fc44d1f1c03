//! The idempotency layer in a plain tower stack with tower-http's layers, in the order that
//! keeps its guarantees. It runs in process and prints what each request got: nothing to install.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example tower_stack
//! ```
//!
//! The order, outside in:
//!
//! 1. `TraceLayer`: sees every request, replays and refusals included.
//! 2. `TimeoutLayer`: **outside** the idempotency layer. A timeout then cuts the client off, not
//!    the handler: the handler finishes on its own task and its response is recorded, so the
//!    retry replays it. Inside, the timeout would cancel the handler part-way and answer 408 in
//!    its place; a 408 releases the key, so a retry would run the handler a second time.
//! 3. `CatchPanicLayer`: outside too. The idempotency layer releases the key of a handler that
//!    panics and lets the panic through; this turns it into a 500.
//! 4. `RequestBodyLimitLayer`: before anything buffers the body.
//! 5. `IdempotencyLayer`, then the handler.
//!
//! The handler panics on purpose (twice: the retry runs it again). The example says so before,
//! and prints one line per panic; every run prints the same.

use std::{convert::Infallible, io::IsTerminal, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::Notify;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::{
    catch_panic::CatchPanicLayer, classify::ServerErrorsFailureClass, limit::RequestBodyLimitLayer,
    timeout::TimeoutLayer, trace::TraceLayer,
};
use tower_idempotency::{IdempotencyLayer, MemoryStore, RequestBody};

type Body = tower_http::body::Limited<Full<Bytes>>;

async fn handler(
    slow_done: Arc<Notify>,
    req: Request<RequestBody<Body>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    match req.uri().path() {
        // Slower than the client's timeout: it finishes when `main` lets it, once a retry has
        // found it still running, so that every run prints the same.
        "/slow" => slow_done.notified().await,
        "/panic" => panic!("the handler panicked"),
        _ => {}
    }
    let response = Response::builder()
        .status(StatusCode::CREATED)
        .body(Full::from("order created"))
        .unwrap_or_default();
    Ok(response)
}

#[tokio::main]
async fn main() {
    // Every run prints the same: no timestamps, no latencies, colours only on a terminal.
    tracing_subscriber::fmt()
        .with_env_filter("tower_stack=warn,tower_http=warn,tower_idempotency=warn")
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .init();
    // The handler panics on purpose: one line for it, instead of Rust's default message (with a
    // thread id, and a backtrace under RUST_BACKTRACE) that looks like a crash.
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("");
        eprintln!("tower_stack: panicked on purpose: {message}");
    }));

    let slow_done = Arc::new(Notify::new());
    let gate = slow_done.clone();
    let mut svc = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http().on_failure(
            // tower-http's default line also gives the latency, which differs from run to run.
            |class: ServerErrorsFailureClass, _latency: Duration, _span: &tracing::Span| {
                tracing::error!(%class, "response failed");
            },
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(500),
        ))
        .layer(CatchPanicLayer::new())
        .layer(RequestBodyLimitLayer::new(64 * 1024))
        .layer(IdempotencyLayer::new(MemoryStore::new()).with_key_required(true))
        .service_fn(move |req| handler(gate.clone(), req));

    // Sends one request and prints what it got; a 409 only when `show_409`.
    let mut send = async |path: &str, key: &str, body: Bytes, show_409: bool| {
        let request = Request::post(path)
            .header("idempotency-key", key)
            .body(Full::new(body))
            .unwrap_or_default();
        let ready = ServiceExt::<Request<Full<Bytes>>>::ready(&mut svc).await;
        let response = ready.unwrap_or_else(|e| match e {}).call(request).await;
        let response = response.unwrap_or_else(|e| match e {});
        let status = response.status();
        let replayed = response.headers().contains_key("idempotent-replayed");
        let body = match response.into_body().collect().await {
            Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
            Err(error) => format!("(body failed: {error})"),
        };
        if status != StatusCode::CONFLICT || show_409 {
            let replayed = if replayed { " (replayed)" } else { "" };
            let body = if body.is_empty() {
                body
            } else {
                format!(" {body}")
            };
            println!("POST {path} [{key}] -> {status}{replayed}{body}");
        }
        status
    };

    // The client gives up after 500 ms; the handler goes on and its response is recorded. A
    // retry gets 409 while it runs, and its response once it has finished.
    send("/slow", "slow-1", Bytes::new(), true).await;
    send("/slow", "slow-1", Bytes::new(), true).await;
    slow_done.notify_one();
    while send("/slow", "slow-1", Bytes::new(), false).await == StatusCode::CONFLICT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A panic is a 500, and the key is released as the handler unwinds: the retry runs the
    // handler again (after a 409 or two, not printed, if it comes before the release lands).
    println!(
        "Next, the handler panics on purpose, twice (the retry runs it again): each is a 500."
    );
    send("/panic", "panic-1", Bytes::new(), true).await;
    while send("/panic", "panic-1", Bytes::new(), false).await == StatusCode::CONFLICT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Over tower-http's limit: 413 before the idempotency layer reads anything.
    send(
        "/orders",
        "big-1",
        Bytes::from(vec![b'x'; 100 * 1024]),
        true,
    )
    .await;
}
