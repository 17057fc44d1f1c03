//! The retry policy as a `reqwest-middleware` middleware.

use std::sync::Arc;

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};

use super::{
    key,
    policy::RetryPolicy,
    schedule::{Outcome, Schedule},
};

/// reqwest's version of [`IdempotentRetryLayer`](super::IdempotentRetryLayer): the same
/// [`RetryPolicy`], as a [`reqwest_middleware::Middleware`].
///
/// Covered requests (default: POST, PATCH) get an `Idempotency-Key` when they have none, and
/// are sent again with it on connection errors and timeouts, 409, 429 and 5xx. A request whose
/// body is a stream, or larger than the body limit, is sent once. The response carries an
/// [`Attempts`](super::Attempts) extension (`response.extensions()`).
///
/// Add it first, so that the middlewares after it (tracing, auth) run for every attempt:
///
/// ```
/// use reqwest_middleware::ClientBuilder;
/// use tower_idempotency::client::{IdempotentRetryMiddleware, RetryPolicy};
///
/// let client = ClientBuilder::new(reqwest::Client::new())
///     .with(IdempotentRetryMiddleware::new(RetryPolicy::default().with_max_attempts(5)))
///     .build();
/// // client.post("https://api.example/orders").body(r#"{"amount": 1200}"#).send().await
/// ```
///
/// Errors from reqwest count as "no answer" and are retried, except those that sending again
/// cannot fix (building the request, a redirect loop). Errors from another middleware are
/// returned at once.
#[derive(Debug, Clone, Default)]
pub struct IdempotentRetryMiddleware {
    policy: Arc<RetryPolicy>,
}

impl IdempotentRetryMiddleware {
    /// A middleware that retries by `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }

    /// The policy it retries by.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

/// Whether sending the request again may give another result.
fn transient(error: &reqwest_middleware::Error) -> bool {
    match error {
        reqwest_middleware::Error::Reqwest(error) => {
            !(error.is_builder() || error.is_redirect() || error.is_status())
        }
        reqwest_middleware::Error::Middleware(_) => false,
    }
}

#[async_trait::async_trait]
impl Middleware for IdempotentRetryMiddleware {
    async fn handle(
        &self,
        mut req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let policy = &*self.policy;
        if !policy.covers(req.method()) {
            return next.run(req, extensions).await;
        }
        let key = key::ensure(req.headers_mut(), &policy.header_name);
        // A body of bytes within the limit is kept (a clone shares the bytes); a stream cannot be.
        let within_limit = req.body().is_none_or(|body| {
            body.as_bytes()
                .is_some_and(|b| b.len() <= policy.body_limit)
        });
        let template = if within_limit { req.try_clone() } else { None };
        let mut schedule = Schedule::new(policy, key, template.is_some());
        let mut first = Some(req);
        loop {
            let this = match first.take() {
                Some(req) => req,
                None => match template.as_ref().and_then(Request::try_clone) {
                    Some(req) => req,
                    None => unreachable!("the schedule retries only requests it kept"),
                },
            };
            let result = next.clone().run(this, extensions).await;
            let wait = {
                let outcome = match &result {
                    Ok(response) => Outcome::Answer {
                        status: response.status(),
                        headers: response.headers(),
                    },
                    Err(error) => Outcome::Error {
                        error,
                        retryable: transient(error),
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
}
