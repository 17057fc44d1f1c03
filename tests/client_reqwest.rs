//! `IdempotentRetryMiddleware`: reqwest (through reqwest-middleware) against real local servers.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::post,
    Router,
};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tokio::net::TcpListener;
use tower_idempotency::{
    client::{Attempts, IdempotentRetryMiddleware, RetryPolicy},
    IdempotencyLayer, KeyFormat, MemoryStore,
};

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    key: Option<String>,
    body: Bytes,
    at: Instant,
}

#[derive(Clone)]
struct Script {
    /// Status (and `Retry-After`) for request n; the last one over and over.
    answers: Arc<Vec<(u16, Option<&'static str>)>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn scripted(
    State(script): State<Script>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let n = {
        let mut seen = script.seen.lock().unwrap();
        seen.push(Seen {
            key: headers
                .get("idempotency-key")
                .map(|k| k.to_str().unwrap().to_owned()),
            body,
            at: Instant::now(),
        });
        seen.len() - 1
    };
    let (status, retry_after) = script.answers[n.min(script.answers.len() - 1)];
    let mut headers = HeaderMap::new();
    if let Some(after) = retry_after {
        headers.insert("retry-after", after.parse().unwrap());
    }
    (
        StatusCode::from_u16(status).unwrap(),
        headers,
        format!("answer {n}"),
    )
}

async fn serve(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A server answering `answers` in turn, and what it saw.
async fn server(answers: &[(u16, Option<&'static str>)]) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let script = Script {
        answers: Arc::new(answers.to_vec()),
        seen: Arc::default(),
    };
    let app = Router::new()
        .route("/orders", post(scripted).get(scripted).put(scripted))
        .with_state(script.clone());
    let addr = serve(app).await;
    (format!("http://{addr}/orders"), script.seen)
}

fn client(policy: RetryPolicy) -> ClientWithMiddleware {
    let fast = policy.with_backoff(Duration::from_millis(10), Duration::from_millis(100));
    ClientBuilder::new(reqwest::Client::new())
        .with(IdempotentRetryMiddleware::new(fast))
        .build()
}

fn seen(log: &Arc<Mutex<Vec<Seen>>>) -> Vec<Seen> {
    log.lock().unwrap().clone()
}

#[tokio::test]
async fn retries_server_errors_and_conflicts_with_the_same_key_and_body() {
    let (url, log) = server(&[(503, None), (409, None), (500, None), (201, None)]).await;
    let response = client(RetryPolicy::default().with_max_attempts(5))
        .post(&url)
        .body(r#"{"amount": 1200}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let attempts = response.extensions().get::<Attempts>().unwrap().clone();
    assert_eq!((attempts.count(), attempts.definite()), (4, true));
    let seen = seen(&log);
    assert_eq!(seen.len(), 4);
    for s in &seen {
        assert_eq!(s.key.as_deref(), attempts.key().to_str().ok());
        assert_eq!(s.body, r#"{"amount": 1200}"#);
    }
    assert!(KeyFormat::Uuid.matches(seen[0].key.as_deref().unwrap()));
}

#[tokio::test]
async fn never_retries_answers_a_retry_would_not_change() {
    for status in [400, 401, 403, 404, 413, 422] {
        let (url, log) = server(&[(status, None), (201, None)]).await;
        let response = client(RetryPolicy::default())
            .post(&url)
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status);
        assert_eq!(seen(&log).len(), 1, "{status} was sent again");
    }
}

#[tokio::test]
async fn honours_retry_after() {
    let (url, log) = server(&[(429, Some("1")), (201, None)]).await;
    let response = client(RetryPolicy::default())
        .post(&url)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let seen = seen(&log);
    let waited = seen[1].at - seen[0].at;
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
}

#[tokio::test]
async fn gives_up_after_the_last_attempt_and_the_answer_says_so() {
    let (url, log) = server(&[(503, None)]).await;
    let response = client(RetryPolicy::default().with_max_attempts(3))
        .post(&url)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let attempts = response.extensions().get::<Attempts>().unwrap();
    assert_eq!((attempts.count(), attempts.definite()), (3, false));
    assert_eq!(seen(&log).len(), 3);
}

#[tokio::test]
async fn retries_connection_errors_then_returns_the_last_one() {
    // A port that refuses: bound, then closed.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let error = client(RetryPolicy::default().with_max_attempts(3))
        .post(format!("http://{addr}/orders"))
        .body("{}")
        .send()
        .await
        .unwrap_err();
    assert!(error.is_connect(), "{error}");

    // A server that hangs up on every request: each attempt is one connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(Mutex::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            *count.lock().unwrap() += 1;
            drop(conn);
        }
    });
    let error = client(RetryPolicy::default().with_max_attempts(3))
        .post(format!("http://{addr}/orders"))
        .body("{}")
        .send()
        .await
        .unwrap_err();
    assert!(error.is_request(), "{error}");
    assert_eq!(*accepted.lock().unwrap(), 3);
}

#[tokio::test]
async fn a_connection_lost_before_the_answer_is_retried() {
    // The first connection is accepted and closed without an answer; then a real server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (url, log) = {
        let script = Script {
            answers: Arc::new(vec![(201, None)]),
            seen: Arc::default(),
        };
        let app = Router::new()
            .route("/orders", post(scripted))
            .with_state(script.clone());
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        tokio::spawn(async move {
            let (first, _) = listener.accept().await.unwrap();
            drop(first);
            axum::serve(listener, app).await
        });
        (format!("http://{addr}/orders"), script.seen)
    };
    let response = client(RetryPolicy::default())
        .post(&url)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.extensions().get::<Attempts>().unwrap().count(), 2);
    assert_eq!(seen(&log).len(), 1);
}

#[tokio::test]
async fn a_body_over_the_limit_is_sent_once_with_its_key() {
    let (url, log) = server(&[(503, None), (201, None)]).await;
    let response = client(RetryPolicy::default().with_body_limit(4))
        .post(&url)
        .body("0123456789")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let seen = seen(&log);
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, "0123456789");
    assert!(seen[0].key.is_some());
}

#[tokio::test]
async fn other_methods_pass_through_and_a_callers_key_is_kept() {
    let (url, log) = server(&[(503, None), (200, None)]).await;
    let response = client(RetryPolicy::default())
        .get(&url)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.extensions().get::<Attempts>().is_none());
    assert_eq!(seen(&log)[0].key, None);

    let (url, log) = server(&[(503, None), (200, None)]).await;
    let response = client(RetryPolicy::default())
        .post(&url)
        .header("idempotency-key", "order-9")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let keys: Vec<_> = seen(&log).into_iter().map(|s| s.key).collect();
    assert_eq!(
        keys,
        [Some("order-9".to_owned()), Some("order-9".to_owned())]
    );
}

/// Against the server side: a key the layer requires and checks (UUID), and a duplicate that
/// meets the first call in progress, waits out its `Retry-After` and gets the recorded answer.
#[tokio::test]
async fn against_the_server_side_a_duplicate_in_progress_gets_the_replay() {
    let app = Router::new()
        .route(
            "/orders",
            post(|| async {
                tokio::time::sleep(Duration::from_millis(300)).await;
                (StatusCode::CREATED, "order 1")
            }),
        )
        .layer(
            IdempotencyLayer::new(MemoryStore::new())
                .with_key_required(true)
                .with_key_format(KeyFormat::Uuid)
                .with_lease_ttl(Duration::from_secs(1)),
        );
    let url = format!("http://{}/orders", serve(app).await);
    let client = client(RetryPolicy::default());
    let key = tower_idempotency::client::mint_key();
    let call = || {
        client
            .post(&url)
            .header("idempotency-key", key.clone())
            .body("{}")
            .send()
    };
    let (first, duplicate) = tokio::join!(call(), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        call().await
    });
    let (first, duplicate) = (first.unwrap(), duplicate.unwrap());
    assert_eq!(first.status(), 201);
    assert_eq!(duplicate.status(), 201);
    assert_eq!(duplicate.headers()["idempotent-replayed"], "true");
    assert!(duplicate.extensions().get::<Attempts>().unwrap().count() >= 2);
    assert_eq!(duplicate.text().await.unwrap(), "order 1");
}
