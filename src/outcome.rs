//! What the layer did with each covered request, for the metrics system you use.

use std::fmt;

/// One step's outcome. A first execution reports [`Acquired`](Outcome::Acquired) and then one of
/// [`Recorded`](Outcome::Recorded), [`Tombstoned`](Outcome::Tombstoned),
/// [`Released`](Outcome::Released) or [`LeaseLost`](Outcome::LeaseLost); every other covered
/// request reports exactly one outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The key was free: the handler runs.
    Acquired,
    /// The handler's response was recorded.
    Recorded,
    /// The response was too large to record: the key was completed as a tombstone.
    Tombstoned,
    /// A recorded response was replayed.
    Replayed,
    /// Another request held the key: 409 (at once, or after waiting under `Wait`).
    Conflict,
    /// The key had been used with another request: 422.
    Mismatch,
    /// The response was not recorded (a 5xx, an error, a failed body): the key was released.
    Released,
    /// The lease was lost before the response was recorded: another request may have run.
    LeaseLost,
    /// The store failed or timed out: 503, or the request ran unguarded under fail-open.
    StoreFailed,
    /// A stored record could not be decoded: 500.
    Corrupt,
    /// Refused before the store was asked: a missing or malformed key (400), a body over the
    /// limit (413), an unreadable body (400).
    Refused,
}

impl Outcome {
    /// A short, stable name, for a metric label.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Self::Acquired => "acquired",
            Self::Recorded => "recorded",
            Self::Tombstoned => "tombstoned",
            Self::Replayed => "replayed",
            Self::Conflict => "conflict",
            Self::Mismatch => "mismatch",
            Self::Released => "released",
            Self::LeaseLost => "lease_lost",
            Self::StoreFailed => "store_failed",
            Self::Corrupt => "corrupt",
            Self::Refused => "refused",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Receives every [`Outcome`], on the request's task: keep it quick (count, don't block).
///
/// Implemented for closures:
///
/// ```
/// use std::sync::{atomic::{AtomicU64, Ordering}, Arc};
/// use tower_idempotency::{IdempotencyLayer, MemoryStore, Outcome};
///
/// let replays = Arc::new(AtomicU64::new(0));
/// let counter = Arc::clone(&replays);
/// let layer = IdempotencyLayer::new(MemoryStore::new()).with_on_outcome(move |outcome: Outcome| {
///     // e.g. metrics::counter!("idempotency", "outcome" => outcome.as_str()).increment(1)
///     if outcome == Outcome::Replayed {
///         counter.fetch_add(1, Ordering::Relaxed);
///     }
/// });
/// ```
pub trait OnOutcome: Send + Sync + 'static {
    /// Called once per outcome.
    fn on_outcome(&self, outcome: Outcome);
}

impl<F> OnOutcome for F
where
    F: Fn(Outcome) + Send + Sync + 'static,
{
    fn on_outcome(&self, outcome: Outcome) {
        self(outcome)
    }
}
