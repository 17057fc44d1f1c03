//! The layer that wraps an HTTP client in [`IdempotentRetryService`].

use std::sync::Arc;

use tower_layer::Layer;

use super::{policy::RetryPolicy, service::IdempotentRetryService};

/// Wraps a tower HTTP client (hyper-util's `Client`, a tonic `Channel`, any
/// `Service<http::Request<RetryBody<B>>>`) so that each unsafe call carries an idempotency key
/// and is retried with it; see [the module docs](super) for what it does.
///
/// Cheap to clone: the policy is shared.
///
/// ```
/// use std::time::Duration;
/// use tower_idempotency::client::{IdempotentRetryLayer, RetryPolicy};
///
/// // The defaults: POST and PATCH, 4 attempts, 30 s deadline.
/// let layer = IdempotentRetryLayer::default();
/// // Or a policy of your own.
/// let layer = IdempotentRetryLayer::new(RetryPolicy::default().with_max_attempts(6));
/// ```
#[derive(Debug, Clone, Default)]
pub struct IdempotentRetryLayer {
    policy: Arc<RetryPolicy>,
}

impl IdempotentRetryLayer {
    /// A layer that retries by `policy`.
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

// Here rather than beside the service, so that the service's module does not depend on the
// builder's (as the server side's `IdempotencyService::layer`).
impl<S> IdempotentRetryService<S> {
    /// A layer that wraps services in this one, retrying by `policy`.
    pub fn layer(policy: RetryPolicy) -> IdempotentRetryLayer {
        IdempotentRetryLayer::new(policy)
    }
}

impl<S> Layer<S> for IdempotentRetryLayer {
    type Service = IdempotentRetryService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        IdempotentRetryService::from_shared(inner, Arc::clone(&self.policy))
    }
}
