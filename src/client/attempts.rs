//! What the client did for one call, as a response extension.

use http::HeaderValue;

/// How a call went: put in the extensions of every response to a covered request.
///
/// ```
/// use std::convert::Infallible;
/// use http::{Request, Response};
/// use tower::{ServiceBuilder, ServiceExt};
/// use tower_idempotency::client::{Attempts, IdempotentRetryLayer, RetryBody};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let client = ServiceBuilder::new()
///     .layer(IdempotentRetryLayer::default())
///     .service_fn(|_req: Request<RetryBody<String>>| async {
///         Ok::<_, Infallible>(Response::new(String::from("created")))
///     });
/// let response = client.oneshot(Request::post("/orders").body(String::from("{}")).unwrap()).await.unwrap();
/// let attempts = response.extensions().get::<Attempts>().unwrap();
/// assert_eq!(attempts.count(), 1);
/// assert_eq!(attempts.key().len(), 36); // a UUID the layer minted
/// assert!(attempts.definite());
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempts {
    pub(crate) key: HeaderValue,
    pub(crate) count: u32,
    pub(crate) definite: bool,
}

impl Attempts {
    /// The idempotency key every attempt carried: the caller's, or the one the layer minted.
    pub fn key(&self) -> &HeaderValue {
        &self.key
    }

    /// How many times the request was sent, the first included.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether this answer is the operation's outcome, one a retry would not change (2xx, 3xx,
    /// or a 4xx such as 400, 404 or 422). `false` when the client stopped on an answer it would
    /// have retried (attempts, deadline or body limit exhausted: 409, 429, 5xx): the operation
    /// may or may not have run, and trying it again later must send the same [`key`](Self::key)
    /// (set the header yourself), never a new one.
    pub fn definite(&self) -> bool {
        self.definite
    }
}
