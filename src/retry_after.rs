//! What a 409 tells a duplicate about when to come back.
//!
//! The rest of the running lease (30 s by default) is the worst case, not a hint: a 300 ms
//! handler answered `Retry-After: 30`, and clients that honour it (Stripe's SDKs retry 409 on
//! their own) waited 30 s for a replay that was ready at once. The default is how long first
//! executions here have been taking, so the retry lands about when the first one is done.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

/// What the layer knows when a duplicate meets a request in progress, for a
/// [`RetryAfter`] rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConflictHint {
    /// How long first executions of this service have been taking lately (a moving average),
    /// once one has finished.
    pub typical: Option<Duration>,
    /// How long the running request's lease still runs, when the store says: an upper bound.
    pub lease_left: Option<Duration>,
}

/// Chooses the `Retry-After` of a 409 (and gRPC's `grpc-retry-pushback-ms`); see
/// [`IdempotencyLayer::with_retry_after`](crate::IdempotencyLayer::with_retry_after).
/// Implemented for a fixed [`Duration`] and for closures over the [`ConflictHint`].
pub trait RetryAfter: Send + Sync + 'static {
    /// When the duplicate should try again.
    fn retry_after(&self, hint: &ConflictHint) -> Duration;
}

impl RetryAfter for Duration {
    fn retry_after(&self, _hint: &ConflictHint) -> Duration {
        *self
    }
}

impl<F> RetryAfter for F
where
    F: Fn(&ConflictHint) -> Duration + Send + Sync + 'static,
{
    fn retry_after(&self, hint: &ConflictHint) -> Duration {
        self(hint)
    }
}

/// The default rule: the typical first execution, at least 1 s (`Retry-After` counts whole
/// seconds) and at most the rest of the lease; 1 s before anything has finished.
#[derive(Debug, Clone, Copy, Default)]
#[non_exhaustive]
pub struct TypicalDuration;

impl RetryAfter for TypicalDuration {
    fn retry_after(&self, hint: &ConflictHint) -> Duration {
        let typical = hint
            .typical
            .unwrap_or(Duration::ZERO)
            .max(Duration::from_secs(1));
        hint.lease_left.map_or(typical, |left| typical.min(left))
    }
}

/// A moving average of first executions' durations, lock-free (one atomic per service).
#[derive(Debug, Default)]
pub(crate) struct Durations {
    /// Microseconds, weighted 1/8 to the newest; 0 until one execution has finished.
    average_us: AtomicU64,
}

impl Durations {
    pub(crate) fn add(&self, took: Duration) {
        let took = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        // Lost updates between racing executions only skip a sample: fine for a hint.
        let old = self.average_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            took
        } else {
            old - old / 8 + took / 8
        };
        self.average_us.store(new.max(1), Ordering::Relaxed);
    }

    pub(crate) fn typical(&self) -> Option<Duration> {
        match self.average_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_the_typical_duration_within_one_second_and_the_lease() {
        let hint = |typical_ms: Option<u64>, left_s: Option<u64>| ConflictHint {
            typical: typical_ms.map(Duration::from_millis),
            lease_left: left_s.map(Duration::from_secs),
        };
        let rule = TypicalDuration;
        assert_eq!(
            rule.retry_after(&hint(Some(300), Some(30))),
            Duration::from_secs(1)
        );
        assert_eq!(
            rule.retry_after(&hint(Some(4_500), Some(30))),
            Duration::from_millis(4_500)
        );
        assert_eq!(
            rule.retry_after(&hint(Some(60_000), Some(20))),
            Duration::from_secs(20)
        );
        assert_eq!(
            rule.retry_after(&hint(None, Some(30))),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn the_average_follows_recent_executions() {
        let durations = Durations::default();
        assert_eq!(durations.typical(), None);
        durations.add(Duration::from_millis(800));
        assert_eq!(durations.typical(), Some(Duration::from_millis(800)));
        for _ in 0..64 {
            durations.add(Duration::from_millis(200));
        }
        let typical = durations.typical().unwrap();
        assert!(typical < Duration::from_millis(210), "{typical:?}");
    }
}
