//! The `axum_sse` example as a client meets it, over HTTP/1.1 on a raw connection: events arrive
//! as they are made, a retry replays the same events at once, and a client that leaves
//! mid-stream still gets every event on its retry.

mod common;

use std::time::Duration;

use common::{example_process::start_example, DEADLINE};
use test_support::TestRedis;
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    time::{timeout_at, Instant},
};

const PROMPT: &str = r#"{"prompt": "why are retries safe"}"#;
const WORDS: [&str; 4] = ["why", "are", "retries", "safe"];
/// Tokens per completion, then a `done` event.
const TOKENS: usize = 20;
/// 20 tokens 100 ms apart: a completion streams for about 2 s.
const STREAM: [(&str, &str); 2] = [("SSE_EVENTS", "20"), ("SSE_INTERVAL_MS", "100")];
/// Far below the ~2 s a completion streams for, far above what its first events need.
const EARLY: Duration = Duration::from_secs(1);

/// One server-sent event, and when it arrived.
#[derive(Debug, Clone)]
struct Received {
    /// The event as sent, its lines without the blank line that ends it.
    raw: String,
    /// Since the request was sent.
    at: Duration,
}

impl Received {
    /// The `event:` field, if any.
    fn name(&self) -> Option<&str> {
        self.field("event")
    }

    /// The `data:` field, as JSON.
    fn data(&self) -> serde_json::Value {
        let data = self.field("data").expect("a data field");
        serde_json::from_str(data).expect("JSON data")
    }

    fn field(&self, name: &str) -> Option<&str> {
        self.raw.lines().find_map(|line| {
            let (field, value) = line.split_once(':')?;
            (field == name).then(|| value.strip_prefix(' ').unwrap_or(value))
        })
    }
}

fn raw(events: &[Received]) -> Vec<&str> {
    events.iter().map(|e| e.raw.as_str()).collect()
}

/// How the answer's body is delimited.
enum Framing {
    Chunked,
    Length(usize),
    Close,
}

/// An answer whose head has been read; its body is read as it arrives.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    stream: BufReader<TcpStream>,
    framing: Framing,
    ended: bool,
    sent: Instant,
    deadline: Instant,
    /// Body bytes read but not yet split into events.
    pending: Vec<u8>,
    /// The body's chunks so far, when it is chunked: the response's frames, as sent.
    chunks: Vec<Vec<u8>>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }

    /// The frames the body came in, when it came chunked (HTTP/1.1 shows them only then).
    fn frames(&self) -> Option<&[Vec<u8>]> {
        matches!(self.framing, Framing::Chunked).then_some(self.chunks.as_slice())
    }

    /// Reads events until `limit` of them or the end of the body, whichever comes first.
    async fn events(&mut self, limit: usize) -> Vec<Received> {
        let mut events = Vec::new();
        loop {
            while events.len() < limit {
                let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") else {
                    break;
                };
                let event: Vec<u8> = self.pending.drain(..end + 2).collect();
                events.push(Received {
                    raw: String::from_utf8(event[..end].to_vec()).expect("UTF-8 event"),
                    at: self.sent.elapsed(),
                });
            }
            if events.len() == limit {
                return events;
            }
            match self.piece().await {
                Some(piece) => self.pending.extend_from_slice(&piece),
                None => {
                    assert!(
                        self.pending.is_empty(),
                        "the body ended inside an event: {:?}",
                        String::from_utf8_lossy(&self.pending)
                    );
                    return events;
                }
            }
        }
    }

    /// The whole body, as text.
    async fn text(mut self) -> String {
        while let Some(piece) = self.piece().await {
            self.pending.extend_from_slice(&piece);
        }
        String::from_utf8(self.pending).expect("UTF-8 body")
    }

    /// The next piece of the body as it came off the wire, or `None` at its end.
    async fn piece(&mut self) -> Option<Vec<u8>> {
        let deadline = self.deadline;
        timeout_at(deadline, self.read_piece())
            .await
            .expect("the body within the deadline")
    }

    async fn read_piece(&mut self) -> Option<Vec<u8>> {
        if self.ended {
            return None;
        }
        match &mut self.framing {
            Framing::Chunked => {
                let size = read_line(&mut self.stream).await;
                let size = size.split(';').next().unwrap_or_default().trim();
                let size = usize::from_str_radix(size, 16).expect("a chunk size");
                if size == 0 {
                    // Trailers, if any, end with a blank line.
                    while !read_line(&mut self.stream).await.is_empty() {}
                    self.ended = true;
                    return None;
                }
                let mut chunk = vec![0; size];
                self.stream.read_exact(&mut chunk).await.expect("a chunk");
                assert_eq!(read_line(&mut self.stream).await, "", "CRLF after a chunk");
                self.chunks.push(chunk.clone());
                Some(chunk)
            }
            Framing::Length(left) => {
                if *left == 0 {
                    self.ended = true;
                    return None;
                }
                let mut piece = vec![0; (*left).min(16 * 1024)];
                let n = self.stream.read(&mut piece).await.expect("read the body");
                assert!(n > 0, "the connection closed {left} bytes short");
                piece.truncate(n);
                *left -= n;
                Some(piece)
            }
            Framing::Close => {
                let mut piece = vec![0; 16 * 1024];
                let n = self.stream.read(&mut piece).await.expect("read the body");
                self.ended = n == 0;
                piece.truncate(n);
                (n > 0).then_some(piece)
            }
        }
    }
}

/// One line of the head or of the chunk framing, without its CRLF.
async fn read_line(stream: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    let n = stream.read_line(&mut line).await.expect("read a line");
    assert!(n > 0, "the connection closed mid-answer");
    line.trim_end_matches(['\r', '\n']).to_owned()
}

/// Sends one HTTP/1.1 request on a fresh connection and reads the answer's head.
async fn send(addr: &str, method: &str, key: Option<&str>, body: &str) -> Reply {
    let sent = Instant::now();
    let deadline = sent + DEADLINE;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let key = key
        .map(|k| format!("idempotency-key: {k}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} /completions HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\
         content-type: application/json\r\naccept: text/event-stream\r\n\
         {key}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut stream = BufReader::new(stream);
    let (status, headers) = timeout_at(deadline, async {
        let status_line = read_line(&mut stream).await;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a status line: {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = read_line(&mut stream).await;
            if line.is_empty() {
                break (status, headers);
            }
            let (name, value) = line.split_once(':').expect("a header line");
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    })
    .await
    .expect("the answer's head within the deadline");
    let mut reply = Reply {
        status,
        headers,
        stream,
        framing: Framing::Close,
        ended: false,
        sent,
        deadline,
        pending: Vec::new(),
        chunks: Vec::new(),
    };
    reply.framing = if reply
        .header("transfer-encoding")
        .is_some_and(|te| te.eq_ignore_ascii_case("chunked"))
    {
        Framing::Chunked
    } else if let Some(length) = reply.header("content-length") {
        Framing::Length(length.parse().expect("a content length"))
    } else {
        Framing::Close
    };
    reply
}

async fn complete(addr: &str, key: Option<&str>, body: &str) -> Reply {
    send(addr, "POST", key, body).await
}

/// The ids of the completions the handler started, from `GET /completions`.
async fn started(addr: &str) -> Vec<String> {
    let reply = send(addr, "GET", None, "").await;
    assert_eq!(reply.status, 200);
    let list: serde_json::Value = serde_json::from_str(&reply.text().await).expect("JSON");
    let ids: Vec<String> = list["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|id| id.as_str().expect("an id").to_owned())
        .collect();
    assert_eq!(list["started"], ids.len());
    ids
}

/// Asserts a successful, first-run event stream's head.
fn assert_streams(reply: &Reply) {
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/event-stream"));
}

/// Asserts that `events` are one whole completion of `PROMPT`, and returns its id.
fn assert_whole_completion(events: &[Received]) -> String {
    assert_eq!(events.len(), TOKENS + 1, "{:#?}", raw(events));
    let id = events[0].data()["id"].as_str().expect("an id").to_owned();
    for (index, event) in events[..TOKENS].iter().enumerate() {
        let data = event.data();
        assert_eq!(event.name(), None, "{}", event.raw);
        assert_eq!(data["id"], id.as_str(), "one id in every event");
        assert_eq!(data["index"], index);
        let token = data["token"].as_str().expect("a token");
        assert_eq!(token.trim(), WORDS[index % WORDS.len()]);
    }
    let done = &events[TOKENS];
    assert_eq!(done.name(), Some("done"), "{}", done.raw);
    assert_eq!(done.data()["id"], id.as_str());
    assert_eq!(done.data()["tokens"], TOKENS);
    id
}

/// POSTs `key` until the answer is not 409: the first run is still streaming, or its record
/// still being written.
async fn complete_until_recorded(addr: &str, key: &str) -> Reply {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let reply = complete(addr, Some(key), PROMPT).await;
        if reply.status != 409 {
            return reply;
        }
        assert!(reply.header("retry-after").is_some());
        assert!(Instant::now() < deadline, "still 409 at the deadline");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn events_stream_as_made_and_a_retry_replays_them(addr: &str) {
    let mut first = complete(addr, Some("completion-1"), PROMPT).await;
    assert_streams(&first);
    assert!(!first.replayed());
    let events = first.events(usize::MAX).await;
    let id = assert_whole_completion(&events);
    let (first_at, last_at) = (events[0].at, events[TOKENS].at);
    assert!(
        first_at < EARLY,
        "the first event came {first_at:?} after the request (the last {last_at:?}): \
         the client waited for the stream, not for the handler"
    );
    assert!(
        last_at - first_at >= EARLY,
        "the events came together ({first_at:?} to {last_at:?}), not as they were made"
    );

    // The record is written when the stream ends, so it can trail the last event by a moment.
    let mut retry = complete_until_recorded(addr, "completion-1").await;
    assert_eq!(retry.status, 200);
    assert!(retry.replayed(), "{:?}", retry.headers);
    assert_eq!(retry.header("content-type"), Some("text/event-stream"));
    let replayed = retry.events(usize::MAX).await;
    assert_eq!(
        raw(&replayed),
        raw(&events),
        "the replay is the same events"
    );
    let replay_took = replayed.last().expect("events").at;
    assert!(
        replay_took < EARLY,
        "the replay took {replay_took:?}: it should send the record at once"
    );
    if let Some(frames) = retry.frames() {
        assert_eq!(
            Some(frames),
            first.frames(),
            "the replay's frames are the first run's"
        );
    }
    assert_eq!(started(addr).await, [id]);
}

#[tokio::test]
async fn events_stream_as_made_and_a_retry_replays_them_on_memory() {
    let example = start_example("axum_sse", &STREAM).await;
    events_stream_as_made_and_a_retry_replays_them(&example.addr).await;
}

#[tokio::test]
async fn events_stream_as_made_and_a_retry_replays_them_on_redis() {
    let redis = TestRedis::start_own().await;
    let mut env = STREAM.to_vec();
    env.push(("REDIS_URL", redis.url()));
    let example = start_example("axum_sse", &env).await;
    events_stream_as_made_and_a_retry_replays_them(&example.addr).await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_gets_every_event_on_its_retry() {
    let example = start_example("axum_sse", &STREAM).await;
    let addr = example.addr.as_str();
    let mut first = complete(addr, Some("leaves-1"), PROMPT).await;
    assert_streams(&first);
    let seen = first.events(3).await;
    assert_eq!(seen.len(), 3);
    let left_at = seen[2].at;
    assert!(
        left_at < EARLY,
        "the third event came {left_at:?} after the request, so the client could not leave \
         mid-stream"
    );
    // Hangs up with 17 tokens and `done` still to come.
    drop(first);

    let mut retry = complete_until_recorded(addr, "leaves-1").await;
    assert_eq!(retry.status, 200);
    assert!(retry.replayed(), "{:?}", retry.headers);
    let events = retry.events(usize::MAX).await;
    let id = assert_whole_completion(&events);
    assert_eq!(raw(&events[..3]), raw(&seen), "the events the client saw");
    assert_eq!(started(addr).await, [id], "the handler ran once");
}

#[tokio::test]
async fn another_key_runs_again_and_a_missing_key_gets_400() {
    let fast = [("SSE_EVENTS", "20"), ("SSE_INTERVAL_MS", "5")];
    let example = start_example("axum_sse", &fast).await;
    let addr = example.addr.as_str();
    let mut ids = Vec::new();
    for key in ["key-a", "key-b"] {
        let mut reply = complete(addr, Some(key), PROMPT).await;
        assert_streams(&reply);
        assert!(!reply.replayed(), "{key} is a new key");
        ids.push(assert_whole_completion(&reply.events(usize::MAX).await));
    }
    assert_ne!(ids[0], ids[1], "a second run has an id of its own");
    assert_eq!(started(addr).await, ids);

    let missing = complete(addr, None, PROMPT).await;
    assert_eq!(missing.status, 400);
    assert_eq!(
        missing.header("content-type"),
        Some("application/problem+json")
    );
    let problem: serde_json::Value =
        serde_json::from_str(&missing.text().await).expect("problem JSON");
    assert_eq!(problem["status"], 400);
    assert!(
        problem["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("#key-missing")),
        "{problem}"
    );

    // The same key for another prompt is refused, not run.
    let other = complete(addr, Some("key-a"), r#"{"prompt": "something else"}"#).await;
    assert_eq!(other.status, 422);
    assert_eq!(started(addr).await, ids, "neither ran the handler");
}
