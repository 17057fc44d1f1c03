//! Lowercase hex encoding, too small to be worth a dependency.

use std::fmt;

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// A 32-byte digest as 64 lowercase hex digits, built without allocating: store keys are
/// written once per store call.
#[derive(Clone, Copy)]
pub(crate) struct Hex32([u8; 64]);

impl Hex32 {
    pub(crate) fn new(bytes: &[u8; 32]) -> Self {
        let mut out = [0u8; 64];
        for (pair, &b) in out.chunks_exact_mut(2).zip(bytes) {
            pair[0] = DIGITS[usize::from(b >> 4)];
            pair[1] = DIGITS[usize::from(b & 0x0f)];
        }
        Self(out)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }

    pub(crate) fn as_str(&self) -> &str {
        // Hex digits are ASCII.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

/// The 32 bytes that 64 hex digits (either case) stand for.
#[cfg(any(feature = "redis", feature = "postgres"))]
pub(crate) fn decode32(digits: &[u8]) -> Option<[u8; 32]> {
    fn value(digit: u8) -> Option<u8> {
        char::from(digit)
            .to_digit(16)
            .and_then(|v| u8::try_from(v).ok())
    }
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(out)
}

impl fmt::Display for Hex32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Hex32;

    #[test]
    fn encodes_every_byte_as_two_lowercase_digits() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        let expected: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(Hex32::new(&bytes).as_str(), expected);
        assert_eq!(Hex32::new(&bytes).as_bytes(), expected.as_bytes());
    }

    #[cfg(any(feature = "redis", feature = "postgres"))]
    #[test]
    fn decodes_what_it_encodes_and_nothing_else() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(super::decode32(Hex32::new(&bytes).as_bytes()), Some(bytes));
        assert_eq!(super::decode32(&[b'a'; 63]), None);
        assert_eq!(super::decode32(&[b'g'; 64]), None);
    }
}
