//! gRPC answers: a call's status rides in `grpc-status`, under HTTP 200.
//!
//! The layer sees the head only, so it reads the statuses of trailers-only answers: the ones
//! servers send for an error before any message (tonic's `Err(Status)`, the server side's own
//! refusals), which is where "in progress" (ABORTED) and "unavailable" live.

use std::time::Duration;

use http::HeaderMap;

use crate::grpc::{is_grpc, is_transient, status};

/// gRFC A6: how long the server asks the client to wait, in milliseconds.
const PUSHBACK: &str = "grpc-retry-pushback-ms";
const RESOURCE_EXHAUSTED: u32 = 8;

/// The gRPC status of a trailers-only answer, if `headers` are one.
pub(crate) fn trailers_only_status(headers: &HeaderMap) -> Option<u32> {
    if is_grpc(headers) {
        status(headers)
    } else {
        None
    }
}

/// Whether a call that ended with gRPC status `code` is worth sending again, and after how
/// long the server asked: `None` when the status is final.
///
/// The codes the server side releases a key for (CANCELLED, UNKNOWN, DEADLINE_EXCEEDED,
/// ABORTED, INTERNAL, UNAVAILABLE) are retried; RESOURCE_EXHAUSTED only with a pushback (it is
/// also gRPC's "request too large", which will not change). A negative or malformed pushback
/// is the server saying "do not retry" (gRFC A6).
pub(crate) fn retry(code: u32, headers: &HeaderMap) -> Option<Option<Duration>> {
    let pushback = match headers.get(PUSHBACK) {
        None => None,
        Some(value) => Some(value.to_str().ok()?.trim().parse::<u64>().ok()?),
    };
    if !is_transient(code) || (code == RESOURCE_EXHAUSTED && pushback.is_none()) {
        return None;
    }
    Some(pushback.map(Duration::from_millis))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn reads_the_status_of_trailers_only_grpc_answers_only() {
        let grpc = headers(&[("content-type", "application/grpc"), ("grpc-status", "10")]);
        assert_eq!(trailers_only_status(&grpc), Some(10));
        let web = headers(&[
            ("content-type", "application/grpc-web"),
            ("grpc-status", "10"),
        ]);
        assert_eq!(trailers_only_status(&web), None);
        let streaming = headers(&[("content-type", "application/grpc+proto")]);
        assert_eq!(trailers_only_status(&streaming), None);
    }

    #[test]
    fn retries_transient_codes_with_their_pushback() {
        let none = HeaderMap::new();
        for code in [1, 2, 4, 10, 13, 14] {
            assert_eq!(retry(code, &none), Some(None), "{code}");
        }
        for code in [0, 3, 5, 6, 7, 8, 9, 11, 12, 16] {
            assert_eq!(retry(code, &none), None, "{code}");
        }
        let pushback = headers(&[("grpc-retry-pushback-ms", "3000")]);
        assert_eq!(retry(10, &pushback), Some(Some(Duration::from_secs(3))));
        assert_eq!(retry(8, &pushback), Some(Some(Duration::from_secs(3))));
        assert_eq!(retry(5, &pushback), None);
        for refusal in ["-1", "soon"] {
            let no = headers(&[("grpc-retry-pushback-ms", refusal)]);
            assert_eq!(retry(14, &no), None, "{refusal}");
        }
    }
}
