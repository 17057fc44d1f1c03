//! Tower middleware that makes unsafe HTTP requests safe to retry.
//!
//! A client sends an `Idempotency-Key` header with a POST or PATCH. The first request with that
//! key runs the handler; every retry with the same key gets the recorded response back, marked
//! `Idempotent-Replayed: true`, instead of running the side effect (a charge, an order) again.
//! It follows the IETF draft *The Idempotency-Key HTTP Header Field*.
//!
//! - A key reused with a different request (method, path, query, body) is refused with 422.
//! - A duplicate that arrives while the first request runs gets 409 with `Retry-After`, or waits
//!   for the first one's result ([`ConflictPolicy`]).
//! - The running request holds a lease on its key, renewed while the handler runs, and carries a
//!   [`FencingToken`] its handler can pass to its own database.
//! - Records live in an [`IdempotencyStore`]: [`RedisStore`] for many instances, [`MemoryStore`]
//!   for one, `PostgresStore` (feature `postgres`) in your database, [`TieredStore`] for Redis in
//!   front of PostgreSQL, [`ReplayCache`] for replays without a round trip.
//! - Streamed answers (SSE, downloads, gRPC streams) reach the client frame by frame while they
//!   are recorded, and replay with the same frames; gRPC is recorded by its final
//!   `grpc-status` ([`recorded_by_default`]).
//! - No response crosses clients: unscoped records are bound to the caller's credentials, and
//!   keys can be scoped by the caller's identity
//!   ([`IdempotencyLayer::with_scope_from_extension`]).
//! - Errors are `application/problem+json`, or gRPC statuses to gRPC clients; see [`problems`]
//!   for every case.
//!
//! # Example
//!
//! An axum route behind the layer, records in memory (one instance; see below for Redis):
//!
//! ```
//! use axum::{body::Body, http::{Request, StatusCode}, routing::post, Router};
//! use tower::ServiceExt;
//! use tower_idempotency::{IdempotencyLayer, MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let app = Router::new()
//!     // Charge the card here: it runs once per key.
//!     .route("/charges", post(|| async { (StatusCode::CREATED, "charged") }))
//!     .layer(IdempotencyLayer::new(MemoryStore::new()).with_key_required(true));
//!
//! let charge = || Request::post("/charges").header("idempotency-key", "c-42").body(Body::from("{}")).unwrap();
//! let first = app.clone().oneshot(charge()).await.unwrap();
//! let retry = app.clone().oneshot(charge()).await.unwrap();
//! assert_eq!(first.status(), StatusCode::CREATED);
//! assert_eq!(retry.status(), StatusCode::CREATED);
//! assert_eq!(retry.headers()["idempotent-replayed"], "true");
//! # }
//! ```
//!
//! With records in Redis, shared by every instance:
//!
//! ```no_run
//! use axum::{routing::post, Router};
//! use tower_idempotency::{IdempotencyLayer, RedisStore};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
//! let app: Router = Router::new()
//!     .route("/orders", post(|| async { "created" }))
//!     .layer(IdempotencyLayer::new(store).with_key_required(true));
//! # Ok(()) }
//! ```
//!
//! Any tower service works the same way; the inner service receives a [`RequestBody`]:
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use tower::{Service, ServiceBuilder, ServiceExt};
//! use tower_idempotency::{IdempotencyLayer, MemoryStore, RequestBody};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mut svc = ServiceBuilder::new()
//!     .layer(IdempotencyLayer::new(MemoryStore::new()))
//!     .service_fn(|_req: Request<RequestBody<String>>| async {
//!         Ok::<_, Infallible>(Response::builder().status(StatusCode::CREATED).body(String::from("charged")).unwrap())
//!     });
//!
//! let charge = || Request::post("/charges").header("idempotency-key", "\"c-42\"").body(String::from("{}")).unwrap();
//! let first = svc.ready().await.unwrap().call(charge()).await.unwrap();
//! let retry = svc.ready().await.unwrap().call(charge()).await.unwrap();
//! assert_eq!(retry.headers()["idempotent-replayed"], "true");
//! # }
//! ```
//!
//! # Features
//!
//! - `redis` (default): [`RedisStore`].
//! - `memory` (default): [`MemoryStore`].
//! - `redis-cluster`: `RedisStore::connect_cluster`, for Redis Cluster and Valkey cluster.
//! - `postgres`: `PostgresStore`, records in PostgreSQL through sqlx.
//! - `json`: `JsonKey`, keys read from a field of the JSON body (webhook event ids).
//! - `conformance`: the `conformance` module and `conformance_tests!`: the conformance suite,
//!   for stores written elsewhere.
//! - `client`: the `client` module, a retry layer for tower HTTP clients that mints keys and
//!   retries with them.
//! - `reqwest`: `client::IdempotentRetryMiddleware`, the same for reqwest (reqwest-middleware).
//! - `example-tonic`: only builds the `tonic_orders` example and its test; the library does not
//!   use tonic.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
// The crate docs link every store; a build without some stores has nothing to link to.
#![cfg_attr(
    not(all(feature = "memory", feature = "redis")),
    allow(rustdoc::broken_intra_doc_links)
)]

mod body;
#[cfg(feature = "client")]
#[cfg_attr(docsrs, doc(cfg(feature = "client")))]
pub mod client;
mod collect;
mod config;
#[cfg(feature = "conformance")]
#[cfg_attr(docsrs, doc(cfg(feature = "conformance")))]
pub mod conformance;
mod credentials;
mod detach;
mod digest;
mod fingerprint;
mod frames;
mod future;
mod grpc;
mod guard;
mod hex;
mod in_progress;
mod key;
mod key_format;
mod layer;
mod lease;
mod outcome;
mod policy;
pub mod problems;
mod protocol;
mod record;
mod record_when;
mod response;
mod retry_after;
mod scope;
mod service;
mod store;
mod sync;
mod tee;

pub use body::{RequestBody, ResponseBody};
pub use config::{
    DEFAULT_BODY_LIMIT, DEFAULT_DRAIN_LIMIT, DEFAULT_LEASE_TTL, DEFAULT_MAX_WAITERS,
    DEFAULT_RECORD_LIMIT, DEFAULT_RESULT_TTL, DEFAULT_STORE_TIMEOUT,
};
pub use fingerprint::{DefaultFingerprint, Fingerprint, MakeFingerprint};
pub use future::ResponseFuture;
#[cfg(feature = "json")]
pub use key::JsonKey;
pub use key::{IdempotencyKey, InvalidKey, MakeKey, MAX_KEY_LEN};
pub use key_format::KeyFormat;
pub use layer::IdempotencyLayer;
pub use outcome::{OnOutcome, Outcome};
pub use policy::{ConflictPolicy, HeaderFilter};
pub use record_when::{recorded_by_default, RecordWhen};
pub use response::{CompletedRecord, DecodeError, RecordedResponse};
pub use retry_after::{ConflictHint, RetryAfter, TypicalDuration};
pub use scope::MakeScope;
pub use service::IdempotencyService;
pub use store::{
    BeginOutcome, DynStore, FencingToken, IdempotencyStore, KeyWatch, LeaseToken, ReplayCache,
    ReplayTier, StoreError, StoreKey, TieredStore, WatchKeys,
};

#[cfg(feature = "memory")]
pub use store::MemoryStore;
#[cfg(feature = "redis")]
pub use store::RedisStore;
#[cfg(feature = "postgres")]
pub use store::{PostgresStore, MIGRATION, MIGRATIONS};
