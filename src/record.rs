//! Recording a first execution's response: at once when its body is ready, or while it streams
//! to the client (steps 8 and 9 of DESIGN.md's request path, and "Streamed responses").

use std::{fmt, future::poll_fn, pin::Pin, sync::Arc, task::Poll, time::Duration};

use bytes::Bytes;
use http::{response, Response, StatusCode};
use http_body::Body;
use tokio::{sync::oneshot, time::Instant};
use tracing::Instrument;

use crate::{
    body::ResponseBody,
    config::{Config, Shared},
    fingerprint::Fingerprint,
    frames::Frames,
    guard::ReleaseGuard,
    in_progress::InProgressPermit,
    lease::{keep_renewed, keep_renewed_from_now, timed, while_renewing},
    outcome::Outcome,
    problems::{Dialect, Problem},
    record_when::Verdict,
    response::{CompletedRecord, RecordedResponse},
    store::{IdempotencyStore, LeaseToken, StoreKey},
    tee::{self, BodyEnd, Ending, Keeper, Recording, Tee, TeeSettings},
};

/// What becomes of a key once its response is known.
// Moved once per first execution; boxing the record would cost an allocation instead.
#[allow(clippy::large_enum_variant)]
enum Settlement {
    /// Nothing final happened: a retry may run.
    Release { status: StatusCode },
    /// Completed with this record (a response, or a tombstone that refuses retries).
    Record(CompletedRecord),
}

/// How much of a body was ready without waiting.
enum Read {
    /// All of it.
    Finished,
    /// More than the record limit.
    Overflowed,
    /// It failed; the error's text, for the log.
    Broke(String),
    /// Some (perhaps none) of it: the rest streams.
    Pending,
}

/// Records `response` (made by the handler under the caller's lease) or releases its key, and
/// hands the response on.
///
/// A body that is ready at once (most REST answers) is read, recorded and answered here, as
/// one piece. Any other streams to the client as it comes, through a [`Tee`], while a keeper
/// task holds the lease and records it at its end.
pub(crate) async fn record<St, B>(
    shared: Arc<Shared<St>>,
    guard: ReleaseGuard<St>,
    fingerprint: Fingerprint,
    permit: Option<InProgressPermit>,
    dialect: Dialect,
    response: Response<B>,
) -> Response<ResponseBody<B>>
where
    St: IdempotencyStore,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: fmt::Display,
{
    let config: &Config = &shared.config;
    let (parts, body) = response.into_parts();
    let verdict = config.record_when.at_head(&parts);
    let status = parts.status;
    // Every path but the stream's settles the key here, with one call awaited in one place, so
    // that this future keeps room for one store call, not one per path.
    let (settlement, response) = if verdict == Verdict::Release {
        let response = Response::from_parts(parts, ResponseBody::new(body));
        (Settlement::Release { status }, response)
    } else {
        let mut body = Box::pin(body);
        let mut recording = Recording::new(config.record_limit);
        let limit = u64::try_from(config.record_limit).unwrap_or(u64::MAX);
        let read = if verdict == Verdict::Record && body.size_hint().lower() > limit {
            Read::Overflowed
        } else {
            read_ready(&mut body, &mut recording).await
        };
        match read {
            Read::Finished => {
                // The client gets the trailers as they were; the record, those the filter keeps.
                let trailers = recording.trailers().cloned();
                if wants_record(config, verdict, &parts, &recording) {
                    let recorded = response_record(config, &parts, recording);
                    let body = ResponseBody::frames(recorded.replay_frames(), trailers);
                    let settlement = Settlement::Record(CompletedRecord::Response(recorded));
                    (settlement, Response::from_parts(parts, body))
                } else {
                    let body = ResponseBody::frames(Frames::queue(recording.frames()), trailers);
                    (
                        Settlement::Release { status },
                        Response::from_parts(parts, body),
                    )
                }
            }
            Read::Broke(error) => {
                tracing::warn!(%error, "idempotency: response body failed before it was sent");
                let settlement = Settlement::Record(CompletedRecord::Broken { status });
                (settlement, config.answer(Problem::ResponseFailed, dialect))
            }
            Read::Overflowed if verdict == Verdict::Record => {
                let settlement = Settlement::Record(CompletedRecord::Tombstone { status });
                let body = ResponseBody::prefixed(recording.frames(), body);
                (settlement, Response::from_parts(parts, body))
            }
            Read::Overflowed | Read::Pending => {
                let (end_tx, end_rx) = oneshot::channel();
                let (settled_tx, settled_rx) = oneshot::channel();
                let keeper = keep(
                    Arc::clone(&shared),
                    guard,
                    fingerprint,
                    copy_head(&parts),
                    verdict,
                    end_rx,
                    settled_tx,
                    permit,
                );
                tokio::spawn(keeper.in_current_span());
                let keeper = Keeper {
                    end: end_tx,
                    settled: settled_rx,
                };
                let settings = TeeSettings {
                    decided_at_end: verdict == Verdict::AtEnd,
                    declared_len: content_length(&parts.headers),
                    drain_limit: config.drain_limit,
                };
                let tee = Tee::new(body, recording, settings, keeper, tee::detach::<B>);
                return Response::from_parts(parts, ResponseBody::tee(tee));
            }
        }
    };
    settle(&shared, guard, &fingerprint, settlement, permit).await;
    response
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Whether a body that ended within the limit is recorded: decided at the head, or now.
fn wants_record(
    config: &Config,
    verdict: Verdict,
    head: &response::Parts,
    recording: &Recording,
) -> bool {
    verdict == Verdict::Record || config.record_when.at_end(head, recording.trailers())
}

/// The record of a response that ended within the limit: what the replay filter keeps.
fn response_record(
    config: &Config,
    head: &response::Parts,
    recording: Recording,
) -> RecordedResponse {
    let filter = &config.replay_headers;
    let trailers = recording.trailers().map(|t| filter.apply(t));
    recording.into_response(head.status, filter.apply(&head.headers), trailers)
}

/// Reads what `body` has ready without waiting, into `recording`.
async fn read_ready<B>(body: &mut Pin<Box<B>>, recording: &mut Recording) -> Read
where
    B: Body<Data = Bytes>,
    B::Error: fmt::Display,
{
    poll_fn(|cx| loop {
        let frame = match body.as_mut().poll_frame(cx) {
            Poll::Pending => return Poll::Ready(Read::Pending),
            Poll::Ready(None) => return Poll::Ready(Read::Finished),
            Poll::Ready(Some(Err(error))) => return Poll::Ready(Read::Broke(error.to_string())),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                recording.push(&data);
                if recording.overflowed() {
                    return Poll::Ready(Read::Overflowed);
                }
                if body.is_end_stream() {
                    return Poll::Ready(Read::Finished);
                }
            }
            // Trailers are a body's last frame.
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    recording.push_trailers(trailers);
                    return Poll::Ready(Read::Finished);
                }
            }
        }
    })
    .await
}

/// The response head without its extensions, for a decision made after the response left.
fn copy_head(parts: &response::Parts) -> response::Parts {
    let (mut head, ()) = Response::new(()).into_parts();
    head.status = parts.status;
    head.version = parts.version;
    head.headers = parts.headers.clone();
    head
}

/// Holds the lease of a response that streams, and records it at the end of the stream.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
async fn keep<St: IdempotencyStore>(
    shared: Arc<Shared<St>>,
    guard: ReleaseGuard<St>,
    fingerprint: Fingerprint,
    head: response::Parts,
    verdict: Verdict,
    mut end: oneshot::Receiver<BodyEnd>,
    settled: oneshot::Sender<()>,
    permit: Option<InProgressPermit>,
) {
    let (store, config): (&St, &Config) = (&shared.store, &shared.config);
    let ended = {
        // Renewed from a task of its own: a client that reads slowly must not let the lease lapse.
        let renewal = keep_renewed(store, config, &guard.key, &guard.token);
        tokio::pin!(renewal);
        tokio::select! {
            biased;
            ended = &mut end => ended,
            () = &mut renewal => end.await,
        }
    };
    let settlement = match ended {
        Ok(BodyEnd { recording, how }) => settlement(config, verdict, &head, recording, how),
        // The body went without a word (its runtime is gone): it may have run, so never again.
        Err(_) => Settlement::Record(CompletedRecord::Broken {
            status: head.status,
        }),
    };
    settle(&shared, guard, &fingerprint, settlement, permit).await;
    // The client may be gone; then nobody waits.
    let _ = settled.send(());
}

/// What a streamed body's end means for its key.
fn settlement(
    config: &Config,
    verdict: Verdict,
    head: &response::Parts,
    recording: Recording,
    how: Ending,
) -> Settlement {
    let status = head.status;
    match how {
        Ending::Broke => Settlement::Record(CompletedRecord::Broken { status }),
        Ending::TooLarge | Ending::CutShort => {
            Settlement::Record(CompletedRecord::Tombstone { status })
        }
        Ending::Finished if !wants_record(config, verdict, head, &recording) => {
            Settlement::Release { status }
        }
        Ending::Finished if recording.overflowed() => {
            Settlement::Record(CompletedRecord::Tombstone { status })
        }
        Ending::Finished => Settlement::Record(CompletedRecord::Response(response_record(
            config, head, recording,
        ))),
    }
}

/// Completes or releases the key: one token-checked store call.
///
/// `permit` counts the key against its scope's cap until it is settled, which for a record
/// that has to be written again in the background is when that is done.
async fn settle<St: IdempotencyStore>(
    shared: &Arc<Shared<St>>,
    mut guard: ReleaseGuard<St>,
    fingerprint: &Fingerprint,
    settlement: Settlement,
    permit: Option<InProgressPermit>,
) {
    let config: &Config = &shared.config;
    let (key, token) = (guard.key, guard.token);
    config.durations.add(guard.since.elapsed());
    let record = match settlement {
        Settlement::Release { status } => {
            tracing::debug!(
                status = status.as_u16(),
                "idempotency: response not recordable; releasing"
            );
            config.observe(Outcome::Released);
            guard.release().await;
            return;
        }
        Settlement::Record(record) => record,
    };
    match record {
        CompletedRecord::Tombstone { .. } => {
            tracing::warn!(
                limit = config.record_limit,
                "idempotency: response too large to record; keeping a tombstone"
            );
        }
        CompletedRecord::Broken { .. } => {
            tracing::warn!("idempotency: response failed part-way; keeping a tombstone, the request will not run again");
        }
        CompletedRecord::Response(_) => {}
    }
    let completed = timed(
        config.store_timeout,
        shared
            .store
            .complete(&key, &token, fingerprint, &record, config.result_ttl),
    )
    .await;
    // Whatever `complete` says, the key is never released from here: the handler ran.
    guard.disarm();
    match completed {
        Ok(true) => {
            tracing::debug!("idempotency: recorded");
            config.observe(recorded(&record));
        }
        Ok(false) => lease_lost_before_completion(config),
        // Releasing now would let a retry run the handler again. The lease stays, so retries
        // get 409, and the record is written again in the background.
        Err(error) => {
            tracing::warn!(%error, "idempotency: could not record the response yet; retrying in the background");
            config.observe(Outcome::StoreFailed);
            let retry = record_later(Arc::clone(shared), key, token, *fingerprint, record, permit);
            tokio::spawn(retry.in_current_span());
        }
    }
}

/// What landing `record` in the store is called.
fn recorded(record: &CompletedRecord) -> Outcome {
    match record {
        CompletedRecord::Response(_) => Outcome::Recorded,
        CompletedRecord::Tombstone { .. } | CompletedRecord::Broken { .. } => Outcome::Tombstoned,
    }
}

/// The store refused a `complete`: another request holds the key now.
fn lease_lost_before_completion(config: &Config) {
    tracing::warn!("idempotency: lease lost before completion; the response was not recorded");
    config.observe(Outcome::LeaseLost);
}

const RECORD_RETRY_FIRST: Duration = Duration::from_millis(50);
const RECORD_RETRY_MAX: Duration = Duration::from_secs(1);

/// Writes a record whose `complete` failed (a store outage, a failover) until it lands, the
/// store refuses it, or a lease's length has gone by, renewing the lease meanwhile: a lease that
/// ran out under a record on its way would let a retry run the handler again (the simulation in
/// `tests/simulation.rs` found most second runs there). Token-checked like every `complete`:
/// once the lease is lost, it can only fail.
async fn record_later<St: IdempotencyStore>(
    shared: Arc<Shared<St>>,
    key: StoreKey,
    token: LeaseToken,
    fingerprint: Fingerprint,
    record: CompletedRecord,
    permit: Option<InProgressPermit>,
) {
    let (store, config): (&St, &Config) = (&shared.store, &shared.config);
    let retries = retry_complete(&shared, &key, &token, &fingerprint, &record, permit);
    // At once: the handler's last renewal may be a third of a lease ago, and the failed
    // `complete` took up to a store timeout.
    let renewal = keep_renewed_from_now(store, config, &key, &token);
    while_renewing(retries, renewal).await;
}

/// The retries of [`record_later`].
async fn retry_complete<St: IdempotencyStore>(
    shared: &Shared<St>,
    key: &StoreKey,
    token: &LeaseToken,
    fingerprint: &Fingerprint,
    record: &CompletedRecord,
    _permit: Option<InProgressPermit>,
) {
    let (store, config): (&St, &Config) = (&shared.store, &shared.config);
    let deadline = Instant::now() + config.lease_ttl;
    let mut delay = RECORD_RETRY_FIRST;
    let mut attempts = 1u32;
    while Instant::now() + delay < deadline {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RECORD_RETRY_MAX);
        attempts += 1;
        let call = store.complete(key, token, fingerprint, record, config.result_ttl);
        match timed(config.store_timeout, call).await {
            Ok(true) => {
                tracing::info!(attempts, "idempotency: recorded after retrying");
                config.observe(recorded(record));
                return;
            }
            Ok(false) => return lease_lost_before_completion(config),
            Err(error) => {
                tracing::debug!(%error, attempts, "idempotency: recording failed again")
            }
        }
    }
    tracing::error!(attempts, "idempotency: could not record the response; once its lease ends, a retry runs the handler again");
}
