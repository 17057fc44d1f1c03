use std::{
    fmt,
    hash::{BuildHasher, RandomState},
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
    time::{SystemTime, UNIX_EPOCH},
};

/// A secret the request that acquired a record chose; only its holder may complete, release or
/// renew that record.
///
/// 64 random bits drawn once per process, then a process-wide counter: unique across requests
/// and, but for a 2^-64 chance, across processes, which is all a lock token needs to be. It is
/// never shown to clients, so it need not be unguessable.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(u128);

impl LeaseToken {
    /// A fresh token, different from every other one this process and its peers make.
    pub fn generate() -> Self {
        static PROCESS: OnceLock<u64> = OnceLock::new();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let process = *PROCESS.get_or_init(|| {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            RandomState::new().hash_one((nanos, std::process::id()))
        });
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        Self((u128::from(process) << 64) | u128::from(count))
    }

    /// Rebuilds a token a store kept.
    pub const fn from_u128(value: u128) -> Self {
        Self(value)
    }

    /// The token's value.
    pub const fn as_u128(&self) -> u128 {
        self.0
    }

    /// The token as 16 big-endian bytes, for stores that keep it as a string.
    pub const fn to_bytes(&self) -> [u8; 16] {
        self.0.to_be_bytes()
    }
}

impl fmt::Debug for LeaseToken {
    // A lock token is a capability: keep it out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LeaseToken(..)")
    }
}

/// A number that grows with every acquisition of the same key, put in the request's extensions.
///
/// A handler can pass it to its own database and refuse writes carrying a smaller token than one
/// already seen: a request that lost its lease (a long pause, a partition) and woke up after
/// another took over then cannot land a stale write after the newer one. (It cannot undo a
/// stale write that landed first: the newer holder's write is accepted too.)
///
/// ```
/// use tower_idempotency::FencingToken;
///
/// fn handler(req: http::Request<()>) {
///     if let Some(token) = req.extensions().get::<FencingToken>() {
///         // e.g. UPDATE orders SET ..., fence = $token WHERE id = $id AND fence <= $token
///         let _ = token.get();
///     }
/// }
/// # handler(http::Request::new(()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a value a store handed out.
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The token's value.
    pub const fn get(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn tokens_are_unique() {
        let tokens: HashSet<_> = (0..10_000).map(|_| LeaseToken::generate()).collect();
        assert_eq!(tokens.len(), 10_000);
    }
}
