//! The idempotency protocol for one covered request: DESIGN.md's request path, steps 3 to 9.

use std::{error::Error, fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body::Body;
use tokio::time::{sleep_until, Instant};
use tower_service::Service;
use tracing::Instrument;

use crate::{
    body::{RequestBody, ResponseBody},
    collect,
    config::{Config, KeySource, Shared},
    credentials::Credentials,
    detach::Detachable,
    guard::ReleaseGuard,
    in_progress::{Bucket, InProgressPermit},
    key::IdempotencyKey,
    lease::{timed, with_renewal},
    outcome::Outcome,
    policy::ConflictPolicy,
    problems::{Dialect, Problem},
    record,
    response::CompletedRecord,
    retry_after::ConflictHint,
    store::{
        BeginOutcome, FencingToken, IdempotencyStore, KeyWatch, LeaseToken, StoreError, StoreKey,
    },
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
    // `None`: the key is in the body, to be found once it is buffered.
    key: Option<IdempotencyKey>,
    dialect: Dialect,
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
        Err(problem) => return Ok(config.refuse(problem, dialect)),
    };
    let key = match key.map_or_else(|| made_key(config, &parts, &body), |key| Ok(Some(key))) {
        Ok(Some(key)) => key,
        Ok(None) => {
            // No key where the user's rule looks: as a request without the key header.
            if config.key_required {
                return Ok(config.refuse(Problem::KeyMissing, dialect));
            }
            let req = Request::from_parts(parts, RequestBody::full(body));
            // Boxed: rare, and every covered request's future would keep the handler's room.
            return Ok(Box::pin(inner.call(req)).await?.map(ResponseBody::new));
        }
        Err(problem) => return Ok(config.refuse(problem, dialect)),
    };
    let scope = config.scope.as_ref().and_then(|scope| scope.scope(&parts));
    let mut fingerprint = config.fingerprint.fingerprint(&parts, &body);
    // Unscoped, a record is bound to its client's credentials: no response crosses clients.
    if scope.is_none() {
        let credentials = Credentials::of(
            &parts.headers,
            &config.credential_headers,
            &config.credential_cookies,
        );
        if let Some(credentials) = credentials {
            fingerprint = credentials.bind(fingerprint);
        }
    }
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
        dialect,
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
            // Counted once the key is held, so replays and duplicates never count.
            let permit = match (&config.in_progress_limit, &scope) {
                (Some(limit), Some(scope)) => match limit.try_acquire(Bucket::of(scope)) {
                    Some(permit) => Some(permit),
                    None => {
                        // Boxed: rare, and every request's future would keep its room.
                        Box::pin(guard.release()).await;
                        let problem = Problem::TooManyInProgress {
                            retry_after_secs: 1,
                        };
                        return Ok(config.refuse(problem, dialect));
                    }
                },
                _ => None,
            };
            tracing::debug!(fencing_token = fencing_token.get(), "idempotency: acquired");
            config.observe(Outcome::Acquired);
            parts.extensions.insert(key);
            parts.extensions.insert(fencing_token);
            // A client that hangs up must not cut the handler off between its side effect and
            // the record of it: then the execution finishes on a task of its own. Built in a
            // block of its own, so that this future does not keep room for the unboxed one.
            let execution = {
                let req = Request::from_parts(parts, RequestBody::full(body));
                let execution = execute(inner, shared, guard, fingerprint, permit, dialect, req);
                Detachable::new(execution.in_current_span())
            };
            execution.await
        }
        Err(StoreError::Corrupt(error)) => {
            guard.disarm();
            tracing::error!(%error, "idempotency: stored record is corrupt");
            config.observe(Outcome::Corrupt);
            Ok(config.answer(Problem::RecordCorrupt, dialect))
        }
        // The guard stays armed: a `begin` that timed out may still have acquired the key.
        Err(error) if config.fail_open => {
            tracing::warn!(%error, "idempotency: store failed; running the request unguarded (fail-open)");
            config.observe(Outcome::StoreFailed);
            drop(guard);
            parts.extensions.insert(key);
            let response = inner
                .call(Request::from_parts(parts, RequestBody::full(body)))
                .await?;
            Ok(response.map(ResponseBody::new))
        }
        Err(error) => {
            tracing::warn!(%error, "idempotency: store failed; refusing the request (fail-closed)");
            config.observe(Outcome::StoreFailed);
            let problem = Problem::StoreUnavailable {
                retry_after_secs: 1,
            };
            Ok(config.answer(problem, dialect))
        }
    }
}

/// The key the user's [`MakeKey`](crate::MakeKey) finds in a buffered request, checked as a
/// header's would be.
fn made_key(
    config: &Config,
    parts: &http::request::Parts,
    body: &[u8],
) -> Result<Option<IdempotencyKey>, Problem> {
    let KeySource::Made(make) = &config.key_source else {
        return Ok(None);
    };
    match make.key(parts, body) {
        Ok(Some(key)) => match config.key_format.check(&key) {
            Ok(()) => Ok(Some(key)),
            Err(expected) => Err(Problem::KeyFormat(expected)),
        },
        Ok(None) => Ok(None),
        Err(error) => Err(Problem::KeyInvalid(error.detail())),
    }
}

/// Calls `begin`, and under [`ConflictPolicy::Wait`] again each time the key changes (or the
/// lease would end, or, without notifications, by polling) while it is in progress.
async fn decide<St: IdempotencyStore, B>(
    store: &St,
    config: &Config,
    dialect: Dialect,
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
        let lease_left = match outcome {
            BeginOutcome::Acquired { fencing_token } => return Ok(Decision::Run(fencing_token)),
            BeginOutcome::Completed { record, .. } => {
                tracing::debug!("idempotency: replayed");
                config.observe(Outcome::Replayed);
                return Ok(Decision::Respond(replay(config, record, dialect)));
            }
            BeginOutcome::Mismatch => {
                tracing::debug!("idempotency: key reused with another request");
                config.observe(Outcome::Mismatch);
                return Ok(Decision::Respond(
                    config.answer(Problem::KeyReused, dialect),
                ));
            }
            BeginOutcome::InProgress { retry_after } => retry_after.unwrap_or(config.lease_ttl),
        };
        let conflict = || {
            tracing::debug!("idempotency: conflict with a request in progress");
            config.observe(Outcome::Conflict);
            let hint = ConflictHint {
                typical: config.durations.typical(),
                lease_left: Some(lease_left),
            };
            let problem = Problem::InProgress {
                retry_after_secs: ceil_secs(config.retry_after.retry_after(&hint)),
            };
            Ok(Decision::Respond(config.answer(problem, dialect)))
        };
        let ConflictPolicy::Wait { poll, timeout } = config.conflict else {
            return conflict();
        };
        let wait = match &mut waiting {
            Some(wait) => wait,
            None => match config.waiters.try_acquire() {
                Ok(permit) => {
                    // Subscribed first, then the key is looked at again (the loop): a change
                    // between the first look and the wait is never missed.
                    let mut watch = match &config.watcher {
                        Some(watch) => watch(key),
                        None => KeyWatch::polling(poll),
                    };
                    let deadline = Instant::now() + timeout;
                    tokio::select! {
                        () = watch.ready() => {}
                        () = sleep_until(deadline) => {}
                    }
                    waiting = Some(Waiting {
                        _permit: permit,
                        deadline,
                        watch,
                        delay: None,
                    });
                    continue;
                }
                Err(_) => return conflict(),
            },
        };
        let now = Instant::now();
        if now >= wait.deadline {
            return conflict();
        }
        // Woken by the key's change; else look again when the lease would end (a holder that
        // died releases nothing), at the deadline, and, without working notifications, by
        // polling with a growing delay.
        let mut wake = wait.deadline.min(now + lease_left + MIN_POLL);
        if let Some(interval) = wait.watch.poll() {
            let delay = wait.delay.map_or(interval, |d| (d * 2).min(interval * 8));
            wait.delay = Some(delay);
            wake = wake.min(now + delay);
        }
        tokio::select! {
            () = wait.watch.changed() => {}
            () = sleep_until(wake) => {}
        }
    }
}

const MIN_POLL: Duration = Duration::from_millis(1);

/// A request waiting for another to finish; holding its permit caps how many wait at once.
struct Waiting<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    deadline: Instant,
    watch: KeyWatch,
    /// The current polling delay, when the waiter polls.
    delay: Option<Duration>,
}

/// Runs the handler under its lease (step 7), then hands its response to [`record`].
async fn execute<S, St, ReqBody, ResBody>(
    mut inner: S,
    shared: Arc<Shared<St>>,
    guard: ReleaseGuard<St>,
    fingerprint: Fingerprint,
    // Counts this key against its scope's cap until the execution is settled.
    permit: Option<InProgressPermit>,
    dialect: Dialect,
    req: Request<RequestBody<ReqBody>>,
) -> Result<Response<ResponseBody<ResBody>>, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>,
    St: IdempotencyStore,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: fmt::Display,
{
    let (store, config): (&St, &Config) = (&shared.store, &shared.config);
    let handled = with_renewal(store, config, &guard.key, &guard.token, inner.call(req)).await;
    match handled {
        Ok(response) => {
            Ok(record::record(shared, guard, fingerprint, permit, dialect, response).await)
        }
        Err(error) => {
            tracing::debug!("idempotency: handler failed; releasing");
            config.observe(Outcome::Released);
            guard.release().await;
            Err(error)
        }
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

/// The recorded response, as the first request got it (frame by frame, trailers last), marked
/// as a replay.
fn replay<B>(
    config: &Config,
    record: CompletedRecord,
    dialect: Dialect,
) -> Response<ResponseBody<B>> {
    let mut response = match record {
        CompletedRecord::Response(mut recorded) => {
            let status = recorded.status;
            let headers = std::mem::take(&mut recorded.headers);
            let (frames, trailers) = recorded.into_replay();
            let mut response = Response::new(ResponseBody::frames(frames, trailers));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response
        }
        CompletedRecord::Tombstone { status } => {
            config.answer(Problem::ResponseNotRecorded { original: status }, dialect)
        }
        CompletedRecord::Broken { status } => {
            config.answer(Problem::ResponseBroken { original: status }, dialect)
        }
    };
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    response
}
