//! Heap allocations per request, with and without the layer: a count, not a timing, so it is
//! the same on a noisy machine and catches a regression the timings would hide.
//!
//! `cargo bench -p benches --bench allocations` (with `REDIS_URL`, `RedisStore` too)

use std::{
    alloc::{GlobalAlloc, Layout, System},
    convert::Infallible,
    sync::atomic::{AtomicU64, Ordering},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_idempotency::{IdempotencyLayer, IdempotencyStore, MemoryStore, RedisStore};

/// Counts every allocation the process makes.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; it only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ROUNDS: u64 = 1000;
const ORDER: &str = r#"{"id":"ord_1","customer_id":"C001","amount":1200}"#;

async fn handler<B>(_req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = Response::builder()
        .status(StatusCode::CREATED)
        .header("content-type", "application/json")
        .body(Full::from(ORDER))
        .unwrap_or_default();
    Ok(response)
}

fn request(key: &str) -> Request<Full<Bytes>> {
    Request::post("/orders")
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(
            br#"{"customer_id":"C001","amount":1200}"#,
        )))
        .unwrap_or_default()
}

/// Allocations and bytes per request over `ROUNDS` requests, keys from `key`.
async fn measure<S, B>(svc: S, key: impl Fn(u64) -> String) -> (f64, f64)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
{
    let keys: Vec<_> = (0..ROUNDS).map(&key).collect();
    let requests: Vec<_> = keys.iter().map(|k| request(k)).collect();
    let (count, bytes) = (
        ALLOCATIONS.load(Ordering::SeqCst),
        BYTES.load(Ordering::SeqCst),
    );
    for req in requests {
        let response = svc.clone().oneshot(req).await.expect("answer");
        let _ = response.into_body().collect().await;
    }
    let count = ALLOCATIONS.load(Ordering::SeqCst) - count;
    let bytes = BYTES.load(Ordering::SeqCst) - bytes;
    (count as f64 / ROUNDS as f64, bytes as f64 / ROUNDS as f64)
}

async fn report<St: IdempotencyStore>(name: &str, store: St) {
    let svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(store))
        .service_fn(handler);
    // Keys no earlier run recorded, so that first executions are first in a shared Redis too.
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let first = measure(svc.clone(), |n| format!("{name}-{run}-{n}")).await;
    let replay = measure(svc, |_| format!("{name}-{run}-0")).await;
    println!(
        "| {name}, first execution | {:.1} | {:.0} |",
        first.0, first.1
    );
    println!("| {name}, replay | {:.1} | {:.0} |", replay.0, replay.1);
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let bare = tower::service_fn(handler::<Full<Bytes>>);
    let (count, bytes) = measure(bare, |n| format!("bare-{n}")).await;
    println!("| per request | allocations | bytes allocated |");
    println!("| --- | ---: | ---: |");
    println!("| bare service | {count:.1} | {bytes:.0} |");
    report("MemoryStore", MemoryStore::new()).await;
    match std::env::var("REDIS_URL") {
        Ok(url) => match RedisStore::connect(&url).await {
            Ok(store) => report("RedisStore", store).await,
            Err(e) => eprintln!("RedisStore left out: {e}"),
        },
        Err(_) => eprintln!("RedisStore left out: set REDIS_URL to count it too"),
    }
}
