//! The storage contract the layer drives, and the stores that ship with the crate.
//!
//! A store keeps one record per [`StoreKey`]. A record is either *in progress* (a request holds a
//! lease on it) or *completed* (it holds a [`CompletedRecord`] until its TTL runs out). The layer
//! calls [`IdempotencyStore::begin`] once per covered request, and then exactly one of
//! [`complete`](IdempotencyStore::complete) or [`release`](IdempotencyStore::release), with
//! [`renew`](IdempotencyStore::renew) in between while a slow handler runs.
//!
//! Every call after `begin` carries the [`LeaseToken`] the request chose, and a store must refuse it
//! unless the in-progress record still carries that same token: a request whose lease ran out must
//! never overwrite or delete a record that now belongs to someone else.

use std::{fmt, future::Future, time::Duration};

use crate::{fingerprint::Fingerprint, response::CompletedRecord};

mod dynamic;
mod error;
mod eviction;
pub(crate) mod key;
mod token;
mod watch;

#[cfg(feature = "memory")]
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "postgres")]
mod postgres_schema;
#[cfg(feature = "postgres")]
mod postgres_watch;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod redis_lanes;
#[cfg(feature = "redis")]
mod redis_watch;
mod replay_cache;
mod tiered;

pub use dynamic::DynStore;
pub use error::StoreError;
pub use key::StoreKey;
pub use replay_cache::ReplayCache;
pub use tiered::TieredStore;
pub use token::{FencingToken, LeaseToken};
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) use watch::Health;
#[cfg(any(feature = "memory", feature = "redis", feature = "postgres"))]
pub(crate) use watch::KeyHub;
pub use watch::{KeyWatch, WatchKeys};

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisStore;
#[cfg(feature = "memory")]
#[cfg_attr(docsrs, doc(cfg(feature = "memory")))]
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::{PostgresStore, MIGRATION, MIGRATIONS};

/// What [`IdempotencyStore::begin`] found, decided in one atomic step.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)] // returned once per request, never stored
pub enum BeginOutcome {
    /// No record existed; an in-progress record holding the caller's lease token now does.
    Acquired {
        /// Grows with every acquisition of the same key; see [`FencingToken`].
        fencing_token: FencingToken,
    },
    /// A completed record with the same fingerprint exists: replay it.
    Completed {
        /// What the first request produced.
        record: CompletedRecord,
        /// How long the store keeps the record from now, when it knows (see
        /// [`IdempotencyStore::begin_with_expiry`]); caches must not keep it longer.
        expires_in: Option<Duration>,
    },
    /// Another request holds the lease on this key.
    InProgress {
        /// How long the current lease still runs, when the store knows it.
        retry_after: Option<Duration>,
    },
    /// A record exists for this key with a different request fingerprint.
    Mismatch,
}

/// A place to keep idempotency records, shared by every instance of the layer that must agree.
///
/// # The contract
///
/// What every store the crate ships does, and what a store written elsewhere must do (the
/// conformance suite in `tests/common/suite.rs` checks each point against every store):
///
/// - [`begin`](Self::begin) is atomic: two concurrent calls for one key never both see
///   [`BeginOutcome::Acquired`].
/// - [`complete`](Self::complete), [`release`](Self::release) and [`renew`](Self::renew) are
///   token-checked: they act only while the record is held with the caller's [`LeaseToken`]. A
///   holder whose lease ran out never overwrites, deletes or extends a record that belongs to
///   someone else now.
/// - The same holder may repeat a call whose reply it lost: `begin` with the same token and
///   fingerprint while it holds the key gets [`BeginOutcome::Acquired`] again, and `complete`
///   with the same token and record after it succeeded succeeds again. (Another holder's
///   `complete` never lands a record of its own; with a byte-identical record, a store may not
///   tell it from a repeat.)
/// - Expiry is honoured on every read: an expired lease or record is as good as absent.
/// - A key reused with another fingerprint is [`BeginOutcome::Mismatch`], while in progress
///   too.
///
/// The layer wraps each call in a timeout, so a store need not add its own. Optional abilities
/// are traits of their own: [`ReplayTier`] for a store that can be a [`TieredStore`]'s fast
/// tier.
///
/// The crate ships [`MemoryStore`] (one process), [`RedisStore`] (many; Redis Cluster with the
/// `redis-cluster` feature), `PostgresStore` (feature `postgres`), and two that wrap others:
/// [`ReplayCache`] (a local replay tier) and [`TieredStore`] (a fast tier over a durable one).
pub trait IdempotencyStore: fmt::Debug + Send + Sync + 'static {
    /// Replays, refuses, or acquires `key` for the caller, atomically.
    ///
    /// On acquisition the record remembers `fingerprint` and `token`, and lives for `lease` unless
    /// renewed or completed.
    fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: &LeaseToken,
        lease: Duration,
    ) -> impl Future<Output = Result<BeginOutcome, StoreError>> + Send;

    /// [`begin`](Self::begin), except that a [`BeginOutcome::Completed`] carries `expires_in`
    /// whenever the store can tell it.
    ///
    /// Caches ([`ReplayCache`], [`TieredStore`]) call this, since they must not keep a record
    /// longer than the store does; the layer calls `begin`, which may leave `expires_in` out
    /// where finding it costs extra (`RedisStore`: a `PTTL` in every replay). The default calls
    /// `begin`. A store that wraps another should forward both, or caches above it stay empty.
    fn begin_with_expiry(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: &LeaseToken,
        lease: Duration,
    ) -> impl Future<Output = Result<BeginOutcome, StoreError>> + Send {
        self.begin(key, fingerprint, token, lease)
    }

    /// Stores `record` for `ttl` in place of the caller's in-progress record.
    ///
    /// `fingerprint` is the one the caller passed to `begin`: stores that keep records in more
    /// than one place (a cache, a second tier) need it to answer later `begin` calls.
    /// Returns `false`, storing nothing, when the record is no longer held with `token`.
    fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        fingerprint: &Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes the caller's in-progress record so that a retry may run again.
    ///
    /// Returns `false`, deleting nothing, when the record is no longer held with `token`.
    fn release(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Extends the caller's lease to `lease` from now.
    ///
    /// Returns `false` when the record is no longer held with `token`: the lease was lost.
    fn renew(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// The ability to serve as a replay tier, the fast tier of a [`TieredStore`]: answer from
/// completed records alone, and keep records that another store completed.
///
/// An ability of its own, not a part of [`IdempotencyStore`] with a default that does nothing:
/// a store that cannot do it cannot be put in front, which the compiler says, instead of a
/// fast tier that silently never fills. [`MemoryStore`], [`RedisStore`] and [`ReplayCache`]
/// have it.
///
/// ```compile_fail,E0277
/// # use std::time::Duration;
/// # use tower_idempotency::{BeginOutcome, CompletedRecord, Fingerprint,
/// #     IdempotencyStore, LeaseToken, MemoryStore, StoreError, StoreKey, TieredStore};
/// /// A store without the ability.
/// #[derive(Debug)]
/// struct Ledger;
/// # impl IdempotencyStore for Ledger {
/// #     async fn begin(&self, _: &StoreKey, _: &Fingerprint, _: &LeaseToken, _: Duration) -> Result<BeginOutcome, StoreError> { unimplemented!() }
/// #     async fn complete(&self, _: &StoreKey, _: &LeaseToken, _: &Fingerprint, _: &CompletedRecord, _: Duration) -> Result<bool, StoreError> { unimplemented!() }
/// #     async fn release(&self, _: &StoreKey, _: &LeaseToken) -> Result<bool, StoreError> { unimplemented!() }
/// #     async fn renew(&self, _: &StoreKey, _: &LeaseToken, _: Duration) -> Result<bool, StoreError> { unimplemented!() }
/// # }
/// fn a_store(_: impl IdempotencyStore) {}
///
/// // Does not compile (E0277): `Ledger` is no `ReplayTier`, so it cannot be the fast tier.
/// a_store(TieredStore::new(Ledger, MemoryStore::new()));
/// ```
///
/// The other way round compiles: any store can be the durable tier.
///
/// ```
/// # use std::time::Duration;
/// # use tower_idempotency::{BeginOutcome, CompletedRecord, Fingerprint,
/// #     IdempotencyStore, LeaseToken, MemoryStore, StoreError, StoreKey, TieredStore};
/// # #[derive(Debug)]
/// # struct Ledger;
/// # impl IdempotencyStore for Ledger {
/// #     async fn begin(&self, _: &StoreKey, _: &Fingerprint, _: &LeaseToken, _: Duration) -> Result<BeginOutcome, StoreError> { unimplemented!() }
/// #     async fn complete(&self, _: &StoreKey, _: &LeaseToken, _: &Fingerprint, _: &CompletedRecord, _: Duration) -> Result<bool, StoreError> { unimplemented!() }
/// #     async fn release(&self, _: &StoreKey, _: &LeaseToken) -> Result<bool, StoreError> { unimplemented!() }
/// #     async fn renew(&self, _: &StoreKey, _: &LeaseToken, _: Duration) -> Result<bool, StoreError> { unimplemented!() }
/// # }
/// # fn a_store(_: impl IdempotencyStore) {}
/// a_store(TieredStore::new(MemoryStore::new(), Ledger));
/// ```
pub trait ReplayTier: IdempotencyStore {
    /// The completed record for `key`, if this store has one, without acquiring anything:
    /// [`BeginOutcome::Completed`] (with `expires_in`) or [`BeginOutcome::Mismatch`], else
    /// `None`.
    fn peek(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
    ) -> impl Future<Output = Result<Option<BeginOutcome>, StoreError>> + Send;

    /// Keeps `record`, which another store completed, for `ttl`, as a cache would; returns
    /// whether it was kept. A key this store holds in progress is left alone.
    fn put_completed(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}
