//! Streamed responses at their edges, through a real hyper server where the edge is hyper's:
//! a body that panics part-way, a declared length, a client that leaves a stream that never
//! ends.

mod common;

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::{Layer, Service, ServiceExt};
use tower_idempotency::{
    BeginOutcome, CompletedRecord, Fingerprint, IdempotencyLayer, IdempotencyStore, LeaseToken,
    MemoryStore, RequestBody, StoreError, StoreKey,
};

use common::DEADLINE;

fn post(key: &str) -> Request<Full<Bytes>> {
    Request::post("/stream")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}

/// Calls `svc` until its answer is no longer 409 `in-progress`; the status, headers and body.
async fn until_settled<S, B>(svc: &mut S, key: &str) -> (StatusCode, http::HeaderMap, Bytes)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let response = svc.ready().await.unwrap().call(post(key)).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        let in_progress = std::str::from_utf8(&body)
            .unwrap_or("")
            .contains("#in-progress\"");
        if !in_progress {
            return (parts.status, parts.headers, body);
        }
        assert!(tokio::time::Instant::now() < deadline, "still in progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A body that panics on its third frame: the client's connection dies, and what the body might
/// yield if polled again is never recorded: the retry is told the response broke.
#[tokio::test]
async fn a_body_that_panics_part_way_is_never_resumed_or_recorded() {
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&runs);
    let handler = tower::service_fn(move |_req: Request<RequestBody<Full<Bytes>>>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            // The first frame waits (so the body streams); the panic leaves the stream able to
            // go on, as a plain `map` does: it must not be asked to.
            let first = stream::once(async {
                tokio::task::yield_now().await;
                0u32
            });
            let frames = first.chain(stream::iter(1..4u32)).map(|i| {
                assert!(i != 2, "the body panics on purpose");
                Ok::<_, Infallible>(Frame::data(Bytes::from(format!("[{i}]"))))
            });
            Ok::<_, Infallible>(Response::new(StreamBody::new(frames)))
        }
    });
    let mut svc = IdempotencyLayer::new(MemoryStore::new()).layer(handler);
    let first = svc.ready().await.unwrap().call(post("p")).await.unwrap();
    // As hyper's connection task would: it polls the body, and the panic ends the task.
    let reading = tokio::spawn(async move { first.into_body().collect().await.map(|_| ()) });
    assert!(reading.await.unwrap_err().is_panic());

    let (status, headers, body) = until_settled(&mut svc, "p").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body:?}");
    assert_eq!(headers["idempotent-replayed"], "true");
    assert!(std::str::from_utf8(&body)
        .unwrap()
        .contains("#response-broken\""));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// `MemoryStore` whose `complete` takes 300 ms: a client that gets the whole answer before the
/// record is written would see its immediate retry refused as in progress.
#[derive(Debug, Clone, Default)]
struct SlowComplete(MemoryStore);

impl IdempotencyStore for SlowComplete {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<BeginOutcome, StoreError> {
        self.0.begin(key, fingerprint, token, lease).await
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        fingerprint: &Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.0.complete(key, token, fingerprint, record, ttl).await
    }

    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<bool, StoreError> {
        self.0.release(key, token).await
    }

    async fn renew(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        self.0.renew(key, token, lease).await
    }
}

/// Serves a two-frame stream behind the layer over HTTP/1, with or without `Content-Length`.
async fn serve_stream(declared_length: bool) -> std::net::SocketAddr {
    let handler = tower::service_fn(
        move |_req: Request<RequestBody<hyper::body::Incoming>>| async move {
            let frames = [Bytes::from_static(b"hello"), Bytes::from_static(b" world")];
            let frames = stream::iter(frames).then(|data| async move {
                tokio::task::yield_now().await;
                Ok::<_, Infallible>(Frame::data(data))
            });
            let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
            if declared_length {
                response
                    .headers_mut()
                    .insert("content-length", http::HeaderValue::from_static("11"));
            }
            Ok::<_, Infallible>(response)
        },
    );
    let svc = IdempotencyLayer::new(SlowComplete::default()).layer(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let svc = hyper_util::service::TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let io = hyper_util::rt::TokioIo::new(tcp);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    addr
}

/// One POST over a fresh connection, read until its body is complete (by its length or its
/// last chunk, not by the connection's end): the raw answer.
async fn raw_post(addr: std::net::SocketAddr, key: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "POST /stream HTTP/1.1\r\nhost: test\r\nidempotency-key: {key}\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    let complete = |text: &str| {
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let length = head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length: ")
                .map(str::to_owned)
        });
        match length {
            Some(length) => body.len() >= length.trim().parse::<usize>().unwrap(),
            None => body.ends_with("0\r\n\r\n"),
        }
    };
    while !complete(&String::from_utf8_lossy(&answer)) {
        let read = tokio::time::timeout(DEADLINE, tcp.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(
            read > 0,
            "connection closed early: {}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&chunk[..read]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether the answer is recorded before the client has all of it, with or without a declared
/// length (hyper stops reading a body once its declared length is out): the retry sent the
/// moment the first answer is complete is replayed, not refused as in progress.
#[tokio::test]
async fn a_client_that_has_the_whole_stream_is_replayed_at_once_with_or_without_a_length() {
    for declared_length in [false, true] {
        let addr = serve_stream(declared_length).await;
        let first = raw_post(addr, "k").await;
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(
            first.contains("hello") && first.contains(" world"),
            "{first}"
        );
        let retry = raw_post(addr, "k").await;
        assert!(
            retry.starts_with("HTTP/1.1 200") && retry.contains("idempotent-replayed: true"),
            "declared length {declared_length}: {retry}"
        );
        assert!(
            retry.contains("hello") && retry.contains(" world"),
            "{retry}"
        );
    }
}

/// A stream that never ends, whose client left: it is read for the drain limit, then dropped,
/// and the key is a tombstone (it ran, so it never runs again), not held for ever.
#[tokio::test]
async fn a_stream_that_never_ends_is_dropped_after_the_drain_limit() {
    struct Alive(Arc<AtomicUsize>);
    impl Drop for Alive {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let alive = Arc::new(AtomicUsize::new(0));
    let streams = Arc::clone(&alive);
    let handler = tower::service_fn(move |_req: Request<RequestBody<Full<Bytes>>>| {
        streams.fetch_add(1, Ordering::SeqCst);
        let guard = Alive(Arc::clone(&streams));
        async move {
            let first =
                stream::once(async { Ok::<_, Infallible>(Frame::data(Bytes::from("event"))) });
            // Holds `guard` for as long as the stream lives, and never ends.
            let idle = stream::pending().map(move |never: Infallible| {
                let _ = &guard;
                match never {}
            });
            Ok::<_, Infallible>(Response::new(StreamBody::new(first.chain(idle))))
        }
    });
    let mut svc = IdempotencyLayer::new(MemoryStore::new())
        .with_drain_limit(Duration::from_millis(200))
        .layer(handler);
    let first = svc.ready().await.unwrap().call(post("idle")).await.unwrap();
    let mut body = Box::pin(first.into_body());
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "event");
    drop(body);

    let (status, _, body) = until_settled(&mut svc, "idle").await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(std::str::from_utf8(&body)
        .unwrap()
        .contains("#response-not-recorded\""));
    common::eventually("the stream to be dropped", || {
        alive.load(Ordering::SeqCst) == 0
    })
    .await;
}
