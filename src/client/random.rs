//! Random bytes from the operating system, for keys and for jitter.

use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

/// Fills `buf` from the OS's random source.
///
/// That source failing is all but unheard of on the platforms tokio runs on, and a failed key
/// must not fail the call: then the bytes come from std's `RandomState` (itself seeded from the
/// OS once per thread) over a process-wide counter and the clock, which still makes every key
/// of this process distinct and hard to guess.
pub(crate) fn fill(buf: &mut [u8]) {
    if getrandom::fill(buf).is_err() {
        fallback(buf);
    }
}

/// A random `u64`, for jitter.
pub(crate) fn u64() -> u64 {
    let mut bytes = [0; 8];
    fill(&mut bytes);
    u64::from_le_bytes(bytes)
}

fn fallback(buf: &mut [u8]) {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for chunk in buf.chunks_mut(8) {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_u128(nanos);
        chunk.copy_from_slice(&hasher.finish().to_le_bytes()[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fallback_fills_every_byte_and_never_repeats() {
        let mut a = [0u8; 16];
        let mut b = [0u8; 16];
        fallback(&mut a);
        fallback(&mut b);
        assert_ne!(a, b);
        assert_ne!(a, [0; 16]);
    }
}
