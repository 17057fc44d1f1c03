//! Finishing work its caller stopped waiting for.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

/// Polls a future in the caller's task, and hands it to a task of its own if the caller drops
/// it before it is done.
///
/// A first execution must not be cut off between the handler's side effect and the record of
/// it when the client hangs up. Spawning every execution would cost a task, a wake-up and
/// often a hop to another worker thread; this pays for a task only when a client leaves.
/// A future that panicked is dropped, never resumed: its guards release the key.
pub(crate) struct Detachable<F: Future<Output: Send> + Send + 'static> {
    future: Option<Pin<Box<F>>>,
    polling: bool,
}

impl<F: Future<Output: Send> + Send + 'static> Detachable<F> {
    pub(crate) fn new(future: F) -> Self {
        Self {
            future: Some(Box::pin(future)),
            polling: false,
        }
    }
}

impl<F: Future<Output: Send> + Send + 'static> Future for Detachable<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = &mut *self;
        let Some(future) = this.future.as_mut() else {
            // Polled after completion: a contract breach by the caller; never resolve again.
            return Poll::Pending;
        };
        // Still set in `drop` if this poll unwinds.
        this.polling = true;
        let output = future.as_mut().poll(cx);
        this.polling = false;
        if output.is_ready() {
            this.future = None;
        }
        output
    }
}

impl<F: Future<Output: Send> + Send + 'static> Drop for Detachable<F> {
    fn drop(&mut self) {
        let Some(future) = self.future.take() else {
            return;
        };
        if self.polling {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(future)),
            Err(_) => tracing::warn!(
                "idempotency: no runtime to finish a request whose client went away; it stops here"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };

    use super::*;

    #[tokio::test]
    async fn a_dropped_future_finishes_on_its_own_task() {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let mut detachable = Detachable::new(async move {
            let _ = started_tx.send(());
            let _ = go_rx.await;
            let _ = done_tx.send(());
        });
        tokio::select! {
            _ = &mut detachable => unreachable!("waits for go"),
            _ = started_rx => {}
        }
        drop(detachable);
        let _ = go_tx.send(());
        done_rx.await.expect("the future ran to the end");
    }

    #[tokio::test]
    async fn a_future_that_panicked_is_dropped_not_resumed() {
        struct Flag(Arc<AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = Flag(Arc::clone(&dropped));
        let mut detachable = Detachable::new(async move {
            let _flag = flag;
            tokio::task::yield_now().await;
            panic!("on purpose");
        });
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut detachable).poll(&mut cx).is_pending());
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = Pin::new(&mut detachable).poll(&mut cx);
        }));
        assert!(panicked.is_err());
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        drop(detachable);
        assert!(dropped.load(Ordering::SeqCst), "its locals were dropped");
        assert_eq!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            tasks,
            "nothing was spawned to resume it"
        );
    }
}
