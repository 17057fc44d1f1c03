//! One call's retries: which outcomes are retried, how long to wait, when to stop, and the
//! event each attempt logs. The tower service and the reqwest middleware both run their loop
//! through a [`Schedule`], so each rule is written once.

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use http::{HeaderMap, HeaderValue, StatusCode};
use tokio::time::Instant;

use super::{attempts::Attempts, backoff, grpc, policy::RetryPolicy, retry_after};

/// Whether an answer with this status is worth sending again with the same key: 409 (the key
/// is still in progress), 429, and every 5xx. Every other status is the call's outcome.
pub(crate) fn retryable_status(status: StatusCode) -> bool {
    status == StatusCode::CONFLICT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// Whether an answer is worth sending again, and after how long the server asked (`None`:
/// the answer is final). A trailers-only gRPC answer is judged by its `grpc-status`.
fn retry(status: StatusCode, headers: &HeaderMap) -> Option<Option<Duration>> {
    if status == StatusCode::OK {
        if let Some(code) = grpc::trailers_only_status(headers) {
            return grpc::retry(code, headers);
        }
    }
    retryable_status(status).then(|| retry_after::parse(headers, SystemTime::now()))
}

/// What one attempt ended with.
pub(crate) enum Outcome<'a> {
    /// The server answered.
    Answer {
        status: StatusCode,
        headers: &'a HeaderMap,
    },
    /// No answer: the client's error, and whether sending again may help (a connection error
    /// may; a malformed URL will not).
    Error {
        error: &'a dyn fmt::Display,
        retryable: bool,
    },
}

impl fmt::Display for Outcome<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Answer { status, headers } => match grpc::trailers_only_status(headers) {
                Some(code) => write!(f, "{status}, grpc-status {code}"),
                None => write!(f, "{status}"),
            },
            Self::Error { error, .. } => write!(f, "error: {error}"),
        }
    }
}

/// Why a call stops after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The outcome is definite: retrying would not change it.
    Definite,
    /// An error that retrying will not fix (a malformed request).
    Permanent,
    /// The body was too large to keep, so the request could be sent only once.
    BodyNotKept,
    /// The last attempt allowed was sent.
    Attempts,
    /// The next retry would start past the deadline.
    Deadline,
}

impl Stop {
    fn as_str(self) -> &'static str {
        match self {
            Self::Definite => "definite answer",
            Self::Permanent => "error not worth retrying",
            Self::BodyNotKept => "body over the limit, sent once",
            Self::Attempts => "attempts exhausted",
            Self::Deadline => "deadline reached",
        }
    }
}

/// The state of one logical call: its key, its attempts so far, and when it began.
pub(crate) struct Schedule<'a> {
    policy: &'a RetryPolicy,
    key: HeaderValue,
    replayable: bool,
    started: Instant,
    attempts: u32,
    definite: bool,
}

impl<'a> Schedule<'a> {
    /// A call that starts now with this key; `replayable` when its body was kept for retries.
    pub(crate) fn new(policy: &'a RetryPolicy, key: HeaderValue, replayable: bool) -> Self {
        Self {
            policy,
            key,
            replayable,
            started: Instant::now(),
            attempts: 0,
            definite: false,
        }
    }

    /// Records an attempt's outcome and logs it: `Some(wait)` to send the request again after
    /// `wait`, `None` when this outcome is the call's.
    pub(crate) fn after(&mut self, outcome: &Outcome<'_>) -> Option<Duration> {
        self.attempts += 1;
        let decision = self.decide(outcome);
        self.definite = decision == Err(Stop::Definite);
        let key = self.key.to_str().unwrap_or("<not text>");
        let attempt = self.attempts;
        match decision {
            Ok(wait) => tracing::info!(
                key = %key,
                attempt,
                outcome = %outcome,
                retry_in_ms = wait.as_millis() as u64,
                "idempotent call: retrying with the same key"
            ),
            Err(Stop::Definite) => {
                tracing::debug!(key = %key, attempt, outcome = %outcome, "idempotent call: done")
            }
            Err(stop) => tracing::warn!(
                key = %key,
                attempt,
                outcome = %outcome,
                reason = stop.as_str(),
                "idempotent call: giving up; a later try must reuse the key"
            ),
        }
        decision.ok()
    }

    fn decide(&self, outcome: &Outcome<'_>) -> Result<Duration, Stop> {
        let asked = match outcome {
            Outcome::Answer { status, headers } => retry(*status, headers).ok_or(Stop::Definite)?,
            Outcome::Error {
                retryable: false, ..
            } => return Err(Stop::Permanent),
            Outcome::Error { .. } => None,
        };
        if !self.replayable {
            return Err(Stop::BodyNotKept);
        }
        if self.attempts >= self.policy.max_attempts {
            return Err(Stop::Attempts);
        }
        let policy = self.policy;
        let backoff = backoff::delay(policy.initial_backoff, policy.max_backoff, self.attempts);
        let wait = asked.map_or(backoff, |asked| {
            asked.min(policy.max_retry_after).max(backoff)
        });
        if self.started.elapsed() + wait > policy.deadline {
            return Err(Stop::Deadline);
        }
        Ok(wait)
    }

    /// What the response's [`Attempts`] extension says.
    pub(crate) fn attempts(&self) -> Attempts {
        Attempts {
            key: self.key.clone(),
            count: self.attempts,
            definite: self.definite,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_conflicts_rate_limits_and_server_errors_only() {
        for code in [409, 429, 500, 502, 503, 504, 599] {
            assert!(
                retryable_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        for code in [
            200, 201, 204, 301, 304, 400, 401, 403, 404, 408, 410, 413, 422, 425,
        ] {
            assert!(
                !retryable_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
    }

    fn answer(status: u16, headers: &HeaderMap) -> Outcome<'_> {
        Outcome::Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_the_attempt_cap_and_says_the_outcome_was_not_definite() {
        let policy = RetryPolicy::default().with_max_attempts(3);
        let mut schedule = Schedule::new(&policy, HeaderValue::from_static("k"), true);
        let none = HeaderMap::new();
        assert!(schedule.after(&answer(503, &none)).is_some());
        assert!(schedule.after(&answer(503, &none)).is_some());
        assert_eq!(schedule.after(&answer(503, &none)), None);
        let attempts = schedule.attempts();
        assert_eq!((attempts.count(), attempts.definite()), (3, false));
    }

    #[tokio::test(start_paused = true)]
    async fn waits_as_long_as_retry_after_asks_up_to_the_cap() {
        let policy = RetryPolicy::default().with_max_retry_after(Duration::from_secs(10));
        let mut schedule = Schedule::new(&policy, HeaderValue::from_static("k"), true);
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(
            schedule.after(&answer(409, &headers)),
            Some(Duration::from_secs(3))
        );
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("3600"));
        assert_eq!(
            schedule.after(&answer(429, &headers)),
            Some(Duration::from_secs(10))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn starts_no_retry_past_the_deadline() {
        let policy = RetryPolicy::default()
            .with_max_attempts(100)
            .with_deadline(Duration::from_secs(5));
        let mut schedule = Schedule::new(&policy, HeaderValue::from_static("k"), true);
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("2"));
        let mut waited = Duration::ZERO;
        while let Some(wait) = schedule.after(&answer(503, &headers)) {
            tokio::time::sleep(wait).await;
            waited += wait;
        }
        assert_eq!(waited, Duration::from_secs(4));
        assert_eq!(schedule.attempts().count(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_not_kept_and_a_permanent_error_stop_at_once() {
        let policy = RetryPolicy::default();
        let none = HeaderMap::new();
        let mut once = Schedule::new(&policy, HeaderValue::from_static("k"), false);
        assert_eq!(once.after(&answer(503, &none)), None);
        let mut schedule = Schedule::new(&policy, HeaderValue::from_static("k"), true);
        let error = Outcome::Error {
            error: &"builder error",
            retryable: false,
        };
        assert_eq!(schedule.after(&error), None);
        assert!(!schedule.attempts().definite());
        let error = Outcome::Error {
            error: &"connection refused",
            retryable: true,
        };
        assert!(schedule.after(&error).is_some());
        assert_eq!(schedule.after(&answer(201, &none)), None);
        assert!(schedule.attempts().definite());
    }
}
