//! Redis Cluster failover: a primary is killed while requests run, a replica takes over, the
//! old primary comes back as a replica, and no key runs its handler twice.
#![cfg(feature = "redis-cluster")]

mod common;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use http::StatusCode;
use test_support::{unique_prefix, TestCluster};
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};
use tower_idempotency::{IdempotencyLayer, RedisStore};

use common::{eventually, post, send, Answer, Handler, TestService};

const KEYS: usize = 240;
const CLIENTS_PER_KEY: usize = 3;
const KEYS_AT_ONCE: usize = 16;
/// Long enough for a failover (2 s node timeout, then an election) and a rejoin.
const CLIENT_DEADLINE: Duration = Duration::from_secs(90);

/// Counts of the answers clients saw before they got their response, by status.
type Refusals = Arc<Mutex<BTreeMap<u16, usize>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_primary_mid_run_runs_no_key_twice() {
    let mut cluster = tokio::task::spawn_blocking(TestCluster::start_with_replicas)
        .await
        .expect("cluster start-up");
    let store = RedisStore::connect_cluster(cluster.urls())
        .await
        .expect("connect to the test cluster")
        .with_key_prefix(unique_prefix("failover"))
        .with_replica_acks(1, Duration::from_millis(250));
    // Every node forgets the scripts, so the first calls take the reload path of `WAIT` too.
    for url in cluster.urls() {
        let mut node = redis::Client::open(url.as_str())
            .and_then(|c| c.get_connection())
            .expect("node connection");
        let () = redis::cmd("SCRIPT")
            .arg("FLUSH")
            .query(&mut node)
            .expect("SCRIPT FLUSH");
    }
    let handler = Handler::new();
    let svc = handler.service(
        IdempotencyLayer::new(store)
            .with_store_timeout(Duration::from_secs(1))
            .with_lease_ttl(Duration::from_secs(30)),
    );

    let done = Arc::new(AtomicUsize::new(0));
    let refusals = Refusals::default();
    let at_once = Arc::new(Semaphore::new(KEYS_AT_ONCE));
    let mut keys = JoinSet::new();
    for n in 0..KEYS {
        let key = format!("order-{n}");
        let permit = Arc::clone(&at_once).acquire_owned();
        let (svc, done, refusals) = (svc.clone(), Arc::clone(&done), Arc::clone(&refusals));
        keys.spawn(async move {
            let _permit = permit.await.expect("semaphore open");
            let mut clients = JoinSet::new();
            for _ in 0..CLIENTS_PER_KEY {
                clients.spawn(until_answered(
                    svc.clone(),
                    key.clone(),
                    Arc::clone(&refusals),
                ));
            }
            let answers = clients.join_all().await;
            done.fetch_add(1, Ordering::SeqCst);
            (key, answers)
        });
    }

    eventually("a third of the keys to finish", || {
        done.load(Ordering::SeqCst) >= KEYS / 3
    })
    .await;
    let killed_at = done.load(Ordering::SeqCst);
    let primary = tokio::task::block_in_place(|| {
        let primary = cluster.primary_of_slot_zero();
        cluster.kill(primary);
        cluster.wait_for_failover(primary);
        cluster.restart(primary);
        primary
    });

    let mut answered = 0;
    while let Some(joined) = keys.join_next().await {
        let (key, answers) = joined.expect("key driver");
        let first = &answers[0];
        assert!(
            first.text().contains(&format!("\"echo\":\"{key}\"")),
            "{key} got another key's response: {}",
            first.text()
        );
        for answer in &answers {
            assert_eq!(
                answer.body, first.body,
                "{key}: every client gets one response"
            );
        }
        answered += 1;
    }
    let refusals = refusals.lock().expect("refusals").clone();
    eprintln!(
        "killed primary {primary} after {killed_at} of {KEYS} keys; refusals before success: {refusals:?}"
    );
    assert_eq!(answered, KEYS);
    assert_eq!(
        handler.executions(),
        KEYS,
        "each key ran exactly once, across the failover"
    );
    assert!(
        refusals.get(&503).copied().unwrap_or(0) > 0,
        "the kill hit requests in flight"
    );
}

/// Sends the key's request until it gets a 2xx, as a client that retries would; 409 and 503
/// are expected during the failover and counted.
async fn until_answered(svc: TestService, key: String, refusals: Refusals) -> Answer {
    let deadline = Instant::now() + CLIENT_DEADLINE;
    loop {
        let answer = send(&svc, post("/orders", Some(&key), key.clone())).await;
        if answer.status.is_success() {
            return answer;
        }
        assert!(
            matches!(
                answer.status,
                StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE
            ),
            "{key}: unexpected {} {}",
            answer.status,
            answer.text()
        );
        *refusals
            .lock()
            .expect("refusals")
            .entry(answer.status.as_u16())
            .or_default() += 1;
        assert!(
            Instant::now() < deadline,
            "{key}: no answer within {CLIENT_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
