//! The future [`IdempotentRetryService`](super::IdempotentRetryService) returns.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use pin_project_lite::pin_project;

pub(crate) type BoxCallFuture<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

pin_project! {
    /// Response future of [`IdempotentRetryService`](super::IdempotentRetryService).
    ///
    /// Requests the layer does not cover run the inner future directly; covered requests run
    /// the retry loop (keep the body, send, wait, send again), which is boxed.
    pub struct ResponseFuture<F, R, E> {
        #[pin]
        kind: Kind<F, R, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, R, E> {
        PassThrough { #[pin] future: F },
        Retrying { future: BoxCallFuture<R, E> },
    }
}

impl<F, R, E> ResponseFuture<F, R, E> {
    pub(crate) fn pass_through(future: F) -> Self {
        Self {
            kind: Kind::PassThrough { future },
        }
    }

    pub(crate) fn retrying(future: BoxCallFuture<R, E>) -> Self {
        Self {
            kind: Kind::Retrying { future },
        }
    }
}

impl<F, R, E> Future for ResponseFuture<F, R, E>
where
    F: Future<Output = Result<R, E>>,
{
    type Output = Result<R, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::PassThrough { future } => future.poll(cx),
            KindProj::Retrying { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, R, E> fmt::Debug for ResponseFuture<F, R, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::PassThrough { .. } => "PassThrough",
            Kind::Retrying { .. } => "Retrying",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}
