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
//! `IDEMPOTENCY_CONFLICT`, `IDEMPOTENCY_LEASE_MS`, `IDEMPOTENCY_TTL_S`), and answers as the axum
//! router does: 405 with `Allow` for a method a path does not take (`PUT /orders`), 404 for a
//! path it does not serve.

#[path = "support/orders.rs"]
mod orders;
#[path = "support/store.rs"]
mod store;

use std::{convert::Infallible, time::Duration};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
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

    let listener = settings.listen().await?;
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

/// The routes `axum_orders` has, matched by hand: `/orders` (GET lists the orders, POST creates
/// one) and `/orders/{id}` (GET). A known path with another method gets 405 with `Allow`, as
/// axum answers; any other path a plain 404.
async fn route(
    book: OrderBook,
    delay: Duration,
    req: Request<RequestBody<Incoming>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_owned();
    // hyper leaves the body out of an answer to HEAD.
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let order_id = path
        .strip_prefix("/orders/")
        .filter(|id| !id.is_empty() && !id.contains('/'));
    let response = match (path.as_str(), order_id) {
        ("/orders", _) if req.method() == Method::POST => create_order(&book, delay, req).await,
        ("/orders", _) if read => json(&book.all()),
        ("/orders", _) => method_not_allowed("GET,HEAD,POST"),
        (_, Some(id)) if read => match book.get(id) {
            Some(order) => json(&order),
            None => problem_response(
                StatusCode::NOT_FOUND,
                "Order not found",
                &format!("no order {id}"),
            ),
        },
        (_, Some(_)) => method_not_allowed("GET,HEAD"),
        (_, None) => problem_response(
            StatusCode::NOT_FOUND,
            "Not found",
            &format!("nothing at {path}"),
        ),
    };
    Ok(response)
}

async fn create_order(
    book: &OrderBook,
    delay: Duration,
    req: Request<RequestBody<Incoming>>,
) -> Response<Full<Bytes>> {
    let fence = req
        .extensions()
        .get::<FencingToken>()
        .map(FencingToken::get);
    let body = match req.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return problem_response(StatusCode::BAD_REQUEST, "Unreadable body", &e.to_string())
        }
    };
    orders::work(delay).await;
    match book.create(&body, fence) {
        Ok(order) => {
            let mut response = json(&order);
            *response.status_mut() = StatusCode::CREATED;
            if let Ok(location) = HeaderValue::try_from(format!("/orders/{}", order.id)) {
                response.headers_mut().insert(header::LOCATION, location);
            }
            response
        }
        Err(detail) => problem_response(StatusCode::BAD_REQUEST, "Invalid order", &detail),
    }
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::from(serde_json::to_vec(value).unwrap_or_default()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn method_not_allowed(allow: &'static str) -> Response<Full<Bytes>> {
    let mut response = problem_response(
        StatusCode::METHOD_NOT_ALLOWED,
        "Method not allowed",
        &format!("allowed: {allow}"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

fn problem_response(status: StatusCode, title: &str, detail: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::from(problem(status.as_u16(), title, detail)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}
