//! Waiting without polling: duplicates under `with_wait` are woken by the store when the key
//! changes, on every store that can tell (`WatchKeys`).

mod common;

use std::time::Duration;

use http::StatusCode;
use tokio::{task::JoinSet, time::Instant};
use tower_idempotency::{IdempotencyLayer, WatchKeys};

use common::{counting_store::CountingStore, eventually, post, send, Handler, DEADLINE};

/// 64 duplicates wait on one key; when the first request is recorded, every one of them is
/// answered with its replay at once, and none looked at the store more than three times (its
/// first look, one after subscribing, one after the wake-up): no polling.
async fn waiters_are_woken_when_the_first_completes<St: WatchKeys + Clone>(store: St) {
    let store = CountingStore::new(store);
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store.clone()).with_wait(DEADLINE));
    let first = tokio::spawn(send(&svc, post("/gated", Some("k"), "{}")));
    eventually("the first request to run", || handler.executions() == 1).await;
    let mut waiters = JoinSet::new();
    for _ in 0..64 {
        let svc = svc.clone();
        waiters.spawn(async move {
            let answer = send(&svc, post("/gated", Some("k"), "{}")).await;
            (answer, Instant::now())
        });
    }
    // Each waiter looks twice before it waits: once, and once after subscribing.
    eventually("64 waiters to be waiting", || store.begins() == 1 + 64 * 2).await;
    // Long enough that polling would show: 300 ms of waiting with nothing to wake them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        store.begins(),
        1 + 64 * 2,
        "a waiter looked again before any change"
    );
    handler.open_gate();
    let first = first.await.unwrap();
    let completed = Instant::now();
    assert_eq!(first.status, StatusCode::CREATED);
    for (answer, at) in waiters.join_all().await {
        assert!(answer.replayed(), "{}", answer.text());
        assert_eq!(answer.body, first.body);
        let late = at.saturating_duration_since(completed);
        assert!(
            late < Duration::from_millis(500),
            "answered {late:?} after the completion"
        );
    }
    assert_eq!(handler.executions(), 1);
    assert!(
        store.begins() <= 1 + 64 * 3,
        "{} looks for 64 waiters",
        store.begins()
    );
}

/// No wake-up is lost: 1000 keys, each with 8 duplicates racing its first request; a lost one
/// would leave its waiter waiting out the 5 s timeout and answering 409.
async fn no_wake_up_is_lost_under_load<St: WatchKeys>(store: St) {
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store).with_wait(Duration::from_secs(5)));
    let mut requests = JoinSet::new();
    for key in 0..1000 {
        for _ in 0..9 {
            let svc = svc.clone();
            let key = format!("stress-{key}");
            requests.spawn(async move { send(&svc, post("/orders", Some(&key), "{}")).await });
        }
    }
    let started = Instant::now();
    for answer in requests.join_all().await {
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    }
    assert_eq!(handler.executions(), 1000);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a waiter waited out its timeout"
    );
}

/// A key released by a 5xx wakes its waiters: one of them acquires it and runs, the others
/// replay what it recorded.
async fn a_released_key_wakes_its_waiters_and_one_runs<St: WatchKeys>(store: St) {
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store).with_wait(DEADLINE));
    let path = "/gated?fail_first";
    let first = tokio::spawn(send(&svc, post(path, Some("k"), "{}")));
    eventually("the first request to run", || handler.executions() == 1).await;
    let mut waiters = JoinSet::new();
    for _ in 0..8 {
        waiters.spawn(send(&svc, post(path, Some("k"), "{}")));
    }
    handler.open_gate();
    assert_eq!(
        first.await.unwrap().status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let answers = waiters.join_all().await;
    assert!(answers.iter().all(|a| a.status == StatusCode::CREATED));
    assert_eq!(
        answers.iter().filter(|a| !a.replayed()).count(),
        1,
        "one ran"
    );
    assert_eq!(handler.executions(), 2);
}

macro_rules! waiting {
    ($($store:ident => $make:path;)+) => {$(
        mod $store {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn waiters_are_woken_when_the_first_completes() {
                let (store, _keep) = $make().await;
                super::waiters_are_woken_when_the_first_completes(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn no_wake_up_is_lost_under_load() {
                let (store, _keep) = $make().await;
                super::no_wake_up_is_lost_under_load(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_released_key_wakes_its_waiters_and_one_runs() {
                let (store, _keep) = $make().await;
                super::a_released_key_wakes_its_waiters_and_one_runs(store).await;
            }
        }
    )+};
}

waiting! {
    memory => common::memory_store;
    cached_memory => common::cached_memory_store;
}
