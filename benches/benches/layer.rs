//! Per-request cost of the layer with `MemoryStore`, against the bare service, in one run.
//!
//! `cargo bench -p benches --bench layer`

use std::{
    convert::Infallible,
    sync::atomic::{AtomicU64, Ordering},
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{ServiceBuilder, ServiceExt};
use tower_idempotency::{IdempotencyLayer, MemoryStore};

/// Reads the body and answers 201 with a small JSON body, like a create endpoint.
async fn handler<B>(req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes().len())
        .unwrap_or(0);
    let response = Response::builder()
        .status(StatusCode::CREATED)
        .header("content-type", "application/json")
        .body(Full::from(format!("{{\"received\":{body}}}")))
        .unwrap_or_default();
    Ok(response)
}

fn request(key: Option<String>, body: &Bytes) -> Request<Full<Bytes>> {
    let mut builder = Request::post("/orders").header("content-type", "application/json");
    if let Some(key) = key {
        builder = builder.header("idempotency-key", key);
    }
    builder.body(Full::new(body.clone())).unwrap_or_default()
}

fn overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("layer_overhead");
    for size in [1024usize, 64 * 1024] {
        let body = Bytes::from(vec![b'x'; size]);
        group.throughput(Throughput::Bytes(size as u64));

        group.bench_with_input(BenchmarkId::new("bare", size), &body, |b, body| {
            let svc = tower::service_fn(handler::<Full<Bytes>>);
            b.to_async(&runtime).iter(|| {
                let body = body.clone();
                async move {
                    let response = svc.oneshot(request(None, &body)).await;
                    let _ = response.map(|r| r.into_body());
                }
            });
        });

        let layered = ServiceBuilder::new()
            .layer(IdempotencyLayer::new(MemoryStore::new()).with_body_limit(1024 * 1024))
            .service_fn(handler);

        group.bench_with_input(
            BenchmarkId::new("first_execution", size),
            &body,
            |b, body| {
                let counter = AtomicU64::new(0);
                b.to_async(&runtime).iter(|| {
                    let svc = layered.clone();
                    let key = format!("k-{}", counter.fetch_add(1, Ordering::Relaxed));
                    let body = body.clone();
                    async move {
                        let response = svc.oneshot(request(Some(key), &body)).await;
                        let _ = response.map(|r| r.into_body());
                    }
                });
            },
        );

        group.bench_with_input(BenchmarkId::new("replay", size), &body, |b, body| {
            runtime.block_on(async {
                let _ = layered
                    .clone()
                    .oneshot(request(Some("replayed".into()), body))
                    .await;
            });
            b.to_async(&runtime).iter(|| {
                let svc = layered.clone();
                let body = body.clone();
                async move {
                    let response = svc.oneshot(request(Some("replayed".into()), &body)).await;
                    let _ = response.map(|r| r.into_body());
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
