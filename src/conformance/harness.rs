//! The plumbing of the suite: a handler that counts its executions and answers as each test
//! needs (streams, gRPC, failures, panics), request builders, and what a test reads back.
//! Public so that a store's own tests can use it beside the suite.
#![allow(missing_docs, clippy::missing_panics_doc)]

use std::{
    convert::Infallible,
    future::Future,
    io,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::{FencingToken, IdempotencyLayer, IdempotencyStore, RequestBody, ResponseBody};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use tokio::sync::Semaphore;
use tower::{util::BoxCloneService, Service, ServiceBuilder, ServiceExt};

/// The request body every test sends.
pub type TestBody = BoxBody<Bytes, Infallible>;
/// The body the test handler answers with; it can fail part-way.
pub type ResBody = BoxBody<Bytes, io::Error>;
/// The service under test, type-erased so one suite serves every store.
pub type TestService =
    BoxCloneService<Request<TestBody>, Response<ResponseBody<ResBody>>, io::Error>;

/// A body of `data` in one frame.
pub fn full(data: impl Into<Bytes>) -> ResBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A deadline for anything a test waits for; far above what a healthy run needs.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A handler that counts its executions. Paths pick its behaviour:
/// `/gated` waits for [`Handler::open_gate`], `/fail` answers 500, `/error` fails the service,
/// `/big` answers 4 KiB, `/panic` panics, `/grpc` answers with trailers; anything else answers 201 with
/// multi-valued headers. Streamed answers (see [`stream_body`]):
/// - `/stream?frames=N&size=S[&gated]`: N frames of S bytes, then trailers `x-execution: n`;
///   with `gated`, the frames after the first wait for the gate.
/// - `/stream-broken?frames=N[&now]`: N frames, then an error; with `now`, nothing waits, so
///   the whole body (and its error) is ready at once.
/// - `/grpc-stream?status=C`: a gRPC answer of 3 messages, `grpc-status: C` in its trailers.
/// - `/grpc-now?status=C`: a trailers-only gRPC answer with `grpc-status: C` in its head.
#[derive(Clone)]
pub struct Handler {
    executions: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Default for Handler {
    fn default() -> Self {
        Self::new()
    }
}

impl Handler {
    pub fn new() -> Self {
        Self {
            executions: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new(Semaphore::new(0)),
        }
    }

    pub fn executions(&self) -> usize {
        self.executions.load(Ordering::SeqCst)
    }

    /// Lets every gated execution finish.
    pub fn open_gate(&self) {
        self.gate.add_permits(1_000);
    }

    /// Lets one gated execution finish; the next still waits.
    pub fn open_gate_once(&self) {
        self.gate.add_permits(1);
    }

    /// Wraps the handler in `layer`.
    pub fn service<St: IdempotencyStore>(&self, layer: IdempotencyLayer<St>) -> TestService {
        let handler = self.clone();
        let svc = ServiceBuilder::new()
            .layer(layer)
            .service_fn(move |req: Request<RequestBody<TestBody>>| handler.clone().handle(req));
        BoxCloneService::new(svc)
    }

    /// Wraps the handler in `layer` behind a demo authentication layer: `Authorization: Bearer
    /// <user>-<n>` puts [`User`]`(<user>)` in the request's extensions, so every token of one
    /// user names the same principal.
    pub fn service_behind_auth<St: IdempotencyStore>(
        &self,
        layer: IdempotencyLayer<St>,
    ) -> TestService {
        let handler = self.clone();
        let svc = ServiceBuilder::new()
            .map_request(|mut req: Request<TestBody>| {
                let user = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .and_then(|token| token.rsplit_once('-'))
                    .map(|(user, _)| User(user.to_owned()));
                if let Some(user) = user {
                    req.extensions_mut().insert(user);
                }
                req
            })
            .layer(layer)
            .service_fn(move |req: Request<RequestBody<TestBody>>| handler.clone().handle(req));
        BoxCloneService::new(svc)
    }

    async fn handle(
        self,
        req: Request<RequestBody<TestBody>>,
    ) -> Result<Response<ResBody>, io::Error> {
        let n = self.executions.fetch_add(1, Ordering::SeqCst) + 1;
        let query = Query::of(req.uri().query());
        let fence = req
            .extensions()
            .get::<FencingToken>()
            .map_or(0, FencingToken::get);
        let path = req.uri().path().to_owned();
        let body = req
            .into_body()
            .collect()
            .await
            .map_err(io::Error::other)?
            .to_bytes();
        if path == "/gated" {
            // Never closed, so the permit always comes; forget it so others still wait.
            self.gate
                .acquire()
                .await
                .map_err(io::Error::other)?
                .forget();
        }
        let response = Response::builder()
            .header("content-type", "application/json")
            .header("location", format!("/orders/{n}"))
            .header("x-multi", "first")
            .header("x-multi", "second")
            .header("set-cookie", "session=secret")
            .header("www-authenticate", "Bearer realm=\"orders\"")
            .header("authorization", "Bearer leaked-token")
            .header("x-fence", fence.to_string());
        let response = match path.as_str() {
            // `/gated?fail_first`: the first execution fails (500) once the gate opens.
            "/gated" if n == 1 && query.has("fail_first") => response
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(full("failed")),
            "/error" => return Err(io::Error::other("handler failed")),
            "/panic" => panic!("handler panicked on purpose"),
            "/fail" => response
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .body(full("failed")),
            "/big" => response
                .status(StatusCode::CREATED)
                .body(full(vec![b'x'; 4096])),
            "/grpc" => {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                trailers.insert("grpc-message", HeaderValue::from(n));
                let frames = [
                    http_body::Frame::data(Bytes::from("message")),
                    http_body::Frame::trailers(trailers),
                ];
                let body =
                    StreamBody::new(futures_util::stream::iter(frames.map(Ok::<_, io::Error>)));
                response.status(StatusCode::OK).body(body.boxed())
            }
            "/stream" => {
                let size = query.number("size", 8);
                let frames = (0..query.number("frames", 5))
                    .map(|i| frame_text(n, i, size))
                    .collect();
                let mut trailers = HeaderMap::new();
                trailers.insert("x-execution", HeaderValue::from(n));
                let gate = query.has("gated").then(|| Arc::clone(&self.gate));
                let body = stream_body(frames, gate, true, StreamEnd::Trailers(trailers));
                response.status(StatusCode::OK).body(body)
            }
            "/stream-broken" => {
                let frames = (0..query.number("frames", 3))
                    .map(|i| frame_text(n, i, 8))
                    .collect();
                let body = stream_body(frames, None, !query.has("now"), StreamEnd::Error);
                response.status(StatusCode::OK).body(body)
            }
            "/grpc-stream" => {
                let frames = (0..3).map(|i| frame_text(n, i, 12)).collect();
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from(query.number("status", 0)));
                trailers.insert("grpc-message", HeaderValue::from(n));
                let body = stream_body(frames, None, true, StreamEnd::Trailers(trailers));
                response.status(StatusCode::OK).body(body).map(as_grpc)
            }
            "/grpc-now" => response
                .status(StatusCode::OK)
                .header("grpc-status", query.number("status", 0))
                .body(full(Bytes::new()))
                .map(as_grpc),
            _ => {
                let echo = format!(
                    "{{\"execution\":{n},\"echo\":{:?}}}",
                    String::from_utf8_lossy(&body)
                );
                response.status(StatusCode::CREATED).body(full(echo))
            }
        };
        Ok(response.expect("valid response"))
    }
}

/// `response` as a gRPC answer (its content type replaced).
fn as_grpc(mut response: Response<ResBody>) -> Response<ResBody> {
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    response
}

/// A test request's query, as `name=value` pairs.
struct Query(Vec<(String, String)>);

impl Query {
    fn of(query: Option<&str>) -> Self {
        let pairs = query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty());
        Self(
            pairs
                .map(|p| {
                    let (name, value) = p.split_once('=').unwrap_or((p, ""));
                    (name.to_owned(), value.to_owned())
                })
                .collect(),
        )
    }

    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(n, _)| n == name)
    }

    fn number(&self, name: &str, default: usize) -> usize {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map_or(default, |(_, v)| v.parse().expect("a number"))
    }
}

/// Frame `i` of execution `n`: `size` bytes that say which they are.
pub fn frame_text(n: usize, i: usize, size: usize) -> Bytes {
    let mut text = format!("{n:04}:{i:04};").into_bytes();
    text.resize(size.max(text.len()), b'.');
    Bytes::from(text)
}

/// What a streamed test body does after its frames.
pub enum StreamEnd {
    Trailers(HeaderMap),
    Error,
}

/// A body made frame by frame: with `wait`, each frame comes after a yield (so the layer sees
/// the body wait, as a real stream makes it), and with `gate`, the frames after the first wait
/// for the gate.
pub fn stream_body(
    frames: Vec<Bytes>,
    gate: Option<Arc<Semaphore>>,
    wait: bool,
    end: StreamEnd,
) -> ResBody {
    let steps = frames
        .into_iter()
        .map(http_body::Frame::data)
        .map(Ok)
        .chain(std::iter::once(match end {
            StreamEnd::Trailers(trailers) => Ok(http_body::Frame::trailers(trailers)),
            StreamEnd::Error => Err(io::Error::other("the response broke on purpose")),
        }))
        .enumerate();
    let body = futures_util::stream::unfold(steps, move |mut steps| {
        let gate = gate.clone();
        async move {
            let (i, step) = steps.next()?;
            if wait {
                tokio::task::yield_now().await;
            }
            if let (1, Some(gate)) = (i, &gate) {
                // Never closed, so the permit always comes; forget it so others still wait.
                gate.acquire().await.expect("gate").forget();
            }
            Some((step, steps))
        }
    });
    StreamBody::new(body).boxed()
}

/// The principal the demo authentication layer of [`Handler::service_behind_auth`] finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User(pub String);

impl std::fmt::Display for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `req` with `name: value` added.
pub fn with_header(
    mut req: Request<TestBody>,
    name: &'static str,
    value: &str,
) -> Request<TestBody> {
    req.headers_mut().append(
        name,
        HeaderValue::from_str(value).expect("valid header value"),
    );
    req
}

/// A POST to `path` with an optional key and a body.
pub fn post(path: &str, key: Option<&str>, body: impl Into<Bytes>) -> Request<TestBody> {
    let mut builder = Request::post(path);
    if let Some(key) = key {
        builder = builder.header("idempotency-key", key);
    }
    builder
        .body(Full::new(body.into()).boxed())
        .expect("valid request")
}

/// A POST whose key header carries raw bytes.
pub fn post_raw_key(key: &[u8]) -> Request<TestBody> {
    let mut req = post("/orders", None, "{}");
    req.headers_mut().insert(
        "idempotency-key",
        HeaderValue::from_bytes(key).expect("valid header bytes"),
    );
    req
}

/// A POST whose body streams in chunks, with no `Content-Length`.
pub fn post_streaming(path: &str, key: &str, chunks: Vec<Bytes>) -> Request<TestBody> {
    let frames = chunks
        .into_iter()
        .map(|c| Ok::<_, Infallible>(http_body::Frame::data(c)));
    let body = StreamBody::new(futures_util::stream::iter(frames)).boxed();
    Request::post(path)
        .header("idempotency-key", key)
        .body(body)
        .expect("valid request")
}

/// What a test asserts on.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

impl Answer {
    pub fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    pub fn values(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("ascii header").to_owned())
            .collect()
    }

    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("utf-8 body")
    }

    /// Asserts a problem+json answer with this status and problem type slug.
    pub fn assert_problem(&self, status: StatusCode, slug: &str) {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(self.headers["content-type"], "application/problem+json");
        let json: serde_json::Value = serde_json::from_slice(&self.body).expect("problem is JSON");
        assert_eq!(json["status"], status.as_u16());
        assert!(
            json["type"]
                .as_str()
                .expect("type")
                .ends_with(&format!("#{slug}")),
            "type {} is not {slug}",
            json["type"]
        );
        assert!(json["title"].is_string() && json["detail"].is_string());
    }
}

/// Sends one request through the service and reads the whole answer.
pub fn send(
    svc: &TestService,
    req: Request<TestBody>,
) -> impl Future<Output = Answer> + Send + 'static {
    let response = try_send(svc, req);
    async move { response.await.expect("service ok") }
}

/// Sends a request whose inner service may fail.
pub fn try_send(
    svc: &TestService,
    req: Request<TestBody>,
) -> impl Future<Output = Result<Answer, io::Error>> + Send + 'static {
    // The service is `Send` but not `Sync`: clone it here, not across an await.
    let mut svc = svc.clone();
    async move {
        let call = async move { svc.ready().await?.call(req).await };
        let response = tokio::time::timeout(DEADLINE, call)
            .await
            .expect("an answer within the deadline")?;
        let (parts, body) = response.into_parts();
        let collected = body.collect().await.expect("body");
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            trailers: collected.trailers().cloned(),
            body: collected.to_bytes(),
        })
    }
}

/// An answer read frame by frame.
pub struct Streamed {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: std::pin::Pin<Box<ResponseBody<ResBody>>>,
}

/// What a streamed answer was, once read to its end.
#[derive(Debug)]
pub struct StreamedRest {
    pub frames: Vec<Bytes>,
    pub trailers: Option<HeaderMap>,
    pub error: Option<io::Error>,
}

impl Streamed {
    pub fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    /// The next frame, failing the test after [`DEADLINE`].
    pub async fn next(&mut self) -> Option<Result<http_body::Frame<Bytes>, io::Error>> {
        tokio::time::timeout(DEADLINE, self.body.frame())
            .await
            .expect("a frame within the deadline")
    }

    /// The next data frame, which must come.
    pub async fn next_data(&mut self) -> Bytes {
        self.next()
            .await
            .expect("a frame")
            .expect("no error")
            .into_data()
            .expect("a data frame")
    }

    /// Reads the rest: the data frames as they came, the trailers, and an error that ended it.
    pub async fn rest(mut self) -> StreamedRest {
        let mut rest = StreamedRest {
            frames: Vec::new(),
            trailers: None,
            error: None,
        };
        while let Some(frame) = self.next().await {
            match frame {
                Err(error) => {
                    rest.error = Some(error);
                    break;
                }
                Ok(frame) => match frame.into_data() {
                    Ok(data) => rest.frames.push(data),
                    Err(frame) => rest.trailers = frame.into_trailers().ok(),
                },
            }
        }
        rest
    }
}

/// Sends one request and hands back the answer's head, its body to read frame by frame.
pub async fn send_streamed(svc: &TestService, req: Request<TestBody>) -> Streamed {
    let mut svc = svc.clone();
    let call = async move { svc.ready().await?.call(req).await };
    let response = tokio::time::timeout(DEADLINE, call)
        .await
        .expect("an answer within the deadline")
        .expect("service ok");
    let (parts, body) = response.into_parts();
    Streamed {
        status: parts.status,
        headers: parts.headers,
        body: Box::pin(body),
    }
}

/// Sends `request()` again while the answer has status `skip`, failing after [`DEADLINE`].
pub async fn send_until_not(
    svc: &TestService,
    skip: StatusCode,
    request: impl Fn() -> Request<TestBody>,
) -> Answer {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let answer = send(svc, request()).await;
        if answer.status != skip {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still {skip} at the deadline"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `condition` until it holds, failing the test after [`DEADLINE`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
