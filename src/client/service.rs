//! The service that mints keys, keeps bodies and retries.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use futures_util::future::poll_fn;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use super::{
    body::Kept,
    body::RetryBody,
    future::ResponseFuture,
    key,
    policy::RetryPolicy,
    schedule::{Outcome, Schedule},
};

/// A tower HTTP client that sends each covered call with an idempotency key and retries it
/// with the same key; made by [`IdempotentRetryLayer`](super::IdempotentRetryLayer).
///
/// The inner client must be `Clone` (hyper-util's `Client` and tonic's `Channel` are): a
/// retry calls a clone, as tower's own `Retry` does. Its errors come out unchanged
/// (`Error = S::Error`), after the last attempt.
#[derive(Debug, Clone)]
pub struct IdempotentRetryService<S> {
    inner: S,
    policy: Arc<RetryPolicy>,
}

impl<S> IdempotentRetryService<S> {
    /// Wraps `inner`, retrying by `policy`.
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        Self::from_shared(inner, Arc::new(policy))
    }

    pub(crate) fn from_shared(inner: S, policy: Arc<RetryPolicy>) -> Self {
        Self { inner, policy }
    }

    /// The inner client.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner client, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner client, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, R> Service<Request<B>> for IdempotentRetryService<S>
where
    S: Service<Request<RetryBody<B>>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: fmt::Display + Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Send,
    R: Send + 'static,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, Response<R>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if !self.policy.covers(req.method()) {
            return ResponseFuture::pass_through(self.inner.call(req.map(RetryBody::new)));
        }
        // The service `poll_ready` readied goes with the call (it may hold a reserved slot);
        // a clone takes its place for the next caller.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::retrying(Box::pin(call(inner, Arc::clone(&self.policy), req)))
    }
}

/// One logical call: key, keep the body, then send until the schedule says stop.
async fn call<S, B, R>(
    mut inner: S,
    policy: Arc<RetryPolicy>,
    req: Request<B>,
) -> Result<Response<R>, S::Error>
where
    S: Service<Request<RetryBody<B>>, Response = Response<R>>,
    S::Error: fmt::Display,
    B: Body,
{
    let (mut parts, body) = req.into_parts();
    let key = key::ensure(&mut parts.headers, &policy.header_name);
    let kept = Kept::read(body, policy.body_limit).await;
    let mut schedule = Schedule::new(&policy, key, kept.replayable());
    let mut kept = Some(kept);
    let mut first = true;
    loop {
        let Some(body) = Kept::next(&mut kept) else {
            unreachable!("the schedule retries only bodies it kept")
        };
        // The first attempt uses the service the caller readied; a retry readies its own.
        if !std::mem::take(&mut first) {
            poll_fn(|cx| inner.poll_ready(cx)).await?;
        }
        let result = inner.call(Request::from_parts(parts.clone(), body)).await;
        let wait = {
            let outcome = match &result {
                Ok(response) => Outcome::Answer {
                    status: response.status(),
                    headers: response.headers(),
                },
                // Any error before a response: the key makes sending again safe.
                Err(error) => Outcome::Error {
                    error,
                    retryable: true,
                },
            };
            schedule.after(&outcome)
        };
        match wait {
            Some(wait) => {
                drop(result);
                tokio::time::sleep(wait).await;
            }
            None => {
                return result.map(|mut response| {
                    response.extensions_mut().insert(schedule.attempts());
                    response
                })
            }
        }
    }
}
