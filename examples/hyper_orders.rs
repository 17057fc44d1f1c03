//! The same orders API as `axum_orders`, served by plain hyper 1 through hyper-util, with the
//! idempotency layer on a tower service.
//!
//! Run with
//!
//! ```not_rust
//! cargo run --example hyper_orders
//! ```
//!
//! It reads the same environment as `axum_orders` (`BIND`, `REDIS_URL`, `DATABASE_URL`,
//! `IDEMPOTENCY_STORE`, `ORDER_DELAY_MS`,
//! `IDEMPOTENCY_CONFLICT`, `IDEMPOTENCY_LEASE_MS`, `IDEMPOTENCY_TTL_S`).

#[path = "support/orders.rs"]
mod orders;
#[path = "support/store.rs"]
mod store;

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use orders::{problem, OrderBook, Settings};
use tower::ServiceBuilder;
use tower_idempotency::{FencingToken, IdempotencyLayer, IdempotencyStore, RequestBody};

#[tokio::main]
async fn main() {
    orders::main("hyper_orders", run()).await;
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let settings = Settings::from_env()?;
    let (layer, store) = settings.layer().await?;
    serve(&settings, layer, store).await
}

async fn serve<St: IdempotencyStore>(
    settings: &Settings,
    layer: IdempotencyLayer<St>,
    store: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let book = OrderBook::default();
    let delay = settings.order_delay;
    // The layer covers POST and PATCH; the GET routes pass straight through it.
    let service = ServiceBuilder::new()
        .layer(layer)
        .service_fn(move |req| route(book.clone(), delay, req));

    let listener = tokio::net::TcpListener::bind(settings.bind).await?;
    tracing::info!(addr = %listener.local_addr()?, store, "hyper_orders listening");
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            if let Err(error) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
}

async fn route(
    book: OrderBook,
    delay: Duration,
    req: Request<RequestBody<Incoming>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    let response = match (req.method(), path.as_str()) {
        (&Method::POST, "/orders") => {
            let fence = req
                .extensions()
                .get::<FencingToken>()
                .map(FencingToken::get);
            let body = match req.into_body().collect().await {
                Ok(body) => body.to_bytes(),
                Err(e) => {
                    return Ok(problem_response(
                        StatusCode::BAD_REQUEST,
                        "Unreadable body",
                        &e.to_string(),
                    ))
                }
            };
            // Stands for real work: a payment, a database write.
            tokio::time::sleep(delay).await;
            match book.create(&body, fence) {
                Ok(order) => Response::builder()
                    .status(StatusCode::CREATED)
                    .header(header::LOCATION, format!("/orders/{}", order.id))
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::from(serde_json::to_vec(&order).unwrap_or_default())),
                Err(detail) => {
                    return Ok(problem_response(
                        StatusCode::BAD_REQUEST,
                        "Invalid order",
                        &detail,
                    ))
                }
            }
        }
        (&Method::GET, "/orders") => json(&book.all()),
        (&Method::GET, _) => match path.strip_prefix("/orders/").and_then(|id| book.get(id)) {
            Some(order) => json(&order),
            None => {
                return Ok(problem_response(
                    StatusCode::NOT_FOUND,
                    "Order not found",
                    &path,
                ))
            }
        },
        _ => {
            return Ok(problem_response(
                StatusCode::NOT_FOUND,
                "No such route",
                &path,
            ))
        }
    };
    Ok(response.unwrap_or_else(|_| Response::new(Full::default())))
}

fn json(value: &impl serde::Serialize) -> Result<Response<Full<Bytes>>, http::Error> {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::from(serde_json::to_vec(value).unwrap_or_default()))
}

fn problem_response(status: StatusCode, title: &str, detail: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::from(problem(status.as_u16(), title, detail)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/problem+json"),
    );
    response
}
