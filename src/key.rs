//! Reading the `Idempotency-Key` header.
//!
//! The IETF draft defines the value as a structured-field string (`"8e03978e-..."`); many clients
//! send a bare token instead. Both are accepted and mean the same key.

use std::fmt;

use http::{request::Parts, HeaderMap, HeaderName};

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
    /// The field that holds the key is neither a string nor an integer.
    NotText,
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
            Self::NotText => "the idempotency key must be a string or an integer",
        }
    }
}

/// Finds a request's idempotency key somewhere other than the key header: another field of the
/// head, or the buffered body (an event id in a webhook's JSON, say). Implemented for closures;
/// see [`IdempotencyLayer::with_key`](crate::IdempotencyLayer::with_key).
///
/// ```
/// use tower_idempotency::{IdempotencyKey, IdempotencyLayer, MemoryStore};
///
/// // GitHub names each webhook delivery in `X-GitHub-Delivery`.
/// let layer = IdempotencyLayer::new(MemoryStore::new()).with_key(|parts: &http::request::Parts, _body: &[u8]| {
///     parts.headers.get("x-github-delivery").map(|v| IdempotencyKey::parse(v.as_bytes())).transpose()
/// });
/// ```
pub trait MakeKey: Send + Sync + 'static {
    /// The key of one covered request, from its head and its buffered body; `Ok(None)` when it
    /// has none. Every key must be what [`IdempotencyKey::parse`] accepts.
    fn key(&self, parts: &Parts, body: &[u8]) -> Result<Option<IdempotencyKey>, InvalidKey>;
}

impl<F> MakeKey for F
where
    F: Fn(&Parts, &[u8]) -> Result<Option<IdempotencyKey>, InvalidKey> + Send + Sync + 'static,
{
    fn key(&self, parts: &Parts, body: &[u8]) -> Result<Option<IdempotencyKey>, InvalidKey> {
        self(parts, body)
    }
}

/// The key is a field of the JSON body, named by a JSON pointer (RFC 6901): a Stripe event's
/// `/id`, say. A string or an integer; a body that is not JSON, or lacks the field, has no key.
///
/// ```
/// use tower_idempotency::{IdempotencyLayer, JsonKey, MemoryStore};
///
/// let layer = IdempotencyLayer::new(MemoryStore::new()).with_key(JsonKey::pointer("/id"));
/// ```
#[cfg(feature = "json")]
#[cfg_attr(docsrs, doc(cfg(feature = "json")))]
#[derive(Debug, Clone)]
pub struct JsonKey {
    pointer: String,
}

#[cfg(feature = "json")]
impl JsonKey {
    /// The field `pointer` names (`/id`, `/data/object/id`).
    pub fn pointer(pointer: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
        }
    }
}

#[cfg(feature = "json")]
impl MakeKey for JsonKey {
    fn key(&self, _parts: &Parts, body: &[u8]) -> Result<Option<IdempotencyKey>, InvalidKey> {
        let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) else {
            return Ok(None);
        };
        match json.pointer(&self.pointer) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(text)) => parse(text.as_bytes()).map(Some),
            Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => {
                parse(n.to_string().as_bytes()).map(Some)
            }
            Some(_) => Err(InvalidKey::NotText),
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
