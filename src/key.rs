//! Reading the `Idempotency-Key` header.
//!
//! The IETF draft defines the value as a structured-field string (`"8e03978e-..."`); many clients
//! send a bare token instead. Both are accepted and mean the same key.

use std::fmt;

use http::{HeaderMap, HeaderName};

/// The longest key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 255;

/// A client's idempotency key, validated; put in the request's extensions for the handler.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses a header value: a structured-field string (`"abc"`) or a bare token, 1 to 255
    /// bytes of visible ASCII once unquoted.
    ///
    /// ```
    /// use tower_idempotency::IdempotencyKey;
    ///
    /// assert_eq!(IdempotencyKey::parse(b"\"order-1\"").unwrap().as_str(), "order-1");
    /// assert!(IdempotencyKey::parse(b"").is_err());
    /// ```
    pub fn parse(value: &[u8]) -> Result<Self, InvalidKey> {
        parse(value)
    }

    /// The key's text, unquoted.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyKey").field(&self.0).finish()
    }
}

/// Why a key was refused; the layer answers it with a 400 `key-invalid` problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidKey {
    /// The header appears more than once.
    Repeated,
    /// The key is empty.
    Empty,
    /// The key is longer than [`MAX_KEY_LEN`] bytes.
    TooLong,
    /// The key has a byte outside visible ASCII (spaces are allowed only inside quotes).
    NotVisibleAscii,
    /// The key starts with a quote but is not a valid structured-field string.
    BadQuoting,
}

impl fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.detail())
    }
}

impl std::error::Error for InvalidKey {}

impl InvalidKey {
    pub(crate) fn detail(self) -> &'static str {
        match self {
            Self::Repeated => "the idempotency key header must appear once",
            Self::Empty => "the idempotency key must not be empty",
            Self::TooLong => "the idempotency key must be at most 255 bytes",
            Self::NotVisibleAscii => "the idempotency key must be visible ASCII",
            Self::BadQuoting => "the idempotency key is not a valid structured-field string",
        }
    }
}

/// Finds and validates the key; `Ok(None)` when the header is absent.
pub(crate) fn extract(
    headers: &HeaderMap,
    name: &HeaderName,
) -> Result<Option<IdempotencyKey>, InvalidKey> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(InvalidKey::Repeated);
    }
    parse(value.as_bytes()).map(Some)
}

fn parse(raw: &[u8]) -> Result<IdempotencyKey, InvalidKey> {
    let raw = trim_ows(raw);
    let key = match raw {
        [b'"', inner @ ..] => unquote(inner)?,
        _ => {
            if !raw.iter().all(|&b| is_visible(b) && b != b'"') {
                return Err(InvalidKey::NotVisibleAscii);
            }
            raw.to_vec()
        }
    };
    if key.is_empty() {
        return Err(InvalidKey::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(InvalidKey::TooLong);
    }
    // Only ASCII bytes got this far.
    String::from_utf8(key)
        .map(IdempotencyKey)
        .map_err(|_| InvalidKey::NotVisibleAscii)
}

/// RFC 8941 sf-string after its opening quote: printable ASCII, `\"` and `\\` escapes.
fn unquote(inner: &[u8]) -> Result<Vec<u8>, InvalidKey> {
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'"' => {
                return if bytes.next().is_none() {
                    Ok(out)
                } else {
                    Err(InvalidKey::BadQuoting)
                };
            }
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => out.push(escaped),
                _ => return Err(InvalidKey::BadQuoting),
            },
            b' ' => out.push(b),
            _ if is_visible(b) => out.push(b),
            _ => return Err(InvalidKey::NotVisibleAscii),
        }
    }
    Err(InvalidKey::BadQuoting)
}

fn is_visible(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

fn trim_ows(mut raw: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = raw {
        raw = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = raw {
        raw = rest;
    }
    raw
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(raw: &[u8]) -> Result<String, InvalidKey> {
        parse(raw).map(|k| k.0)
    }

    #[test]
    fn quoted_and_bare_forms_mean_the_same_key() {
        assert_eq!(key(b"\"abc-123\"").unwrap(), "abc-123");
        assert_eq!(key(b"abc-123").unwrap(), "abc-123");
        assert_eq!(key(b" abc ").unwrap(), "abc");
        assert_eq!(key(br#""a \"q\" \\ b""#).unwrap(), r#"a "q" \ b"#);
    }

    #[test]
    fn refuses_empty_long_and_invisible_keys() {
        assert_eq!(key(b""), Err(InvalidKey::Empty));
        assert_eq!(key(b"\"\""), Err(InvalidKey::Empty));
        assert_eq!(key(&[b'a'; 256]), Err(InvalidKey::TooLong));
        assert!(key(&[b'a'; 255]).is_ok());
        assert_eq!(key(b"a b"), Err(InvalidKey::NotVisibleAscii));
        assert_eq!(key(b"a\x01b"), Err(InvalidKey::NotVisibleAscii));
        assert_eq!(key("ключ".as_bytes()), Err(InvalidKey::NotVisibleAscii));
        assert_eq!(key(b"\"a\x7fb\""), Err(InvalidKey::NotVisibleAscii));
    }

    #[test]
    fn refuses_broken_quoting() {
        assert_eq!(key(b"\"abc"), Err(InvalidKey::BadQuoting));
        assert_eq!(key(b"\"abc\"x"), Err(InvalidKey::BadQuoting));
        assert_eq!(key(b"\"a\\nb\""), Err(InvalidKey::BadQuoting));
        assert_eq!(key(b"ab\"c"), Err(InvalidKey::NotVisibleAscii));
    }

    #[test]
    fn a_repeated_header_is_refused() {
        let name = HeaderName::from_static("idempotency-key");
        let mut headers = HeaderMap::new();
        assert_eq!(extract(&headers, &name), Ok(None));
        headers.append(&name, "a".parse().unwrap());
        assert!(extract(&headers, &name).unwrap().is_some());
        headers.append(&name, "b".parse().unwrap());
        assert_eq!(extract(&headers, &name), Err(InvalidKey::Repeated));
    }
}
