//! Both ends of the protocol over real sockets: hyper-util's client behind
//! `IdempotentRetryLayer` -> a lossy TCP proxy -> two orders servers (axum, `IdempotencyLayer`)
//! sharing one Redis.
//!
//! The proxy loses connections the three ways a network does: before the request reaches a
//! server, while the server runs it, and after the server answered. Which attempt of which call
//! meets which fault is a pure function of a seed and the call's number (`CLIENT_E2E_SEED`
//! picks another seed), and no call meets more faults than it has retries, so every call must
//! end with its own order, created once.

use std::{
    collections::{HashMap, HashSet},
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use axum::{extract::State, http::StatusCode, routing::post, Json, Router};
use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde::{Deserialize, Serialize};
use test_support::TestRedis;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tower::{ServiceBuilder, ServiceExt};
use tower_idempotency::{
    client::{Attempts, IdempotentRetryLayer, RetryBody, RetryPolicy},
    IdempotencyLayer, KeyFormat, RedisStore,
};

const CALLS: usize = 500;
const CONCURRENCY: usize = 32;
const DEFAULT_SEED: u64 = 0x16_c1_1e_47;
/// How long creating an order takes on the server.
const ORDER_DELAY: Duration = Duration::from_millis(20);

// ---- The servers: axum_orders' create route, on one Redis ----

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Order {
    id: String,
    customer_id: String,
    amount: u64,
}

#[derive(Deserialize)]
struct NewOrder {
    customer_id: String,
    amount: u64,
}

#[derive(Clone)]
struct Book {
    name: &'static str,
    orders: Arc<Mutex<Vec<Order>>>,
}

async fn create_order(
    State(book): State<Book>,
    Json(new): Json<NewOrder>,
) -> (StatusCode, Json<Order>) {
    // Stands for real work: a payment, a database write.
    tokio::time::sleep(ORDER_DELAY).await;
    let mut orders = book.orders.lock().unwrap();
    let order = Order {
        id: format!("ord_{}_{}", book.name, orders.len()),
        customer_id: new.customer_id,
        amount: new.amount,
    };
    orders.push(order.clone());
    (StatusCode::CREATED, Json(order))
}

async fn start_server(name: &'static str, redis_url: &str) -> (SocketAddr, Book) {
    let store = RedisStore::connect(redis_url)
        .await
        .expect("connect to Redis");
    let book = Book {
        name,
        orders: Arc::default(),
    };
    let app = Router::new()
        .route("/orders", post(create_order))
        // Keys must be UUIDs: the client's minted keys must pass. A short lease keeps the
        // 409's `Retry-After` (the lease left) short.
        .layer(
            IdempotencyLayer::new(store)
                .with_key_required(true)
                .with_key_format(KeyFormat::Uuid)
                .with_lease_ttl(Duration::from_secs(2)),
        )
        .with_state(book.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, book)
}

// ---- The lossy proxy ----

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Cut {
    /// The connection closes before the request reaches a server.
    BeforeServer,
    /// The request reaches a server, and the connection closes while the handler runs.
    WhileRunning,
    /// The server answers, and the connection closes before the answer reaches the client.
    AfterAnswer,
}

/// What the proxy does to one call: `faults[n]` to its attempt n, then it lets attempts
/// through, each answer held back by `delay`.
#[derive(Debug, Clone)]
struct Plan {
    faults: Vec<Cut>,
    delay: Duration,
}

/// SplitMix64: a tiny, well-mixed generator; one stream per (seed, call).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// At most 3 faults per call: 55% none, 25% one, 12% two, 8% three; a delay of up to 30 ms
/// on one call in four.
fn plan(seed: u64, call: usize) -> Plan {
    let mut rng = Rng(seed ^ (call as u64).wrapping_mul(0xa076_1d64_78bd_642f));
    let count = match rng.below(100) {
        0..=54 => 0,
        55..=79 => 1,
        80..=91 => 2,
        _ => 3,
    };
    let faults = (0..count)
        .map(|_| match rng.below(3) {
            0 => Cut::BeforeServer,
            1 => Cut::WhileRunning,
            _ => Cut::AfterAnswer,
        })
        .collect();
    let delay = if rng.below(4) == 0 {
        Duration::from_millis(1 + rng.below(30))
    } else {
        Duration::ZERO
    };
    Plan { faults, delay }
}

struct Proxy {
    addr: SocketAddr,
    /// Attempts that reached the proxy, per call.
    attempts: Arc<Mutex<Vec<usize>>>,
    injected: Arc<Mutex<HashMap<Cut, usize>>>,
    delayed: Arc<AtomicUsize>,
}

async fn start_proxy(upstreams: [SocketAddr; 2], plans: Arc<Vec<Plan>>) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = Proxy {
        addr: listener.local_addr().unwrap(),
        attempts: Arc::new(Mutex::new(vec![0; plans.len()])),
        injected: Arc::default(),
        delayed: Arc::default(),
    };
    let (attempts, injected, delayed) = (
        proxy.attempts.clone(),
        proxy.injected.clone(),
        proxy.delayed.clone(),
    );
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let (plans, attempts, injected, delayed) = (
                plans.clone(),
                attempts.clone(),
                injected.clone(),
                delayed.clone(),
            );
            tokio::spawn(async move {
                let relay = relay(conn, upstreams, &plans, &attempts, &injected, &delayed);
                // Bounded: a connection the proxy mishandled must not hang the test.
                let _ = tokio::time::timeout(Duration::from_secs(10), relay).await;
            });
        }
    });
    proxy
}

async fn relay(
    mut client: TcpStream,
    upstreams: [SocketAddr; 2],
    plans: &[Plan],
    attempts: &Mutex<Vec<usize>>,
    injected: &Mutex<HashMap<Cut, usize>>,
    delayed: &AtomicUsize,
) -> io::Result<()> {
    let (request, call) = read_request(&mut client).await?;
    let attempt = {
        let mut attempts = attempts.lock().unwrap();
        attempts[call] += 1;
        attempts[call] - 1
    };
    let plan = &plans[call];
    let fault = plan.faults.get(attempt).copied();
    if let Some(fault) = fault {
        *injected.lock().unwrap().entry(fault).or_default() += 1;
    }
    if fault == Some(Cut::BeforeServer) {
        return Ok(());
    }
    // Attempts of one call alternate between the servers: a retry lands on the other one.
    let mut upstream = TcpStream::connect(upstreams[(call + attempt) % 2]).await?;
    upstream.write_all(&request).await?;
    let mut answer = vec![0; 64 * 1024];
    match fault {
        Some(Cut::WhileRunning) => {
            // The handler takes ORDER_DELAY; leave in the middle of it.
            tokio::time::sleep(ORDER_DELAY / 4).await;
            Ok(())
        }
        Some(Cut::AfterAnswer) => {
            let _ = upstream.read(&mut answer).await?;
            Ok(())
        }
        _ => {
            let n = upstream.read(&mut answer).await?;
            if !plan.delay.is_zero() {
                delayed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(plan.delay).await;
            }
            client.write_all(&answer[..n]).await?;
            tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
            Ok(())
        }
    }
}

/// Reads one whole HTTP/1.1 request (head and `Content-Length` body) and the call number in
/// its `x-call` header.
async fn read_request(conn: &mut TcpStream) -> io::Result<(Vec<u8>, usize)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = conn.read(&mut chunk).await?;
        if n == 0 || buf.len() > 64 * 1024 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let header = |name: &str| {
        head.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| value.trim().parse::<usize>().ok())
    };
    let length = header("content-length:").unwrap_or(0);
    let call = header("x-call:").ok_or(io::ErrorKind::InvalidData)?;
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok((buf, call))
}

// ---- The test ----

struct CallResult {
    call: usize,
    status: u16,
    replayed: bool,
    attempts: u32,
    order: Option<Order>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_calls_through_a_lossy_network_make_five_hundred_orders_once_each() {
    let seed = std::env::var("CLIENT_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    let started = Instant::now();
    let redis = TestRedis::start_own().await;
    let (a, book_a) = start_server("a", redis.url()).await;
    let (b, book_b) = start_server("b", redis.url()).await;
    let plans: Arc<Vec<Plan>> = Arc::new((0..CALLS).map(|call| plan(seed, call)).collect());
    let proxy = start_proxy([a, b], plans.clone()).await;

    // No pooled connections: each attempt is one connection, so the proxy's plan for it is
    // the attempt's fate.
    let http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http::<RetryBody<Full<Bytes>>>();
    let policy = RetryPolicy::default()
        .with_max_attempts(8)
        .with_backoff(Duration::from_millis(10), Duration::from_millis(200))
        .with_max_retry_after(Duration::from_secs(1));
    let client = ServiceBuilder::new()
        .layer(IdempotentRetryLayer::new(policy))
        .service(http);

    let uri = format!("http://{}/orders", proxy.addr);
    let results: Vec<Result<CallResult, String>> = stream::iter(0..CALLS)
        .map(|call| {
            let (client, uri) = (client.clone(), uri.clone());
            async move {
                let body = format!(r#"{{"customer_id": "C{call}", "amount": {call}}}"#);
                let req = Request::post(uri)
                    .header("content-type", "application/json")
                    .header("x-call", call)
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let response = client
                    .oneshot(req)
                    .await
                    .map_err(|e| format!("call {call}: {e}"))?;
                let status = response.status().as_u16();
                let replayed = response.headers().contains_key("idempotent-replayed");
                let attempts = response.extensions().get::<Attempts>().unwrap().count();
                let body = response.into_body().collect().await;
                let body = body.map_err(|e| format!("call {call}: body: {e}"))?;
                Ok(CallResult {
                    call,
                    status,
                    replayed,
                    attempts,
                    order: serde_json::from_slice(&body.to_bytes()).ok(),
                })
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let elapsed = started.elapsed();

    // No call failed: every one met at most 3 faults, and had 7 retries.
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| match r {
            Err(error) => Some(error.clone()),
            Ok(r) if r.status != 201 => Some(format!("call {}: status {}", r.call, r.status)),
            Ok(_) => None,
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} calls failed: {failed:#?}",
        failed.len()
    );
    let results: Vec<CallResult> = results.into_iter().map(Result::unwrap).collect();

    // 500 orders, one per call, and each call's answer is its own order.
    let mut orders = book_a.orders.lock().unwrap().clone();
    let on_a = orders.len();
    orders.extend(book_b.orders.lock().unwrap().iter().cloned());
    assert_eq!(orders.len(), CALLS, "orders created");
    let by_id: HashMap<&str, &Order> = orders.iter().map(|o| (o.id.as_str(), o)).collect();
    let customers: HashSet<&str> = orders.iter().map(|o| o.customer_id.as_str()).collect();
    assert_eq!(customers.len(), CALLS, "a customer ordered twice");
    for r in &results {
        let order = r.order.as_ref().expect("an order in the answer");
        assert_eq!(order.customer_id, format!("C{}", r.call));
        assert_eq!(
            by_id.get(order.id.as_str()),
            Some(&order),
            "call {}",
            r.call
        );
    }

    // The faults happened, and the client went through them.
    let injected = proxy.injected.lock().unwrap().clone();
    for fault in [Cut::BeforeServer, Cut::WhileRunning, Cut::AfterAnswer] {
        assert!(
            injected.get(&fault).copied().unwrap_or(0) >= 20,
            "{injected:?}"
        );
    }
    let attempts_seen = proxy.attempts.lock().unwrap().clone();
    for r in &results {
        let faults = &plans[r.call].faults;
        assert!(r.attempts as usize > faults.len(), "call {}", r.call);
        assert_eq!(
            attempts_seen[r.call], r.attempts as usize,
            "call {}",
            r.call
        );
        // The server ran the order and the answer was lost: the retry must be its replay.
        if faults.contains(&Cut::AfterAnswer) {
            assert!(
                r.replayed,
                "call {} ran again after its answer was lost",
                r.call
            );
        }
    }
    let retried = results.iter().filter(|r| r.attempts > 1).count();
    let replayed = results.iter().filter(|r| r.replayed).count();
    let beyond_plan = results
        .iter()
        .filter(|r| r.attempts as usize > plans[r.call].faults.len() + 1)
        .count();
    eprintln!(
        "seed {seed:#x}: {CALLS} calls in {elapsed:?}; faults injected {injected:?}, {} answers \
         delayed; {retried} calls retried, {replayed} answered by a replay, {beyond_plan} needed \
         retries beyond their faults (409 while the first attempt ran); orders on a: {on_a}, on b: {}",
        proxy.delayed.load(Ordering::Relaxed),
        CALLS - on_a,
    );
    assert!(on_a > 0 && on_a < CALLS, "both servers took orders");
}
