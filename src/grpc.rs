//! gRPC as the layer sees it: a POST whose final status rides in `grpc-status`.
//!
//! gRPC answers HTTP 200 to everything, so the record decision reads `grpc-status` (in the
//! trailers, or in the head of a trailers-only answer), and the layer's own refusals to a gRPC
//! client are gRPC statuses, which its client library understands, not problem+json.

use http::{header, HeaderMap, HeaderName, HeaderValue};

pub(crate) const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// gRFC A6: how long a client should wait before retrying, in milliseconds.
const GRPC_RETRY_PUSHBACK_MS: HeaderName = HeaderName::from_static("grpc-retry-pushback-ms");

/// The gRPC status codes the layer answers with or reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    InvalidArgument = 3,
    AlreadyExists = 6,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    Internal = 13,
    Unavailable = 14,
}

/// Whether `headers` (a request's or a response's) say the message is gRPC.
///
/// Not gRPC-web (`application/grpc-web*`): it carries its status inside the body, where this
/// layer does not look; put the layer inside tonic-web's, where calls are plain gRPC.
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(b"application/grpc") && !v.starts_with(b"application/grpc-web")
    })
}

/// The `grpc-status` in `headers`, if there is a well-formed one.
pub(crate) fn status(headers: &HeaderMap) -> Option<u32> {
    headers.get(GRPC_STATUS)?.to_str().ok()?.parse().ok()
}

/// Whether a call that ended with `code` may succeed when sent again, so its key must be
/// released like a 5xx: CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED,
/// INTERNAL and UNAVAILABLE. OK and the deterministic codes are final.
pub(crate) fn is_transient(code: u32) -> bool {
    matches!(code, 1 | 2 | 4 | 8 | 10 | 13 | 14)
}

/// The headers of a trailers-only gRPC answer with `code` and `message`, and a retry pushback
/// where HTTP would send `Retry-After`.
pub(crate) fn status_headers(code: Code, message: &str, pushback_secs: Option<u64>) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(4);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(GRPC_STATUS, HeaderValue::from(code as u32));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert(GRPC_MESSAGE, message);
    }
    if let Some(secs) = pushback_secs {
        headers.insert(
            GRPC_RETRY_PUSHBACK_MS,
            HeaderValue::from(secs.saturating_mul(1000)),
        );
    }
    headers
}

/// `grpc-message` is percent-encoded: every byte outside printable ASCII, and `%` itself.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_by_content_type() {
        let mut headers = HeaderMap::new();
        assert!(!is_grpc(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            "application/grpc+proto".parse().unwrap(),
        );
        assert!(is_grpc(&headers));
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(!is_grpc(&headers));
        headers.insert(
            header::CONTENT_TYPE,
            "application/grpc-web+proto".parse().unwrap(),
        );
        assert!(!is_grpc(&headers), "gRPC-web keeps its status in the body");
    }

    #[test]
    fn transient_codes_are_the_retryable_ones() {
        let transient: Vec<u32> = (0..=16).filter(|&c| is_transient(c)).collect();
        assert_eq!(transient, [1, 2, 4, 8, 10, 13, 14]);
    }

    #[test]
    fn status_headers_carry_code_message_and_pushback() {
        let headers = status_headers(Code::Aborted, "still 100% busy: é", Some(2));
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(status(&headers), Some(10));
        assert_eq!(headers["grpc-message"], "still 100%25 busy: %C3%A9");
        assert_eq!(headers["grpc-retry-pushback-ms"], "2000");
        assert!(status_headers(Code::Internal, "x", None)
            .get("grpc-retry-pushback-ms")
            .is_none());
    }
}
