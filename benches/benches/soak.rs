//! One million distinct keys through the layer with the default `MemoryStore` (100 000 records):
//! prints resident memory once the store is full and its peak at the end. Bounded means the two
//! stay close, however many keys pass.
//!
//! `cargo bench -p benches --bench soak`

use std::{convert::Infallible, time::Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{ServiceBuilder, ServiceExt};
use tower_idempotency::{IdempotencyLayer, MemoryStore, RequestBody};

const KEYS: usize = 1_000_000;
const CAPACITY: usize = 100_000;

/// `VmRSS` and `VmHWM` (peak) from `/proc/self/status`, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let store = MemoryStore::with_max_entries(CAPACITY);
    let svc = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(store.clone()))
        .service_fn(|_req: Request<RequestBody<Full<Bytes>>>| async {
            let body = Full::from(vec![b'r'; 256]);
            Ok::<_, Infallible>(
                Response::builder()
                    .status(StatusCode::CREATED)
                    .body(body)
                    .unwrap_or_default(),
            )
        });
    let body = Bytes::from(vec![b'q'; 1024]);
    let (start_rss, _) = memory_kib();
    let started = Instant::now();
    let mut full_rss = 0;
    runtime.block_on(async {
        for i in 0..KEYS {
            let req = Request::post("/orders")
                .header("idempotency-key", format!("soak-{i}"))
                .body(Full::new(body.clone()))
                .unwrap_or_default();
            let response = svc.clone().oneshot(req).await;
            assert!(matches!(response, Ok(r) if r.status() == StatusCode::CREATED));
            if i + 1 == CAPACITY {
                full_rss = memory_kib().0;
            }
            if (i + 1) % (KEYS / 10) == 0 {
                let (rss, peak) = memory_kib();
                println!(
                    "soak: after {:>7} keys: RSS {rss} KiB, peak {peak} KiB, records {}",
                    i + 1,
                    store.len()
                );
            }
        }
    });
    let (end_rss, peak) = memory_kib();
    println!(
        "soak: {KEYS} distinct keys in {:.1?}, store holds {} records (cap {CAPACITY})",
        started.elapsed(),
        store.len()
    );
    println!("soak: RSS at start {start_rss} KiB, when the store filled {full_rss} KiB, at the end {end_rss} KiB, peak {peak} KiB");
    println!(
        "soak: peak / RSS when full = {:.2} (the map grows once as eviction starts, then stays flat)",
        peak as f64 / full_rss.max(1) as f64
    );
}
