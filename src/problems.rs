//! The errors the layer answers with, as `application/problem+json` (RFC 9457).
//!
//! Each body has `type` (a link to the matching section below), `title`, `status` and `detail`.
//! The statuses follow the IETF draft *The Idempotency-Key HTTP Header Field*.
//!
//! # key-missing
//! **400.** The route requires an idempotency key and the request has none.
//!
//! # key-invalid
//! **400.** The key is empty, longer than 255 bytes, not visible ASCII, badly quoted, or the
//! header appears more than once.
//!
//! # body-too-large
//! **413.** The request body is over the layer's body limit. Nothing was stored and the handler
//! did not run.
//!
//! # body-unreadable
//! **400.** The request body could not be read.
//!
//! # key-reused
//! **422.** The key was first used with a different request (method, path, query, body, or the
//! headers the fingerprint covers).
//!
//! # in-progress
//! **409** with `Retry-After`. A request with this key is still running.
//!
//! # response-not-recorded
//! **409**, no `Retry-After`. A request with this key already ran, but its response was too
//! large to record; it will not run again. The body's `original_status` member gives the status
//! the handler answered with.
//!
//! # store-unavailable
//! **503** with `Retry-After`. The idempotency store could not be reached in time, so the request
//! was not run (fail closed).
//!
//! # record-corrupt
//! **500.** The stored record for this key could not be read. The handler did not run again.
//!
//! # response-failed
//! **500.** The handler's response body failed before it could be recorded; the key was released.

use std::fmt::Write as _;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::body::ResponseBody;

const TYPE_BASE: &str =
    "https://docs.rs/tower-idempotency/latest/tower_idempotency/problems/index.html#";

/// One problem the layer can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Problem {
    KeyMissing,
    KeyInvalid(&'static str),
    BodyTooLarge { limit: usize },
    BodyUnreadable,
    KeyReused,
    InProgress { retry_after_secs: u64 },
    ResponseNotRecorded { original: StatusCode },
    StoreUnavailable { retry_after_secs: u64 },
    RecordCorrupt,
    ResponseFailed,
}

impl Problem {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::KeyMissing => (
                StatusCode::BAD_REQUEST,
                "key-missing",
                "Idempotency key missing",
            ),
            Self::KeyInvalid(_) => (
                StatusCode::BAD_REQUEST,
                "key-invalid",
                "Idempotency key invalid",
            ),
            Self::BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body too large",
            ),
            Self::BodyUnreadable => (
                StatusCode::BAD_REQUEST,
                "body-unreadable",
                "Request body unreadable",
            ),
            Self::KeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "key-reused",
                "Idempotency key reused",
            ),
            Self::InProgress { .. } => (StatusCode::CONFLICT, "in-progress", "Request in progress"),
            Self::ResponseNotRecorded { .. } => (
                StatusCode::CONFLICT,
                "response-not-recorded",
                "Response not recorded",
            ),
            Self::StoreUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "Idempotency store unavailable",
            ),
            Self::RecordCorrupt => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "record-corrupt",
                "Idempotency record corrupt",
            ),
            Self::ResponseFailed => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "response-failed",
                "Response failed",
            ),
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::KeyMissing => "this request requires an Idempotency-Key header".to_owned(),
            Self::KeyInvalid(why) => (*why).to_owned(),
            Self::BodyTooLarge { limit } => {
                format!("the request body is over the size limit (this layer's is {limit} bytes)")
            }
            Self::BodyUnreadable => "the request body could not be read".to_owned(),
            Self::KeyReused => "this idempotency key was used with a different request".to_owned(),
            Self::InProgress { .. } => {
                "a request with this idempotency key is still being processed".to_owned()
            }
            Self::ResponseNotRecorded { original } => format!(
                "a request with this idempotency key already completed with status {}, \
                 but its response was too large to record",
                original.as_u16()
            ),
            Self::StoreUnavailable { .. } => {
                "the idempotency store is unavailable; retry later".to_owned()
            }
            Self::RecordCorrupt => {
                "the stored result for this idempotency key could not be read".to_owned()
            }
            Self::ResponseFailed => "the response failed before it could be recorded".to_owned(),
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The problem as a response, with `Retry-After` where the status calls for it.
    pub(crate) fn into_response<B>(self) -> Response<ResponseBody<B>> {
        let (status, slug, title) = self.parts();
        let mut json = String::with_capacity(256);
        json.push_str("{\"type\":");
        push_json_string(&mut json, &format!("{TYPE_BASE}{slug}"));
        json.push_str(",\"title\":");
        push_json_string(&mut json, title);
        let _ = write!(json, ",\"status\":{}", status.as_u16());
        json.push_str(",\"detail\":");
        push_json_string(&mut json, &self.detail());
        if let Self::ResponseNotRecorded { original } = self {
            let _ = write!(json, ",\"original_status\":{}", original.as_u16());
        }
        json.push('}');

        let mut response = Response::new(ResponseBody::full(Bytes::from(json)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Self::InProgress { retry_after_secs } | Self::StoreUnavailable { retry_after_secs } =
            self
        {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs.max(1)),
            );
        }
        response
    }
}

fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};

    #[tokio::test]
    async fn in_progress_has_retry_after_and_a_problem_body() {
        let response = Problem::InProgress {
            retry_after_secs: 3,
        }
        .into_response::<Empty<Bytes>>();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = std::str::from_utf8(&body).unwrap();
        assert_eq!(
            body,
            "{\"type\":\"https://docs.rs/tower-idempotency/latest/tower_idempotency/problems/index.html#in-progress\",\
             \"title\":\"Request in progress\",\"status\":409,\
             \"detail\":\"a request with this idempotency key is still being processed\"}"
        );
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\n");
        assert_eq!(out, r#""a\"b\\c\u000a""#);
    }
}
