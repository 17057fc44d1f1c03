use std::{error::Error, fmt};

use crate::response::DecodeError;

type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Why a store call failed.
///
/// The layer answers [`StoreError::Corrupt`] with 500 and every other kind with 503 and
/// `Retry-After` (or lets the request through unguarded when fail-open is on).
#[derive(Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// The backend could not be reached or answered with an error.
    Backend(BoxError),
    /// The call did not finish within the layer's store timeout.
    Timeout,
    /// A stored record could not be decoded.
    Corrupt(DecodeError),
    /// The store is full of live records and will not evict one.
    Capacity,
    /// A write reached fewer replicas than the store was asked to wait for, so a failover could
    /// lose it (see `RedisStore::with_replica_acks`).
    Unreplicated {
        /// Replicas that confirmed the write in time.
        acked: u64,
        /// Replicas the store waits for.
        wanted: u32,
    },
}

impl StoreError {
    /// Wraps any backend error.
    pub fn backend(error: impl Into<BoxError>) -> Self {
        Self::Backend(error.into())
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Backend(e) => write!(f, "idempotency store backend error: {e}"),
            Self::Timeout => f.write_str("idempotency store call timed out"),
            Self::Corrupt(e) => write!(f, "idempotency record is corrupt: {e}"),
            Self::Capacity => f.write_str("idempotency store is full of live records"),
            Self::Unreplicated { acked, wanted } => write!(
                f,
                "idempotency store write reached {acked} of {wanted} replicas in time"
            ),
        }
    }
}

impl Error for StoreError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Backend(e) => Some(e.as_ref()),
            Self::Corrupt(e) => Some(e),
            Self::Timeout | Self::Capacity | Self::Unreplicated { .. } => None,
        }
    }
}

impl From<DecodeError> for StoreError {
    fn from(e: DecodeError) -> Self {
        Self::Corrupt(e)
    }
}

/// A store that could not be reached while it was set up, named with its address, so that the
/// error says which server to start or which URL to fix.
#[cfg(feature = "redis")]
#[derive(Debug)]
pub(crate) struct Unreachable {
    pub(crate) store: &'static str,
    pub(crate) addr: String,
    pub(crate) source: BoxError,
}

#[cfg(feature = "redis")]
impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "could not connect to {} at {}: {}",
            self.store, self.addr, self.source
        )
    }
}

#[cfg(feature = "redis")]
impl Error for Unreachable {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self.source.as_ref())
    }
}
