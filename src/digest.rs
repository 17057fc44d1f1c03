//! Digests of several parts: each part length-prefixed, so that no two different lists of
//! parts hash the same input (`"ab" + "c"` is not `"a" + "bc"`).

use sha2::{Digest, Sha256};

/// Feeds `bytes` to `hasher`, its length first.
pub(crate) fn update_prefixed(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}
