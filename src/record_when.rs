//! Which responses are recorded: decided on the status, and for gRPC on the final
//! `grpc-status`, which may only come in the trailers at the end of the body.

use std::sync::Arc;

use http::{response, HeaderMap, StatusCode};

use crate::grpc;

/// Whether a response is recorded, by default: what a retry must not run again.
///
/// - HTTP: 2xx, 3xx, and the 4xx that describe a finished operation (404, 410, 422, ...) are
///   recorded. 400, 401, 403, 408, 409, 425 and 429 say that nothing happened and a corrected
///   retry must be able to run, and 5xx may succeed when tried again: those release the key.
/// - gRPC (a 200 with `content-type: application/grpc*`): the final `grpc-status`, from the
///   trailers or a trailers-only head, decides. OK and the deterministic codes are recorded; the
///   transient ones (CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED,
///   INTERNAL, UNAVAILABLE) and a missing status release the key.
///
/// A function, so that a rule of your own can start from it:
///
/// ```
/// use http::{response, HeaderMap, StatusCode};
/// use tower_idempotency::{recorded_by_default, IdempotencyLayer, MemoryStore};
///
/// // The defaults, and a 404 is not final either (the resource may appear).
/// let layer = IdempotencyLayer::new(MemoryStore::new()).with_record_when(
///     |parts: &response::Parts, trailers: Option<&HeaderMap>| {
///         parts.status != StatusCode::NOT_FOUND && recorded_by_default(parts, trailers)
///     },
/// );
/// ```
pub fn recorded_by_default(parts: &response::Parts, trailers: Option<&HeaderMap>) -> bool {
    match grpc_status(parts, trailers) {
        Some(code) => !grpc::is_transient(code),
        None if is_grpc(parts) => false,
        None => is_final(parts.status),
    }
}

/// An HTTP status that says the operation is finished, whatever a retry sends.
fn is_final(status: StatusCode) -> bool {
    let nothing_happened = matches!(status.as_u16(), 400 | 401 | 403 | 408 | 409 | 425 | 429);
    !status.is_server_error() && !nothing_happened
}

fn is_grpc(parts: &response::Parts) -> bool {
    parts.status == StatusCode::OK && grpc::is_grpc(&parts.headers)
}

/// A gRPC answer's final status: in the head of a trailers-only answer, else in the trailers.
fn grpc_status(parts: &response::Parts, trailers: Option<&HeaderMap>) -> Option<u32> {
    if !is_grpc(parts) {
        return None;
    }
    grpc::status(&parts.headers).or_else(|| trailers.and_then(grpc::status))
}

/// A rule for [`IdempotencyLayer::with_record_when`](crate::IdempotencyLayer::with_record_when):
/// a closure that sees the response head, `Fn(&response::Parts) -> bool`, or the head and the
/// trailers, `Fn(&response::Parts, Option<&HeaderMap>) -> bool`.
///
/// A head-only rule is decided as soon as the handler answers, so a response that is not
/// recorded streams on untouched. A rule that sees the trailers is decided at the end of the
/// body, where gRPC's status is; the head it sees then has the status and headers, and for a
/// response that streamed, no extensions (do not decide on them).
pub trait RecordWhen<Args>: sealed::IntoRule<Args> {}

impl<F, Args> RecordWhen<Args> for F where F: sealed::IntoRule<Args> {}

// The sealed pattern: the trait is public only so `RecordWhen` can name it; nobody outside can
// implement it or call it, which is what keeps `RecordRule` private.
#[allow(private_interfaces)]
mod sealed {
    use super::*;

    /// Turns each kind of closure into the layer's rule.
    pub trait IntoRule<Args> {
        fn into_rule(self) -> RecordRule;
    }

    impl<F> IntoRule<(response::Parts,)> for F
    where
        F: Fn(&response::Parts) -> bool + Send + Sync + 'static,
    {
        fn into_rule(self) -> RecordRule {
            RecordRule::Head(Arc::new(self))
        }
    }

    impl<F> IntoRule<(response::Parts, Option<HeaderMap>)> for F
    where
        F: Fn(&response::Parts, Option<&HeaderMap>) -> bool + Send + Sync + 'static,
    {
        fn into_rule(self) -> RecordRule {
            RecordRule::Whole(Arc::new(self))
        }
    }
}

pub(crate) fn rule<Args>(predicate: impl RecordWhen<Args>) -> RecordRule {
    predicate.into_rule()
}

type HeadPredicate = dyn Fn(&response::Parts) -> bool + Send + Sync;
type WholePredicate = dyn Fn(&response::Parts, Option<&HeaderMap>) -> bool + Send + Sync;

/// The rule a layer applies.
#[derive(Clone, Default)]
pub(crate) enum RecordRule {
    /// [`recorded_by_default`], decided at the head whenever the head is enough.
    #[default]
    Default,
    Head(Arc<HeadPredicate>),
    Whole(Arc<WholePredicate>),
}

/// What can be decided from the response head alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Record,
    Release,
    /// Only the end of the body (the trailers) can tell.
    AtEnd,
}

impl Verdict {
    fn from_bool(record: bool) -> Self {
        if record {
            Self::Record
        } else {
            Self::Release
        }
    }
}

impl RecordRule {
    pub(crate) fn at_head(&self, parts: &response::Parts) -> Verdict {
        match self {
            Self::Default if is_grpc(parts) => match grpc::status(&parts.headers) {
                Some(code) => Verdict::from_bool(!grpc::is_transient(code)),
                None => Verdict::AtEnd,
            },
            Self::Default => Verdict::from_bool(is_final(parts.status)),
            Self::Head(predicate) => Verdict::from_bool(predicate(parts)),
            Self::Whole(_) => Verdict::AtEnd,
        }
    }

    pub(crate) fn at_end(&self, parts: &response::Parts, trailers: Option<&HeaderMap>) -> bool {
        match self {
            Self::Default => recorded_by_default(parts, trailers),
            Self::Head(predicate) => predicate(parts),
            Self::Whole(predicate) => predicate(parts, trailers),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{header, HeaderValue, Response};

    fn head(status: u16, grpc: Option<&'static str>) -> response::Parts {
        let mut response = Response::builder().status(status);
        if let Some(code) = grpc {
            response = response
                .header(header::CONTENT_TYPE, "application/grpc")
                .header("grpc-status", code);
        }
        response.body(()).unwrap().into_parts().0
    }

    fn trailers(code: &'static str) -> HeaderMap {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static(code));
        trailers
    }

    #[test]
    fn http_records_finished_operations_and_releases_the_rest() {
        for status in [200, 201, 204, 301, 404, 410, 422] {
            assert!(recorded_by_default(&head(status, None), None), "{status}");
        }
        for status in [400, 401, 403, 408, 409, 425, 429, 500, 502, 503] {
            assert!(!recorded_by_default(&head(status, None), None), "{status}");
        }
    }

    #[test]
    fn grpc_is_decided_on_the_final_status() {
        let mut streaming = head(200, None);
        streaming.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        assert_eq!(RecordRule::Default.at_head(&streaming), Verdict::AtEnd);
        assert!(recorded_by_default(&streaming, Some(&trailers("0"))));
        assert!(recorded_by_default(&streaming, Some(&trailers("5"))));
        assert!(!recorded_by_default(&streaming, Some(&trailers("14"))));
        assert!(
            !recorded_by_default(&streaming, None),
            "no status is UNKNOWN"
        );

        let trailers_only = head(200, Some("14"));
        assert_eq!(
            RecordRule::Default.at_head(&trailers_only),
            Verdict::Release
        );
        assert_eq!(
            RecordRule::Default.at_head(&head(200, Some("6"))),
            Verdict::Record
        );
    }

    #[test]
    fn head_rules_decide_at_once_and_whole_rules_at_the_end() {
        let head_only = rule(|parts: &response::Parts| parts.status.is_success());
        assert_eq!(head_only.at_head(&head(201, None)), Verdict::Record);
        assert_eq!(head_only.at_head(&head(404, None)), Verdict::Release);
        let whole = rule(|_: &response::Parts, trailers: Option<&HeaderMap>| trailers.is_some());
        assert_eq!(whole.at_head(&head(201, None)), Verdict::AtEnd);
        assert!(whole.at_end(&head(201, None), Some(&trailers("0"))));
        assert!(!whole.at_end(&head(201, None), None));
    }
}
