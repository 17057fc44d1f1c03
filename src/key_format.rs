//! Key formats a route can insist on.
//!
//! The IETF draft names low-entropy keys as a data-leak risk: a key another client can guess
//! lets it collide with (or, unscoped, replay) someone else's request. Insisting on a format
//! with enough randomness turns a client's `counter++` key into a clear 400 at once.

use std::fmt;

use crate::key::IdempotencyKey;

/// The shape every idempotency key must have; a key that does not match is refused with 400,
/// the expected format named in the problem's `detail`.
///
/// ```
/// use tower_idempotency::{IdempotencyLayer, KeyFormat, MemoryStore};
///
/// // UUIDs of any version (v4 and v7 are what most clients mint).
/// let layer = IdempotencyLayer::new(MemoryStore::new()).with_key_format(KeyFormat::Uuid);
/// // Or at least 22 URL-safe characters (128 random bits in base64url).
/// let layer = IdempotencyLayer::new(MemoryStore::new())
///     .with_key_format(KeyFormat::min_length(22, KeyFormat::BASE64URL));
/// assert!(KeyFormat::Uuid.matches("0191d6c2-7a8e-7c4f-9a1b-3c5d7e9f1a2b"));
/// assert!(!KeyFormat::Uuid.matches("order-1"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum KeyFormat {
    /// Any key the IETF draft allows: 1 to 255 bytes of visible ASCII (the default).
    #[default]
    Any,
    /// An RFC 9562 UUID of any version (1 to 8) in its hyphenated form (8-4-4-4-12 hex
    /// digits, either case). The nil and max UUIDs, and hex strings whose version and variant
    /// bits are not a UUID's, are refused: they are what hand-made counters look like.
    Uuid,
    /// A ULID: 26 characters of Crockford's base32, either case.
    Ulid,
    /// At least `min_len` characters, each one of `alphabet`'s.
    Alphabet {
        /// The fewest characters a key may have.
        min_len: usize,
        /// Every character a key may use.
        alphabet: &'static str,
    },
}

impl KeyFormat {
    /// The base64url alphabet (RFC 4648 section 5): letters, digits, `-` and `_`.
    pub const BASE64URL: &'static str =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    /// [`KeyFormat::Alphabet`]: at least `min_len` characters from `alphabet`.
    pub const fn min_length(min_len: usize, alphabet: &'static str) -> Self {
        Self::Alphabet { min_len, alphabet }
    }

    /// Whether `key` has this format.
    pub fn matches(&self, key: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Uuid => is_uuid(key.as_bytes()),
            Self::Ulid => is_ulid(key.as_bytes()),
            Self::Alphabet { min_len, alphabet } => {
                key.len() >= *min_len && key.bytes().all(|b| alphabet.as_bytes().contains(&b))
            }
        }
    }

    /// Checks a parsed key: `Err` carries the format, for the 400's detail.
    pub(crate) fn check(&self, key: &IdempotencyKey) -> Result<(), KeyFormat> {
        if self.matches(key.as_str()) {
            Ok(())
        } else {
            Err(*self)
        }
    }
}

impl fmt::Display for KeyFormat {
    /// What a client is told it must send.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("1 to 255 visible ASCII characters"),
            Self::Uuid => f.write_str("a UUID, such as 0191d6c2-7a8e-7c4f-9a1b-3c5d7e9f1a2b"),
            Self::Ulid => f.write_str("a ULID, 26 characters of Crockford's base32"),
            Self::Alphabet { min_len, alphabet } => {
                write!(f, "at least {min_len} characters from \"{alphabet}\"")
            }
        }
    }
}

fn is_uuid(key: &[u8]) -> bool {
    let shaped = key.len() == 36
        && key.iter().enumerate().all(|(i, &b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    // The version is the first digit of the third group, the variant the top bits of the
    // fourth's: RFC 9562 UUIDs have versions 1 to 8 and variant 10xx (digits 8, 9, a, b).
    shaped
        && matches!(key[14], b'1'..=b'8')
        && matches!(key[19].to_ascii_lowercase(), b'8' | b'9' | b'a' | b'b')
}

fn is_ulid(key: &[u8]) -> bool {
    // 26 base32 digits hold 130 bits; a ULID has 128, so the first digit is at most 7.
    const CROCKFORD: &[u8] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    key.len() == 26
        && key[0] <= b'7'
        && key
            .iter()
            .all(|b| CROCKFORD.contains(&b.to_ascii_uppercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_of_any_version_in_either_case() {
        for key in [
            "550e8400-e29b-41d4-a716-446655440000",
            "0191D6C2-7A8E-7C4F-9A1B-3C5D7E9F1A2B",
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        ] {
            assert!(KeyFormat::Uuid.matches(key), "{key}");
        }
        for counter_like in [
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "00000000-0000-0000-0000-000000000001",
            "550e8400-e29b-91d4-a716-446655440000",
            "550e8400-e29b-41d4-c716-446655440000",
        ] {
            assert!(!KeyFormat::Uuid.matches(counter_like), "{counter_like}");
        }
        for key in [
            "550e8400e29b41d4a716446655440000",
            "550e8400-e29b-41d4-a716-44665544000",
            "550e8400-e29b-41d4-a716-4466554400000",
            "550e8400-e29b-41d4-a716_446655440000",
            "g50e8400-e29b-41d4-a716-446655440000",
            "{550e8400-e29b-41d4-a716-446655440000}",
        ] {
            assert!(!KeyFormat::Uuid.matches(key), "{key}");
        }
    }

    #[test]
    fn ulids() {
        assert!(KeyFormat::Ulid.matches("01ARZ3NDEKTSV4RRFFQ69G5FAV"));
        assert!(KeyFormat::Ulid.matches("01arz3ndektsv4rrffq69g5fav"));
        assert!(KeyFormat::Ulid.matches("7ZZZZZZZZZZZZZZZZZZZZZZZZZ"));
        assert!(
            !KeyFormat::Ulid.matches("8ZZZZZZZZZZZZZZZZZZZZZZZZZ"),
            "over 128 bits"
        );
        assert!(
            !KeyFormat::Ulid.matches("01ARZ3NDEKTSV4RRFFQ69G5FAU"),
            "no U in base32"
        );
        assert!(!KeyFormat::Ulid.matches("01ARZ3NDEKTSV4RRFFQ69G5FA"));
    }

    #[test]
    fn a_minimum_length_over_an_alphabet() {
        let format = KeyFormat::min_length(4, KeyFormat::BASE64URL);
        assert!(format.matches("ab-_"));
        assert!(format.matches("abcdefgh"));
        assert!(!format.matches("abc"));
        assert!(!format.matches("ab+/"));
        assert!(KeyFormat::Any.matches("x"));
    }

    #[test]
    fn the_description_names_what_to_send() {
        assert_eq!(
            KeyFormat::min_length(22, "ab").to_string(),
            "at least 22 characters from \"ab\""
        );
        assert!(KeyFormat::Uuid.to_string().starts_with("a UUID"));
    }
}
