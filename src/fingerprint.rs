//! Request fingerprints: what makes a retry "the same request".
//!
//! A key reused with a different payload is refused with 422, so the layer compares a digest of
//! each request against the one stored with the key.

use std::fmt;

use http::{request::Parts, HeaderName};
use sha2::{Digest, Sha256};

use crate::digest::update_prefixed;

/// A SHA-256 digest that identifies a request's content.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Wraps a digest computed elsewhere.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// SHA-256 of `bytes`, for custom fingerprints built from a normalised payload.
    pub fn sha256(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", crate::hex::Hex32::new(&self.0))
    }
}

/// Computes a request's [`Fingerprint`] from its head and buffered body.
///
/// Implemented for closures, so a custom rule is one line:
///
/// ```
/// use tower_idempotency::{Fingerprint, IdempotencyLayer, MemoryStore};
///
/// // Only the body counts: the same payload on another path is "the same request".
/// let layer = IdempotencyLayer::new(MemoryStore::new())
///     .with_fingerprint(|_parts: &http::request::Parts, body: &[u8]| Fingerprint::sha256(body));
/// ```
pub trait MakeFingerprint: Send + Sync + 'static {
    /// Digests one request.
    fn fingerprint(&self, parts: &Parts, body: &[u8]) -> Fingerprint;
}

impl<F> MakeFingerprint for F
where
    F: Fn(&Parts, &[u8]) -> Fingerprint + Send + Sync + 'static,
{
    fn fingerprint(&self, parts: &Parts, body: &[u8]) -> Fingerprint {
        self(parts, body)
    }
}

/// The default fingerprint: SHA-256 over method, path and query, the named headers, and the body.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct DefaultFingerprint {
    headers: Vec<HeaderName>,
}

impl DefaultFingerprint {
    /// Method, path and query, and body only.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also digests these headers' values (all of them, in order), e.g. `content-type`.
    pub fn with_headers(mut self, headers: impl IntoIterator<Item = HeaderName>) -> Self {
        self.headers = headers.into_iter().collect();
        self
    }
}

impl MakeFingerprint for DefaultFingerprint {
    fn fingerprint(&self, parts: &Parts, body: &[u8]) -> Fingerprint {
        let mut hasher = Sha256::new();
        update_prefixed(&mut hasher, parts.method.as_str().as_bytes());
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        update_prefixed(&mut hasher, target.as_bytes());
        for name in &self.headers {
            update_prefixed(&mut hasher, name.as_str().as_bytes());
            for value in parts.headers.get_all(name) {
                update_prefixed(&mut hasher, value.as_bytes());
            }
        }
        update_prefixed(&mut hasher, body);
        Fingerprint(hasher.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, content_type: &str) -> Parts {
        http::Request::post(uri)
            .header("content-type", content_type)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[test]
    fn differs_on_body_path_and_query() {
        let fp = DefaultFingerprint::new();
        let base = fp.fingerprint(&parts("/a?x=1", "a"), b"body");
        assert_eq!(base, fp.fingerprint(&parts("/a?x=1", "a"), b"body"));
        assert_ne!(base, fp.fingerprint(&parts("/a?x=1", "a"), b"bodY"));
        assert_ne!(base, fp.fingerprint(&parts("/a?x=2", "a"), b"body"));
        assert_ne!(base, fp.fingerprint(&parts("/b?x=1", "a"), b"body"));
    }

    #[test]
    fn named_headers_count_others_do_not() {
        let plain = DefaultFingerprint::new();
        assert_eq!(
            plain.fingerprint(&parts("/a", "json"), b""),
            plain.fingerprint(&parts("/a", "xml"), b"")
        );
        let with_ct = DefaultFingerprint::new().with_headers([http::header::CONTENT_TYPE]);
        assert_ne!(
            with_ct.fingerprint(&parts("/a", "json"), b""),
            with_ct.fingerprint(&parts("/a", "xml"), b"")
        );
    }
}
