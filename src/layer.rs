//! The layer and its settings.

use std::{fmt, sync::Arc, time::Duration};

use http::{response, HeaderName, Method};
use tokio::sync::Semaphore;
use tower_layer::Layer;

use crate::{
    fingerprint::{DefaultFingerprint, MakeFingerprint},
    outcome::{OnOutcome, Outcome},
    policy::{ConflictPolicy, HeaderFilter},
    scope::MakeScope,
    service::IdempotencyService,
};

type RecordPredicate = dyn Fn(&response::Parts) -> bool + Send + Sync;

/// The default request body limit: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;
/// The default limit on a response body that is recorded: 1 MiB.
pub const DEFAULT_RECORD_LIMIT: usize = 1024 * 1024;
/// The default time a completed record is kept: 24 hours.
pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// The default lease a running request holds, renewed while it runs: 30 seconds.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// The default time limit on one store call: 2 seconds.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(2);
/// The default cap on requests waiting under [`ConflictPolicy::Wait`].
pub const DEFAULT_MAX_WAITERS: usize = 1024;

/// Everything the service needs besides the store; shared by every clone.
#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) header_name: HeaderName,
    pub(crate) methods: Vec<Method>,
    pub(crate) key_required: bool,
    pub(crate) body_limit: usize,
    pub(crate) record_limit: usize,
    pub(crate) result_ttl: Duration,
    pub(crate) lease_ttl: Duration,
    pub(crate) store_timeout: Duration,
    pub(crate) conflict: ConflictPolicy,
    pub(crate) waiters: Arc<Semaphore>,
    pub(crate) record_when: Arc<RecordPredicate>,
    pub(crate) replay_headers: HeaderFilter,
    pub(crate) scope: Option<Arc<dyn MakeScope>>,
    pub(crate) fingerprint: Arc<dyn MakeFingerprint>,
    pub(crate) fail_open: bool,
    pub(crate) on_outcome: Option<Arc<dyn OnOutcome>>,
}

impl Config {
    /// Hands `outcome` to the user's hook, if there is one.
    pub(crate) fn observe(&self, outcome: Outcome) {
        if let Some(hook) = &self.on_outcome {
            hook.on_outcome(outcome);
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            header_name: HeaderName::from_static("idempotency-key"),
            methods: vec![Method::POST, Method::PATCH],
            key_required: false,
            body_limit: DEFAULT_BODY_LIMIT,
            record_limit: DEFAULT_RECORD_LIMIT,
            result_ttl: DEFAULT_RESULT_TTL,
            lease_ttl: DEFAULT_LEASE_TTL,
            store_timeout: DEFAULT_STORE_TIMEOUT,
            conflict: ConflictPolicy::Reject,
            waiters: Arc::new(Semaphore::new(DEFAULT_MAX_WAITERS)),
            record_when: Arc::new(|parts: &response::Parts| !parts.status.is_server_error()),
            replay_headers: HeaderFilter::default(),
            scope: None,
            fingerprint: Arc::new(DefaultFingerprint::new()),
            fail_open: false,
            on_outcome: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("header_name", &self.header_name)
            .field("methods", &self.methods)
            .field("key_required", &self.key_required)
            .field("body_limit", &self.body_limit)
            .field("record_limit", &self.record_limit)
            .field("result_ttl", &self.result_ttl)
            .field("lease_ttl", &self.lease_ttl)
            .field("store_timeout", &self.store_timeout)
            .field("conflict", &self.conflict)
            .field("replay_headers", &self.replay_headers)
            .field("scoped", &self.scope.is_some())
            .field("fail_open", &self.fail_open)
            .field("on_outcome", &self.on_outcome.is_some())
            .finish_non_exhaustive()
    }
}

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
///             .with_conflict_policy(ConflictPolicy::wait(Duration::from_millis(50), Duration::from_secs(5))),
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

/// What every request through one service reads: the store and the settings, behind one
/// reference count, so a request touches one shared counter instead of two.
pub(crate) struct Shared<St> {
    pub(crate) store: Arc<St>,
    pub(crate) config: Arc<Config>,
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

    /// Reads the key from this header instead of `Idempotency-Key`.
    pub fn with_header_name(self, name: HeaderName) -> Self {
        self.set(|c| c.header_name = name)
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

    /// What a duplicate gets while the first request runs (default [`ConflictPolicy::Reject`]).
    pub fn with_conflict_policy(self, policy: ConflictPolicy) -> Self {
        self.set(|c| c.conflict = policy)
    }

    /// Caps the requests waiting under [`ConflictPolicy::Wait`] (default 1024); past it,
    /// duplicates get 409 at once.
    pub fn with_max_waiters(self, max: usize) -> Self {
        self.set(|c| c.waiters = Arc::new(Semaphore::new(max)))
    }

    /// Decides which responses are recorded (default: all but 5xx). A response that is not
    /// recorded releases the key, so a retry runs the handler again.
    ///
    /// ```
    /// # use tower_idempotency::{IdempotencyLayer, MemoryStore};
    /// // Record only successes: a 4xx may be fixed by the client and retried with the same key.
    /// let layer = IdempotencyLayer::new(MemoryStore::new())
    ///     .with_record_when(|parts: &http::response::Parts| parts.status.is_success());
    /// ```
    pub fn with_record_when<F>(self, predicate: F) -> Self
    where
        F: Fn(&response::Parts) -> bool + Send + Sync + 'static,
    {
        self.set(|c| c.record_when = Arc::new(predicate))
    }

    /// Chooses which response headers are recorded and replayed (default
    /// [`HeaderFilter::default`]).
    pub fn with_replay_headers(self, filter: HeaderFilter) -> Self {
        self.set(|c| c.replay_headers = filter)
    }

    /// Separates keys by scope (tenant, user, API key); see [`MakeScope`].
    pub fn with_scope(self, scope: impl MakeScope) -> Self {
        self.set(|c| c.scope = Some(Arc::new(scope)))
    }

    /// Replaces the request fingerprint (default [`DefaultFingerprint`]); see [`MakeFingerprint`].
    pub fn with_fingerprint(self, fingerprint: impl MakeFingerprint) -> Self {
        self.set(|c| c.fingerprint = Arc::new(fingerprint))
    }

    /// Lets covered requests run unguarded when the store fails (default: 503, fail closed).
    /// Every request let through is logged at `warn`. A corrupt record still answers 500.
    pub fn with_fail_open(self, fail_open: bool) -> Self {
        self.set(|c| c.fail_open = fail_open)
    }

    /// Calls `hook` with every [`Outcome`] (acquired, replayed, conflict, ...), to count them in
    /// your metrics system. Every outcome is also a `tracing` event carrying the key's hash.
    pub fn with_on_outcome(self, hook: impl OnOutcome) -> Self {
        self.set(|c| c.on_outcome = Some(Arc::new(hook)))
    }
}

impl<S, St> Layer<S> for IdempotencyLayer<St> {
    type Service = IdempotencyService<S, St>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService::from_parts(inner, Arc::clone(&self.store), Arc::clone(&self.config))
    }
}
