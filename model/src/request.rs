//! One covered request as the layer drives it (`protocol::run`, `protocol::execute`,
//! `lease::with_renewal`, `record::settle`), and the work it leaves behind on tasks of its own
//! (the `ReleaseGuard`'s spawned release, `record::record_later`).

use crate::store::{FencingToken, LeaseToken, Response, Tick};

/// What the handler did with its side effect, which carries the fencing token to a downstream
/// that refuses a token older than the newest it accepted (the README's advice).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Effect {
    /// Not done yet. A handler that returns now failed before doing anything (a 5xx).
    NotYet,
    /// The downstream took the write.
    Accepted,
    /// The downstream refused it: a newer holder wrote first. The handler answers an error
    /// that the default rule releases (409).
    Refused,
}

/// What `record::settle` does with the key once the handler answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Settlement {
    /// A recordable answer: `complete` with it.
    Record(Response),
    /// Nothing happened (5xx, a fenced-out write): `release`, so a retry may run.
    Release,
}

/// Where a client's current request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// No request in flight: the client has its answer, or is about to send (again).
    Idle,
    /// `begin` acquired the key; the handler runs while `keep_renewed` renews the lease.
    Running {
        /// This request's lease token.
        token: LeaseToken,
        /// From `BeginOutcome::Acquired`.
        fence: FencingToken,
        /// When the lease ends as far as this request knows: the last `begin` or `renew` that
        /// answered `Ok(true)`, plus the lease. A ghost: the code keeps no such value, but it is
        /// what "while leases hold" means.
        lease_until: Tick,
        /// `keep_renewed` stops after a renewal answered `Ok(false)` (the lease was lost).
        renewing: bool,
        /// The handler's side effect so far.
        effect: Effect,
    },
    /// The handler returned; `settle` has not called the store yet.
    Returned {
        /// This request's lease token.
        token: LeaseToken,
        /// As in `Running`; no more renewals after the handler returned.
        lease_until: Tick,
        /// Complete or release.
        settlement: Settlement,
    },
}

/// The final answer a client got, or none yet. Refusals it retries (409, 503, a released 5xx)
/// are not kept: only what the properties compare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Answer {
    /// The first execution's own response.
    Fresh(Response),
    /// `Idempotent-Replayed: true`.
    Replayed(Response),
    /// 422: the key was used for another request.
    KeyReused,
}

impl Answer {
    /// The response a 2xx answer carried.
    pub fn response(self) -> Option<Response> {
        match self {
            Self::Fresh(response) | Self::Replayed(response) => Some(response),
            Self::KeyReused => None,
        }
    }
}

/// A client with the one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Client {
    /// Requests sent so far.
    pub sent: u8,
    /// The request in flight.
    pub step: Step,
    /// Its final answer, once it has one.
    pub answer: Option<Answer>,
}

/// Work a request left on a task of its own after its client got an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Task {
    /// `ReleaseGuard`'s drop: `begin` failed (its reply lost, or too few replica acks) and may
    /// have acquired the key, so the guard spawns a token-checked release. Without the guard
    /// `keep_lease_after_failed_complete`, also what a failed `complete` led to before 0.1.
    GuardRelease {
        /// The request's lease token.
        token: LeaseToken,
    },
    /// `record_later`: `complete` failed with an error, so it is sent again (same token, same
    /// record) until it lands, is refused, or a lease's length has gone by.
    RecordLater {
        /// The request's lease token.
        token: LeaseToken,
        /// The response to record (the client already has it).
        response: Response,
        /// As in `Step::Running`: the lease is no longer renewed.
        lease_until: Tick,
        /// `record_later` gives up at this tick (its start plus the lease).
        deadline: Tick,
    },
}

impl Task {
    /// Whether this task still holds a lease it has not settled (`record_later` does).
    pub fn holds(&self) -> Option<Tick> {
        match *self {
            Self::RecordLater { lease_until, .. } => Some(lease_until),
            Self::GuardRelease { .. } => None,
        }
    }
}
