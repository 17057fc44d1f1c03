//! The locks and atomics that `MemoryStore` and the waiters' hub share state with: std's, or,
//! built with `RUSTFLAGS="--cfg shuttle"`, the `shuttle` concurrency checker's, so that
//! `tests/shuttle.rs` can explore their interleavings. One place, so no lock escapes the check.

#[cfg(not(shuttle))]
pub(crate) use std::sync::{Mutex, MutexGuard};

#[cfg(shuttle)]
pub(crate) use shuttle::sync::{Mutex, MutexGuard};

/// The fencing counter of `MemoryStore`.
#[cfg(all(feature = "memory", not(shuttle)))]
pub(crate) use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(all(feature = "memory", shuttle))]
pub(crate) use shuttle::sync::atomic::{AtomicU64, Ordering};
