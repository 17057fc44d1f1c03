//! The examples' HTTP interface, driven from outside as a client would: both examples, both
//! stores.

mod common;
// The examples' own helpers, for the tests that need no running example.
#[allow(dead_code)]
#[path = "../examples/support/orders.rs"]
mod orders;
#[allow(dead_code)]
#[path = "../examples/support/store.rs"]
mod store;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use common::example_process::{example_binary, start_example, ExampleProcess as Example};
use test_support::TestRedis;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Starts an orders example, on `redis` when given, with a 500 ms order delay unless `extra`
/// sets another.
async fn start(name: &str, redis: Option<&TestRedis>, extra: &[(&str, &str)]) -> Example {
    let mut env = vec![("ORDER_DELAY_MS", "500")];
    if let Some(redis) = redis {
        env.push(("REDIS_URL", redis.url()));
    }
    env.extend_from_slice(extra);
    start_example(name, &env).await
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 exchange on a fresh connection.
async fn request(addr: &str, method: &str, path: &str, key: Option<&str>, body: &str) -> Reply {
    let key = key.map(|key| ("idempotency-key", key));
    request_with(addr, method, path, key.as_slice(), body).await
}

/// One HTTP/1.1 exchange on a fresh connection, with these headers.
async fn request_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let headers: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\ncontent-type: application/json\r\n\
         {headers}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = String::new();
    tokio::time::timeout(common::DEADLINE, stream.read_to_string(&mut raw))
        .await
        .expect("reply in time")
        .expect("read reply");
    let (head, body) = raw.split_once("\r\n\r\n").expect("HTTP reply");
    let mut lines = head.lines();
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

const ORDER: &str = r#"{"customer_id": "C001", "amount": 1200}"#;

async fn orders_api_runs_each_order_once(example: &Example) {
    let addr = example.addr.clone();
    // Two concurrent duplicates and a retry after: one order.
    let (a, b) = tokio::join!(
        request(&addr, "POST", "/orders", Some("order-1"), ORDER),
        request(&addr, "POST", "/orders", Some("order-1"), ORDER),
    );
    // The duplicate is refused while the first runs, or replayed if the machine was slow enough
    // for the first to finish before it arrived: never run.
    let (created, other) = if a.header("idempotent-replayed").is_none() && a.status == 201 {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert_eq!(created.status, 201);
    match other.status {
        409 => assert!(other.header("retry-after").is_some()),
        201 => assert_eq!(other.header("idempotent-replayed"), Some("true")),
        status => panic!("duplicate got {status}"),
    }
    let order: serde_json::Value = serde_json::from_str(&created.body).unwrap();
    let id = order["id"].as_str().unwrap().to_owned();
    assert_eq!(order["customer_id"], "C001");
    assert_eq!(order["amount"], 1200);
    // The handler read the request's fencing token from its extensions.
    assert!(order["fence"].as_u64().is_some_and(|f| f > 0), "{order}");
    assert_eq!(
        created.header("location"),
        Some(format!("/orders/{id}").as_str())
    );

    let retry = request(&addr, "POST", "/orders", Some("order-1"), ORDER).await;
    assert_eq!(retry.status, 201);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.body, created.body);

    assert_eq!(
        request(&addr, "POST", "/orders", None, ORDER).await.status,
        400
    );
    assert_eq!(
        request(&addr, "POST", "/orders", Some("order-2"), "{not json")
            .await
            .status,
        400
    );
    let mismatch = request(
        &addr,
        "POST",
        "/orders",
        Some("order-1"),
        r#"{"customer_id": "C002", "amount": 1}"#,
    )
    .await;
    assert_eq!(mismatch.status, 422);

    let list = request(&addr, "GET", "/orders", None, "").await;
    let list: serde_json::Value = serde_json::from_str(&list.body).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "exactly one order: {list}"
    );
    let one = request(&addr, "GET", &format!("/orders/{id}"), None, "").await;
    assert_eq!(one.status, 200);
    assert_eq!(
        request(&addr, "GET", "/orders/ord_missing", None, "")
            .await
            .status,
        404
    );
}

async fn wait_policy_replays_to_the_duplicate(example: &Example) {
    let addr = example.addr.clone();
    let (a, b) = tokio::join!(
        request(&addr, "POST", "/orders", Some("order-w"), ORDER),
        request(&addr, "POST", "/orders", Some("order-w"), ORDER),
    );
    assert_eq!((a.status, b.status), (201, 201));
    assert_eq!(a.body, b.body);
    let list = request(&addr, "GET", "/orders", None, "").await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&list.body)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn axum_orders_with_memory() {
    orders_api_runs_each_order_once(&start("axum_orders", None, &[]).await).await;
}

#[tokio::test]
async fn axum_orders_with_redis() {
    let redis = TestRedis::start_own().await;
    orders_api_runs_each_order_once(&start("axum_orders", Some(&redis), &[]).await).await;
}

#[tokio::test]
async fn axum_orders_with_the_wait_policy() {
    let example = start("axum_orders", None, &[("IDEMPOTENCY_CONFLICT", "wait")]).await;
    wait_policy_replays_to_the_duplicate(&example).await;
}

/// axum_orders scopes keys by the caller its demo auth layer finds: a user's refreshed token
/// replays; another user's same key is another order (no replay, no 422).
#[tokio::test]
async fn axum_orders_scopes_keys_by_user() {
    let example = start("axum_orders", None, &[("ORDER_DELAY_MS", "0")]).await;
    let order = |token: &'static str| {
        let addr = example.addr.clone();
        async move {
            let auth = format!("Bearer {token}");
            let headers = [("idempotency-key", "1"), ("authorization", auth.as_str())];
            request_with(&addr, "POST", "/orders", &headers, ORDER).await
        }
    };
    let alice = order("alice-1").await;
    assert_eq!(alice.status, 201);
    let refreshed = order("alice-2").await;
    assert_eq!(refreshed.header("idempotent-replayed"), Some("true"));
    assert_eq!(refreshed.body, alice.body);
    let mallory = order("mallory-1").await;
    assert_eq!(mallory.status, 201);
    assert_eq!(mallory.header("idempotent-replayed"), None);
    assert_ne!(mallory.body, alice.body);
    assert_eq!(order("nodash").await.status, 401);
    let list = request(&example.addr, "GET", "/orders", None, "").await;
    let list: serde_json::Value = serde_json::from_str(&list.body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
}

/// hyper_orders has no scope: a record is bound to its client's credentials, so another
/// client with the same key and body is refused, never replayed and never run.
#[tokio::test]
async fn hyper_orders_never_replays_to_other_credentials() {
    let example = start("hyper_orders", None, &[("ORDER_DELAY_MS", "0")]).await;
    let addr = example.addr.as_str();
    let as_client = |token: &'static str| [("idempotency-key", "1"), ("authorization", token)];
    let alice = request_with(
        addr,
        "POST",
        "/orders",
        &as_client("Bearer alice-secret"),
        ORDER,
    )
    .await;
    assert_eq!(alice.status, 201);
    let mallory = request_with(
        addr,
        "POST",
        "/orders",
        &as_client("Bearer mallory-secret"),
        ORDER,
    )
    .await;
    assert_eq!(mallory.status, 422, "{}", mallory.body);
    assert!(!mallory.body.contains("ord_"), "{}", mallory.body);
    let list = request(addr, "GET", "/orders", None, "").await;
    let list: serde_json::Value = serde_json::from_str(&list.body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}

#[tokio::test]
async fn hyper_orders_with_memory() {
    orders_api_runs_each_order_once(&start("hyper_orders", None, &[]).await).await;
}

#[tokio::test]
async fn hyper_orders_with_redis() {
    let redis = TestRedis::start_own().await;
    orders_api_runs_each_order_once(&start("hyper_orders", Some(&redis), &[]).await).await;
}

#[tokio::test]
async fn the_result_ttl_comes_from_the_environment() {
    let example = start(
        "axum_orders",
        None,
        &[("IDEMPOTENCY_TTL_S", "1"), ("ORDER_DELAY_MS", "0")],
    )
    .await;
    let first = request(&example.addr, "POST", "/orders", Some("ttl"), ORDER).await;
    assert_eq!(first.status, 201);
    // Replays until the record expires, then the same key creates a second order.
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    loop {
        let again = request(&example.addr, "POST", "/orders", Some("ttl"), ORDER).await;
        assert_eq!(again.status, 201);
        if again.header("idempotent-replayed").is_none() {
            assert_ne!(again.body, first.body);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the record never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = request(&example.addr, "GET", "/orders", None, "").await;
    let list: serde_json::Value = serde_json::from_str(&list.body).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn the_lease_comes_from_the_environment() {
    let example = start(
        "hyper_orders",
        None,
        &[("IDEMPOTENCY_LEASE_MS", "4000"), ("ORDER_DELAY_MS", "1500")],
    )
    .await;
    let addr = example.addr.as_str();
    // The handler takes 1.5 s, so the duplicate arrives while the first runs.
    let (a, b) = tokio::join!(
        request(addr, "POST", "/orders", Some("lease"), ORDER),
        request(addr, "POST", "/orders", Some("lease"), ORDER),
    );
    let (created, conflict) = if a.status == 201 { (a, b) } else { (b, a) };
    assert_eq!((created.status, conflict.status), (201, 409));
    // Retry-After is the rest of the running lease: at most 4 s here, 30 s by default.
    let retry_after: u64 = conflict.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=4).contains(&retry_after), "Retry-After {retry_after}");
}

/// The webhook receivers act on each delivery once: by the `webhook-id` header, and by the
/// event id in the JSON body; redeliveries (another timestamp, the same body) are replays.
#[cfg(feature = "json")]
#[tokio::test]
async fn webhooks_handle_each_delivery_once() {
    let example = start("webhooks", None, &[]).await;
    let addr = example.addr.as_str();
    let event = r#"{"type": "invoice.paid", "data": {"amount": 1200}}"#;
    let delivery = |timestamp: &'static str| {
        [
            ("webhook-id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"),
            ("webhook-timestamp", timestamp),
        ]
    };
    let first = request_with(
        addr,
        "POST",
        "/webhooks/standard",
        &delivery("1700000000"),
        event,
    )
    .await;
    let again = request_with(
        addr,
        "POST",
        "/webhooks/standard",
        &delivery("1700000060"),
        event,
    )
    .await;
    assert_eq!((first.status, again.status), (200, 200));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body, first.body);

    let charge = r#"{"id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "type": "charge.succeeded"}"#;
    let refund = r#"{"id": "evt_1NG8Du2eZvKYlo2CRefund00", "type": "charge.refunded"}"#;
    let first = request(addr, "POST", "/webhooks/stripe", None, charge).await;
    let again = request(addr, "POST", "/webhooks/stripe", None, charge).await;
    assert_eq!((first.status, again.status), (200, 200));
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let other = request(addr, "POST", "/webhooks/stripe", None, refund).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.header("idempotent-replayed"), None);
    let no_id = request(
        addr,
        "POST",
        "/webhooks/stripe",
        None,
        r#"{"type": "ping"}"#,
    )
    .await;
    assert_eq!(no_id.status, 400, "{}", no_id.body);
    assert!(no_id.body.contains("key-missing"), "{}", no_id.body);

    let handled = request(addr, "GET", "/webhooks/handled", None, "").await;
    let handled: serde_json::Value = serde_json::from_str(&handled.body).unwrap();
    let ids: Vec<&str> = handled
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
            "evt_1NG8Du2eZvKYlo2CUI79vXWy",
            "evt_1NG8Du2eZvKYlo2CRefund00"
        ]
    );
}

/// Two instances sharing one PostgreSQL (one of them with Redis in front): concurrent duplicates
/// spread across both create each order exactly once.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_database_create_each_order_once() {
    let pg = tokio::task::spawn_blocking(test_support::TestPostgres::start)
        .await
        .unwrap();
    let redis = TestRedis::start_own().await;
    // One after the other: both run the migration at start-up.
    let plain = start("axum_orders", None, &[("DATABASE_URL", pg.url())]).await;
    let tiered = start(
        "axum_orders",
        Some(&redis),
        &[("DATABASE_URL", pg.url()), ("IDEMPOTENCY_STORE", "tiered")],
    )
    .await;

    const KEYS: usize = 8;
    let mut requests = tokio::task::JoinSet::new();
    for n in 0..KEYS * 6 {
        let addr = if n % 2 == 0 {
            plain.addr.clone()
        } else {
            tiered.addr.clone()
        };
        let key = format!("shared-{}", n % KEYS);
        requests.spawn(async move {
            (
                key.clone(),
                request(&addr, "POST", "/orders", Some(&key), ORDER).await,
            )
        });
    }
    let mut first_runs = std::collections::HashMap::new();
    for (key, reply) in requests.join_all().await {
        match reply.status {
            201 if reply.header("idempotent-replayed").is_none() => {
                *first_runs.entry(key).or_insert(0) += 1
            }
            201 | 409 => {}
            status => panic!("{key} got {status}: {}", reply.body),
        }
    }
    assert_eq!(first_runs.len(), KEYS);
    assert!(first_runs.values().all(|&runs| runs == 1), "{first_runs:?}");
    let mut orders = 0;
    for example in [&plain, &tiered] {
        let list = request(&example.addr, "GET", "/orders", None, "").await;
        orders += serde_json::from_str::<serde_json::Value>(&list.body)
            .unwrap()
            .as_array()
            .unwrap()
            .len();
    }
    assert_eq!(
        orders, KEYS,
        "each order was created once, on one instance or the other"
    );
}

/// The tower-http stack example: the timeout cuts off the client, not the handler; a panic is a
/// 500 and frees the key; tower-http's body limit answers 413. It says before it panics that
/// the panic is on purpose, prints one line per panic (no thread id, no backtrace even under
/// `RUST_BACKTRACE`), and prints the same on every run.
#[tokio::test]
async fn tower_stack_keeps_its_promises() {
    let run = || {
        tokio::task::spawn_blocking(|| {
            Command::new(example_binary("tower_stack"))
                .env_remove("RUST_LOG")
                .env("RUST_BACKTRACE", "1")
                .output()
                .expect("example binary (built by cargo test)")
        })
    };
    let (output, again) = tokio::join!(run(), run());
    let (output, again) = (output.unwrap(), again.unwrap());
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        (stdout.as_ref(), stderr.as_ref()),
        (
            String::from_utf8_lossy(&again.stdout).as_ref(),
            String::from_utf8_lossy(&again.stderr).as_ref()
        ),
        "two runs printed differently"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let slow: Vec<&&str> = lines.iter().filter(|l| l.contains("[slow-1]")).collect();
    assert_eq!(slow.len(), 3, "{stdout}");
    assert!(slow[0].contains("-> 408"), "the client timed out: {stdout}");
    assert!(
        slow[1].contains("-> 409"),
        "the handler still ran: {stdout}"
    );
    assert!(
        slow[2].contains("-> 201 Created (replayed) order created"),
        "{stdout}"
    );
    let warned = lines
        .iter()
        .position(|l| l.contains("panics on purpose"))
        .expect("a line before the panic");
    let panics: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("[panic-1]"))
        .collect();
    assert_eq!(panics.len(), 2, "{stdout}");
    assert!(warned < panics[0], "{stdout}");
    assert!(
        panics.iter().all(|&i| lines[i].contains("-> 500")),
        "the retry ran again: {stdout}"
    );
    let big = lines.last().unwrap();
    assert!(big.contains("[big-1] -> 413"), "{stdout}");
    // tower-http's limit (64 KiB) refused it: the layer must not state its own (1 MiB).
    assert!(!big.contains("1048576"), "{big}");
    // One line per panic, no colours when stderr is not a terminal.
    assert_eq!(stderr.matches("panicked on purpose").count(), 2, "{stderr}");
    for noise in ["thread '", "backtrace", "RUST_BACKTRACE", "\x1b["] {
        assert!(!stderr.contains(noise), "{noise:?} in {stderr}");
    }
}

/// Both orders examples answer a method a path does not take with 405 and `Allow`, and a path
/// they do not serve with a plain 404 (not "Order not found").
async fn unknown_routes_are_405_and_404(example: &Example) {
    let addr = example.addr.as_str();
    let allowed = |reply: &Reply| {
        let mut methods: Vec<String> = reply
            .header("allow")
            .unwrap_or_default()
            .split(',')
            .map(|m| m.trim().to_owned())
            .collect();
        methods.sort();
        methods
    };
    let put = request(addr, "PUT", "/orders", None, ORDER).await;
    assert_eq!(put.status, 405, "{}", put.body);
    assert_eq!(allowed(&put), ["GET", "HEAD", "POST"]);
    let delete = request(addr, "DELETE", "/orders/ord_1", None, "").await;
    assert_eq!(delete.status, 405, "{}", delete.body);
    assert_eq!(allowed(&delete), ["GET", "HEAD"]);
    for path in ["/orders/x/y", "/orders/", "/nothing"] {
        let reply = request(addr, "GET", path, None, "").await;
        assert_eq!(reply.status, 404, "{path}");
        assert!(
            !reply.body.contains("Order not found"),
            "{path}: {}",
            reply.body
        );
    }
    let missing = request(addr, "GET", "/orders/ord_missing", None, "").await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("Order not found"), "{}", missing.body);
    let head = request(addr, "HEAD", "/orders", None, "").await;
    assert_eq!((head.status, head.body.as_str()), (200, ""));
}

#[tokio::test]
async fn axum_orders_answers_unknown_routes() {
    unknown_routes_are_405_and_404(&start("axum_orders", None, &[]).await).await;
}

#[tokio::test]
async fn hyper_orders_answers_unknown_routes_as_axum_does() {
    unknown_routes_are_405_and_404(&start("hyper_orders", None, &[]).await).await;
}

/// On a port another process holds, the examples exit with an error that says the address is in
/// use and how to pick another.
#[tokio::test]
async fn a_busy_port_is_named_with_a_hint() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    for name in ["axum_orders", "hyper_orders"] {
        let output = tokio::task::spawn_blocking(move || {
            Command::new(example_binary(name))
                .env("BIND", addr.to_string())
                .env_remove("REDIS_URL")
                .env_remove("DATABASE_URL")
                .env_remove("IDEMPOTENCY_STORE")
                .output()
                .expect("example binary (built by cargo test)")
        })
        .await
        .unwrap();
        assert!(!output.status.success(), "{name} started on a busy port");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = format!("BIND=127.0.0.1:{}", addr.port() + 1);
        assert!(
            stderr.contains(&format!(
                "{name}: cannot listen on {addr}: the address is already in use"
            )) && stderr.contains(&hint),
            "{stderr}"
        );
    }
    drop(busy);
}

/// The examples log to stderr, without colour codes when it is not a terminal.
#[tokio::test]
async fn example_logs_have_no_colour_codes_off_a_terminal() {
    for name in ["axum_orders", "hyper_orders"] {
        let line = tokio::task::spawn_blocking(move || {
            let mut child = Command::new(example_binary(name))
                .env("BIND", "127.0.0.1:0")
                .env("RUST_LOG", "info")
                .env_remove("REDIS_URL")
                .env_remove("DATABASE_URL")
                .env_remove("IDEMPOTENCY_STORE")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("example binary (built by cargo test)");
            let mut line = String::new();
            let read = BufReader::new(child.stderr.take().unwrap()).read_line(&mut line);
            let _ = child.kill();
            let _ = child.wait();
            read.map(|_| line)
        })
        .await
        .unwrap()
        .unwrap();
        assert!(line.contains(&format!("{name} listening")), "{line}");
        assert!(!line.contains('\x1b'), "{line:?}");
    }
}

/// `ORDER_DELAY_MS=0` does not sleep at all: even a zero tokio sleep waits for the timer's next
/// tick.
#[tokio::test]
async fn a_zero_order_delay_does_not_sleep() {
    use futures_util::FutureExt;
    assert!(orders::work(Duration::ZERO).now_or_never().is_some());
}
