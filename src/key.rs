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

/// Why a key header was refused (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyError {
    Repeated,
    Empty,
    TooLong,
    NotVisibleAscii,
    BadQuoting,
}

impl KeyError {
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
) -> Result<Option<IdempotencyKey>, KeyError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(KeyError::Repeated);
    }
    parse(value.as_bytes()).map(Some)
}

fn parse(raw: &[u8]) -> Result<IdempotencyKey, KeyError> {
    let raw = trim_ows(raw);
    let key = match raw {
        [b'"', inner @ ..] => unquote(inner)?,
        _ => {
            if !raw.iter().all(|&b| is_visible(b) && b != b'"') {
                return Err(KeyError::NotVisibleAscii);
            }
            raw.to_vec()
        }
    };
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    // Only ASCII bytes got this far.
    String::from_utf8(key)
        .map(IdempotencyKey)
        .map_err(|_| KeyError::NotVisibleAscii)
}

/// RFC 8941 sf-string after its opening quote: printable ASCII, `\"` and `\\` escapes.
fn unquote(inner: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut out = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&b) = bytes.next() {
        match b {
            b'"' => {
                return if bytes.next().is_none() {
                    Ok(out)
                } else {
                    Err(KeyError::BadQuoting)
                };
            }
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => out.push(escaped),
                _ => return Err(KeyError::BadQuoting),
            },
            b' ' => out.push(b),
            _ if is_visible(b) => out.push(b),
            _ => return Err(KeyError::NotVisibleAscii),
        }
    }
    Err(KeyError::BadQuoting)
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

    fn key(raw: &[u8]) -> Result<String, KeyError> {
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
        assert_eq!(key(b""), Err(KeyError::Empty));
        assert_eq!(key(b"\"\""), Err(KeyError::Empty));
        assert_eq!(key(&[b'a'; 256]), Err(KeyError::TooLong));
        assert!(key(&[b'a'; 255]).is_ok());
        assert_eq!(key(b"a b"), Err(KeyError::NotVisibleAscii));
        assert_eq!(key(b"a\x01b"), Err(KeyError::NotVisibleAscii));
        assert_eq!(key("ключ".as_bytes()), Err(KeyError::NotVisibleAscii));
        assert_eq!(key(b"\"a\x7fb\""), Err(KeyError::NotVisibleAscii));
    }

    #[test]
    fn refuses_broken_quoting() {
        assert_eq!(key(b"\"abc"), Err(KeyError::BadQuoting));
        assert_eq!(key(b"\"abc\"x"), Err(KeyError::BadQuoting));
        assert_eq!(key(b"\"a\\nb\""), Err(KeyError::BadQuoting));
        assert_eq!(key(b"ab\"c"), Err(KeyError::NotVisibleAscii));
    }

    #[test]
    fn a_repeated_header_is_refused() {
        let name = HeaderName::from_static("idempotency-key");
        let mut headers = HeaderMap::new();
        assert_eq!(extract(&headers, &name), Ok(None));
        headers.append(&name, "a".parse().unwrap());
        assert!(extract(&headers, &name).unwrap().is_some());
        headers.append(&name, "b".parse().unwrap());
        assert_eq!(extract(&headers, &name), Err(KeyError::Repeated));
    }
}
