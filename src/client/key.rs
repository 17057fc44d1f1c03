//! Minting idempotency keys: UUID version 4 text, from 128 random bits.

use http::{HeaderMap, HeaderName, HeaderValue};

use super::random;

/// A fresh idempotency key: a random (version 4) UUID in its hyphenated lowercase form, such as
/// `9f8b3c1e-5d2a-4e7f-8a6b-0c1d2e3f4a5b`.
///
/// 122 of its bits are random (the other 6 say "version 4"), from the operating system's random
/// source, so keys cannot be guessed and never collide in practice; servers that require UUID
/// keys (`KeyFormat::Uuid` on the server side) accept them.
///
/// The layer mints one per call by itself. Mint your own when a caller must keep the key past
/// the call, to try the same operation again later after an error:
///
/// ```
/// use tower_idempotency::client::mint_key;
///
/// let key = mint_key();
/// assert_eq!(key.len(), 36);
/// assert_eq!(key.to_str().unwrap().as_bytes()[14], b'4');
/// assert_ne!(key, mint_key());
/// ```
pub fn mint_key() -> HeaderValue {
    let mut bytes = [0u8; 16];
    random::fill(&mut bytes);
    HeaderValue::from_str(&uuid_v4(bytes)).expect("hex digits and hyphens are a valid header")
}

/// The request's key: the caller's own when it set one, else a fresh one, added to `headers`.
pub(crate) fn ensure(headers: &mut HeaderMap, name: &HeaderName) -> HeaderValue {
    headers.entry(name).or_insert_with(mint_key).clone()
}

/// Formats 16 random bytes as a version 4, RFC 9562 variant UUID.
fn uuid_v4(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        text.push(HEX[usize::from(byte >> 4)] as char);
        text.push(HEX[usize::from(byte & 0x0f)] as char);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KeyFormat;

    #[test]
    fn uuid_v4_sets_the_version_and_variant_bits() {
        assert_eq!(uuid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
        assert_eq!(uuid_v4([0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(
            uuid_v4(*b"\x01\x23\x45\x67\x89\xab\xcd\xef\x01\x23\x45\x67\x89\xab\xcd\xef"),
            "01234567-89ab-4def-8123-456789abcdef"
        );
    }

    #[test]
    fn a_key_the_caller_set_is_kept() {
        let name = HeaderName::from_static("idempotency-key");
        let mut headers = HeaderMap::new();
        headers.insert(&name, HeaderValue::from_static("mine"));
        assert_eq!(ensure(&mut headers, &name), "mine");
        assert_eq!(headers.len(), 1);

        let mut headers = HeaderMap::new();
        let minted = ensure(&mut headers, &name);
        assert_eq!(headers[&name], minted);
        assert_eq!(minted.len(), 36);
    }

    #[test]
    fn minted_keys_are_uuids_the_server_accepts_and_never_repeat() {
        let keys: std::collections::HashSet<_> = (0..1000).map(|_| mint_key()).collect();
        assert_eq!(keys.len(), 1000);
        for key in &keys {
            let text = key.to_str().unwrap();
            assert!(KeyFormat::Uuid.matches(text), "{text}");
            assert_eq!(
                crate::IdempotencyKey::parse(key.as_bytes())
                    .unwrap()
                    .as_str(),
                text
            );
        }
    }
}
