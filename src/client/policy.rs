//! The settings of a retrying client, shared by the tower layer and the reqwest middleware.

use std::time::Duration;

use http::{HeaderName, Method};

/// When and how a client retries: the settings shared by
/// [`IdempotentRetryLayer`](super::IdempotentRetryLayer) and, with the `reqwest` feature,
/// `IdempotentRetryMiddleware`.
///
/// Which answers are retried is fixed, as the protocol defines it: errors before a response
/// (a refused or reset connection, a timeout), 409 (the same key is still in progress), 429,
/// and every 5xx (and their gRPC counterparts, see [the module docs](super#grpc)). Every other
/// answer is the call's outcome, given to the caller as it is: 2xx, 3xx, and the 4xx that
/// will not change on a retry (400, 401, 403, 404, 413, 422, ...).
///
/// The defaults:
///
/// | setting | default |
/// | --- | --- |
/// | methods covered ([`with_methods`](Self::with_methods)) | POST, PATCH |
/// | key header ([`with_header_name`](Self::with_header_name)) | `Idempotency-Key` |
/// | attempts, the first included ([`with_max_attempts`](Self::with_max_attempts)) | 4 |
/// | backoff ([`with_backoff`](Self::with_backoff)) | full jitter, 100 ms doubling up to 5 s |
/// | longest `Retry-After` honoured ([`with_max_retry_after`](Self::with_max_retry_after)) | 10 s |
/// | no retry starts after ([`with_deadline`](Self::with_deadline)) | 30 s |
/// | largest body kept for retries ([`with_body_limit`](Self::with_body_limit)) | 1 MiB |
///
/// ```
/// use std::time::Duration;
/// use tower_idempotency::client::{IdempotentRetryLayer, RetryPolicy};
///
/// let layer = IdempotentRetryLayer::new(
///     RetryPolicy::default()
///         .with_max_attempts(6)
///         .with_deadline(Duration::from_secs(20)),
/// );
/// ```
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub(crate) methods: Vec<Method>,
    pub(crate) header_name: HeaderName,
    pub(crate) max_attempts: u32,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) max_retry_after: Duration,
    pub(crate) deadline: Duration,
    pub(crate) body_limit: usize,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            methods: vec![Method::POST, Method::PATCH],
            header_name: HeaderName::from_static("idempotency-key"),
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(10),
            deadline: Duration::from_secs(30),
            body_limit: 1024 * 1024,
        }
    }
}

impl RetryPolicy {
    /// Covers these methods instead of POST and PATCH. Requests with other methods pass
    /// straight through: no key is added, and they are sent once.
    ///
    /// ```
    /// use http::Method;
    /// use tower_idempotency::client::RetryPolicy;
    ///
    /// let policy = RetryPolicy::default().with_methods([Method::POST, Method::PUT, Method::DELETE]);
    /// ```
    pub fn with_methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Sends the key in this header instead of `Idempotency-Key` (a request that already has
    /// this header keeps its value).
    ///
    /// ```
    /// use http::HeaderName;
    /// use tower_idempotency::client::RetryPolicy;
    ///
    /// let policy = RetryPolicy::default().with_header_name(HeaderName::from_static("x-request-key"));
    /// ```
    pub fn with_header_name(mut self, name: HeaderName) -> Self {
        self.header_name = name;
        self
    }

    /// Sends a call at most this many times, the first included (default 4; at least 1: 1
    /// means never retry, though a key is still added).
    ///
    /// ```
    /// use tower_idempotency::client::RetryPolicy;
    ///
    /// let policy = RetryPolicy::default().with_max_attempts(6);
    /// ```
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts.max(1);
        self
    }

    /// Retry `n` waits a random time between zero and `initial * 2^(n-1)`, at most `max`
    /// (default 100 ms and 5 s), unless the server asked for longer with `Retry-After`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_idempotency::client::RetryPolicy;
    ///
    /// let policy = RetryPolicy::default().with_backoff(Duration::from_millis(50), Duration::from_secs(2));
    /// ```
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Waits at most this long when an answer's `Retry-After` asks for longer (default 10 s).
    ///
    /// A retry waits for the longer of the backoff and the server's `Retry-After` (seconds or
    /// an HTTP date), so a server that says "in 3 s" is not asked again at once. The cap keeps
    /// a generous hint (a 409 that names the whole lock lease, a 503 that says "in an hour")
    /// from holding the call: after the cap the client asks again, with the same key.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_idempotency::client::RetryPolicy;
    ///
    /// let policy = RetryPolicy::default().with_max_retry_after(Duration::from_secs(10));
    /// ```
    pub fn with_max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// Starts no retry whose wait would end more than this long after the call began (default
    /// 30 s); the last answer or error is then the call's.
    ///
    /// An attempt already sent is not cut short: bound each attempt with a timeout inside the
    /// layer (tower's `TimeoutLayer`, the client's own), or the whole call with one outside it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_idempotency::client::RetryPolicy;
    ///
    /// let policy = RetryPolicy::default().with_deadline(Duration::from_secs(10));
    /// ```
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Keeps request bodies up to this many bytes to send them again (default 1 MiB, as the
    /// server side's body limit). A larger body, or one that fails while it is read, is sent
    /// once as it comes, without retries; it still carries a key.
    ///
    /// ```
    /// use tower_idempotency::client::RetryPolicy;
    ///
    /// let policy = RetryPolicy::default().with_body_limit(64 * 1024);
    /// ```
    pub fn with_body_limit(mut self, limit: usize) -> Self {
        self.body_limit = limit;
        self
    }

    /// Whether requests with this method get a key and retries.
    pub(crate) fn covers(&self, method: &Method) -> bool {
        self.methods.contains(method)
    }
}
