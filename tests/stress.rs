//! Several hundred concurrent requests over a handful of keys, mixed payloads, through two layer
//! instances (one rejecting, one waiting) that share one Redis: one execution per key, and the
//! right status for everything else.

mod common;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use test_support::{unique_prefix, TestRedis};
use tokio::task::JoinSet;
use tower::{util::BoxCloneService, ServiceBuilder};
use tower_idempotency::{ConflictPolicy, IdempotencyLayer, RedisStore, RequestBody};

use common::{full, post, send, TestBody, TestService, DEADLINE};

const KEYS: usize = 6;
const REQUESTS: usize = 480;

/// Which payload ran for each key, and how often.
type Runs = Arc<Mutex<HashMap<String, Vec<Bytes>>>>;

fn instance(store: RedisStore, policy: ConflictPolicy, runs: Runs) -> TestService {
    let svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(store).with_conflict_policy(policy))
        .service_fn(move |req: Request<RequestBody<TestBody>>| {
            let runs = Arc::clone(&runs);
            async move {
                let key = req.headers()["idempotency-key"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                runs.lock()
                    .unwrap()
                    .entry(key.clone())
                    .or_default()
                    .push(body.clone());
                // Stands for real work, so that duplicates meet the request in progress.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let reply = format!("{key} ran {}", String::from_utf8_lossy(&body));
                Ok::<_, std::io::Error>(
                    Response::builder()
                        .status(StatusCode::CREATED)
                        .body(full(reply))
                        .unwrap(),
                )
            }
        });
    BoxCloneService::new(svc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_run_each_key_exactly_once() {
    let redis = TestRedis::start().await;
    let prefix = unique_prefix("stress");
    let runs: Runs = Arc::default();
    let connect = || async {
        RedisStore::connect(redis.url())
            .await
            .unwrap()
            .with_key_prefix(&prefix)
    };
    let rejecting = instance(connect().await, ConflictPolicy::Reject, Arc::clone(&runs));
    let waiting = instance(
        connect().await,
        ConflictPolicy::wait_for(DEADLINE),
        Arc::clone(&runs),
    );

    let mut tasks = JoinSet::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..REQUESTS {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let key = format!("key-{}", (seed >> 33) as usize % KEYS);
        let payload = if (seed >> 20).is_multiple_of(4) {
            "B"
        } else {
            "A"
        };
        let waits = i % 2 == 1;
        let svc = if waits { &waiting } else { &rejecting };
        let answer = send(svc, post("/orders", Some(&key), payload));
        tasks.spawn(async move { (key, payload, waits, answer.await) });
    }
    let answers = tokio::time::timeout(DEADLINE * 2, tasks.join_all())
        .await
        .expect("all answered");

    let runs = runs.lock().unwrap();
    assert_eq!(runs.len(), KEYS, "every key ran");
    for (key, bodies) in runs.iter() {
        assert_eq!(bodies.len(), 1, "{key} ran {} times", bodies.len());
    }
    let (mut first_runs, mut mismatches, mut conflicts) = (0, 0, 0);
    for (key, payload, waits, answer) in &answers {
        let winner = &runs[key][0];
        if payload.as_bytes() != winner.as_ref() {
            answer.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "key-reused");
            mismatches += 1;
            continue;
        }
        match answer.status {
            StatusCode::CREATED => {
                assert_eq!(answer.text(), format!("{key} ran {payload}"));
                first_runs += usize::from(!answer.replayed());
            }
            StatusCode::CONFLICT if !waits => {
                answer.assert_problem(StatusCode::CONFLICT, "in-progress");
                conflicts += 1;
            }
            other => panic!(
                "{key} {payload} (waits: {waits}) got {other}: {}",
                answer.text()
            ),
        }
    }
    eprintln!(
        "{REQUESTS} requests: {first_runs} ran, {mismatches} mismatched, {conflicts} conflicted"
    );
    assert_eq!(
        first_runs, KEYS,
        "one original response per key, every other one a replay"
    );
    assert!(mismatches > 0, "the mix reuses keys with another payload");
}
