//! `MemoryStore` and the waiters' wake-ups under a concurrency checker (issue #17, point 4).
//!
//! Built only with `--cfg shuttle`, which swaps the store's and the hub's locks and atomics for
//! shuttle's (`src/sync.rs`); shuttle then runs these tasks under many chosen interleavings of
//! those locks and of the tasks' await points, and fails a run in which every task waits (a lost
//! wake-up) or an assertion breaks:
//!
//! ```text
//! RUSTFLAGS="--cfg shuttle" cargo test --release --features memory --test shuttle
//! ```
//!
//! `SHUTTLE_ITERATIONS` sets how many schedules each test tries (default 10,000). Each task
//! follows what the layer does under `ConflictPolicy::Wait`: subscribe to the key, wait until
//! the subscription is live, look at the key, and wait for a change only if it is in progress.
#![cfg(shuttle)]

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http::StatusCode;
use tower_idempotency::{
    BeginOutcome, CompletedRecord, Fingerprint, IdempotencyStore, LeaseToken, MemoryStore,
    RecordedResponse, StoreKey, WatchKeys,
};

/// Long enough that no lease ends during a run: expiry is not what these tests check.
const LEASE: Duration = Duration::from_secs(600);

fn iterations() -> usize {
    std::env::var("SHUTTLE_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn record(body: &'static str) -> CompletedRecord {
    CompletedRecord::Response(RecordedResponse::new(
        StatusCode::CREATED,
        Default::default(),
        Bytes::from_static(body.as_bytes()),
    ))
}

/// When a waiter subscribes to the key: before it looks (what the layer does), or after (the
/// lost wake-up the checker must find).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    SubscribeThenLook,
    LookThenSubscribe,
}

/// What one request did with the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// It held the key and completed it.
    Completed,
    /// It held the key and released it (its handler failed); it does not come back.
    Released,
    /// It found the key completed by another: a replay.
    Replayed,
}

/// One request under `Wait`: it holds the key and completes it (or, if `gives_up`, releases it),
/// or waits for whoever holds it and looks again.
async fn request(
    store: MemoryStore,
    key: StoreKey,
    gives_up: bool,
    order: Order,
    runs: Arc<AtomicUsize>,
) -> Ended {
    let fingerprint = Fingerprint::from_bytes([7; 32]);
    loop {
        let token = LeaseToken::generate();
        let (mut watch, outcome) = match order {
            Order::SubscribeThenLook => {
                let mut watch = store.watch(&key);
                watch.ready().await;
                let outcome = store.begin(&key, &fingerprint, &token, LEASE).await;
                (watch, outcome)
            }
            Order::LookThenSubscribe => {
                let outcome = store.begin(&key, &fingerprint, &token, LEASE).await;
                shuttle::future::yield_now().await;
                (store.watch(&key), outcome)
            }
        };
        match outcome.unwrap() {
            BeginOutcome::Acquired { .. } => {
                let running = runs.fetch_add(1, Ordering::SeqCst) + 1;
                assert_eq!(running, 1, "two holders of one key at once");
                shuttle::future::yield_now().await;
                runs.fetch_sub(1, Ordering::SeqCst);
                return if gives_up {
                    assert!(store.release(&key, &token).await.unwrap());
                    Ended::Released
                } else {
                    let done = store
                        .complete(&key, &token, &fingerprint, &record("made"), LEASE)
                        .await
                        .unwrap();
                    assert!(done, "the holder's complete was refused");
                    Ended::Completed
                };
            }
            BeginOutcome::InProgress { .. } => watch.changed().await,
            BeginOutcome::Completed { .. } => return Ended::Replayed,
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn run(requests: &[bool]) -> Vec<Ended> {
    run_in(requests, Order::SubscribeThenLook)
}

fn run_in(requests: &[bool], order: Order) -> Vec<Ended> {
    let store = MemoryStore::new();
    let key = StoreKey::derive(None, "POST", "/orders", "k");
    let runs = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = requests
        .iter()
        .map(|&gives_up| {
            shuttle::future::spawn(request(
                store.clone(),
                key,
                gives_up,
                order,
                Arc::clone(&runs),
            ))
        })
        .collect();
    tasks
        .into_iter()
        .map(|task| shuttle::future::block_on(task).unwrap())
        .collect()
}

/// Three requests race for one key: exactly one completes it, the others replay it, and every
/// waiter is woken (shuttle reports a schedule where all of them wait forever).
#[test]
fn one_completes_and_every_waiter_wakes() {
    shuttle::check_random(
        || {
            let ended = run(&[false, false, false]);
            assert_eq!(
                ended.iter().filter(|e| **e == Ended::Completed).count(),
                1,
                "{ended:?}"
            );
            assert_eq!(
                ended.iter().filter(|e| **e == Ended::Replayed).count(),
                2,
                "{ended:?}"
            );
        },
        iterations(),
    );
}

/// A holder that releases the key hands it to exactly one waiter, which completes it; the rest
/// replay. Each released key wakes its waiters, and dropped subscriptions racing new ones lose
/// no wake-up.
#[test]
fn a_release_hands_the_key_on() {
    shuttle::check_random(
        || {
            let ended = run(&[true, false, false]);
            let completed = ended.iter().filter(|e| **e == Ended::Completed).count();
            let replayed = ended.iter().filter(|e| **e == Ended::Replayed).count();
            match ended[0] {
                // It held the key first and gave it up: one of the others completed it.
                Ended::Released => assert_eq!((completed, replayed), (1, 1), "{ended:?}"),
                // It came after the key was completed.
                Ended::Replayed => assert_eq!((completed, replayed), (1, 2), "{ended:?}"),
                Ended::Completed => unreachable!("the first request never completes"),
            }
        },
        iterations(),
    );
}

/// The same under shuttle's PCT scheduler, which finds bugs that need a few ordered preemptions
/// with known probability.
#[test]
fn a_release_hands_the_key_on_under_pct() {
    shuttle::check_pct(
        || {
            let ended = run(&[true, false, false]);
            assert_eq!(
                ended.iter().filter(|e| **e == Ended::Completed).count(),
                1,
                "{ended:?}"
            );
        },
        iterations(),
        3,
    );
}

/// The checker earns its keep: a waiter that looks at the key before it subscribes can miss
/// the change that happens in between and wait forever; shuttle must find such a schedule.
#[test]
#[should_panic(expected = "deadlock")]
fn subscribing_after_the_look_is_caught() {
    shuttle::check_random(
        || {
            run_in(&[false, false, false], Order::LookThenSubscribe);
        },
        iterations(),
    );
}
