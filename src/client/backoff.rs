//! Exponential backoff with full jitter.
//!
//! Retry `n` (1 for the first retry) waits a uniformly random time in `[0, min(max, initial *
//! 2^(n-1))]`: the "full jitter" of the AWS Architecture Blog's *Exponential Backoff And
//! Jitter*, which spreads the retries of many clients that failed together (a server restart)
//! instead of sending them back in waves.

use std::time::Duration;

use super::random;

/// The ceiling of retry `retry`'s wait (1-based): `initial` doubled per retry, at most `max`.
pub(crate) fn ceiling(initial: Duration, max: Duration, retry: u32) -> Duration {
    let doublings = retry.saturating_sub(1).min(31);
    initial
        .checked_mul(1 << doublings)
        .map_or(max, |ceiling| ceiling.min(max))
}

/// A random wait in `[0, ceiling]` for retry `retry`.
pub(crate) fn delay(initial: Duration, max: Duration, retry: u32) -> Duration {
    jitter(ceiling(initial, max, retry), random::u64())
}

/// `ceiling` scaled by `random / u64::MAX`.
fn jitter(ceiling: Duration, random: u64) -> Duration {
    let nanos = ceiling.as_nanos().min(u128::from(u64::MAX));
    let scaled = nanos * u128::from(random) / u128::from(u64::MAX);
    Duration::from_nanos(scaled as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_ceiling_doubles_per_retry_up_to_the_max() {
        let ceilings: Vec<_> = (1..=8).map(|n| ceiling(100 * MS, 5000 * MS, n)).collect();
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1600, 3200, 5000, 5000].map(|ms| ms * MS)
        );
        assert_eq!(ceiling(100 * MS, 5000 * MS, u32::MAX), 5000 * MS);
        assert_eq!(ceiling(Duration::MAX, 5000 * MS, 3), 5000 * MS);
    }

    #[test]
    fn full_jitter_spans_zero_to_the_ceiling() {
        assert_eq!(jitter(800 * MS, 0), Duration::ZERO);
        assert_eq!(jitter(800 * MS, u64::MAX), 800 * MS);
        assert_eq!(
            jitter(800 * MS, u64::MAX / 2),
            400 * MS - Duration::from_nanos(1)
        );
        let waits: Vec<_> = (0..200).map(|_| delay(100 * MS, 5000 * MS, 3)).collect();
        assert!(waits.iter().all(|w| *w <= 400 * MS));
        // Spread out, not one value: 200 draws all in one tenth of the range would be a broken RNG.
        assert!(waits.iter().any(|w| *w < 200 * MS) && waits.iter().any(|w| *w > 200 * MS));
    }
}
