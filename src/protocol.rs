//! The idempotency protocol for one covered request: DESIGN.md's request path, steps 3 to 9.

use std::{
    error::Error,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tokio::time::{sleep, Instant, MissedTickBehavior};
use tower_service::Service;
use tracing::Instrument;

use crate::{
    body::{RequestBody, ResponseBody},
    collect::{self, Collected},
    detach::Detachable,
    guard::ReleaseGuard,
    key::IdempotencyKey,
    layer::{Config, Shared},
    outcome::Outcome,
    policy::ConflictPolicy,
    problems::Problem,
    response::{CompletedRecord, RecordedResponse},
    store::{BeginOutcome, FencingToken, IdempotencyStore, LeaseToken, StoreError, StoreKey},
    Fingerprint,
};

type BoxError = Box<dyn Error + Send + Sync>;

/// The header that marks a replayed response.
pub(crate) const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// What `begin` (and waiting, under [`ConflictPolicy::Wait`]) decided.
// Moved once per request; boxing the response would cost an allocation instead.
#[allow(clippy::large_enum_variant)]
enum Decision<B> {
    Run(FencingToken),
    Respond(Response<ResponseBody<B>>),
}

pub(crate) async fn run<S, St, ReqBody, ResBody>(
    mut inner: S,
    shared: Arc<Shared<St>>,
    key: IdempotencyKey,
    req: Request<ReqBody>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: IdempotencyStore,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: fmt::Display,
{
    let config: &Config = &shared.config;
    let (mut parts, body) = req.into_parts();
    let body = match collect::request_body(&parts.headers, body, config.body_limit).await {
        Ok(body) => body,
        Err(problem) => {
            config.observe(Outcome::Refused);
            return Ok(problem.into_response());
        }
    };
    let fingerprint = config.fingerprint.fingerprint(&parts, &body);
    let scope = config.scope.as_ref().and_then(|scope| scope.scope(&parts));
    let store_key = StoreKey::derive(
        scope.as_deref().map(str::as_bytes),
        parts.method.as_str(),
        parts.uri.path(),
        key.as_str(),
    );
    tracing::Span::current().record("key", tracing::field::display(&store_key));
    let mut guard = ReleaseGuard::new(Arc::clone(&shared), store_key, LeaseToken::generate());

    match decide(
        &*shared.store,
        config,
        &store_key,
        &fingerprint,
        &guard.token,
    )
    .await
    {
        Ok(Decision::Respond(response)) => {
            guard.disarm();
            Ok(response)
        }
        Ok(Decision::Run(fencing_token)) => {
            tracing::debug!(key = %store_key, fencing_token = fencing_token.get(), "idempotency: acquired");
            config.observe(Outcome::Acquired);
            parts.extensions.insert(key);
            parts.extensions.insert(fencing_token);
            // A client that hangs up must not cut the handler off between its side effect and
            // the record of it: then the execution finishes on a task of its own. Built in a
            // block of its own, so that this future does not keep room for the unboxed one.
            let execution = {
                let req = Request::from_parts(parts, RequestBody::full(body));
                Detachable::new(execute(inner, shared, guard, fingerprint, req).in_current_span())
            };
            execution.await
        }
        Err(StoreError::Corrupt(error)) => {
            guard.disarm();
            tracing::error!(key = %store_key, %error, "idempotency: stored record is corrupt");
            config.observe(Outcome::Corrupt);
            Ok(Problem::RecordCorrupt.into_response())
        }
        // The guard stays armed: a `begin` that timed out may still have acquired the key.
        Err(error) if config.fail_open => {
            tracing::warn!(key = %store_key, %error, "idempotency: store failed; running the request unguarded (fail-open)");
            config.observe(Outcome::StoreFailed);
            drop(guard);
            parts.extensions.insert(key);
            let response = inner
                .call(Request::from_parts(parts, RequestBody::full(body)))
                .await?;
            Ok(response.map(ResponseBody::new))
        }
        Err(error) => {
            tracing::warn!(key = %store_key, %error, "idempotency: store failed; refusing the request (fail-closed)");
            config.observe(Outcome::StoreFailed);
            Ok(Problem::StoreUnavailable {
                retry_after_secs: 1,
            }
            .into_response())
        }
    }
}

/// Calls `begin`, and under [`ConflictPolicy::Wait`] polls it again while the key is in progress.
async fn decide<St: IdempotencyStore, B>(
    store: &St,
    config: &Config,
    key: &StoreKey,
    fingerprint: &Fingerprint,
    token: &LeaseToken,
) -> Result<Decision<B>, StoreError> {
    let mut waiting: Option<Waiting<'_>> = None;
    loop {
        let outcome = timed(
            config.store_timeout,
            store.begin(key, fingerprint, token, config.lease_ttl),
        )
        .await?;
        let retry_after = match outcome {
            BeginOutcome::Acquired { fencing_token } => return Ok(Decision::Run(fencing_token)),
            BeginOutcome::Completed { record, .. } => {
                tracing::debug!(key = %key, "idempotency: replayed");
                config.observe(Outcome::Replayed);
                return Ok(Decision::Respond(replay(record)));
            }
            BeginOutcome::Mismatch => {
                tracing::debug!(key = %key, "idempotency: key reused with another request");
                config.observe(Outcome::Mismatch);
                return Ok(Decision::Respond(Problem::KeyReused.into_response()));
            }
            BeginOutcome::InProgress { retry_after } => retry_after.unwrap_or(config.lease_ttl),
        };
        let conflict = || {
            tracing::debug!(key = %key, "idempotency: conflict with a request in progress");
            config.observe(Outcome::Conflict);
            Ok(Decision::Respond(
                Problem::InProgress {
                    retry_after_secs: ceil_secs(retry_after),
                }
                .into_response(),
            ))
        };
        let ConflictPolicy::Wait { poll, timeout } = config.conflict else {
            return conflict();
        };
        let wait = match &mut waiting {
            Some(wait) => wait,
            None => match config.waiters.try_acquire() {
                Ok(permit) => waiting.insert(Waiting {
                    _permit: permit,
                    deadline: Instant::now() + timeout,
                    delay: poll.max(MIN_POLL),
                }),
                Err(_) => return conflict(),
            },
        };
        let now = Instant::now();
        if now >= wait.deadline {
            return conflict();
        }
        sleep(wait.delay.min(wait.deadline - now)).await;
        wait.delay = (wait.delay * 2).min(poll.max(MIN_POLL) * 8);
    }
}

const MIN_POLL: Duration = Duration::from_millis(1);

/// A request waiting for another to finish; holding its permit caps how many wait at once.
struct Waiting<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    deadline: Instant,
    delay: Duration,
}

/// Runs the handler under its lease, then records or releases: steps 7 and 8.
async fn execute<S, St, ReqBody, ResBody>(
    mut inner: S,
    shared: Arc<Shared<St>>,
    mut guard: ReleaseGuard<St>,
    fingerprint: Fingerprint,
    req: Request<RequestBody<ReqBody>>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    St: IdempotencyStore,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: fmt::Display,
{
    let (key, token) = (guard.key, guard.token);
    let (store, config): (&St, &Config) = (&shared.store, &shared.config);
    let response = match with_renewal(store, config, &key, &token, inner.call(req)).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(key = %key, "idempotency: handler failed; releasing");
            config.observe(Outcome::Released);
            guard.release().await;
            return Err(error);
        }
    };
    let (parts, body) = response.into_parts();
    if !(config.record_when)(&parts) {
        tracing::debug!(key = %key, status = parts.status.as_u16(), "idempotency: response not recordable; releasing");
        config.observe(Outcome::Released);
        guard.release().await;
        return Ok(Response::from_parts(parts, ResponseBody::new(body)));
    }
    let (record, body) = match collect::response_body(body, config.record_limit).await {
        Collected::Whole { data, trailers } => {
            let filter = &config.replay_headers;
            let record = CompletedRecord::Response(
                RecordedResponse::new(parts.status, filter.apply(&parts.headers), data.clone())
                    .with_trailers(trailers.as_ref().map(|t| filter.apply(t))),
            );
            (record, ResponseBody::with_trailers(data, trailers))
        }
        Collected::TooLarge { prefix, rest } => {
            tracing::warn!(key = %key, limit = config.record_limit, "idempotency: response too large to record; keeping a tombstone");
            (
                CompletedRecord::Tombstone {
                    status: parts.status,
                },
                ResponseBody::prefixed(prefix, rest),
            )
        }
        Collected::Failed(error) => {
            tracing::warn!(key = %key, %error, "idempotency: response body failed; releasing");
            config.observe(Outcome::Released);
            guard.release().await;
            return Ok(Problem::ResponseFailed.into_response());
        }
    };
    let completed = timed(
        config.store_timeout,
        store.complete(&key, &token, &fingerprint, &record, config.result_ttl),
    )
    .await;
    // Whatever `complete` says, the key is never released from here: the handler ran.
    guard.disarm();
    match completed {
        Ok(true) => {
            tracing::debug!(key = %key, "idempotency: recorded");
            config.observe(recorded(&record));
        }
        Ok(false) => lease_lost_before_completion(config, &key),
        // Releasing now would let a retry run the handler again. The lease stays, so retries
        // get 409, and the record is written again in the background.
        Err(error) => {
            tracing::warn!(key = %key, %error, "idempotency: could not record the response yet; retrying in the background");
            config.observe(Outcome::StoreFailed);
            let retry = record_later(shared, key, token, fingerprint, record);
            tokio::spawn(retry.in_current_span());
        }
    }
    Ok(Response::from_parts(parts, body))
}

/// What landing `record` in the store is called.
fn recorded(record: &CompletedRecord) -> Outcome {
    match record {
        CompletedRecord::Tombstone { .. } => Outcome::Tombstoned,
        CompletedRecord::Response(_) => Outcome::Recorded,
    }
}

/// The store refused a `complete`: another request holds the key now.
fn lease_lost_before_completion(config: &Config, key: &StoreKey) {
    tracing::warn!(key = %key, "idempotency: lease lost before completion; the response was not recorded");
    config.observe(Outcome::LeaseLost);
}

const RECORD_RETRY_FIRST: Duration = Duration::from_millis(50);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(1);

/// Writes a record whose `complete` failed (a store outage, a failover) until it lands, the
/// store refuses it, or a lease's length has gone by. Token-checked like every `complete`: once
/// the lease is over, it can only fail.
async fn record_later<St: IdempotencyStore>(
    shared: Arc<Shared<St>>,
    key: StoreKey,
    token: LeaseToken,
    fingerprint: Fingerprint,
    record: CompletedRecord,
) {
    let (store, config): (&St, &Config) = (&shared.store, &shared.config);
    let deadline = Instant::now() + config.lease_ttl;
    let mut delay = RECORD_RETRY_FIRST;
    let mut attempts = 1u32;
    while Instant::now() + delay < deadline {
        sleep(delay).await;
        delay = (delay * 2).min(RECORD_RETRY_MAX);
        attempts += 1;
        let call = store.complete(&key, &token, &fingerprint, &record, config.result_ttl);
        match timed(config.store_timeout, call).await {
            Ok(true) => {
                tracing::info!(key = %key, attempts, "idempotency: recorded after retrying");
                config.observe(recorded(&record));
                return;
            }
            Ok(false) => return lease_lost_before_completion(config, &key),
            Err(error) => {
                tracing::debug!(key = %key, %error, attempts, "idempotency: recording failed again")
            }
        }
    }
    tracing::error!(key = %key, attempts, "idempotency: could not record the response; once its lease ends, a retry runs the handler again");
}

/// Drives `handler` while renewing the lease every third of its length.
async fn with_renewal<St: IdempotencyStore, F: Future>(
    store: &St,
    config: &Config,
    key: &StoreKey,
    token: &LeaseToken,
    handler: F,
) -> F::Output {
    let period = (config.lease_ttl / 3).max(MIN_POLL);
    let renewal = async {
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            // Boxed: only slow handlers renew, and every execution's future would hold its room.
            let renewal = Box::pin(timed(
                config.store_timeout,
                store.renew(key, token, config.lease_ttl),
            ));
            match renewal.await {
                Ok(true) => tracing::trace!(key = %key, "idempotency: lease renewed"),
                Ok(false) => {
                    tracing::warn!(key = %key, "idempotency: lease lost while the handler runs; another request may run too");
                    return;
                }
                Err(error) => {
                    tracing::warn!(key = %key, %error, "idempotency: lease renewal failed")
                }
            }
        }
    };
    tokio::pin!(handler);
    tokio::select! {
        biased;
        output = &mut handler => output,
        () = renewal => handler.await,
    }
}

pin_project! {
    /// A store call bounded by the layer's store timeout. A plain future rather than an
    /// `async fn`, which would keep the call in its state twice (as argument and as awaited
    /// timeout): store calls sit in every request's state machine.
    struct Timed<F> {
        #[pin]
        call: tokio::time::Timeout<F>,
    }
}

impl<F, T> Future for Timed<F>
where
    F: Future<Output = Result<T, StoreError>>,
{
    type Output = Result<T, StoreError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .call
            .poll(cx)
            .map(|result| result.unwrap_or(Err(StoreError::Timeout)))
    }
}

fn timed<F: Future>(limit: Duration, call: F) -> Timed<F> {
    Timed {
        call: tokio::time::timeout(limit, call),
    }
}

fn ceil_secs(duration: Duration) -> u64 {
    duration
        .as_millis()
        .div_ceil(1000)
        .try_into()
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The recorded response, as the first request got it, marked as a replay.
fn replay<B>(record: CompletedRecord) -> Response<ResponseBody<B>> {
    let mut response = match record {
        CompletedRecord::Response(recorded) => {
            let mut response = Response::new(ResponseBody::with_trailers(
                recorded.body,
                recorded.trailers,
            ));
            *response.status_mut() = recorded.status;
            *response.headers_mut() = recorded.headers;
            response
        }
        CompletedRecord::Tombstone { status } => {
            Problem::ResponseNotRecorded { original: status }.into_response()
        }
    };
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    response
}
