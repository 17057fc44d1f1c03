//! The store as `RedisStore`'s Lua scripts and `MemoryStore` implement it, for one key: a
//! primary that every call goes to, a replica that copies it asynchronously, and a failover that
//! promotes the replica.
//!
//! Each operation is one atomic step on the primary, as a script is on Redis and a locked map
//! operation is in `MemoryStore`. Replication and failover are actions of their own in
//! [`crate::model`]; so are the faults of a call (a lost reply, a call that never ran).

use crate::config::Guards;

/// Discrete time. Leases are a whole number of ticks; a record whose expiry is `<= now` is as
/// good as absent ("expiry is honoured on every read").
pub type Tick = u8;

/// The secret a request picks before `begin` (`LeaseToken::generate` in `protocol::run`): one per
/// request, never reused, so it names the request in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseToken(pub u8);

/// Grows with every acquisition of the key (`FencingToken`): `MemoryStore` counts, `RedisStore`
/// reads the server clock. The model hands out 1, 2, 3, ... in acquisition order, which is the
/// Redis clock when it never steps back (see the README).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FencingToken(pub u8);

/// A request fingerprint; requests with the same key and another one get `Mismatch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub u8);

/// What a handler answered. It names its run (lease token and fencing token), so two runs never
/// produce equal responses and a replay shows which run it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Response {
    /// The request whose handler produced it.
    pub by: LeaseToken,
    /// The fencing token its side effect carried.
    pub fence: FencingToken,
}

/// One key's record: the `p...` and `c...` values of the Redis store, `Slot` in `MemoryStore`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Record {
    /// A request holds the lease: `p`, fingerprint, lease token, with the lease as its TTL.
    InProgress {
        /// The holder's request fingerprint.
        fingerprint: Fingerprint,
        /// The holder's lease token.
        token: LeaseToken,
        /// The lease ends at this tick unless renewed.
        expires_at: Tick,
    },
    /// A recorded response: `c`, fingerprint, encoded record. Its TTL (24 h by default) outlives
    /// the model's horizon, so it never expires here.
    Completed {
        /// The fingerprint of the request that recorded it.
        fingerprint: Fingerprint,
        /// What every retry replays.
        response: Response,
    },
}

/// What `begin` found, decided in one atomic step (`BeginOutcome`, without the durations).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BeginOutcome {
    /// No record existed; the caller's in-progress record now does.
    Acquired {
        /// The acquisition's fencing token.
        fencing_token: FencingToken,
    },
    /// A completed record with the same fingerprint: replay it.
    Completed {
        /// The recorded response.
        response: Response,
    },
    /// Another request holds the lease.
    InProgress,
    /// A record with another fingerprint exists.
    Mismatch,
}

/// The primary and its replica. With one node and no failover this is `MemoryStore`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Store {
    /// Where every call goes.
    pub primary: Option<Record>,
    /// What the primary had when it was last copied; promoted on failover.
    pub replica: Option<Record>,
}

/// What `complete` did: its reply, whether the script wrote (a repeat finds its record and
/// rewrites only its expiry), and whether it replaced a record that another request held (possible only
/// without the token check).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The reply: `true` when the record is (now) the caller's response.
    pub done: bool,
    /// This call stored the record.
    pub wrote: bool,
    /// The record it replaced was held with another lease token.
    pub over_another_holder: bool,
}

/// When a lease taken or renewed at `now` ends in the store.
fn lease_end(now: Tick, lease: Tick, guards: &Guards) -> Tick {
    if guards.leases_expire {
        now + lease
    } else {
        Tick::MAX
    }
}

impl Store {
    /// The BEGIN script: replay, refuse, or acquire. `next_fence` is the clock the fencing token
    /// is read from, advanced on acquisition only.
    pub fn begin(
        &mut self,
        now: Tick,
        lease: Tick,
        guards: &Guards,
        fingerprint: Fingerprint,
        token: LeaseToken,
        next_fence: &mut u8,
    ) -> BeginOutcome {
        match self.primary {
            Some(Record::Completed {
                fingerprint: kept,
                response,
            }) => {
                return if kept == fingerprint {
                    BeginOutcome::Completed { response }
                } else {
                    BeginOutcome::Mismatch
                };
            }
            Some(Record::InProgress {
                fingerprint: held_for,
                token: held,
                expires_at,
            }) if expires_at > now => {
                // The same holder asking again would get its lease back; the protocol calls
                // `begin` once per request, so only another holder is found here.
                if held_for != fingerprint {
                    return BeginOutcome::Mismatch;
                }
                if held != token {
                    return BeginOutcome::InProgress;
                }
            }
            _ => {}
        }
        self.primary = Some(Record::InProgress {
            fingerprint,
            token,
            expires_at: lease_end(now, lease, guards),
        });
        let fencing_token = FencingToken(*next_fence);
        *next_fence += 1;
        BeginOutcome::Acquired { fencing_token }
    }

    /// The COMPLETE script: the caller's in-progress record becomes `response`. A repeat of a
    /// `complete` that already landed (its reply was lost) succeeds again; anything else fails.
    pub fn complete(
        &mut self,
        now: Tick,
        guards: &Guards,
        fingerprint: Fingerprint,
        token: LeaseToken,
        response: Response,
    ) -> Completion {
        match self.primary {
            Some(Record::InProgress {
                fingerprint: held_for,
                token: held,
                expires_at,
            }) if expires_at > now
                && held_for == fingerprint
                && (held == token || !guards.complete_checks_token) =>
            {
                self.primary = Some(Record::Completed {
                    fingerprint,
                    response,
                });
                Completion {
                    done: true,
                    wrote: true,
                    over_another_holder: held != token,
                }
            }
            // `if v == ARGV[2]`: the same completed value is already there.
            Some(Record::Completed {
                response: kept,
                fingerprint: kept_for,
            }) => {
                let done = kept == response && kept_for == fingerprint;
                Completion {
                    done,
                    // `PEXPIRE`: a write, so that `WAIT` covers the record.
                    wrote: done && guards.complete_repeat_writes,
                    over_another_holder: false,
                }
            }
            _ => Completion {
                done: false,
                wrote: false,
                over_another_holder: false,
            },
        }
    }

    /// The RELEASE script: deletes the caller's in-progress record.
    pub fn release(&mut self, now: Tick, token: LeaseToken) -> bool {
        match self.primary {
            Some(Record::InProgress {
                token: held,
                expires_at,
                ..
            }) if held == token && expires_at > now => {
                self.primary = None;
                true
            }
            _ => false,
        }
    }

    /// The RENEW script: extends the caller's lease to `lease` from now.
    pub fn renew(&mut self, now: Tick, lease: Tick, guards: &Guards, token: LeaseToken) -> bool {
        match &mut self.primary {
            Some(Record::InProgress {
                token: held,
                expires_at,
                ..
            }) if (*held == token || !guards.renew_checks_token) && *expires_at > now => {
                *expires_at = lease_end(now, lease, guards);
                true
            }
            _ => false,
        }
    }

    /// Time passed: an expired lease is gone, on the primary and on the replica alike (Redis
    /// keeps absolute expiry times on replicas).
    pub fn expire(&mut self, now: Tick) {
        for slot in [&mut self.primary, &mut self.replica] {
            if matches!(slot, Some(Record::InProgress { expires_at, .. }) if *expires_at <= now) {
                *slot = None;
            }
        }
    }

    /// The replica catches up with the primary (asynchronous replication, or a `WAIT` that
    /// counted the replica).
    pub fn replicate(&mut self) {
        self.replica = self.primary;
    }

    /// The primary dies and its replica takes over with what it had; a new replica syncs from it.
    pub fn failover(&mut self) {
        self.primary = self.replica;
    }

    /// The live in-progress record on the primary, if any.
    pub fn lock(&self, now: Tick) -> Option<LeaseToken> {
        match self.primary {
            Some(Record::InProgress {
                token, expires_at, ..
            }) if expires_at > now => Some(token),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The scripts' answers, as the conformance suite (`tests/common/suite.rs`) asks them of
    //! every real store: if these fail, the model no longer stands for the crate's stores.

    use super::*;

    const FP: Fingerprint = Fingerprint(0);
    const LEASE: Tick = 2;
    const A: LeaseToken = LeaseToken(0);
    const B: LeaseToken = LeaseToken(1);

    fn acquired(store: &mut Store, now: Tick, token: LeaseToken, fence: &mut u8) -> BeginOutcome {
        store.begin(now, LEASE, &Guards::ALL, FP, token, fence)
    }

    fn response(by: LeaseToken) -> Response {
        Response {
            by,
            fence: FencingToken(1),
        }
    }

    #[test]
    fn begin_acquires_once_then_refuses_then_replays() {
        let (mut store, mut fence) = (Store::default(), 1);
        assert_eq!(
            acquired(&mut store, 0, A, &mut fence),
            BeginOutcome::Acquired {
                fencing_token: FencingToken(1)
            }
        );
        assert_eq!(
            acquired(&mut store, 0, B, &mut fence),
            BeginOutcome::InProgress
        );
        let other = store.begin(0, LEASE, &Guards::ALL, Fingerprint(1), B, &mut fence);
        assert_eq!(
            other,
            BeginOutcome::Mismatch,
            "a reused key, while in progress too"
        );
        assert!(store.complete(0, &Guards::ALL, FP, A, response(A)).done);
        assert_eq!(
            acquired(&mut store, 5, B, &mut fence),
            BeginOutcome::Completed {
                response: response(A)
            },
            "a completed record outlives the lease"
        );
        assert_eq!(fence, 2, "only an acquisition takes a fencing token");
    }

    #[test]
    fn an_expired_lease_is_as_good_as_absent() {
        let (mut store, mut fence) = (Store::default(), 1);
        acquired(&mut store, 0, A, &mut fence);
        store.expire(LEASE);
        assert_eq!(store.lock(LEASE), None);
        assert_eq!(
            acquired(&mut store, LEASE, B, &mut fence),
            BeginOutcome::Acquired {
                fencing_token: FencingToken(2)
            },
            "the next acquisition gets a larger token"
        );
        assert!(!store.renew(LEASE, LEASE, &Guards::ALL, A));
        assert!(!store.complete(LEASE, &Guards::ALL, FP, A, response(A)).done);
        assert!(!store.release(LEASE, A));
        assert_eq!(store.lock(LEASE), Some(B), "the old holder touched nothing");
    }

    #[test]
    fn complete_is_token_checked_and_may_be_repeated() {
        let (mut store, mut fence) = (Store::default(), 1);
        acquired(&mut store, 0, A, &mut fence);
        assert!(!store.complete(0, &Guards::ALL, FP, B, response(B)).done);
        let first = store.complete(0, &Guards::ALL, FP, A, response(A));
        assert!(first.done && first.wrote);
        let repeat = store.complete(1, &Guards::ALL, FP, A, response(A));
        assert!(
            repeat.done && repeat.wrote,
            "a repeat succeeds and writes (its expiry), so that WAIT covers it"
        );
        assert!(!store.complete(1, &Guards::ALL, FP, B, response(B)).done);
        assert!(!store.release(1, A), "a completed record is never released");
    }

    #[test]
    fn without_the_token_check_complete_lands_on_another_holders_lease() {
        let (mut store, mut fence) = (Store::default(), 1);
        acquired(&mut store, 0, B, &mut fence);
        let guards = Guards {
            complete_checks_token: false,
            ..Guards::ALL
        };
        let completion = store.complete(0, &guards, FP, A, response(A));
        assert!(completion.done && completion.over_another_holder);
    }

    #[test]
    fn renew_and_release_are_token_checked() {
        let (mut store, mut fence) = (Store::default(), 1);
        acquired(&mut store, 0, A, &mut fence);
        assert!(!store.renew(1, LEASE, &Guards::ALL, B));
        assert!(store.renew(1, LEASE, &Guards::ALL, A));
        store.expire(2);
        assert_eq!(store.lock(2), Some(A), "renewed to tick 3");
        assert!(!store.release(2, B));
        assert!(store.release(2, A));
        assert_eq!(store.primary, None);
    }

    #[test]
    fn failover_promotes_what_the_replica_had() {
        let (mut store, mut fence) = (Store::default(), 1);
        acquired(&mut store, 0, A, &mut fence);
        store.replicate();
        assert!(store.complete(0, &Guards::ALL, FP, A, response(A)).done);
        store.failover();
        assert_eq!(
            store.lock(0),
            Some(A),
            "the completion had not reached the replica"
        );
        assert_eq!(store.replica, store.primary);
    }
}
