//! The client layer's policy, driven through a scripted inner client (no sockets): what is
//! retried, with which key and body, after how long (tokio's paused clock), and when it stops.

use std::{
    collections::HashSet,
    convert::Infallible,
    io,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{http::HeaderMap, response::IntoResponse, routing, Router};
use bytes::Bytes;
use futures_util::stream;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_idempotency::{
    client::{Attempts, IdempotentRetryLayer, RetryBody, RetryPolicy},
    IdempotencyLayer, KeyFormat, MemoryStore,
};

/// What one attempt answers: a status with an optional `Retry-After`, or a connection error.
#[derive(Clone, Copy)]
enum Answer {
    Status(u16),
    StatusAfter(u16, &'static str),
    /// A trailers-only gRPC answer: HTTP 200, `grpc-status`, maybe a pushback in ms.
    Grpc(u32, Option<&'static str>),
    Refused,
}

/// One request as the scripted client saw it.
#[derive(Clone, Debug)]
struct Seen {
    key: Option<HeaderValue>,
    body: Bytes,
    at: Instant,
}

type Log = Arc<Mutex<Vec<Seen>>>;

/// An inner "client" that answers attempt n with `script[n]` (the last one over and over).
#[derive(Clone)]
struct Scripted {
    script: Arc<Vec<Answer>>,
    log: Log,
}

fn scripted(script: Vec<Answer>) -> (Scripted, Log) {
    let log = Log::default();
    let service = Scripted {
        script: Arc::new(script),
        log: log.clone(),
    };
    (service, log)
}

impl<B> Service<Request<RetryBody<B>>> for Scripted
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: std::fmt::Debug + Send,
{
    type Response = Response<String>;
    type Error = io::Error;
    type Future = futures_util::future::BoxFuture<'static, io::Result<Response<String>>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RetryBody<B>>) -> Self::Future {
        let (log, script) = (self.log.clone(), self.script.clone());
        Box::pin(async move {
            let key = req.headers().get("idempotency-key").cloned();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let n = {
                let mut seen = log.lock().unwrap();
                seen.push(Seen {
                    key,
                    body,
                    at: Instant::now(),
                });
                seen.len() - 1
            };
            let (status, retry_after) = match script[n.min(script.len() - 1)] {
                Answer::Refused => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        "connection refused",
                    ))
                }
                Answer::Status(status) => (status, None),
                Answer::StatusAfter(status, after) => (status, Some(after)),
                Answer::Grpc(code, pushback) => {
                    let mut response = Response::builder()
                        .header(header::CONTENT_TYPE, "application/grpc")
                        .header("grpc-status", code);
                    if let Some(ms) = pushback {
                        response = response.header("grpc-retry-pushback-ms", ms);
                    }
                    return Ok(response.body(String::new()).unwrap());
                }
            };
            let mut response = Response::builder().status(status);
            if let Some(after) = retry_after {
                response = response.header(header::RETRY_AFTER, after);
            }
            Ok(response.body(format!("answer {n}")).unwrap())
        })
    }
}

fn order(body: &'static str) -> Request<String> {
    Request::post("http://api.test/orders")
        .body(body.to_owned())
        .unwrap()
}

fn attempts<B>(response: &Response<B>) -> Attempts {
    response
        .extensions()
        .get::<Attempts>()
        .expect("an Attempts extension")
        .clone()
}

fn seen(log: &Log) -> Vec<Seen> {
    log.lock().unwrap().clone()
}

/// Every attempt of one call carried this one key.
fn one_key(seen: &[Seen]) -> HeaderValue {
    let key = seen[0].key.clone().expect("a key on the first attempt");
    assert!(seen.iter().all(|s| s.key.as_ref() == Some(&key)));
    key
}

#[tokio::test(start_paused = true)]
async fn retries_conflicts_rate_limits_and_server_errors_with_the_same_key() {
    for status in [409, 429, 500, 502, 503, 504] {
        let (inner, log) = scripted(vec![Answer::Status(status), Answer::Status(201)]);
        let client = IdempotentRetryLayer::default().layer(inner);
        let response = client.oneshot(order(r#"{"amount":1}"#)).await.unwrap();
        assert_eq!(response.status(), 201, "after {status}");
        let seen = seen(&log);
        assert_eq!(seen.len(), 2, "after {status}");
        let key = one_key(&seen);
        let attempts = attempts(&response);
        assert_eq!(
            (attempts.key(), attempts.count(), attempts.definite()),
            (&key, 2, true)
        );
    }
}

#[tokio::test(start_paused = true)]
async fn never_retries_answers_a_retry_would_not_change() {
    for status in [200, 201, 204, 303, 400, 401, 403, 404, 410, 413, 422] {
        let (inner, log) = scripted(vec![Answer::Status(status), Answer::Status(201)]);
        let client = IdempotentRetryLayer::default().layer(inner);
        let response = client.oneshot(order("{}")).await.unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(seen(&log).len(), 1, "{status} was sent again");
        let attempts = attempts(&response);
        assert_eq!((attempts.count(), attempts.definite()), (1, true));
    }
}

#[tokio::test(start_paused = true)]
async fn retries_connection_errors_before_a_response() {
    let (inner, log) = scripted(vec![Answer::Refused, Answer::Refused, Answer::Status(201)]);
    let client = IdempotentRetryLayer::default().layer(inner);
    let response = client.oneshot(order("{}")).await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(attempts(&response).count(), 3);
    one_key(&seen(&log));
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_the_last_attempt_with_the_last_answer_or_error() {
    let policy = RetryPolicy::default().with_max_attempts(3);
    let (inner, log) = scripted(vec![Answer::Status(503)]);
    let response = IdempotentRetryLayer::new(policy.clone())
        .layer(inner)
        .oneshot(order("{}"))
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.body(), "answer 2");
    let attempts = attempts(&response);
    assert_eq!((attempts.count(), attempts.definite()), (3, false));
    assert_eq!(seen(&log).len(), 3);

    let (inner, log) = scripted(vec![Answer::Refused]);
    let error = IdempotentRetryLayer::new(policy)
        .layer(inner)
        .oneshot(order("{}"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
    assert_eq!(seen(&log).len(), 3);
}

/// The server side's `409` for a key in progress carries `Retry-After`; asking again at once
/// would only get another 409.
#[tokio::test(start_paused = true)]
async fn a_409_with_retry_after_3_is_retried_after_3_seconds_not_at_once() {
    // A real axum router as the server, answering the first request 409 with Retry-After: 3.
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let log = arrivals.clone();
    let server = Router::new().route(
        "/orders",
        routing::post(move || {
            let log = log.clone();
            async move {
                let mut arrivals = log.lock().unwrap();
                arrivals.push(Instant::now());
                if arrivals.len() == 1 {
                    (
                        StatusCode::CONFLICT,
                        [(header::RETRY_AFTER, "3")],
                        "in progress",
                    )
                        .into_response()
                } else {
                    (StatusCode::CREATED, "created").into_response()
                }
            }
        }),
    );
    let client = IdempotentRetryLayer::default().layer(server);
    let started = Instant::now();
    let response = client.oneshot(order("{}")).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let arrivals = arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), 2);
    let waited = arrivals[1] - arrivals[0];
    // The first retry's backoff is at most 100 ms: the server's 3 s is what counts.
    assert_eq!(waited, Duration::from_secs(3), "retried after {waited:?}");
    assert_eq!(started.elapsed(), Duration::from_secs(3));
}

/// The whole protocol in one process: a duplicate of a call still running on the server gets
/// 409 with the server's `Retry-After`, waits, and gets the first call's recorded answer.
#[tokio::test(start_paused = true)]
async fn a_duplicate_of_a_call_in_progress_waits_and_gets_the_recorded_answer() {
    let runs = Arc::new(Mutex::new(0));
    let counter = runs.clone();
    let server = Router::new()
        .route(
            "/orders",
            routing::post(move || {
                let counter = counter.clone();
                async move {
                    let n = {
                        let mut runs = counter.lock().unwrap();
                        *runs += 1;
                        *runs
                    };
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    (StatusCode::CREATED, format!("order {n}"))
                }
            }),
        )
        .layer(
            IdempotencyLayer::new(MemoryStore::new())
                .with_key_required(true)
                .with_key_format(KeyFormat::Uuid)
                .with_lease_ttl(Duration::from_secs(5)),
        );
    let client = IdempotentRetryLayer::default().layer(server);
    let key = tower_idempotency::client::mint_key();
    let call = || {
        let mut req = order("{}");
        req.headers_mut().insert("idempotency-key", key.clone());
        client.clone().oneshot(req)
    };
    let first = tokio::spawn(call());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let duplicate = call().await.unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(duplicate.status(), StatusCode::CREATED);
    assert_eq!(duplicate.headers()["idempotent-replayed"], "true");
    // The server's Retry-After is how long such calls take, at least 1 s: 409 at 0.1 s and at
    // 1.1 s, the replay at 2.1 s (paused time).
    assert_eq!(attempts(&duplicate).count(), 3);
    assert_eq!(*runs.lock().unwrap(), 1);
    let body =
        |r: Response<axum::body::Body>| async { r.into_body().collect().await.unwrap().to_bytes() };
    assert_eq!(body(duplicate).await, body(first).await);
}

/// gRPC answers 200 to everything: a trailers-only answer's `grpc-status` decides, and
/// `grpc-retry-pushback-ms` is its `Retry-After` (the server side's ABORTED for a key in
/// progress carries one).
#[tokio::test(start_paused = true)]
async fn a_grpc_aborted_with_a_pushback_is_retried_after_it_and_not_found_is_final() {
    let (inner, log) = scripted(vec![Answer::Grpc(10, Some("3000")), Answer::Grpc(0, None)]);
    let mut call = Request::post("http://api.test/orders.Orders/Create")
        .header(header::CONTENT_TYPE, "application/grpc")
        .body(String::from("\0\0\0\0\0"))
        .unwrap();
    call.headers_mut()
        .insert("te", HeaderValue::from_static("trailers"));
    let response = IdempotentRetryLayer::default()
        .layer(inner)
        .oneshot(call)
        .await
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "0");
    let attempts_seen = seen(&log);
    assert_eq!(attempts_seen.len(), 2);
    assert_eq!(
        attempts_seen[1].at - attempts_seen[0].at,
        Duration::from_secs(3)
    );
    one_key(&attempts_seen);

    for code in [3, 5, 6, 8] {
        let (inner, log) = scripted(vec![Answer::Grpc(code, None), Answer::Grpc(0, None)]);
        let call = Request::post("/orders.Orders/Create")
            .header(header::CONTENT_TYPE, "application/grpc")
            .body(String::new())
            .unwrap();
        let response = IdempotentRetryLayer::default()
            .layer(inner)
            .oneshot(call)
            .await
            .unwrap();
        assert_eq!(response.headers()["grpc-status"], code.to_string().as_str());
        assert_eq!(seen(&log).len(), 1, "grpc-status {code} was sent again");
        assert!(attempts(&response).definite());
    }
}

/// The same with the server side's gRPC dialect: a duplicate of a gRPC call in progress gets
/// ABORTED with `grpc-retry-pushback-ms`, waits that long, and gets the recorded answer.
#[tokio::test(start_paused = true)]
async fn a_grpc_duplicate_in_progress_waits_out_the_pushback_and_gets_the_recorded_answer() {
    let runs = Arc::new(Mutex::new(0));
    let counter = runs.clone();
    let server = Router::new()
        .route(
            "/orders.Orders/Create",
            routing::post(move || {
                let counter = counter.clone();
                async move {
                    *counter.lock().unwrap() += 1;
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", HeaderValue::from_static("0"));
                    let frames: Vec<Result<_, Infallible>> = vec![
                        Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\x02ok"))),
                        Ok(Frame::trailers(trailers)),
                    ];
                    (
                        [(header::CONTENT_TYPE, "application/grpc")],
                        axum::body::Body::new(StreamBody::new(stream::iter(frames))),
                    )
                }
            }),
        )
        .layer(IdempotencyLayer::new(MemoryStore::new()).with_lease_ttl(Duration::from_secs(5)));
    let client = IdempotentRetryLayer::default().layer(server);
    let key = tower_idempotency::client::mint_key();
    let call = || {
        let req = Request::post("/orders.Orders/Create")
            .header(header::CONTENT_TYPE, "application/grpc")
            .header("idempotency-key", key.clone())
            .body(String::from("\0\0\0\0\0"))
            .unwrap();
        client.clone().oneshot(req)
    };
    let first = tokio::spawn(call());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let duplicate = call().await.unwrap();
    let waited = started.elapsed();
    first.await.unwrap().unwrap();
    // The pushback is how long such calls take, at least 1 s (none has finished yet): ABORTED
    // at 0.1 s and at 1.1 s, the replay at 2.1 s; not at once, and not the 5 s lease.
    assert_eq!(attempts(&duplicate).count(), 3);
    assert_eq!(waited, Duration::from_secs(2), "{waited:?}");
    assert_eq!(duplicate.headers()["idempotent-replayed"], "true");
    let body = duplicate.into_body().collect().await.unwrap();
    assert_eq!(body.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(*runs.lock().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_capped_and_an_http_date_is_read() {
    let policy = RetryPolicy::default().with_max_retry_after(Duration::from_secs(5));
    let (inner, log) = scripted(vec![Answer::StatusAfter(503, "3600"), Answer::Status(201)]);
    IdempotentRetryLayer::new(policy)
        .layer(inner)
        .oneshot(order("{}"))
        .await
        .unwrap();
    let capped = seen(&log);
    assert_eq!(capped[1].at - capped[0].at, Duration::from_secs(5));

    // A date in the past asks for no wait: the backoff (at most 100 ms) applies.
    let (inner, log) = scripted(vec![
        Answer::StatusAfter(429, "Sun, 06 Nov 1994 08:49:37 GMT"),
        Answer::Status(201),
    ]);
    IdempotentRetryLayer::default()
        .layer(inner)
        .oneshot(order("{}"))
        .await
        .unwrap();
    let seen = seen(&log);
    assert!(seen[1].at - seen[0].at <= Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn backs_off_exponentially_with_full_jitter() {
    let policy = RetryPolicy::default()
        .with_max_attempts(8)
        .with_backoff(Duration::from_millis(100), Duration::from_millis(1000));
    let (inner, log) = scripted(vec![Answer::Status(500)]);
    IdempotentRetryLayer::new(policy)
        .layer(inner)
        .oneshot(order("{}"))
        .await
        .unwrap();
    let seen = seen(&log);
    assert_eq!(seen.len(), 8);
    let ceilings = [100, 200, 400, 800, 1000, 1000, 1000];
    for (n, pair) in seen.windows(2).enumerate() {
        let waited = pair[1].at - pair[0].at;
        assert!(
            waited <= Duration::from_millis(ceilings[n]),
            "retry {} waited {waited:?}",
            n + 1
        );
    }
}

#[tokio::test(start_paused = true)]
async fn starts_no_retry_past_the_deadline() {
    let policy = RetryPolicy::default()
        .with_max_attempts(100)
        .with_deadline(Duration::from_secs(15));
    let (inner, log) = scripted(vec![Answer::StatusAfter(503, "10")]);
    let started = Instant::now();
    let response = IdempotentRetryLayer::new(policy)
        .layer(inner)
        .oneshot(order("{}"))
        .await
        .unwrap();
    // 0 s, 10 s; a third attempt would start at 20 s.
    assert_eq!(seen(&log).len(), 2);
    assert_eq!(attempts(&response).count(), 2);
    assert_eq!(started.elapsed(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn the_body_is_sent_again_whole_on_every_attempt() {
    let frames: Vec<Result<_, Infallible>> = ["{\"cust", "omer\": ", "\"C1\"}"]
        .into_iter()
        .map(|part| Ok(Frame::data(Bytes::from_static(part.as_bytes()))))
        .collect();
    let body = StreamBody::new(stream::iter(frames));
    let (inner, log) = scripted(vec![
        Answer::Refused,
        Answer::Status(502),
        Answer::Status(201),
    ]);
    let req = Request::post("/orders").body(body).unwrap();
    let response = IdempotentRetryLayer::default()
        .layer(inner)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let seen = seen(&log);
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.body == r#"{"customer": "C1"}"#));
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_limit_is_sent_once_with_its_key() {
    let policy = RetryPolicy::default().with_body_limit(8);
    let (inner, log) = scripted(vec![Answer::Status(503), Answer::Status(201)]);
    let req = Request::post("/uploads")
        .body(Full::new(Bytes::from_static(b"0123456789abcdef")))
        .unwrap();
    let response = IdempotentRetryLayer::new(policy)
        .layer(inner)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let attempts = attempts(&response);
    assert_eq!((attempts.count(), attempts.definite()), (1, false));
    let seen = seen(&log);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, "0123456789abcdef");
    assert_eq!(seen[0].key.as_ref(), Some(attempts.key()));
}

#[tokio::test(start_paused = true)]
async fn methods_not_covered_pass_straight_through() {
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        let (inner, log) = scripted(vec![Answer::Status(503), Answer::Status(200)]);
        let req = Request::builder()
            .method(method.clone())
            .uri("/orders")
            .body(String::new())
            .unwrap();
        let response = IdempotentRetryLayer::default()
            .layer(inner)
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(response.status(), 503, "{method}");
        assert!(response.extensions().get::<Attempts>().is_none());
        let seen = seen(&log);
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].key, None);
    }
    // PUT retried once a policy covers it.
    let policy = RetryPolicy::default().with_methods([Method::PUT]);
    let (inner, log) = scripted(vec![Answer::Status(503), Answer::Status(200)]);
    let req = Request::put("/orders/1").body(String::new()).unwrap();
    let response = IdempotentRetryLayer::new(policy)
        .layer(inner)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    one_key(&seen(&log));
}

#[tokio::test(start_paused = true)]
async fn each_call_gets_a_fresh_uuid_key_and_a_key_the_caller_set_is_kept() {
    let (inner, log) = scripted(vec![Answer::Status(201)]);
    let client = IdempotentRetryLayer::default().layer(inner);
    for _ in 0..20 {
        client.clone().oneshot(order("{}")).await.unwrap();
    }
    let keys: HashSet<_> = seen(&log).into_iter().map(|s| s.key.unwrap()).collect();
    assert_eq!(keys.len(), 20);
    assert!(keys
        .iter()
        .all(|k| KeyFormat::Uuid.matches(k.to_str().unwrap())));

    let (inner, log) = scripted(vec![Answer::Status(409), Answer::Status(201)]);
    let mut req = order("{}");
    req.headers_mut()
        .insert("idempotency-key", HeaderValue::from_static("order-7"));
    let response = IdempotentRetryLayer::default()
        .layer(inner)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(one_key(&seen(&log)), "order-7");
    assert_eq!(attempts(&response).key(), "order-7");
}

#[tokio::test(start_paused = true)]
async fn another_header_name_carries_the_key() {
    let policy =
        RetryPolicy::default().with_header_name(header::HeaderName::from_static("x-request-key"));
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let log = seen.clone();
    let inner = tower::service_fn(move |req: Request<RetryBody<String>>| {
        log.lock().unwrap().push(req.headers().clone());
        async { Ok::<_, Infallible>(Response::new(String::new())) }
    });
    IdempotentRetryLayer::new(policy)
        .layer(inner)
        .oneshot(order("{}"))
        .await
        .unwrap();
    let headers = &seen.lock().unwrap()[0];
    assert!(headers.get("idempotency-key").is_none());
    assert_eq!(headers["x-request-key"].len(), 36);
}

/// `poll_ready` of the inner client passes through, and each retry readies its clone again
/// before calling it, as tower requires.
#[tokio::test(start_paused = true)]
async fn every_attempt_calls_a_readied_service() {
    let (inner, log) = scripted(vec![
        Answer::Status(503),
        Answer::Refused,
        Answer::Status(201),
    ]);
    let mut client = ServiceBuilder::new()
        .layer(IdempotentRetryLayer::default())
        .service(MustBeReady {
            inner,
            ready: false,
        });
    let response = ServiceExt::<Request<String>>::ready(&mut client)
        .await
        .unwrap()
        .call(order("{}"))
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(seen(&log).len(), 3);
}

/// Panics when called without a `poll_ready` first; a clone starts unready.
struct MustBeReady<S> {
    inner: S,
    ready: bool,
}

impl<S: Clone> Clone for MustBeReady<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            ready: false,
        }
    }
}

impl<S: Service<R>, R> Service<R> for MustBeReady<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.ready = true;
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        assert!(std::mem::take(&mut self.ready), "called without poll_ready");
        self.inner.call(req)
    }
}

#[tokio::test(start_paused = true)]
async fn each_attempt_logs_one_event_with_the_key() {
    let lines = captured_logs();
    let (inner, _log) = scripted(vec![
        Answer::Refused,
        Answer::Status(503),
        Answer::Status(201),
    ]);
    let response = IdempotentRetryLayer::default()
        .layer(inner)
        .oneshot(order("{}"))
        .await
        .unwrap();
    let key = attempts(&response).key().to_str().unwrap().to_owned();
    // Other tests of this binary log too, each with its own key.
    let text = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter(|line| line.contains(&format!("key={key}")))
        .collect();
    assert_eq!(events.len(), 3, "{text}");
    for (n, event) in events.iter().enumerate() {
        assert!(event.contains(&format!("attempt={}", n + 1)), "{event}");
    }
    assert!(events[0].contains("INFO") && events[0].contains("connection refused"));
    assert!(events[1].contains("INFO") && events[1].contains("503"));
    assert!(events[2].contains("DEBUG") && events[2].contains("201"));
}

/// Every log line of this test binary from now on. Global, not scoped to one test: tracing
/// caches per call site whether anyone listens, and another test hitting a site first with no
/// subscriber would hide it from a scoped one.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LINES: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LINES
        .get_or_init(|| {
            let lines = Arc::new(Mutex::new(Vec::new()));
            let sink = lines.clone();
            tracing_subscriber::fmt()
                .with_env_filter("tower_idempotency=debug")
                .with_ansi(false)
                .with_writer(move || Writer(sink.clone()))
                .init();
            lines
        })
        .clone()
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `examples/client_retry.rs` (built by `cargo test` with the `client` feature): each order's
/// first answer is lost, the retry is a replay, and the server made each order once.
#[test]
fn the_example_makes_each_order_once_through_lost_answers() {
    let exe = std::env::current_exe().unwrap();
    let binary = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/client_retry");
    assert!(
        binary.exists(),
        "{} is missing: `cargo test --all-features` builds it",
        binary.display()
    );
    let output = std::process::Command::new(binary)
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(output.status.success(), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    for line in &lines[..3] {
        assert!(
            line.contains("201 Created after 2 attempt(s) with key"),
            "{line}"
        );
        assert!(line.contains("(replayed)"), "{line}");
    }
    assert!(
        lines[3].starts_with("the server made 3 orders, once each"),
        "{stdout}"
    );
}

/// A tonic `Channel` under the layer, with tonic's body mapped back in, is a gRPC transport
/// tonic's generated clients accept (`GrpcService`), so the claim in the module docs holds.
#[cfg(feature = "example-tonic")]
#[tokio::test]
async fn a_tonic_channel_under_the_layer_is_a_grpc_transport() {
    fn grpc_transport<T: tonic::client::GrpcService<tonic::body::Body>>(_: &T) {}
    let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
    let client = ServiceBuilder::new()
        .layer(IdempotentRetryLayer::default())
        .map_request(|req: Request<RetryBody<tonic::body::Body>>| req.map(tonic::body::Body::new))
        .service(channel);
    grpc_transport(&client);
    let _ = tonic::client::Grpc::new(client);
}
