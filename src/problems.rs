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
//! # key-format
//! **400.** The key does not have the format the route asks for (a UUID, a ULID, or a minimum
//! length over an alphabet; see `KeyFormat`); the detail names it.
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
//! headers the fingerprint covers), or, when keys are not scoped, by a request with other
//! credentials (`Authorization`, `Cookie`, ...): a record is never replayed to another client.
//!
//! # in-progress
//! **409** with `Retry-After`. A request with this key is still running.
//!
//! # too-many-in-progress
//! **429** with `Retry-After`. This client (its scope, or its credentials when keys are not
//! scoped) already holds as many requests in progress as the layer allows; retry when one of
//! them has finished.
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
//! # response-broken
//! **409**, no `Retry-After`. A request with this key already ran, but its response body failed
//! part-way (the first client saw a broken answer). The request may have taken effect, so it
//! will not run again for this key; `original_status` gives the status the handler answered
//! with.
//!
//! # response-failed
//! **500.** The handler's response body failed before any of it was sent. The request may have
//! taken effect, so the key is kept (retries get `response-broken`), never run again.
//!
//! # gRPC
//! To a gRPC request (`content-type: application/grpc*`) the same refusals are gRPC statuses,
//! which gRPC clients understand: HTTP 200 with `grpc-status` and `grpc-message` (the `detail`)
//! in a trailers-only answer, and `grpc-retry-pushback-ms` where HTTP sends `Retry-After`.
//!
//! | problem | gRPC status |
//! | --- | --- |
//! | key-missing, key-invalid, key-format, body-unreadable | `INVALID_ARGUMENT` (3) |
//! | body-too-large, too-many-in-progress | `RESOURCE_EXHAUSTED` (8) |
//! | key-reused | `FAILED_PRECONDITION` (9) |
//! | in-progress | `ABORTED` (10) |
//! | response-not-recorded, response-broken | `ALREADY_EXISTS` (6) |
//! | store-unavailable | `UNAVAILABLE` (14) |
//! | record-corrupt, response-failed | `INTERNAL` (13) |

use std::fmt::Write as _;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::{
    body::ResponseBody,
    grpc::{self, Code},
    key_format::KeyFormat,
};

/// How the client speaks, and so how the layer answers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// problem+json.
    Http,
    /// A gRPC status.
    Grpc,
}

impl Dialect {
    pub(crate) fn of(request: &http::HeaderMap) -> Self {
        if grpc::is_grpc(request) {
            Self::Grpc
        } else {
            Self::Http
        }
    }
}

const TYPE_BASE: &str =
    "https://docs.rs/tower-idempotency/latest/tower_idempotency/problems/index.html#";

/// A refusal the layer answers itself, as a hook made with
/// [`IdempotencyLayer::with_problem_response`](crate::IdempotencyLayer::with_problem_response)
/// sees it: everything the problem+json body would say.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refusal {
    /// The status to answer with (400, 409, 413, 422, 429, 500 or 503).
    pub status: StatusCode,
    /// Which problem it is: the section names above (`key-missing`, `in-progress`, ...), as in
    /// the problem+json `type`.
    pub kind: &'static str,
    /// A short title, the same for every refusal of this kind.
    pub title: &'static str,
    /// What happened, for a person.
    pub detail: String,
    /// When to try again, where the status calls for it (409, 429, 503); the layer sets
    /// `Retry-After` from it if the hook's answer has none.
    pub retry_after: Option<std::time::Duration>,
    /// For `response-not-recorded` and `response-broken`: the status the first request got.
    pub original_status: Option<StatusCode>,
}

/// Turns the layer's refusals into the app's own error format; see
/// [`IdempotencyLayer::with_problem_response`](crate::IdempotencyLayer::with_problem_response).
/// Implemented for closures.
pub trait MakeProblemResponse: Send + Sync + 'static {
    /// The answer to one refusal.
    fn response(&self, refusal: &Refusal) -> Response<Bytes>;
}

impl<F> MakeProblemResponse for F
where
    F: Fn(&Refusal) -> Response<Bytes> + Send + Sync + 'static,
{
    fn response(&self, refusal: &Refusal) -> Response<Bytes> {
        self(refusal)
    }
}

/// One problem the layer can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Problem {
    KeyMissing,
    KeyInvalid(&'static str),
    KeyFormat(KeyFormat),
    /// `limit`: this layer's, when it was this layer's that the body went over; `None` when a
    /// limit further out was hit (tower-http's), which this layer does not know.
    BodyTooLarge {
        limit: Option<usize>,
    },
    BodyUnreadable,
    KeyReused,
    InProgress {
        retry_after_secs: u64,
    },
    TooManyInProgress {
        retry_after_secs: u64,
    },
    ResponseNotRecorded {
        original: StatusCode,
    },
    ResponseBroken {
        original: StatusCode,
    },
    StoreUnavailable {
        retry_after_secs: u64,
    },
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
            Self::KeyFormat(_) => (
                StatusCode::BAD_REQUEST,
                "key-format",
                "Idempotency key has the wrong format",
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
            Self::TooManyInProgress { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-in-progress",
                "Too many requests in progress",
            ),
            Self::ResponseNotRecorded { .. } => (
                StatusCode::CONFLICT,
                "response-not-recorded",
                "Response not recorded",
            ),
            Self::ResponseBroken { .. } => {
                (StatusCode::CONFLICT, "response-broken", "Response broken")
            }
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

    pub(crate) fn detail(&self) -> String {
        match self {
            Self::KeyMissing => "this request requires an Idempotency-Key header".to_owned(),
            Self::KeyInvalid(why) => (*why).to_owned(),
            Self::KeyFormat(expected) => format!("the idempotency key must be {expected}"),
            Self::BodyTooLarge { limit: Some(limit) } => {
                format!("the request body is over the size limit of {limit} bytes")
            }
            Self::BodyTooLarge { limit: None } => {
                "the request body is over the size limit".to_owned()
            }
            Self::BodyUnreadable => "the request body could not be read".to_owned(),
            Self::KeyReused => {
                "this idempotency key was used with a different request or by another client"
                    .to_owned()
            }
            Self::InProgress { .. } => {
                "a request with this idempotency key is still being processed".to_owned()
            }
            Self::TooManyInProgress { .. } => {
                "too many of this client's requests are in progress; retry when one has finished"
                    .to_owned()
            }
            Self::ResponseNotRecorded { original } => format!(
                "a request with this idempotency key already completed with status {}, \
                 but its response was too large to record",
                original.as_u16()
            ),
            Self::ResponseBroken { original } => format!(
                "a request with this idempotency key already ran (status {}), but its response \
                 failed part-way; it will not run again",
                original.as_u16()
            ),
            Self::StoreUnavailable { .. } => {
                "the idempotency store is unavailable; retry later".to_owned()
            }
            Self::RecordCorrupt => {
                "the stored result for this idempotency key could not be read".to_owned()
            }
            Self::ResponseFailed => "the response failed before it could be sent; the request \
                 may have taken effect and will not run again for this key"
                .to_owned(),
        }
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The gRPC status this problem is to a gRPC client.
    fn grpc_code(&self) -> Code {
        match self {
            Self::KeyMissing | Self::KeyInvalid(_) | Self::KeyFormat(_) | Self::BodyUnreadable => {
                Code::InvalidArgument
            }
            Self::BodyTooLarge { .. } | Self::TooManyInProgress { .. } => Code::ResourceExhausted,
            Self::KeyReused => Code::FailedPrecondition,
            Self::InProgress { .. } => Code::Aborted,
            Self::ResponseNotRecorded { .. } | Self::ResponseBroken { .. } => Code::AlreadyExists,
            Self::StoreUnavailable { .. } => Code::Unavailable,
            Self::RecordCorrupt | Self::ResponseFailed => Code::Internal,
        }
    }

    /// When the client may try again, where the problem says.
    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::InProgress { retry_after_secs }
            | Self::TooManyInProgress { retry_after_secs }
            | Self::StoreUnavailable { retry_after_secs } => Some((*retry_after_secs).max(1)),
            _ => None,
        }
    }

    /// The problem as a hook sees it.
    pub(crate) fn refusal(&self) -> Refusal {
        let (status, kind, title) = self.parts();
        Refusal {
            status,
            kind,
            title,
            detail: self.detail(),
            retry_after: self.retry_after_secs().map(std::time::Duration::from_secs),
            original_status: match self {
                Self::ResponseNotRecorded { original } | Self::ResponseBroken { original } => {
                    Some(*original)
                }
                _ => None,
            },
        }
    }

    /// The answer `hook` makes of the problem, with `Retry-After` where the problem calls for
    /// it and the hook left it out.
    pub(crate) fn into_custom_response<B>(
        self,
        hook: &dyn MakeProblemResponse,
    ) -> Response<ResponseBody<B>> {
        let mut response = hook.response(&self.refusal()).map(ResponseBody::full);
        if let Some(secs) = self.retry_after_secs() {
            let headers = response.headers_mut();
            if !headers.contains_key(header::RETRY_AFTER) {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
        }
        response
    }

    /// The problem as an answer in the client's dialect.
    pub(crate) fn into_response<B>(self, dialect: Dialect) -> Response<ResponseBody<B>> {
        match dialect {
            Dialect::Http => self.into_problem_json(),
            Dialect::Grpc => {
                let mut response = Response::new(ResponseBody::full(Bytes::new()));
                *response.headers_mut() =
                    grpc::status_headers(self.grpc_code(), &self.detail(), self.retry_after_secs());
                response
            }
        }
    }

    /// The problem as `application/problem+json`, with `Retry-After` where the status calls
    /// for it.
    fn into_problem_json<B>(self) -> Response<ResponseBody<B>> {
        let (status, slug, title) = self.parts();
        let mut json = String::with_capacity(256);
        json.push_str("{\"type\":");
        push_json_string(&mut json, &format!("{TYPE_BASE}{slug}"));
        json.push_str(",\"title\":");
        push_json_string(&mut json, title);
        let _ = write!(json, ",\"status\":{}", status.as_u16());
        json.push_str(",\"detail\":");
        push_json_string(&mut json, &self.detail());
        if let Self::ResponseNotRecorded { original } | Self::ResponseBroken { original } = self {
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
        if let Some(secs) = self.retry_after_secs() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
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
        .into_response::<Empty<Bytes>>(Dialect::Http);
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
    fn grpc_clients_get_a_status_with_a_pushback() {
        let response = Problem::InProgress {
            retry_after_secs: 3,
        }
        .into_response::<Empty<Bytes>>(Dialect::Grpc);
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(headers["content-type"], "application/grpc");
        assert_eq!(headers["grpc-status"], "10");
        assert_eq!(
            headers["grpc-message"],
            "a request with this idempotency key is still being processed"
        );
        assert_eq!(headers["grpc-retry-pushback-ms"], "3000");
        assert!(headers.get(header::RETRY_AFTER).is_none());
        let reused = Problem::KeyReused.into_response::<Empty<Bytes>>(Dialect::Grpc);
        assert_eq!(reused.headers()["grpc-status"], "9");
    }

    /// Every problem's `type` is a link to its section in these docs on docs.rs: the URL names
    /// this module, and rustdoc turns the heading `# key-missing` into the anchor `key-missing`.
    #[test]
    fn every_problem_type_links_to_a_heading_of_these_docs() {
        let module_page = format!(
            "https://docs.rs/tower-idempotency/latest/{}/index.html#",
            module_path!()
                .trim_end_matches("::tests")
                .replace("::", "/")
        );
        assert_eq!(TYPE_BASE, module_page);
        let headings: Vec<&str> = include_str!("problems.rs")
            .lines()
            .filter_map(|line| line.strip_prefix("//! # "))
            .collect();
        let status = StatusCode::OK;
        let every = [
            Problem::KeyMissing,
            Problem::KeyInvalid("empty"),
            Problem::KeyFormat(KeyFormat::Uuid),
            Problem::BodyTooLarge { limit: None },
            Problem::BodyUnreadable,
            Problem::KeyReused,
            Problem::InProgress {
                retry_after_secs: 1,
            },
            Problem::TooManyInProgress {
                retry_after_secs: 1,
            },
            Problem::ResponseNotRecorded { original: status },
            Problem::ResponseBroken { original: status },
            Problem::StoreUnavailable {
                retry_after_secs: 1,
            },
            Problem::RecordCorrupt,
            Problem::ResponseFailed,
        ];
        for problem in every {
            // No wildcard: a new problem does not compile until it is listed above.
            match problem {
                Problem::KeyMissing
                | Problem::KeyInvalid(_)
                | Problem::KeyFormat(_)
                | Problem::BodyTooLarge { .. }
                | Problem::BodyUnreadable
                | Problem::KeyReused
                | Problem::InProgress { .. }
                | Problem::TooManyInProgress { .. }
                | Problem::ResponseNotRecorded { .. }
                | Problem::ResponseBroken { .. }
                | Problem::StoreUnavailable { .. }
                | Problem::RecordCorrupt
                | Problem::ResponseFailed => {}
            }
            let kind = problem.refusal().kind;
            // Lower-case letters and dashes: rustdoc keeps such a heading as its anchor.
            assert!(
                kind.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'),
                "{kind}"
            );
            assert!(
                headings.contains(&kind),
                "no `//! # {kind}` heading for {problem:?}"
            );
        }
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\n");
        assert_eq!(out, r#""a\"b\\c\u000a""#);
    }
}
