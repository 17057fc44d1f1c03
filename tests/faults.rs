//! Breaking Redis on purpose: outages, stalls, lost leases. Each test owns its redis-server.

mod common;

use std::time::Duration;

use http::StatusCode;
use redis::AsyncCommands;
use test_support::TestRedis;
use tokio::time::Instant;
use tower_idempotency::{IdempotencyLayer, RedisStore, StoreKey};

use common::{eventually, logs, post, send, send_until_not, Handler, TestService};

fn key_hash(key: &str) -> String {
    StoreKey::derive(None, "POST", "/orders", key).to_hex()
}

/// Sends a POST with `key` until the answer is not `status`, failing after the deadline.
async fn until_not(svc: &TestService, status: StatusCode, key: &str) -> common::Answer {
    send_until_not(svc, status, || post("/orders", Some(key), "{}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_fails_closed_and_the_same_process_recovers() {
    let mut redis = TestRedis::start_own().await;
    let store = RedisStore::connect(redis.url()).await.unwrap();
    let handler = Handler::new();
    let layer = IdempotencyLayer::new(store).with_store_timeout(Duration::from_millis(500));
    let svc = handler.service(layer);
    assert_eq!(
        send(&svc, post("/orders", Some("before"), "{}"))
            .await
            .status,
        StatusCode::CREATED
    );

    redis.server().expect("a spawned server").stop();
    let started = Instant::now();
    let refused = send(&svc, post("/orders", Some("during"), "{}")).await;
    refused.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "store-unavailable");
    assert_eq!(refused.headers["retry-after"], "1");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        handler.executions(),
        1,
        "fail closed: the handler did not run"
    );
    // Requests the layer does not cover still pass.
    let get = http::Request::get("/orders")
        .body(http_body_util::BodyExt::boxed(http_body_util::Empty::new()))
        .unwrap();
    assert_eq!(send(&svc, get).await.status, StatusCode::CREATED);
    assert_eq!(handler.executions(), 2);

    redis.server().unwrap().start().unwrap();
    let recovered = until_not(&svc, StatusCode::SERVICE_UNAVAILABLE, "after").await;
    assert_eq!(recovered.status, StatusCode::CREATED);
    assert!(send(&svc, post("/orders", Some("after"), "{}"))
        .await
        .replayed());
    assert_eq!(handler.executions(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_runs_unguarded_and_logs_every_such_request() {
    logs::capture();
    let mut redis = TestRedis::start_own().await;
    let store = RedisStore::connect(redis.url()).await.unwrap();
    let handler = Handler::new();
    let layer = IdempotencyLayer::new(store)
        .with_store_timeout(Duration::from_millis(500))
        .with_fail_open(true);
    let svc = handler.service(layer);
    redis.server().unwrap().stop();

    for _ in 0..2 {
        let answer = send(&svc, post("/orders", Some("open"), "{}")).await;
        assert_eq!(answer.status, StatusCode::CREATED);
        assert!(!answer.replayed());
    }
    assert_eq!(handler.executions(), 2, "fail-open runs every request");
    let warned = logs::lines_with(&["WARN", "fail-open", &key_hash("open")]);
    assert_eq!(
        warned.len(),
        2,
        "one warning per unguarded request: {warned:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_gives_503_within_the_store_timeout() {
    let redis = TestRedis::start_own().await;
    let store = RedisStore::connect(redis.url()).await.unwrap();
    let handler = Handler::new();
    let timeout = Duration::from_millis(300);
    let svc = handler.service(IdempotencyLayer::new(store).with_store_timeout(timeout));
    let mut probe = redis.connection().await;
    test_support::pause_all_clients(&mut probe, Duration::from_millis(2000)).await;

    let started = Instant::now();
    let answer = send(&svc, post("/orders", Some("stalled"), "{}")).await;
    let took = started.elapsed();
    answer.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "store-unavailable");
    assert!(
        took >= timeout && took < timeout * 4,
        "answered after {took:?}"
    );
    assert_eq!(handler.executions(), 0);

    // Once the pause ends, the begin that timed out may have acquired late; its release
    // follows it on the same connection, so the key is free again.
    let after = until_not(&svc, StatusCode::SERVICE_UNAVAILABLE, "stalled").await;
    let after = if after.status == StatusCode::CONFLICT {
        until_not(&svc, StatusCode::CONFLICT, "stalled").await
    } else {
        after
    };
    assert_eq!(after.status, StatusCode::CREATED);
    assert_eq!(handler.executions(), 1);
}

/// The lease is lost mid-handler (the record vanished): renewal notices and logs it, another
/// request takes the key, and the old holder cannot record over it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_logged_and_the_old_holder_cannot_overwrite_the_new_one() {
    logs::capture();
    let redis = TestRedis::start_own().await;
    let store = RedisStore::connect(redis.url()).await.unwrap();
    let handler = Handler::new();
    let layer = IdempotencyLayer::new(store.clone()).with_lease_ttl(Duration::from_millis(300));
    let svc = handler.service(layer);

    let first = tokio::spawn(send(&svc, post("/gated", Some("lost"), "{}")));
    eventually("the first request to start", || handler.executions() == 1).await;
    let record = store.record_key(&StoreKey::derive(None, "POST", "/gated", "lost"));
    let mut probe = redis.connection().await;
    let () = probe.del(&record).await.unwrap();
    let gated_hash = StoreKey::derive(None, "POST", "/gated", "lost").to_hex();
    eventually("renewal to notice the lost lease", || {
        !logs::lines_with(&["WARN", "lease lost while the handler runs", &gated_hash]).is_empty()
    })
    .await;

    let second = tokio::spawn(send(&svc, post("/gated", Some("lost"), "{}")));
    eventually("the second request to start", || handler.executions() == 2).await;
    handler.open_gate();
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(
        (first.status, second.status),
        (StatusCode::CREATED, StatusCode::CREATED)
    );
    assert_eq!(
        logs::lines_with(&["WARN", "lease lost before completion", &gated_hash]).len(),
        1,
        "the first holder's complete was refused"
    );
    // The record is the second holder's: the first could not overwrite it.
    let replay = send(&svc, post("/gated", Some("lost"), "{}")).await;
    assert!(replay.replayed());
    assert_eq!(replay.body, second.body);
    assert_ne!(replay.body, first.body);
    assert_eq!(handler.executions(), 2);
}

/// Redis refuses writes (out of memory) just as the handler finishes: the response still goes
/// out, the key stays locked (no release: the side effect happened), and the record is written
/// in the background once Redis takes writes again. Retries replay; the handler ran once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_fails_to_land_is_written_again_and_never_rerun() {
    logs::capture();
    let redis = TestRedis::start_own().await;
    let store = RedisStore::connect(redis.url()).await.unwrap();
    let handler = Handler::new();
    // A short lease: were the key released, or left to its lease, the retry below would run
    // the handler a second time within the test's deadline.
    let layer = IdempotencyLayer::new(store).with_lease_ttl(Duration::from_millis(1500));
    let svc = handler.service(layer);
    let hash = StoreKey::derive(None, "POST", "/gated", "oom").to_hex();

    let first = tokio::spawn(send(&svc, post("/gated", Some("oom"), "{}")));
    eventually("the handler to start", || handler.executions() == 1).await;
    let mut admin = redis.connection().await;
    let set_maxmemory = |bytes: &str| {
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(bytes)
            .to_owned()
    };
    let () = set_maxmemory("1").query_async(&mut admin).await.unwrap();
    handler.open_gate();
    let first = first.await.unwrap();
    assert_eq!(
        first.status,
        StatusCode::CREATED,
        "the client still gets its response"
    );
    eventually("the failed record to be logged", || {
        !logs::lines_with(&["WARN", "retrying in the background", &hash]).is_empty()
    })
    .await;
    let conflict = send(&svc, post("/gated", Some("oom"), "{}")).await;
    conflict.assert_problem(StatusCode::CONFLICT, "in-progress");

    let () = set_maxmemory("0").query_async(&mut admin).await.unwrap();
    let replay = send_until_not(&svc, StatusCode::CONFLICT, || {
        post("/gated", Some("oom"), "{}")
    })
    .await;
    assert!(replay.replayed(), "got {} {}", replay.status, replay.text());
    assert_eq!(replay.body, first.body);
    assert_eq!(handler.executions(), 1);
    assert_eq!(
        logs::lines_with(&["INFO", "recorded after retrying", &hash]).len(),
        1
    );
}
