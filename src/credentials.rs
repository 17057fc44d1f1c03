//! The credentials a request carries, as a digest: what an unscoped record is bound to.
//!
//! Without a scope, every client shares one key space, so a guessed or reused key could replay
//! another client's response. Binding the record to a digest of the request's credentials
//! means a request with other credentials is refused (422), never replayed. It also never runs
//! twice: a scope taken from a raw token would make a retry after a token refresh look new.

use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};

use crate::{fingerprint::Fingerprint, store::key::update_prefixed};

/// The headers treated as credentials by default: `Authorization`, `Cookie`,
/// `Proxy-Authorization` and `X-Api-Key`.
pub(crate) fn default_headers() -> Vec<HeaderName> {
    vec![
        http::header::AUTHORIZATION,
        http::header::COOKIE,
        http::header::PROXY_AUTHORIZATION,
        HeaderName::from_static("x-api-key"),
    ]
}

/// A SHA-256 over the credential headers a request carries; the raw values are not kept.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Credentials([u8; 32]);

impl Credentials {
    /// The digest of `names`' values in `headers`, or `None` when the request carries none.
    pub(crate) fn of(headers: &HeaderMap, names: &[HeaderName]) -> Option<Self> {
        let mut hasher: Option<Sha256> = None;
        for name in names {
            for value in headers.get_all(name) {
                let hasher = hasher.get_or_insert_with(Sha256::new);
                update_prefixed(hasher, name.as_str().as_bytes());
                update_prefixed(hasher, value.as_bytes());
            }
        }
        hasher.map(|hasher| Self(hasher.finalize().into()))
    }

    /// `fingerprint`, made to differ for every other set of credentials.
    pub(crate) fn bind(&self, fingerprint: Fingerprint) -> Fingerprint {
        let mut hasher = Sha256::new();
        hasher.update(fingerprint.as_bytes());
        hasher.update(self.0);
        Fingerprint::from_bytes(hasher.finalize().into())
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(*name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn none_without_credential_headers() {
        let names = default_headers();
        assert!(Credentials::of(&headers(&[("content-type", "json")]), &names).is_none());
    }

    #[test]
    fn other_credentials_bind_to_another_fingerprint() {
        let names = default_headers();
        let alice = Credentials::of(&headers(&[("authorization", "Bearer a")]), &names).unwrap();
        let mallory = Credentials::of(&headers(&[("authorization", "Bearer m")]), &names).unwrap();
        let as_cookie = Credentials::of(&headers(&[("cookie", "Bearer a")]), &names).unwrap();
        let fp = Fingerprint::sha256(b"same request");
        assert_eq!(alice.bind(fp), alice.bind(fp));
        assert_ne!(alice.bind(fp), mallory.bind(fp));
        assert_ne!(
            alice.bind(fp),
            as_cookie.bind(fp),
            "the header's name counts"
        );
        assert_ne!(alice.bind(fp), fp);
    }

    #[test]
    fn only_the_named_headers_count() {
        let names = [HeaderName::from_static("x-tenant-token")];
        assert!(Credentials::of(&headers(&[("authorization", "Bearer a")]), &names).is_none());
        assert!(Credentials::of(&headers(&[("x-tenant-token", "t")]), &names).is_some());
    }
}
