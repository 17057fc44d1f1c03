//! The client side: send unsafe calls with an idempotency key, and retry them with it.
//!
//! A key on the server is only as good as the client that sends it. [`IdempotentRetryLayer`]
//! wraps a tower HTTP client (hyper-util's `Client`, a tonic `Channel`, any
//! `Service<http::Request<RetryBody<B>>>`); with the `reqwest` feature,
//! `IdempotentRetryMiddleware` does the same for reqwest through `reqwest-middleware`. Both
//! follow one [`RetryPolicy`]:
//!
//! - **One key per logical call.** A covered request (default: POST, PATCH) without an
//!   `Idempotency-Key` gets a fresh one ([`mint_key`]: a random UUID); a request that has one
//!   keeps it. Every attempt of the call sends the same key, so the server runs the operation
//!   at most once however many attempts reach it.
//! - **The body is kept** (up to [`RetryPolicy::with_body_limit`], default 1 MiB) and sent
//!   again whole on each retry. A larger body is sent once, as it comes, without retries.
//! - **What is retried:** errors before a response (connection refused or reset, a timeout),
//!   409 (the first attempt is still in progress on the server), 429, and every 5xx, and
//!   their [gRPC](#grpc) counterparts. `Retry-After` is honoured (seconds or an HTTP date, up
//!   to [`RetryPolicy::with_max_retry_after`]). Never retried: 2xx, 3xx and the other 4xx
//!   (400, 401, 403, 404, 413, 422, ...): a retry would get the same answer.
//! - **When:** exponential backoff with full jitter, at most
//!   [`RetryPolicy::with_max_attempts`] attempts, and no retry starting after
//!   [`RetryPolicy::with_deadline`].
//! - **What the caller sees:** the last answer, with an [`Attempts`] extension (the key, how
//!   many attempts, whether the answer is definite), or the last error. Each attempt logs a
//!   `tracing` event: DEBUG for the answer that ends a call, INFO for a retry, WARN when the
//!   client gives up on an answer it would have retried.
//! - **A new key only after a definite outcome.** When the client gives up without one
//!   ([`Attempts::definite`] is `false`, or an error), the operation may have run: try it again
//!   later with the same key, never a new one. Keep the key by setting it yourself
//!   ([`mint_key`]) when you need it past an error.
//!
//! # Example
//!
//! A client whose first attempt meets a 503 (here a `service_fn` stands for hyper-util's
//! `Client`):
//!
//! ```
//! use std::{convert::Infallible, sync::{Arc, Mutex}};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_idempotency::client::{Attempts, IdempotentRetryLayer, RetryBody};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let keys_seen = Arc::new(Mutex::new(Vec::new()));
//! let seen = keys_seen.clone();
//! let client = ServiceBuilder::new()
//!     .layer(IdempotentRetryLayer::default())
//!     .service_fn(move |req: Request<RetryBody<String>>| {
//!         let seen = seen.clone();
//!         async move {
//!             let mut seen = seen.lock().unwrap();
//!             seen.push(req.headers()["idempotency-key"].clone());
//!             let status = if seen.len() == 1 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::CREATED };
//!             Ok::<_, Infallible>(Response::builder().status(status).body(String::new()).unwrap())
//!         }
//!     });
//!
//! let order = Request::post("http://api.example/orders").body(String::from(r#"{"amount":1200}"#)).unwrap();
//! let response = client.oneshot(order).await.unwrap();
//! assert_eq!(response.status(), StatusCode::CREATED);
//!
//! let attempts = response.extensions().get::<Attempts>().unwrap();
//! assert_eq!(attempts.count(), 2);
//! let keys_seen = keys_seen.lock().unwrap();
//! assert_eq!(keys_seen[0], keys_seen[1]); // the retry carried the same key
//! assert_eq!(&keys_seen[0], attempts.key());
//! # }
//! ```
//!
//! Over hyper-util's `Client` (features `client-legacy` and `http1`), the inner client takes
//! [`RetryBody`]s:
//!
//! ```no_run
//! use bytes::Bytes;
//! use http::Request;
//! use http_body_util::Full;
//! use hyper_util::{client::legacy::Client, rt::TokioExecutor};
//! use tower::{ServiceBuilder, ServiceExt};
//! use tower_idempotency::client::{IdempotentRetryLayer, RetryBody};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let http = Client::builder(TokioExecutor::new()).build_http::<RetryBody<Full<Bytes>>>();
//! let client = ServiceBuilder::new().layer(IdempotentRetryLayer::default()).service(http);
//!
//! let order = Request::post("http://127.0.0.1:3000/orders")
//!     .header("content-type", "application/json")
//!     .body(Full::new(Bytes::from(r#"{"customer_id": "C001", "amount": 1200}"#)))?;
//! let response = client.oneshot(order).await?;
//! # Ok(()) }
//! ```
//!
//! A tonic `Channel` takes tonic's own body: map it inside the layer with
//! `.map_request(|req: http::Request<RetryBody<tonic::body::Body>>| req.map(tonic::body::Body::new))`,
//! and hand the stack to the generated client (`OrdersClient::new(stack)`).
//!
//! # gRPC
//!
//! gRPC answers HTTP 200 with the call's status in `grpc-status`. The layer reads it in a
//! trailers-only answer (an error before any message, which is how servers refuse a call, and
//! how the server side answers a key in progress): UNAVAILABLE, ABORTED, INTERNAL, UNKNOWN,
//! DEADLINE_EXCEEDED and CANCELLED are retried, RESOURCE_EXHAUSTED only with a
//! `grpc-retry-pushback-ms`, which stands for `Retry-After` (gRFC A6). A status that comes in
//! the trailers after messages is past the point where the layer hands the answer over, and
//! the call is returned as it is.

mod attempts;
mod backoff;
mod body;
mod future;
mod grpc;
mod key;
mod layer;
mod policy;
mod random;
#[cfg(feature = "reqwest")]
mod reqwest;
mod retry_after;
mod schedule;
mod service;

pub use attempts::Attempts;
pub use body::RetryBody;
pub use future::ResponseFuture;
pub use key::mint_key;
pub use layer::IdempotentRetryLayer;
pub use policy::RetryPolicy;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub use reqwest::IdempotentRetryMiddleware;
pub use service::IdempotentRetryService;
