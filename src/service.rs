//! The service: routes each request to pass-through or to the idempotency protocol.

use std::{
    error::Error,
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;
use tracing::Instrument;

use crate::{
    body::{RequestBody, ResponseBody},
    config::{Config, KeySource, Shared},
    future::ResponseFuture,
    key,
    problems::{Dialect, Problem},
    protocol,
    store::IdempotencyStore,
};

type BoxError = Box<dyn Error + Send + Sync>;

/// Runs each covered request at most once per idempotency key; see
/// [`IdempotencyLayer`](crate::IdempotencyLayer).
///
/// The inner service receives a [`RequestBody`] (the buffered body of a covered request) and
/// answers as usual; its errors pass through unchanged, and everything the layer detects itself
/// becomes a problem response. Needs a Tokio runtime: it times store calls, and moves a first
/// execution whose client hung up to a task of its own, so it is never cut off half-way.
pub struct IdempotencyService<S, St> {
    inner: S,
    shared: Arc<Shared<St>>,
}

impl<S, St> IdempotencyService<S, St> {
    /// Wraps `inner` with the default settings.
    pub fn new(inner: S, store: St) -> Self {
        Self::from_parts(inner, Arc::new(store), Arc::new(Config::default()))
    }

    pub(crate) fn from_parts(inner: S, store: Arc<St>, config: Arc<Config>) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared { store, config }),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, St> Clone for IdempotencyService<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug, St: fmt::Debug> fmt::Debug for IdempotencyService<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyService")
            .field("inner", &self.inner)
            .field("store", &self.shared.store)
            .field("config", &self.shared.config)
            .finish()
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for IdempotencyService<S, St>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: IdempotencyStore,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: fmt::Display,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let config = &self.shared.config;
        if !covers(config, &req) {
            return ResponseFuture::pass_through(self.inner.call(req.map(RequestBody::new)));
        }
        // A key in a header is read now: a request without one is never buffered. Any other
        // source needs the body, so the protocol reads the key once it has buffered it.
        let key = match &config.key_source {
            KeySource::Header(name) => match key::extract(req.headers(), name) {
                Ok(Some(key)) => {
                    if let Err(expected) = config.key_format.check(&key) {
                        return refuse(config, &req, Problem::KeyFormat(expected));
                    }
                    Some(key)
                }
                Ok(None) if !config.key_required => {
                    let req = req.map(RequestBody::new);
                    return ResponseFuture::pass_through(self.inner.call(req));
                }
                Ok(None) => return refuse(config, &req, Problem::KeyMissing),
                Err(error) => return refuse(config, &req, Problem::KeyInvalid(error.detail())),
            },
            KeySource::Made(_) => None,
        };
        let dialect = Dialect::of(req.headers());
        // The instance polled ready is the one that must be called; keep a fresh clone behind.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        // The key's hash is recorded on the span once the protocol has derived it.
        let span = tracing::debug_span!("idempotency", key = tracing::field::Empty);
        let future = protocol::run(inner, Arc::clone(&self.shared), key, dialect, req);
        ResponseFuture::guarded(Box::pin(future.instrument(span)))
    }
}

/// Whether the layer covers `req`: its method, and the user's rule if there is one.
fn covers<T>(config: &Config, req: &Request<T>) -> bool {
    if !config.methods.contains(req.method()) {
        return false;
    }
    let Some(rule) = &config.covered_when else {
        return true;
    };
    // The rule sees the head as `Parts`, which only a request taken apart gives out.
    let (mut head, ()) = Request::new(()).into_parts();
    head.method = req.method().clone();
    head.uri = req.uri().clone();
    head.version = req.version();
    head.headers = req.headers().clone();
    rule(&head)
}

/// Answers `req` with `problem` before the key is known.
fn refuse<F, B, E, T>(
    config: &Config,
    req: &Request<T>,
    problem: Problem,
) -> ResponseFuture<F, B, E> {
    ResponseFuture::ready(config.refuse(problem, Dialect::of(req.headers())))
}
