//! The credentials a request carries, as a digest: what an unscoped record is bound to.
//!
//! Without a scope, every client shares one key space, so a guessed or reused key could replay
//! another client's response. Binding the record to a digest of the request's credentials
//! means a request with other credentials is refused (422), never replayed. It also never runs
//! twice: a scope taken from a raw token would make a retry after a token refresh look new.

use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};

use crate::{digest::update_prefixed, fingerprint::Fingerprint};

/// The headers treated as credentials by default: `Authorization`, `Proxy-Authorization` and
/// `X-Api-Key`. Not `Cookie`: browsers change cookies between two tries (analytics, affinity),
/// which would refuse a legitimate retry; session cookies are named one by one.
pub(crate) fn default_headers() -> Vec<HeaderName> {
    vec![
        http::header::AUTHORIZATION,
        http::header::PROXY_AUTHORIZATION,
        HeaderName::from_static("x-api-key"),
    ]
}

/// A SHA-256 over the credentials a request carries; the raw values are not kept.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Credentials([u8; 32]);

impl Credentials {
    /// The digest of `headers`' values and of the cookies named `cookies`, or `None` when the
    /// request carries none of them.
    pub(crate) fn of(
        headers: &HeaderMap,
        names: &[HeaderName],
        cookies: &[String],
    ) -> Option<Self> {
        let mut hasher: Option<Sha256> = None;
        for name in names {
            // An empty value carries no credential: the same as none.
            for value in headers.get_all(name).iter().filter(|v| !v.is_empty()) {
                let hasher = hasher.get_or_insert_with(Sha256::new);
                update_prefixed(hasher, name.as_str().as_bytes());
                update_prefixed(hasher, value.as_bytes());
            }
        }
        // By name, so other cookies, their order and how they are split into fields (HTTP/2
        // sends one field per cookie) do not matter.
        for wanted in cookies {
            let value = headers
                .get_all(http::header::COOKIE)
                .iter()
                .flat_map(|field| field.as_bytes().split(|&b| b == b';'))
                .filter_map(|pair| {
                    let pair = pair.trim_ascii();
                    let at = pair.iter().position(|&b| b == b'=')?;
                    (&pair[..at] == wanted.as_bytes()).then(|| &pair[at + 1..])
                })
                .find(|value| !value.is_empty());
            if let Some(value) = value {
                let hasher = hasher.get_or_insert_with(Sha256::new);
                update_prefixed(hasher, b"cookie");
                update_prefixed(hasher, wanted.as_bytes());
                update_prefixed(hasher, value);
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
        assert!(Credentials::of(&headers(&[("content-type", "json")]), &names, &[]).is_none());
        let cookie = headers(&[("cookie", "session=abc")]);
        assert!(
            Credentials::of(&cookie, &names, &[]).is_none(),
            "cookies only by name"
        );
    }

    #[test]
    fn other_credentials_bind_to_another_fingerprint() {
        let names = default_headers();
        let alice =
            Credentials::of(&headers(&[("authorization", "Bearer a")]), &names, &[]).unwrap();
        let mallory =
            Credentials::of(&headers(&[("authorization", "Bearer m")]), &names, &[]).unwrap();
        let as_key = Credentials::of(&headers(&[("x-api-key", "Bearer a")]), &names, &[]).unwrap();
        let fp = Fingerprint::sha256(b"same request");
        assert_eq!(alice.bind(fp), alice.bind(fp));
        assert_ne!(alice.bind(fp), mallory.bind(fp));
        assert_ne!(alice.bind(fp), as_key.bind(fp), "the header's name counts");
        assert_ne!(alice.bind(fp), fp);
    }

    #[test]
    fn only_the_named_headers_count() {
        let names = [HeaderName::from_static("x-tenant-token")];
        assert!(Credentials::of(&headers(&[("authorization", "Bearer a")]), &names, &[]).is_none());
        assert!(Credentials::of(&headers(&[("x-tenant-token", "t")]), &names, &[]).is_some());
    }

    #[test]
    fn named_cookies_count_and_the_others_do_not() {
        let session = ["session".to_owned()];
        let of = |pairs: &[(&'static str, &'static str)]| {
            Credentials::of(&headers(pairs), &[], &session)
                .map(|c| c.bind(Fingerprint::sha256(b"")))
        };
        let base = of(&[("cookie", "session=abc; _ga=1")]).unwrap();
        assert_eq!(
            of(&[("cookie", "_ga=2; session=abc")]),
            Some(base),
            "other cookies change"
        );
        assert_eq!(
            of(&[("cookie", "_ga=2"), ("cookie", "session=abc")]),
            Some(base),
            "one field per cookie, as HTTP/2 sends them"
        );
        assert_ne!(of(&[("cookie", "session=xyz; _ga=1")]), Some(base));
        assert_eq!(of(&[("cookie", "sessionx=abc")]), None);
    }
}
