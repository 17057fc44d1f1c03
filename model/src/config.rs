//! What the model includes: the protocol's guards (each can be turned off to see what it guards
//! against) and the bounds the checker explores within.

use crate::store::Tick;

/// The guards of the claim protocol. The crate keeps all of them ([`Guards::ALL`]); each test in
/// `tests/guards.rs` turns one off and expects the checker to find a counterexample, so that a
/// model too weak to notice the guard's absence would fail its own tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guards {
    /// `complete` lands only on a record held with the caller's `LeaseToken`: the COMPLETE script
    /// compares the whole in-progress value, `MemoryStore` checks it in `with_held`.
    pub complete_checks_token: bool,
    /// A `complete` that failed keeps the lease and is written again by `record_later`; the key
    /// is never released once the handler ran (`record::settle`, since 0.1). Off: the guard
    /// releases the key, as before 0.1.
    pub keep_lease_after_failed_complete: bool,
    /// `RedisStore::with_replica_acks`: `begin`, `complete` and `renew` send `WAIT` in the same
    /// round trip and fail with `Unreplicated` when no replica holds the write.
    pub replica_acks: bool,
    /// `renew` extends only a record held with the caller's token (RENEW, `with_held`).
    pub renew_checks_token: bool,
    /// An in-progress record lives for the lease (`SET ... PX`, `expires_at`), so a lock whose
    /// holder went quiet ends by itself. Off: it lives until completed or released. This one
    /// shows that the liveness property notices a key locked for good.
    pub leases_expire: bool,
    /// A `complete` repeated after its reply was lost writes too (COMPLETE: `PEXPIRE` on its
    /// repeat path), so its `WAIT` covers the record even over a new connection. Off: the
    /// repeat writes nothing, as before this model found the hole (with
    /// [`Bounds::reconnect_after_lost_reply`]).
    pub complete_repeat_writes: bool,
}

impl Guards {
    /// Every guard, as the crate ships them (with `with_replica_acks` set).
    pub const ALL: Self = Self {
        complete_checks_token: true,
        keep_lease_after_failed_complete: true,
        replica_acks: true,
        renew_checks_token: true,
        leases_expire: true,
        complete_repeat_writes: true,
    };
}

/// How far the checker explores. Every path is finite: time stops at the horizon, each client
/// sends a bounded number of requests, and faults and failovers come from a budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Clients that send a request with the one key.
    pub clients: u8,
    /// Requests each client sends at most: its first, and retries after 409, 503 or a 5xx (as
    /// `client::IdempotentRetryLayer` retries), each with a fresh `LeaseToken`.
    pub attempts: u8,
    /// The lease, in ticks.
    pub lease: Tick,
    /// The last tick at which anything but the settling of the last requests happens. After it,
    /// time goes on only while the requests have all settled and a lease is still live, so that
    /// every path ends with the key completed or free.
    pub horizon: Tick,
    /// Store calls that may go wrong in one run: a reply lost after the script ran, a call that
    /// never ran, or (with replica acks) a write no replica acknowledged.
    pub faults: u8,
    /// Failovers in one run (0: one node, as `MemoryStore` or a Redis without replicas).
    pub failovers: u8,
    /// The last client sends another request (another fingerprint) with the same key.
    pub other_fingerprint: bool,
    /// A call after a lost reply goes over a new connection (`ConnectionManager` reconnects).
    /// `WAIT` counts the replicas that have the writes of *its* connection, so a call that
    /// writes nothing (a `complete` repeated after its first reply was lost finds its record
    /// and returns 1) gets its acks whether or not the replica has the record. Off: the
    /// connection is kept, and `WAIT` covers the earlier write.
    pub reconnect_after_lost_reply: bool,
}

impl Bounds {
    /// The largest bounds `tests/full_model.rs` checks exhaustively with two clients: one retry
    /// each, two faults and one failover in a run, a lease of 2 ticks within 6 (so a lease can
    /// be taken, renewed twice and lapse, or lapse and be taken again twice).
    pub const FULL: Self = Self {
        clients: 2,
        attempts: 2,
        lease: 2,
        horizon: 6,
        faults: 2,
        failovers: 1,
        other_fingerprint: false,
        reconnect_after_lost_reply: false,
    };
}
