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

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_http::{
    catch_panic::CatchPanicLayer, limit::RequestBodyLimitLayer, timeout::TimeoutLayer,
    trace::TraceLayer,
};
use tower_idempotency::{IdempotencyLayer, MemoryStore, RequestBody};

type Body = tower_http::body::Limited<Full<Bytes>>;

async fn handler(req: Request<RequestBody<Body>>) -> Result<Response<Full<Bytes>>, Infallible> {
    match req.uri().path() {
        // Slower than the client's timeout.
        "/slow" => tokio::time::sleep(Duration::from_millis(1500)).await,
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
    tracing_subscriber::fmt()
        .with_env_filter("tower_http=warn,tower_idempotency=warn")
        .with_writer(std::io::stderr)
        .init();
    let mut svc = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(500),
        ))
        .layer(CatchPanicLayer::new())
        .layer(RequestBodyLimitLayer::new(64 * 1024))
        .layer(IdempotencyLayer::new(MemoryStore::new()).with_key_required(true))
        .service_fn(handler);

    let mut send = async |path: &str, key: &str, body: Bytes| {
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
        println!(
            "POST {path} [{key}] -> {status}{} {body}",
            if replayed { " (replayed)" } else { "" }
        );
        status
    };

    // The client gives up after 500 ms; the handler goes on and its response is recorded. Retries
    // get 409 while it runs, then its response.
    send("/slow", "slow-1", Bytes::new()).await;
    while send("/slow", "slow-1", Bytes::new()).await == StatusCode::CONFLICT {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A panic is a 500, and the key is released as the handler unwinds: the retry runs (after a
    // 409 or two if it comes before the release lands).
    send("/panic", "panic-1", Bytes::new()).await;
    while send("/panic", "panic-1", Bytes::new()).await == StatusCode::CONFLICT {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Over tower-http's limit: 413 before the idempotency layer reads anything.
    send("/orders", "big-1", Bytes::from(vec![b'x'; 100 * 1024])).await;
}
