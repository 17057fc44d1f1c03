//! Store calls under the layer's bounds: each call timed, and the lease renewed while a
//! request holds it.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::time::{Instant, MissedTickBehavior};

use crate::{
    config::Config,
    store::{IdempotencyStore, LeaseToken, StoreError, StoreKey},
};

/// The shortest renewal period, for leases shorter than a few milliseconds (tests).
const MIN_PERIOD: Duration = Duration::from_millis(1);

/// Drives `handler` while renewing the lease every third of its length.
pub(crate) async fn with_renewal<St: IdempotencyStore, F: Future>(
    store: &St,
    config: &Config,
    key: &StoreKey,
    token: &LeaseToken,
    handler: F,
) -> F::Output {
    while_renewing(handler, keep_renewed(store, config, key, token)).await
}

/// Drives `work` while `renewal` runs; once the lease is lost (`renewal` returned), `work`
/// goes on alone (its store calls are token-checked).
pub(crate) async fn while_renewing<F: Future>(
    work: F,
    renewal: impl Future<Output = ()>,
) -> F::Output {
    tokio::pin!(work);
    tokio::select! {
        biased;
        output = &mut work => output,
        () = renewal => work.await,
    }
}

/// Renews the lease every third of its length; returns only once the lease is lost.
pub(crate) async fn keep_renewed<St: IdempotencyStore>(
    store: &St,
    config: &Config,
    key: &StoreKey,
    token: &LeaseToken,
) {
    let period = (config.lease_ttl / 3).max(MIN_PERIOD);
    renew_every(store, config, key, token, Instant::now() + period).await;
}

/// [`keep_renewed`], with a first renewal at once: for a lease that may be near its end.
pub(crate) async fn keep_renewed_from_now<St: IdempotencyStore>(
    store: &St,
    config: &Config,
    key: &StoreKey,
    token: &LeaseToken,
) {
    renew_every(store, config, key, token, Instant::now()).await;
}

async fn renew_every<St: IdempotencyStore>(
    store: &St,
    config: &Config,
    key: &StoreKey,
    token: &LeaseToken,
    first: Instant,
) {
    let period = (config.lease_ttl / 3).max(MIN_PERIOD);
    let mut ticker = tokio::time::interval_at(first, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // Boxed: only slow handlers renew, and every execution's future would hold its room.
        let renewal = Box::pin(timed(
            config.store_timeout,
            store.renew(key, token, config.lease_ttl),
        ));
        match renewal.await {
            Ok(true) => tracing::trace!("idempotency: lease renewed"),
            Ok(false) => {
                tracing::warn!(
                    "idempotency: lease lost while the handler runs or its response streams; another request may run too"
                );
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "idempotency: lease renewal failed")
            }
        }
    }
}

pin_project! {
    /// A store call bounded by the layer's store timeout. A plain future rather than an
    /// `async fn`, which would keep the call in its state twice (as argument and as awaited
    /// timeout): store calls sit in every request's state machine.
    pub(crate) struct Timed<F> {
        #[pin]
        call: tokio::time::Timeout<F>,
    }
}

impl<F, T> Future for Timed<F>
where
    F: Future<Output = Result<T, StoreError>>,
{
    type Output = Result<T, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .call
            .poll(cx)
            .map(|result| result.unwrap_or(Err(StoreError::Timeout)))
    }
}

pub(crate) fn timed<F: Future>(limit: Duration, call: F) -> Timed<F> {
    Timed {
        call: tokio::time::timeout(limit, call),
    }
}
