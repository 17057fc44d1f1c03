//! The layer and its settings.

use std::{fmt, sync::Arc, time::Duration};

use http::{HeaderName, Method};
use tokio::sync::Semaphore;
use tower_layer::Layer;

use crate::{
    config::{Config, KeySource, Watcher},
    fingerprint::MakeFingerprint,
    in_progress::InProgressLimit,
    key::MakeKey,
    key_format::KeyFormat,
    outcome::OnOutcome,
    policy::{ConflictPolicy, HeaderFilter},
    problems::MakeProblemResponse,
    record_when::{self, RecordWhen},
    retry_after::RetryAfter,
    scope::{MakeScope, ScopeFromExtension},
    service::IdempotencyService,
    store::WatchKeys,
};

/// Makes unsafe requests safe to retry: applies [`IdempotencyService`] to a service.
///
/// Cheap to clone; every clone shares the store and the settings.
///
/// ```
/// use std::{convert::Infallible, time::Duration};
/// use http::{Request, Response, StatusCode};
/// use tower::{Service, ServiceBuilder, ServiceExt};
/// use tower_idempotency::{ConflictPolicy, IdempotencyLayer, MemoryStore, RequestBody};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mut svc = ServiceBuilder::new()
///     .layer(
///         IdempotencyLayer::new(MemoryStore::new())
///             .with_key_required(true)
///             .with_wait(Duration::from_secs(5)),
///     )
///     .service_fn(|_req: Request<RequestBody<String>>| async {
///         Ok::<_, Infallible>(Response::builder().status(StatusCode::CREATED).body(String::from("order 1")).unwrap())
///     });
///
/// let request = || Request::post("/orders").header("idempotency-key", "k-1").body(String::from("{}")).unwrap();
/// let first = svc.ready().await.unwrap().call(request()).await.unwrap();
/// let retry = svc.ready().await.unwrap().call(request()).await.unwrap();
/// assert_eq!(first.status(), StatusCode::CREATED);
/// assert_eq!(retry.headers()["idempotent-replayed"], "true");
/// # }
/// ```
pub struct IdempotencyLayer<St> {
    store: Arc<St>,
    config: Arc<Config>,
}

impl<St> Clone for IdempotencyLayer<St> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            config: Arc::clone(&self.config),
        }
    }
}

impl<St: fmt::Debug> fmt::Debug for IdempotencyLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("store", &self.store)
            .field("config", &self.config)
            .finish()
    }
}

impl<St> IdempotencyLayer<St> {
    /// A layer with the defaults: POST and PATCH covered, key optional, 1 MiB body limit,
    /// 24 h results, 30 s leases, [`ConflictPolicy::Reject`], 5xx not recorded, fail closed.
    pub fn new(store: St) -> Self {
        Self {
            store: Arc::new(store),
            config: Arc::new(Config::default()),
        }
    }

    fn set(mut self, f: impl FnOnce(&mut Config)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// Reads the key from this header instead of `Idempotency-Key` (Standard Webhooks'
    /// `webhook-id`, GitHub's `x-github-delivery`, ...).
    pub fn with_header_name(self, name: HeaderName) -> Self {
        self.set(|c| c.key_source = KeySource::Header(name))
    }

    /// Finds each request's key with `make` instead of a header: a field of the JSON body
    /// ([`JsonKey`](crate::MakeKey), feature `json`), or any closure over the head and the body.
    /// The body of a covered request is then read before its key is known; a request without
    /// a key passes through (with its body as read), or gets 400 when keys are required.
    ///
    /// ```
    /// use tower_idempotency::{IdempotencyKey, IdempotencyLayer, MemoryStore};
    ///
    /// // Stripe-style webhooks: each event once, by the `id` at the start of its JSON.
    /// let layer = IdempotencyLayer::new(MemoryStore::new())
    ///     .with_key_required(true)
    ///     .with_key(|_parts: &http::request::Parts, body: &[u8]| {
    ///         let text = std::str::from_utf8(body).unwrap_or_default();
    ///         let id = text.split("\"id\":\"").nth(1).and_then(|rest| rest.split('"').next());
    ///         id.map(|id| IdempotencyKey::parse(id.as_bytes())).transpose()
    ///     });
    /// ```
    pub fn with_key(self, make: impl MakeKey) -> Self {
        self.set(|c| c.key_source = KeySource::Made(Arc::new(make)))
    }

    /// Covers only the requests `rule` accepts, besides their method (default: every request
    /// with a covered method). Others pass straight through.
    ///
    /// ```
    /// use tower_idempotency::{IdempotencyLayer, MemoryStore};
    ///
    /// let layer = IdempotencyLayer::new(MemoryStore::new())
    ///     .with_covered_when(|parts: &http::request::Parts| parts.uri.path().starts_with("/payments"));
    /// ```
    pub fn with_covered_when<F>(self, rule: F) -> Self
    where
        F: Fn(&http::request::Parts) -> bool + Send + Sync + 'static,
    {
        self.set(|c| c.covered_when = Some(Arc::new(rule)))
    }

    /// Covers these methods instead of POST and PATCH; others pass straight through.
    pub fn with_methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        let methods = methods.into_iter().collect();
        self.set(|c| c.methods = methods)
    }

    /// Answers 400 to covered requests without a key (default: they pass through unguarded).
    pub fn with_key_required(self, required: bool) -> Self {
        self.set(|c| c.key_required = required)
    }

    /// Refuses covered requests whose body is over `limit` bytes with 413 (default 1 MiB).
    pub fn with_body_limit(self, limit: usize) -> Self {
        self.set(|c| c.body_limit = limit)
    }

    /// Records response bodies up to `limit` bytes (default 1 MiB). A larger response still
    /// reaches the client, and its key is completed as a tombstone: retries get a 409
    /// `response-not-recorded` problem and never run the handler again.
    pub fn with_record_limit(self, limit: usize) -> Self {
        self.set(|c| c.record_limit = limit)
    }

    /// Keeps completed records this long (default 24 h).
    pub fn with_result_ttl(self, ttl: Duration) -> Self {
        self.set(|c| c.result_ttl = ttl)
    }

    /// Holds a running request's lock this long, renewed every third of it while the handler runs
    /// (default 30 s). It bounds how long a key stays locked after its holder crashed.
    pub fn with_lease_ttl(self, ttl: Duration) -> Self {
        self.set(|c| c.lease_ttl = ttl)
    }

    /// Fails each store call that takes longer than this (default 2 s): 503, or fail-open.
    pub fn with_store_timeout(self, timeout: Duration) -> Self {
        self.set(|c| c.store_timeout = timeout)
    }

    /// Reads the rest of a streamed response for at most this long after its client left, to
    /// record it for the retry (default 60 s). A stream that has not ended by then (a long or
    /// idle one) leaves the key completed as a tombstone: it ran, so it never runs again.
    pub fn with_drain_limit(self, limit: Duration) -> Self {
        self.set(|c| c.drain_limit = limit)
    }

    /// What a duplicate gets while the first request runs (default [`ConflictPolicy::Reject`]).
    pub fn with_conflict_policy(self, policy: ConflictPolicy) -> Self {
        self.set(|c| c.conflict = policy)
    }

    /// Chooses the `Retry-After` of a 409 (a duplicate while the first request runs, or a
    /// `Wait` that timed out) and gRPC's `grpc-retry-pushback-ms`: a fixed [`Duration`], or a
    /// function of the [`ConflictHint`](crate::ConflictHint). The default,
    /// [`TypicalDuration`](crate::TypicalDuration), is how long first executions here have been
    /// taking, at least 1 s and at most the rest of the lease.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_idempotency::{ConflictHint, IdempotencyLayer, MemoryStore};
    ///
    /// let fixed = IdempotencyLayer::new(MemoryStore::new()).with_retry_after(Duration::from_secs(2));
    /// let twice_typical = IdempotencyLayer::new(MemoryStore::new()).with_retry_after(|hint: &ConflictHint| {
    ///     hint.typical.map_or(Duration::from_secs(1), |typical| typical * 2)
    /// });
    /// ```
    pub fn with_retry_after(self, rule: impl RetryAfter) -> Self {
        self.set(|c| c.retry_after = Arc::new(rule))
    }

    /// Caps the requests waiting under [`ConflictPolicy::Wait`] (default 1024); past it,
    /// duplicates get 409 at once.
    pub fn with_max_waiters(self, max: usize) -> Self {
        self.set(|c| c.waiters = Arc::new(Semaphore::new(max)))
    }

    /// Decides which responses are recorded (default [`recorded_by_default`]: 2xx, 3xx and the
    /// 4xx that describe a finished operation; for gRPC, the final `grpc-status` unless it is
    /// transient). A response that is not recorded releases the key, so a retry runs the
    /// handler again.
    ///
    /// The rule sees the response head, or the head and the trailers (see [`RecordWhen`]):
    ///
    /// ```
    /// use http::{response, HeaderMap};
    /// use tower_idempotency::{IdempotencyLayer, MemoryStore};
    ///
    /// // Record only successes: a 4xx may be fixed by the client and retried with the same key.
    /// let layer = IdempotencyLayer::new(MemoryStore::new())
    ///     .with_record_when(|parts: &response::Parts| parts.status.is_success());
    ///
    /// // gRPC: record OK only (the status is in the trailers, or in a trailers-only head).
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).with_record_when(
    ///     |parts: &response::Parts, trailers: Option<&HeaderMap>| {
    ///         let status = parts.headers.get("grpc-status").or(trailers.and_then(|t| t.get("grpc-status")));
    ///         status.is_some_and(|code| code == "0")
    ///     },
    /// );
    /// ```
    ///
    /// [`recorded_by_default`]: crate::recorded_by_default
    pub fn with_record_when<Args>(self, rule: impl RecordWhen<Args>) -> Self {
        let rule = record_when::rule(rule);
        self.set(|c| c.record_when = rule)
    }

    /// Chooses which response headers are recorded and replayed (default
    /// [`HeaderFilter::default`]).
    pub fn with_replay_headers(self, filter: HeaderFilter) -> Self {
        self.set(|c| c.replay_headers = filter)
    }

    /// Separates keys by scope (tenant, user, API key); see [`MakeScope`].
    ///
    /// Scoped, another client's key is simply another key: it is neither replayed nor refused
    /// with 422, so a client learns nothing about keys outside its scope. Take the scope from
    /// who the caller *is* (a user or tenant id), never from a raw token: a token refresh would
    /// make a retry look new and run it again. [`with_scope_from_extension`] does that for the
    /// principal an authentication layer put in the request's extensions.
    ///
    /// [`with_scope_from_extension`]: Self::with_scope_from_extension
    pub fn with_scope(self, scope: impl MakeScope) -> Self {
        self.set(|c| c.scope = Some(Arc::new(scope)))
    }

    /// Scopes keys by the `T` an authentication layer (running before this one) put in the
    /// request's extensions, by its `Display` text. A request without a `T` is unscoped.
    ///
    /// ```
    /// use std::fmt;
    /// use tower_idempotency::{IdempotencyLayer, MemoryStore};
    ///
    /// /// Who the caller is, whichever of its tokens it sent.
    /// #[derive(Clone)]
    /// struct UserId(u64);
    ///
    /// impl fmt::Display for UserId {
    ///     fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    ///         write!(f, "user:{}", self.0)
    ///     }
    /// }
    ///
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).with_scope_from_extension::<UserId>();
    /// ```
    pub fn with_scope_from_extension<T>(self) -> Self
    where
        T: fmt::Display + Send + Sync + 'static,
    {
        self.with_scope(ScopeFromExtension::<T>::new())
    }

    /// Names the request headers that identify a client when no scope is configured (default:
    /// `Authorization`, `Proxy-Authorization`, `X-Api-Key`); an empty list turns the rule off.
    ///
    /// An unscoped record is bound to a digest of these headers' values: a request with the same
    /// key but other credentials (another client, or the same one after a token refresh) is
    /// refused with 422, never replayed and never run. Scoping keys
    /// ([`with_scope_from_extension`](Self::with_scope_from_extension)) is better: a refreshed
    /// token then still replays. `Cookie` is not a default: browsers change cookies between two
    /// tries (analytics, load-balancer affinity), which would refuse a legitimate retry; name
    /// the session cookie with [`with_credential_cookies`](Self::with_credential_cookies).
    ///
    /// ```
    /// use http::HeaderName;
    /// use tower_idempotency::{IdempotencyLayer, MemoryStore};
    ///
    /// let layer = IdempotencyLayer::new(MemoryStore::new())
    ///     .with_credential_headers([http::header::AUTHORIZATION, HeaderName::from_static("x-tenant-key")]);
    /// ```
    pub fn with_credential_headers(self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        let names = names.into_iter().collect();
        self.set(|c| c.credential_headers = names)
    }

    /// Binds unscoped records to these cookies too, by name (default: none), as
    /// [`with_credential_headers`](Self::with_credential_headers) binds them to headers: the
    /// session cookie of a cookie-authenticated app. Other cookies may change freely.
    ///
    /// ```
    /// use tower_idempotency::{IdempotencyLayer, MemoryStore};
    ///
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).with_credential_cookies(["session"]);
    /// ```
    pub fn with_credential_cookies(
        self,
        names: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        let names = names.into_iter().map(Into::into).collect();
        self.set(|c| c.credential_cookies = names)
    }

    /// Refuses keys that do not have `format` with 400, the expected format in the problem's
    /// detail (default [`KeyFormat::Any`]). Random keys (UUID v4 or v7) are what to ask for:
    /// a guessable key is the IETF draft's named data-leak risk.
    ///
    /// ```
    /// use tower_idempotency::{IdempotencyLayer, KeyFormat, MemoryStore};
    ///
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).with_key_format(KeyFormat::Uuid);
    /// ```
    pub fn with_key_format(self, format: KeyFormat) -> Self {
        self.set(|c| c.key_format = format)
    }

    /// Caps the keys one scope may hold in progress at once in this process (default: no cap).
    /// A request that would start one more gets 429 with `Retry-After` until one finishes;
    /// replays, refusals and waiting duplicates do not count.
    ///
    /// Only scoped requests count ([`with_scope`](Self::with_scope),
    /// [`with_scope_from_extension`](Self::with_scope_from_extension)): an unscoped request has
    /// no identity that a client could not change at will. The count is per instance: with N
    /// instances a scope holds at most N times it.
    ///
    /// ```
    /// use tower_idempotency::{IdempotencyLayer, MemoryStore};
    ///
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).with_max_in_progress_per_scope(64);
    /// ```
    pub fn with_max_in_progress_per_scope(self, max: usize) -> Self {
        let limit = Arc::new(InProgressLimit::new(max));
        self.set(|c| c.in_progress_limit = Some(limit))
    }

    /// Replaces the request fingerprint (default [`DefaultFingerprint`](crate::DefaultFingerprint)); see
    /// [`MakeFingerprint`].
    pub fn with_fingerprint(self, fingerprint: impl MakeFingerprint) -> Self {
        self.set(|c| c.fingerprint = Arc::new(fingerprint))
    }

    /// Lets covered requests run unguarded when the store fails (default: 503, fail closed).
    /// Every request let through is logged at `warn`. A corrupt record still answers 500.
    pub fn with_fail_open(self, fail_open: bool) -> Self {
        self.set(|c| c.fail_open = fail_open)
    }

    /// Answers the layer's refusals (400, 409, 413, 422, 429, 500, 503) in the app's own error
    /// format instead of problem+json (the default). The hook gets the
    /// [`Refusal`](crate::problems::Refusal); the layer adds `Retry-After` where the refusal
    /// calls for it and the answer has none. gRPC clients still get gRPC statuses.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::{header, Response};
    /// use tower_idempotency::{problems::Refusal, IdempotencyLayer, MemoryStore};
    ///
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).with_problem_response(|refusal: &Refusal| {
    ///     let body = format!(r#"{{"error":{{"code":"{}","message":"{}"}}}}"#, refusal.kind, refusal.detail);
    ///     Response::builder()
    ///         .status(refusal.status)
    ///         .header(header::CONTENT_TYPE, "application/json")
    ///         .body(Bytes::from(body))
    ///         .unwrap()
    /// });
    /// ```
    pub fn with_problem_response(self, hook: impl MakeProblemResponse) -> Self {
        self.set(|c| c.problem_response = Some(Arc::new(hook)))
    }

    /// Calls `hook` with every [`Outcome`](crate::Outcome) (acquired, replayed, conflict, ...), to count them in
    /// your metrics system. Every outcome is also a `tracing` event carrying the key's hash.
    pub fn with_on_outcome(self, hook: impl OnOutcome) -> Self {
        self.set(|c| c.on_outcome = Some(Arc::new(hook)))
    }
}

impl<St: WatchKeys> IdempotencyLayer<St> {
    /// Lets a duplicate wait up to `timeout` for the first request with its key, then replays
    /// its response ([`ConflictPolicy::Wait`]); past `timeout`, 409. The store wakes waiters
    /// when the key is completed or released (in process for `MemoryStore`, pub/sub for
    /// `RedisStore`), so a waiter answers the moment the first request is recorded, without
    /// polling the store. Waiting holds a request open: see
    /// [`with_max_waiters`](Self::with_max_waiters).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_idempotency::{IdempotencyLayer, MemoryStore};
    ///
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).with_wait(Duration::from_secs(10));
    /// ```
    pub fn with_wait(self, timeout: Duration) -> Self {
        let store = Arc::clone(&self.store);
        let watcher: Arc<Watcher> = Arc::new(move |key| store.watch(key));
        self.set(|c| {
            c.conflict = ConflictPolicy::wait_for(timeout);
            c.watcher = Some(watcher);
        })
    }
}

// Here rather than beside the service, so that the service's module does not depend on the
// builder's (tower-http's `Service::layer()` shape, without an import circle).
impl<S, St> IdempotencyService<S, St> {
    /// A layer with the default settings that wraps services in this one.
    pub fn layer(store: St) -> IdempotencyLayer<St> {
        IdempotencyLayer::new(store)
    }
}

impl<S, St> Layer<S> for IdempotencyLayer<St> {
    type Service = IdempotencyService<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService::from_parts(inner, Arc::clone(&self.store), Arc::clone(&self.config))
    }
}
