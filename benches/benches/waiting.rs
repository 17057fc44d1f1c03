//! How soon duplicates waiting under `ConflictPolicy::Wait` are answered once the first request
//! is recorded, woken by the store (`with_wait`) or polling (`ConflictPolicy::wait_for`), and
//! how many store commands each waiter costs (Redis: `INFO commandstats` deltas).
//!
//! `cargo bench -p benches --bench waiting` (with `REDIS_URL`, `RedisStore` too; the Redis
//! server should be this bench's alone, so that the command counts are its own)
//!
//! Each round: one first request held in its handler, 64 duplicates of it waiting, then the
//! handler is let go. The delay of a waiter is from the first request's answer (its record is
//! complete by then) to the waiter's answer; rounds alternate between the variants and the
//! percentiles are over every waiter of every round.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};
use tower::{util::BoxCloneService, ServiceBuilder, ServiceExt};
use tower_idempotency::{ConflictPolicy, IdempotencyLayer, MemoryStore, RedisStore, RequestBody};

const WAITERS: usize = 64;
const ROUNDS: usize = 20;
const TIMEOUT: Duration = Duration::from_secs(10);

type Svc = BoxCloneService<
    Request<Full<Bytes>>,
    Response<tower_idempotency::ResponseBody<Full<Bytes>>>,
    Infallible,
>;

/// A service whose handler holds until the gate lets it go, counting its runs.
fn service(
    layer: IdempotencyLayer<impl tower_idempotency::IdempotencyStore + Clone + 'static>,
    gate: Arc<Semaphore>,
    runs: Arc<AtomicUsize>,
) -> Svc {
    let svc = ServiceBuilder::new().layer(layer).service_fn(
        move |_req: Request<RequestBody<Full<Bytes>>>| {
            let gate = Arc::clone(&gate);
            let runs = Arc::clone(&runs);
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                gate.acquire().await.map(|p| p.forget()).ok();
                Ok::<_, Infallible>(
                    Response::builder()
                        .status(StatusCode::CREATED)
                        .body(Full::from("order"))
                        .unwrap_or_default(),
                )
            }
        },
    );
    BoxCloneService::new(svc)
}

fn request(key: &str) -> Request<Full<Bytes>> {
    Request::post("/orders")
        .header("idempotency-key", key)
        .body(Full::from("{}"))
        .unwrap_or_default()
}

/// One round: the waiters' delays after the first request's answer.
async fn round(svc: &Svc, key: &str, gate: &Semaphore, runs: &AtomicUsize) -> Vec<Duration> {
    let started = runs.load(Ordering::SeqCst);
    let first = tokio::spawn(svc.clone().oneshot(request(key)));
    while runs.load(Ordering::SeqCst) == started {
        tokio::task::yield_now().await;
    }
    let mut waiters = JoinSet::new();
    for _ in 0..WAITERS {
        let svc = svc.clone();
        let key = key.to_owned();
        waiters.spawn(async move {
            let response = svc.oneshot(request(&key)).await;
            assert!(matches!(&response, Ok(r) if r.status() == StatusCode::CREATED));
            Instant::now()
        });
    }
    // Let every waiter settle into its wait (polling ones into their longest interval).
    tokio::time::sleep(Duration::from_millis(400)).await;
    gate.add_permits(1);
    let answered = first.await.expect("first request").expect("infallible");
    let completed = Instant::now();
    assert_eq!(answered.status(), StatusCode::CREATED);
    let delays = waiters
        .join_all()
        .await
        .into_iter()
        .map(|at| at.saturating_duration_since(completed))
        .collect();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        started + 1,
        "a waiter ran the handler"
    );
    delays
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Calls per command since the server started (`INFO commandstats`).
async fn command_calls(conn: &mut redis::aio::MultiplexedConnection) -> Vec<(String, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .expect("INFO commandstats");
    info.lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

struct Variant {
    name: &'static str,
    svc: Svc,
    gate: Arc<Semaphore>,
    runs: Arc<AtomicUsize>,
    delays: Vec<Duration>,
    /// Redis commands per round, by command, summed over rounds.
    commands: Vec<(String, u64)>,
}

fn variant<St>(
    name: &'static str,
    layer: impl FnOnce(IdempotencyLayer<St>) -> IdempotencyLayer<St>,
    store: St,
) -> Variant
where
    St: tower_idempotency::IdempotencyStore + Clone + 'static,
{
    let gate = Arc::new(Semaphore::new(0));
    let runs = Arc::new(AtomicUsize::new(0));
    let layer = layer(IdempotencyLayer::new(store).with_max_waiters(WAITERS * 2));
    Variant {
        name,
        svc: service(layer, Arc::clone(&gate), Arc::clone(&runs)),
        gate,
        runs,
        delays: Vec::new(),
        commands: Vec::new(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut variants = vec![
        variant(
            "memory, notified",
            |l| l.with_wait(TIMEOUT),
            MemoryStore::new(),
        ),
        variant(
            "memory, polling",
            |l| l.with_conflict_policy(ConflictPolicy::wait_for(TIMEOUT)),
            MemoryStore::new(),
        ),
    ];
    let mut admin = None;
    match std::env::var("REDIS_URL") {
        Ok(url) => {
            let store = RedisStore::connect(&url)
                .await
                .expect("connect to REDIS_URL");
            variants.push(variant(
                "redis, notified",
                |l| l.with_wait(TIMEOUT),
                store.clone(),
            ));
            variants.push(variant(
                "redis, polling",
                |l| l.with_conflict_policy(ConflictPolicy::wait_for(TIMEOUT)),
                store,
            ));
            let client = redis::Client::open(url.as_str()).expect("REDIS_URL");
            admin = Some(
                client
                    .get_multiplexed_async_connection()
                    .await
                    .expect("connect"),
            );
        }
        Err(_) => eprintln!("RedisStore left out: set REDIS_URL to measure it too"),
    }
    for r in 0..ROUNDS {
        for (v, variant) in variants.iter_mut().enumerate() {
            let key = format!("waiting-{}-{v}-{r}", std::process::id());
            let before = match &mut admin {
                Some(conn) if variant.name.starts_with("redis") => Some(command_calls(conn).await),
                _ => None,
            };
            let delays = round(&variant.svc, &key, &variant.gate, &variant.runs).await;
            variant.delays.extend(delays);
            if let (Some(before), Some(conn)) = (before, &mut admin) {
                // Let the last unsubscribe land before counting.
                tokio::time::sleep(Duration::from_millis(50)).await;
                for (name, calls) in command_calls(conn).await {
                    let was = before
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map_or(0, |(_, c)| *c);
                    if name == "info" || calls == was {
                        continue;
                    }
                    match variant.commands.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, total)) => *total += calls - was,
                        None => variant.commands.push((name, calls - was)),
                    }
                }
            }
        }
    }
    println!("{ROUNDS} rounds of {WAITERS} waiters; delay from the first request's answer to each waiter's");
    println!(
        "| variant | p50 | p99 | max | Redis commands per waiter (less the first request's two) |"
    );
    println!("| --- | ---: | ---: | ---: | --- |");
    for variant in &mut variants {
        variant.delays.sort();
        let per_waiter = if variant.commands.is_empty() {
            "-".to_owned()
        } else {
            let waiters = (ROUNDS * WAITERS) as f64;
            // What the clients sent; the rest ran inside the scripts.
            let sent =
                |name: &str| name == "evalsha" || name == "script" || name.ends_with("subscribe");
            let list = |inside: bool| {
                variant
                    .commands
                    .iter()
                    .filter(|(name, _)| sent(name) != inside)
                    .map(|(name, calls)| format!("{name} {:.2}", *calls as f64 / waiters))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let total: u64 = variant
                .commands
                .iter()
                .filter(|(name, _)| sent(name))
                .map(|(_, calls)| calls)
                .sum();
            // The first request's own two calls (begin, complete) are not the waiters'.
            format!(
                "{:.2}: {} (in scripts: {})",
                (total as f64 - 2.0 * ROUNDS as f64) / waiters,
                list(false),
                list(true)
            )
        };
        println!(
            "| {} | {:.2} ms | {:.2} ms | {:.2} ms | {} |",
            variant.name,
            percentile(&variant.delays, 0.5).as_secs_f64() * 1e3,
            percentile(&variant.delays, 0.99).as_secs_f64() * 1e3,
            variant
                .delays
                .last()
                .copied()
                .unwrap_or_default()
                .as_secs_f64()
                * 1e3,
            per_waiter
        );
    }
}
