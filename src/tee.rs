//! Recording a response while it streams to its client.
//!
//! A first execution's body goes to the client frame by frame as the handler makes it, and a
//! copy of each frame is kept (up to the record limit) for the record. A task of the protocol's
//! (the keeper) holds the lease meanwhile; the body tells it how the stream ended, and the
//! body's end (its trailers, or its last `None`) reaches the client only once the record is
//! written, so a client that saw the whole answer and retries at once is replayed, not refused.

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::{
    frames::{plus, Frames},
    response::RecordedResponse,
};

/// The copy of a response body kept for its record: its frames up to the limit, and its
/// trailers.
#[derive(Debug)]
pub(crate) struct Recording {
    /// Frames kept apart only when there is more than one: most bodies are one frame.
    first: Option<Bytes>,
    more: Vec<Bytes>,
    len: usize,
    limit: usize,
    overflowed: bool,
    trailers: Option<HeaderMap>,
}

impl Recording {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            first: None,
            more: Vec::new(),
            len: 0,
            limit,
            overflowed: false,
            trailers: None,
        }
    }

    /// Keeps a copy of `data`, unless the copy is already over the limit. The frames kept so far
    /// stay (the client may still need them), but no more are added once it is over.
    pub(crate) fn push(&mut self, data: &Bytes) {
        if self.overflowed || data.is_empty() {
            return;
        }
        self.len += data.len();
        self.overflowed = self.len > self.limit;
        match &self.first {
            None => self.first = Some(data.clone()),
            Some(_) => self.more.push(data.clone()),
        }
    }

    pub(crate) fn push_trailers(&mut self, trailers: HeaderMap) {
        match &mut self.trailers {
            Some(kept) => kept.extend(trailers),
            None => self.trailers = Some(trailers),
        }
    }

    /// Whether the body went past the record limit.
    pub(crate) fn overflowed(&self) -> bool {
        self.overflowed
    }

    pub(crate) fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    /// The frames kept so far, in order.
    pub(crate) fn frames(&self) -> Vec<Bytes> {
        self.first.iter().chain(&self.more).cloned().collect()
    }

    /// The record of a body that ended within the limit, headers and trailers as given.
    pub(crate) fn into_response(
        self,
        status: StatusCode,
        headers: HeaderMap,
        trailers: Option<HeaderMap>,
    ) -> RecordedResponse {
        let frames = self.first.into_iter().chain(self.more);
        RecordedResponse::from_frames(status, headers, frames).with_trailers(trailers)
    }
}

/// How a streamed body ended, for the keeper.
#[derive(Debug)]
pub(crate) enum Ending {
    /// It reached its end; the recording has its trailers, if any.
    Finished,
    /// The record decision was made at the head and the copy went past the limit: the key is
    /// completed as a tombstone now, while the rest streams on.
    TooLarge,
    /// The client left and the copy is past the limit: nothing more worth reading.
    CutShort,
    /// The body failed.
    Broke,
}

/// What the body hands the keeper at its end.
#[derive(Debug)]
pub(crate) struct BodyEnd {
    pub(crate) recording: Recording,
    pub(crate) how: Ending,
}

/// The protocol's side of a tee: where to send the end, and the signal that the record is
/// written.
#[derive(Debug)]
pub(crate) struct Keeper {
    pub(crate) end: oneshot::Sender<BodyEnd>,
    pub(crate) settled: oneshot::Receiver<()>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Frames are forwarded and copied.
    Recording,
    /// The keeper has the end already (a tombstone): frames are only forwarded.
    Passing,
    /// The body ended; its last frame waits until the record is written.
    Holding,
    Done,
}

/// A response body that forwards every frame as it comes and keeps a copy for the record.
///
/// Its end waits until the keeper has written the record, so a client that saw the whole
/// answer and retries at once is replayed, not refused as in progress. The end is the trailers
/// or the last `None`; when the response declares its length (hyper stops reading once that
/// many bytes are out), it is the last data frame.
pub(crate) struct Tee<B> {
    /// `None` only once moved to a draining task.
    body: Option<Pin<Box<B>>>,
    /// Frames read before the body first had to wait, already copied, not yet forwarded.
    pending: Frames,
    recording: Recording,
    /// Whether the record decision waits for the trailers (gRPC): then a copy past the limit
    /// does not end the recording early, since the final status may still release the key.
    decided_at_end: bool,
    /// Bytes still to send of a declared length (`Content-Length`, or an exact size).
    to_send: Option<u64>,
    end: Option<oneshot::Sender<BodyEnd>>,
    settled: oneshot::Receiver<()>,
    /// The last data frame of a declared length, and the trailers: held until the record is in.
    held_data: Option<Bytes>,
    held: Option<HeaderMap>,
    phase: Phase,
    /// Set while the inner body is polled: still set in `drop` if it panicked.
    polling: bool,
    /// Set once the client is gone and a task drains the rest.
    detached: bool,
    /// How long a draining task reads before it gives up.
    drain_limit: Duration,
    /// Moves the tee to a task that drains it; made where `B: Send + 'static` is known.
    detach: fn(Tee<B>),
}

impl<B> std::fmt::Debug for Tee<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tee")
            .field("phase", &self.phase)
            .field("decided_at_end", &self.decided_at_end)
            .field("to_send", &self.to_send)
            .field("detached", &self.detached)
            .finish_non_exhaustive()
    }
}

/// What a [`Tee`] is told when it is made.
#[derive(Debug)]
pub(crate) struct TeeSettings {
    /// See [`Tee::decided_at_end`].
    pub(crate) decided_at_end: bool,
    /// The response's `Content-Length`, if it has one.
    pub(crate) declared_len: Option<u64>,
    pub(crate) drain_limit: Duration,
}

impl<B: Body> Tee<B> {
    pub(crate) fn new(
        body: Pin<Box<B>>,
        recording: Recording,
        settings: TeeSettings,
        keeper: Keeper,
        detach: fn(Tee<B>),
    ) -> Self {
        let pending = Frames::queue(recording.frames());
        let exact = body.size_hint().exact();
        let to_send = settings
            .declared_len
            .or_else(|| exact.map(|rest| rest + pending.remaining()));
        Self {
            body: Some(body),
            pending,
            recording,
            decided_at_end: settings.decided_at_end,
            to_send,
            end: Some(keeper.end),
            settled: keeper.settled,
            held_data: None,
            held: None,
            phase: Phase::Recording,
            polling: false,
            detached: false,
            drain_limit: settings.drain_limit,
            detach,
        }
    }
}

impl<B> Tee<B> {
    /// Hands the keeper the recording and how the body ended; once only.
    fn end(&mut self, how: Ending) {
        if let Some(end) = self.end.take() {
            let recording = std::mem::replace(&mut self.recording, Recording::new(0));
            // The keeper is gone only if its runtime is: nothing left to tell.
            let _ = end.send(BodyEnd { recording, how });
        }
    }

    fn copy(&mut self, data: &Bytes) {
        if self.phase != Phase::Recording {
            return;
        }
        self.recording.push(data);
        if self.recording.overflowed() && (!self.decided_at_end || self.detached) {
            let how = if self.decided_at_end {
                Ending::CutShort
            } else {
                Ending::TooLarge
            };
            self.end(how);
            self.phase = Phase::Passing;
        }
    }

    /// The body ended, with `trailers` as its last frame if it had them. Its end waits for the
    /// record, whether the keeper learns of the end now or learnt earlier (a tombstone).
    fn finish(&mut self, trailers: Option<HeaderMap>) {
        self.held = trailers;
        if self.phase == Phase::Recording {
            if let Some(trailers) = &self.held {
                self.recording.push_trailers(trailers.clone());
            }
            self.end(Ending::Finished);
        }
        self.phase = Phase::Holding;
    }

    /// Whether `data`, about to be sent, is the last of a declared length.
    fn completes_declared_length(&mut self, data: &Bytes) -> bool {
        match &mut self.to_send {
            Some(left) if !data.is_empty() => {
                *left = left.saturating_sub(data.len() as u64);
                *left == 0
            }
            _ => false,
        }
    }

    /// Whether draining further can still change the record (for a tee whose client left).
    fn still_recording(&self) -> bool {
        self.phase == Phase::Recording
    }
}

impl<B: Body<Data = Bytes>> Tee<B> {
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        self.polling = true;
        let polled = self.poll_next(cx);
        self.polling = false;
        polled
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        loop {
            match self.phase {
                Phase::Done => {
                    let data = self.held_data.take().map(Frame::data);
                    let last = data.or_else(|| self.held.take().map(Frame::trailers));
                    return Poll::Ready(last.map(Ok));
                }
                Phase::Holding => {
                    // An error means the keeper is gone with its runtime: end all the same.
                    let _ = ready!(Pin::new(&mut self.settled).poll(cx));
                    self.phase = Phase::Done;
                    continue;
                }
                Phase::Recording | Phase::Passing => {}
            }
            let data = match self.pending.next() {
                Some(data) => data,
                None => {
                    let Some(body) = self.body.as_mut() else {
                        return Poll::Ready(None);
                    };
                    match ready!(body.as_mut().poll_frame(cx)) {
                        None => {
                            self.finish(None);
                            continue;
                        }
                        Some(Err(error)) => {
                            self.end(Ending::Broke);
                            self.phase = Phase::Done;
                            self.held_data = None;
                            return Poll::Ready(Some(Err(error)));
                        }
                        Some(Ok(frame)) => match frame.into_data() {
                            Ok(data) => {
                                self.copy(&data);
                                data
                            }
                            // Trailers are a body's last frame.
                            Err(frame) => {
                                if let Ok(trailers) = frame.into_trailers() {
                                    self.finish(Some(trailers));
                                }
                                continue;
                            }
                        },
                    }
                }
            };
            if self.completes_declared_length(&data) {
                // The client stops reading here: see the body's end first, and record it.
                self.held_data = Some(data);
                continue;
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
    }

    /// Never the inner body's word: the end must be polled, so the record gets written.
    pub(crate) fn is_end_stream(&self) -> bool {
        self.phase == Phase::Done
            && self.held_data.is_none()
            && self.held.is_none()
            && self.pending.is_empty()
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        let held = self.held_data.as_ref().map_or(0, |d| d.len() as u64);
        let buffered = self.pending.remaining() + held;
        match (&self.body, self.phase) {
            (Some(body), Phase::Recording | Phase::Passing) => plus(body.size_hint(), buffered),
            _ => SizeHint::with_exact(buffered),
        }
    }
}

impl<B> Drop for Tee<B> {
    /// A client that leaves mid-stream does not stop the recording: the rest of the body is
    /// drained on a task of its own (to the record limit, for at most the drain limit) and
    /// recorded.
    fn drop(&mut self) {
        if self.phase != Phase::Recording || self.detached {
            return;
        }
        if self.polling {
            // The body panicked: what it might yield if polled again was never sent, so it must
            // never be recorded. The client saw a broken answer.
            return self.end(Ending::Broke);
        }
        if self.recording.overflowed() {
            // Decided at the end, and past the limit already: nothing left worth reading.
            return self.end(Ending::CutShort);
        }
        let (settled_tx, settled) = oneshot::channel();
        drop(settled_tx);
        let detached = Tee {
            body: self.body.take(),
            pending: std::mem::take(&mut self.pending),
            recording: std::mem::replace(&mut self.recording, Recording::new(0)),
            decided_at_end: self.decided_at_end,
            to_send: None,
            end: self.end.take(),
            settled,
            held_data: None,
            held: None,
            phase: Phase::Recording,
            polling: false,
            detached: true,
            drain_limit: self.drain_limit,
            detach: self.detach,
        };
        (self.detach)(detached);
    }
}

/// Reads a detached tee to its end, until nothing more can change its record, or for at most
/// its drain limit (a stream that never ends, an idle one): then the key is a tombstone.
async fn drain<B: Body<Data = Bytes>>(mut tee: Tee<B>) {
    let limit = tee.drain_limit;
    let to_the_end = std::future::poll_fn(|cx| loop {
        if !tee.still_recording() {
            return Poll::Ready(());
        }
        match tee.poll_frame(cx) {
            Poll::Ready(None) => return Poll::Ready(()),
            Poll::Ready(Some(_)) => {}
            Poll::Pending => return Poll::Pending,
        }
    });
    if tokio::time::timeout(limit, to_the_end).await.is_err() {
        tracing::warn!(limit = ?limit, "idempotency: gave up reading a response whose client left; keeping a tombstone");
        tee.end(Ending::CutShort);
    }
}

/// Moves a tee whose client left to a task that drains it.
pub(crate) fn detach<B>(tee: Tee<B>)
where
    B: Body<Data = Bytes> + Send + 'static,
{
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn(drain(tee).in_current_span())),
        // Dropping it tells the keeper the body vanished: a tombstone, never a second run.
        Err(_) => tracing::warn!(
            "idempotency: no runtime to finish reading a response whose client went away"
        ),
    }
}
