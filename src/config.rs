//! The settings every request reads, and what one service shares between its clones.

use std::{fmt, sync::Arc, time::Duration};

use http::{HeaderName, Method, Response};
use tokio::sync::Semaphore;

use crate::{
    body::ResponseBody,
    credentials,
    fingerprint::{DefaultFingerprint, MakeFingerprint},
    in_progress::InProgressLimit,
    key::MakeKey,
    key_format::KeyFormat,
    outcome::{OnOutcome, Outcome},
    policy::{ConflictPolicy, HeaderFilter},
    problems::{Dialect, MakeProblemResponse, Problem},
    record_when::RecordRule,
    retry_after::{Durations, RetryAfter, TypicalDuration},
    scope::MakeScope,
};

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
/// The default time the rest of a streamed response is read after its client left: 60 seconds.
pub const DEFAULT_DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// The default cap on requests waiting under [`ConflictPolicy::Wait`].
pub const DEFAULT_MAX_WAITERS: usize = 1024;

/// A store's [`WatchKeys`](crate::WatchKeys), with the store's type erased.
pub(crate) type Watcher = dyn Fn(&crate::StoreKey) -> crate::KeyWatch + Send + Sync;

/// A coverage rule over the request head.
pub(crate) type CoveredWhen = dyn Fn(&http::request::Parts) -> bool + Send + Sync;

/// Where a request's key comes from.
#[derive(Clone)]
pub(crate) enum KeySource {
    /// A header, read before the body: a request without a key is never buffered.
    Header(HeaderName),
    /// Anywhere, the body included: read once the body is buffered.
    Made(Arc<dyn MakeKey>),
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Header(name) => f.debug_tuple("Header").field(name).finish(),
            Self::Made(_) => f.write_str("Made(..)"),
        }
    }
}

/// Everything the service needs besides the store; shared by every clone.
#[derive(Clone)]
pub(crate) struct Config {
    /// Where keys come from.
    pub(crate) key_source: KeySource,
    /// Covers only requests this accepts, besides their method.
    pub(crate) covered_when: Option<Arc<CoveredWhen>>,
    pub(crate) methods: Vec<Method>,
    pub(crate) key_required: bool,
    pub(crate) body_limit: usize,
    pub(crate) record_limit: usize,
    pub(crate) result_ttl: Duration,
    pub(crate) lease_ttl: Duration,
    pub(crate) store_timeout: Duration,
    pub(crate) drain_limit: Duration,
    pub(crate) conflict: ConflictPolicy,
    pub(crate) waiters: Arc<Semaphore>,
    pub(crate) record_when: RecordRule,
    pub(crate) replay_headers: HeaderFilter,
    pub(crate) scope: Option<Arc<dyn MakeScope>>,
    /// Headers, and cookies by name, whose values bind an unscoped record to its client; see
    /// `credentials`.
    pub(crate) credential_headers: Vec<HeaderName>,
    pub(crate) credential_cookies: Vec<String>,
    pub(crate) key_format: KeyFormat,
    pub(crate) in_progress_limit: Option<Arc<InProgressLimit>>,
    pub(crate) fingerprint: Arc<dyn MakeFingerprint>,
    pub(crate) fail_open: bool,
    pub(crate) on_outcome: Option<Arc<dyn OnOutcome>>,
    pub(crate) problem_response: Option<Arc<dyn MakeProblemResponse>>,
    pub(crate) retry_after: Arc<dyn RetryAfter>,
    /// Subscribes a waiter to its key's changes, when the store can tell them.
    pub(crate) watcher: Option<Arc<Watcher>>,
    /// How long first executions take here, for the default `Retry-After`.
    pub(crate) durations: Arc<Durations>,
}

impl Config {
    /// Hands `outcome` to the user's hook, if there is one.
    pub(crate) fn observe(&self, outcome: Outcome) {
        if let Some(hook) = &self.on_outcome {
            hook.on_outcome(outcome);
        }
    }

    /// Refuses a request before the store decides anything: one log line, one outcome, and the
    /// problem in the client's dialect.
    pub(crate) fn refuse<B>(
        &self,
        problem: Problem,
        dialect: Dialect,
    ) -> Response<ResponseBody<B>> {
        tracing::debug!(
            status = problem.status().as_u16(),
            detail = %problem.detail(),
            "idempotency: request refused"
        );
        self.observe(Outcome::Refused);
        self.answer(problem, dialect)
    }

    /// The layer's own answer: the user's hook for HTTP clients if there is one, else
    /// problem+json; always a gRPC status to gRPC clients.
    pub(crate) fn answer<B>(
        &self,
        problem: Problem,
        dialect: Dialect,
    ) -> Response<ResponseBody<B>> {
        match (&self.problem_response, dialect) {
            (Some(hook), Dialect::Http) => problem.into_custom_response(&**hook),
            _ => problem.into_response(dialect),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            key_source: KeySource::Header(HeaderName::from_static("idempotency-key")),
            covered_when: None,
            methods: vec![Method::POST, Method::PATCH],
            key_required: false,
            body_limit: DEFAULT_BODY_LIMIT,
            record_limit: DEFAULT_RECORD_LIMIT,
            result_ttl: DEFAULT_RESULT_TTL,
            lease_ttl: DEFAULT_LEASE_TTL,
            store_timeout: DEFAULT_STORE_TIMEOUT,
            drain_limit: DEFAULT_DRAIN_LIMIT,
            conflict: ConflictPolicy::Reject,
            waiters: Arc::new(Semaphore::new(DEFAULT_MAX_WAITERS)),
            record_when: RecordRule::Default,
            replay_headers: HeaderFilter::default(),
            scope: None,
            credential_headers: credentials::default_headers(),
            credential_cookies: Vec::new(),
            key_format: KeyFormat::Any,
            in_progress_limit: None,
            fingerprint: Arc::new(DefaultFingerprint::new()),
            fail_open: false,
            on_outcome: None,
            problem_response: None,
            retry_after: Arc::new(TypicalDuration),
            watcher: None,
            durations: Arc::default(),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("key_source", &self.key_source)
            .field("covered_when", &self.covered_when.is_some())
            .field("methods", &self.methods)
            .field("key_required", &self.key_required)
            .field("body_limit", &self.body_limit)
            .field("record_limit", &self.record_limit)
            .field("result_ttl", &self.result_ttl)
            .field("lease_ttl", &self.lease_ttl)
            .field("store_timeout", &self.store_timeout)
            .field("drain_limit", &self.drain_limit)
            .field("conflict", &self.conflict)
            .field("replay_headers", &self.replay_headers)
            .field("scoped", &self.scope.is_some())
            .field("credential_headers", &self.credential_headers)
            .field("credential_cookies", &self.credential_cookies)
            .field("key_format", &self.key_format)
            .field("in_progress_limit", &self.in_progress_limit)
            .field("fail_open", &self.fail_open)
            .field("on_outcome", &self.on_outcome.is_some())
            .field("problem_response", &self.problem_response.is_some())
            .field("typical_duration", &self.durations.typical())
            .field("watches", &self.watcher.is_some())
            .finish_non_exhaustive()
    }
}

/// What every request through one service reads: the store and the settings, behind one
/// reference count, so a request touches one shared counter instead of two.
pub(crate) struct Shared<St> {
    pub(crate) store: Arc<St>,
    pub(crate) config: Arc<Config>,
}
