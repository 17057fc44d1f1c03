//! Choices the layer makes on the user's behalf: what to do with a concurrent duplicate, and
//! which response headers a replay carries.

use std::time::Duration;

use http::{header, HeaderMap, HeaderName};

/// What a request gets when another request with the same key is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConflictPolicy {
    /// Answer `409 Conflict` at once, with a `Retry-After` of how long first executions here
    /// typically take (see `IdempotencyLayer::with_retry_after`).
    Reject,
    /// Wait until the first request completes (then replay it) or `timeout` passes (then
    /// answer 409). Waiters are woken by the store's notification of the key's change when the
    /// layer has it ([`IdempotencyLayer::with_wait`](crate::IdempotencyLayer::with_wait)); else,
    /// and while notifications are broken, they poll the store.
    Wait {
        /// How often to look at the store when there are no notifications; it doubles up to
        /// eight times this.
        poll: Duration,
        /// How long to wait in all.
        timeout: Duration,
    },
}

/// The poll interval of [`ConflictPolicy::wait_for`], for stores without notifications.
pub(crate) const DEFAULT_POLL: Duration = Duration::from_millis(25);

impl ConflictPolicy {
    /// [`ConflictPolicy::Wait`] for at most `timeout`. Prefer
    /// [`IdempotencyLayer::with_wait`](crate::IdempotencyLayer::with_wait), which also lets the
    /// store wake waiters; this one polls (every 25 ms, backing off to 200 ms).
    pub const fn wait_for(timeout: Duration) -> Self {
        Self::Wait {
            poll: DEFAULT_POLL,
            timeout,
        }
    }

    /// [`ConflictPolicy::Wait`] with this poll interval.
    #[deprecated(
        since = "0.2.0",
        note = "waiters are woken by the store: use `IdempotencyLayer::with_wait(timeout)`, or `ConflictPolicy::wait_for(timeout)` for a store without notifications"
    )]
    pub const fn wait(poll: Duration, timeout: Duration) -> Self {
        Self::Wait { poll, timeout }
    }
}

impl Default for ConflictPolicy {
    /// [`ConflictPolicy::Reject`]: the IETF draft's behaviour, and it holds no request open.
    fn default() -> Self {
        Self::Reject
    }
}

/// Which response headers are stored with a record and replayed.
///
/// The default refuses headers that are private to one response or one connection:
/// `Set-Cookie`, `Date`, `WWW-Authenticate`, `Proxy-Authenticate`, `Authorization`,
/// `Proxy-Authorization`, `Content-Length` (recomputed on replay) and the hop-by-hop headers
/// (`Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`,
/// `Upgrade`).
///
/// ```
/// use tower_idempotency::HeaderFilter;
/// use http::header;
///
/// // Replay only what clients of this API read.
/// let filter = HeaderFilter::allow([header::CONTENT_TYPE, header::LOCATION]);
/// // Or the defaults, and one more private header.
/// let filter = HeaderFilter::default().and_deny([header::HeaderName::from_static("x-session")]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderFilter {
    // A handful of names: a scan beats hashing each response header.
    names: Vec<HeaderName>,
    allow: bool,
}

impl HeaderFilter {
    /// Replays every header but these.
    pub fn deny(names: impl IntoIterator<Item = HeaderName>) -> Self {
        Self::with_names(names, false)
    }

    /// Replays only these headers.
    pub fn allow(names: impl IntoIterator<Item = HeaderName>) -> Self {
        Self::with_names(names, true)
    }

    fn with_names(names: impl IntoIterator<Item = HeaderName>, allow: bool) -> Self {
        let mut filter = Self {
            names: Vec::new(),
            allow,
        };
        for name in names {
            if !filter.names.contains(&name) {
                filter.names.push(name);
            }
        }
        filter
    }

    /// Adds names to a deny-list, or removes them from an allow-list.
    pub fn and_deny(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        for name in names {
            if self.allow {
                self.names.retain(|n| *n != name);
            } else if !self.names.contains(&name) {
                self.names.push(name);
            }
        }
        self
    }

    /// Whether a header with this name is stored and replayed.
    pub fn keeps(&self, name: &HeaderName) -> bool {
        self.names.contains(name) == self.allow
    }

    /// The headers of `headers` this filter keeps, every value in order.
    pub(crate) fn apply(&self, headers: &HeaderMap) -> HeaderMap {
        let mut kept = HeaderMap::with_capacity(headers.len());
        for (name, value) in headers {
            if self.keeps(name) {
                kept.append(name.clone(), value.clone());
            }
        }
        kept
    }
}

impl Default for HeaderFilter {
    fn default() -> Self {
        Self::deny([
            header::SET_COOKIE,
            header::DATE,
            header::WWW_AUTHENTICATE,
            header::PROXY_AUTHENTICATE,
            header::AUTHORIZATION,
            header::PROXY_AUTHORIZATION,
            header::CONTENT_LENGTH,
            header::CONNECTION,
            HeaderName::from_static("keep-alive"),
            HeaderName::from_static("proxy-connection"),
            header::TE,
            header::TRAILER,
            header::TRANSFER_ENCODING,
            header::UPGRADE,
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_drops_private_and_hop_by_hop_headers_and_keeps_the_rest_in_order() {
        let mut headers = HeaderMap::new();
        headers.append(header::SET_COOKIE, "a=1".parse().unwrap());
        headers.append(header::CONNECTION, "close".parse().unwrap());
        headers.append("x-multi", "1".parse().unwrap());
        headers.append("x-multi", "2".parse().unwrap());
        let kept = HeaderFilter::default().apply(&headers);
        assert!(kept.get(header::SET_COOKIE).is_none());
        assert!(kept.get(header::CONNECTION).is_none());
        assert_eq!(
            kept.get_all("x-multi").iter().collect::<Vec<_>>(),
            ["1", "2"]
        );
    }

    #[test]
    fn allow_lists_keep_only_their_names() {
        let filter = HeaderFilter::allow([header::LOCATION, header::ETAG]).and_deny([header::ETAG]);
        assert!(filter.keeps(&header::LOCATION));
        assert!(!filter.keeps(&header::ETAG));
        assert!(!filter.keeps(&header::CONTENT_TYPE));
    }
}
