use std::fmt;

use sha2::{Digest, Sha256};

use crate::{digest::update_prefixed, hex::Hex32};

/// The name of one idempotency record: a SHA-256 over the scope, method, path and key.
///
/// Hashing keeps the client's raw key text out of store keys, so no key can escape a prefix,
/// break a Redis Cluster hash tag, or collide across scopes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoreKey([u8; 32]);

impl StoreKey {
    /// Derives the key for one (scope, method, path, idempotency key) tuple.
    ///
    /// Each part is length-prefixed, so no two different tuples hash the same input.
    pub fn derive(scope: Option<&[u8]>, method: &str, path: &str, key: &str) -> Self {
        let mut hasher = Sha256::new();
        match scope {
            Some(scope) => {
                hasher.update([1]);
                update_prefixed(&mut hasher, scope);
            }
            None => hasher.update([0]),
        }
        update_prefixed(&mut hasher, method.as_bytes());
        update_prefixed(&mut hasher, path.as_bytes());
        update_prefixed(&mut hasher, key.as_bytes());
        Self(hasher.finalize().into())
    }

    /// Wraps 32 bytes, for stores that read keys back from their backend.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest as 64 lowercase hex digits, safe in any store's key syntax.
    pub fn to_hex(&self) -> String {
        self.hex().as_str().to_owned()
    }

    /// [`to_hex`](Self::to_hex) without the allocation.
    pub(crate) fn hex(&self) -> Hex32 {
        Hex32::new(&self.0)
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKey({})", self.to_hex())
    }
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.hex().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_length_prefixed() {
        let a = StoreKey::derive(None, "POST", "/ab", "c");
        let b = StoreKey::derive(None, "POST", "/a", "bc");
        assert_ne!(a, b);
    }

    #[test]
    fn scopes_never_share_keys() {
        let none = StoreKey::derive(None, "POST", "/o", "k");
        let empty = StoreKey::derive(Some(b""), "POST", "/o", "k");
        let t1 = StoreKey::derive(Some(b"tenant-1"), "POST", "/o", "k");
        let t2 = StoreKey::derive(Some(b"tenant-2"), "POST", "/o", "k");
        assert_ne!(none, empty);
        assert_ne!(t1, t2);
        assert_ne!(none, t1);
    }

    #[test]
    fn hex_is_64_lowercase_digits() {
        let hex = StoreKey::derive(None, "POST", "/o", "{evil}:key").to_hex();
        assert_eq!(hex.len(), 64);
        assert!(hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }
}
