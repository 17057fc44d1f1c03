//! Fingerprint throughput and record encode/decode.
//!
//! `cargo bench -p benches --bench codec`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use tower_idempotency::{CompletedRecord, DefaultFingerprint, MakeFingerprint, RecordedResponse};

fn fingerprint(c: &mut Criterion) {
    let mut group = c.benchmark_group("fingerprint");
    let parts = Request::post("/orders?x=1")
        .body(())
        .map(|r| r.into_parts().0)
        .expect("request");
    let fp = DefaultFingerprint::new();
    for size in [1024usize, 64 * 1024] {
        let body = vec![b'x'; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &body, |b, body| {
            b.iter(|| fp.fingerprint(&parts, body));
        });
    }
    group.finish();
}

fn record(size: usize) -> CompletedRecord {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "location",
        HeaderValue::from_static("/orders/ord_0123456789abcdef"),
    );
    headers.append(
        "x-request-id",
        HeaderValue::from_static("7f1c2a9e-8d31-4c4b-9a0b-2d7c1f3e5a6b"),
    );
    CompletedRecord::Response(RecordedResponse::new(
        StatusCode::CREATED,
        headers,
        Bytes::from(vec![b'x'; size]),
    ))
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("record");
    for size in [1024usize, 64 * 1024] {
        let record = record(size);
        let encoded = record.encode();
        group.throughput(Throughput::Bytes(encoded.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode", size), &record, |b, record| {
            b.iter(|| record.encode())
        });
        group.bench_with_input(BenchmarkId::new("decode", size), &encoded, |b, encoded| {
            b.iter(|| CompletedRecord::decode(encoded))
        });
    }
    group.finish();
}

criterion_group!(benches, fingerprint, codec);
criterion_main!(benches);
