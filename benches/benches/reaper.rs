//! `PostgresStore::reap_expired` on a table of expired records, and what it does to live
//! requests meanwhile (issue #18, point 4).
//!
//! `cargo bench -p benches --bench reaper`
//!
//! On a PostgreSQL of its own (initdb'd in a temporary directory, `fsync=off`; or
//! `BENCH_DATABASE_URL`, a throwaway database, never `DATABASE_URL`), the bench fills
//! `idempotency_records` with `REAPER_ROWS` (1 000 000) expired completed records in one
//! `INSERT ... SELECT FROM generate_series` (32-byte SHA-256 keys and fingerprints, 16-byte
//! tokens, state `c`, the encoded record of a 201 with a 200-byte JSON body, expiry in insertion
//! order), then `VACUUM (ANALYZE)`s it as autovacuum would have long since (`REAPER_VACUUM=0`
//! skips that) and checkpoints. Then a live-request loop starts on another task: `begin` and
//! `complete` on fresh keys, back to back, each pair's latency recorded. After a second of
//! warm-up and `REAPER_BASELINE_SECS` (3) of baseline, `reap_expired` is called again and again
//! until it returns 0, and the loop stops. About a minute in all on a busy 2-core machine.
//!
//! Read: the reap table (rows/s overall, and the duration of single calls as the table empties:
//! each call deletes up to 10 000 rows), and the live table: p50/p99/max of a `begin`+`complete`
//! pair before the reap and during it. A p99 during the reap far above the baseline means
//! reaping holds up requests. The plan of the reap statement is printed first, and its
//! `EXPLAIN (ANALYZE, BUFFERS)` once nothing is left to reap (what an idle reaper call costs).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header::CONTENT_TYPE, HeaderMap, HeaderValue, StatusCode};
use sqlx::{postgres::PgPoolOptions, PgPool, Row};
use test_support::TestPostgres;
use tower_idempotency::{
    BeginOutcome, CompletedRecord, Fingerprint, IdempotencyStore, LeaseToken, PostgresStore,
    RecordedResponse, StoreKey,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const LEASE: Duration = Duration::from_secs(30);
const TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// `rows` expired completed records, as `begin` and `complete` leave them, in one statement.
const FILL: &str = "INSERT INTO idempotency_records
        (key, state, fingerprint, token, record, expires_at, waiting)
    SELECT sha256(convert_to('reaper-key-' || i, 'UTF8')),
           'c',
           sha256(convert_to('reaper-request-' || i, 'UTF8')),
           substring(sha256(convert_to('reaper-token-' || i, 'UTF8')) FROM 1 FOR 16),
           $1,
           now() - interval '1 minute' - ($2 - i) * interval '1 millisecond',
           false
    FROM generate_series(1::bigint, $2) AS i";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// A 201 with `content-type: application/json` and a 200-byte JSON body, as footprint.rs uses.
fn completed_record() -> CompletedRecord {
    let mut body = String::from(
        r#"{"id":"ord_8f14e45fceea167a","status":"created","amount":4200,"currency":"EUR","customer":"cus_45c48cce2e2d7fbd","created_at":"2024-05-01T12:00:00Z","note":""#,
    );
    while body.len() < 198 {
        body.push('x');
    }
    body.push_str(r#""}"#);
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    CompletedRecord::Response(RecordedResponse::new(
        StatusCode::CREATED,
        headers,
        Bytes::from(body),
    ))
}

/// One live request: `begin` then `complete` on a fresh key.
async fn live_request(
    store: &PostgresStore,
    i: u64,
    record: &CompletedRecord,
) -> Result<(), BoxError> {
    let key = StoreKey::derive(None, "POST", "/orders", &format!("live-{i}"));
    let fingerprint = Fingerprint::sha256(format!("live-request-{i}").as_bytes());
    let token = LeaseToken::generate();
    match store.begin(&key, &fingerprint, &token, LEASE).await? {
        BeginOutcome::Acquired { .. } => {}
        other => return Err(format!("begin on a fresh key: {other:?}").into()),
    }
    if store
        .complete(&key, &token, &fingerprint, record, TTL)
        .await?
    {
        Ok(())
    } else {
        Err("complete found the lease lost".into())
    }
}

/// The live loop's samples: when each request started, and how long it took.
struct Samples {
    samples: Vec<(Instant, Duration)>,
    errors: u64,
    first_error: Option<String>,
}

fn spawn_live_loop(
    store: PostgresStore,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Samples> {
    tokio::spawn(async move {
        let record = completed_record();
        let mut out = Samples {
            samples: Vec::with_capacity(1 << 16),
            errors: 0,
            first_error: None,
        };
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let started = Instant::now();
            match live_request(&store, i, &record).await {
                Ok(()) => out.samples.push((started, started.elapsed())),
                Err(error) => {
                    out.errors += 1;
                    out.first_error.get_or_insert_with(|| error.to_string());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        out
    })
}

struct Latency {
    count: usize,
    per_second: f64,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn latency(mut samples: Vec<Duration>, window: Duration) -> Latency {
    samples.sort_unstable();
    let at = |q: f64| {
        samples
            .get(((samples.len().saturating_sub(1)) as f64 * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    Latency {
        count: samples.len(),
        per_second: samples.len() as f64 / window.as_secs_f64().max(1e-9),
        p50: at(0.50),
        p99: at(0.99),
        max: samples.last().copied().unwrap_or_default(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn table_bytes(pool: &PgPool) -> Result<i64, BoxError> {
    Ok(
        sqlx::query_scalar("SELECT pg_total_relation_size('idempotency_records')")
            .fetch_one(pool)
            .await?,
    )
}

/// A PostgreSQL of this bench's own, or why there is none (`TestPostgres::start` panics with
/// it: the message is kept, the panic's report and backtrace are not).
fn start_postgres() -> Result<TestPostgres, String> {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let started = std::panic::catch_unwind(TestPostgres::start);
    std::panic::set_hook(previous);
    started.map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "it would not start".into())
    })
}

fn main() {
    // Before any thread starts: `TestPostgres::start` would take DATABASE_URL's server, and the
    // bench deletes every expired record of the table.
    if std::env::var_os("DATABASE_URL").is_some() {
        eprintln!(
            "reaper: ignoring DATABASE_URL (this bench fills idempotency_records and reaps it); \
             set BENCH_DATABASE_URL to use a throwaway server instead"
        );
        std::env::remove_var("DATABASE_URL");
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("reaper: no Tokio runtime: {error}");
            return;
        }
    };
    let (url, server) = match std::env::var("BENCH_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        Some(url) => (url, None),
        None => match start_postgres() {
            Ok(pg) => (pg.url().to_owned(), Some(pg)),
            Err(why) => {
                eprintln!("reaper: no PostgreSQL, nothing measured: {why}");
                return;
            }
        },
    };
    if let Err(error) = runtime.block_on(run(&url)) {
        eprintln!("reaper: failed: {error}");
    }
    drop(runtime);
    drop(server);
}

async fn run(url: &str) -> Result<(), BoxError> {
    let started = Instant::now();
    let rows = env_u64("REAPER_ROWS", 1_000_000);
    let baseline = Duration::from_secs(env_u64("REAPER_BASELINE_SECS", 3));
    let vacuum = env_u64("REAPER_VACUUM", 1) != 0;

    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(url)
        .await?;
    let store = PostgresStore::new(pool.clone());
    store.migrate().await?;
    let existing: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_records")
        .fetch_one(&pool)
        .await?;
    if existing != 0 {
        return Err(format!(
            "idempotency_records already holds {existing} rows: the bench needs an empty table"
        )
        .into());
    }

    // The expired records.
    let record = completed_record().encode();
    let filling = Instant::now();
    let inserted = sqlx::query(FILL)
        .bind(&record[..])
        .bind(i64::try_from(rows)?)
        .execute(&pool)
        .await?
        .rows_affected();
    let fill_time = filling.elapsed();
    eprintln!("reaper: inserted {inserted} expired rows in {fill_time:.1?}");
    let vacuuming = Instant::now();
    if vacuum {
        sqlx::raw_sql("VACUUM (ANALYZE) idempotency_records")
            .execute(&pool)
            .await?;
    } else {
        sqlx::raw_sql("ANALYZE idempotency_records")
            .execute(&pool)
            .await?;
    }
    sqlx::raw_sql("CHECKPOINT").execute(&pool).await?;
    let vacuum_time = vacuuming.elapsed();
    let bytes_before = table_bytes(&pool).await?;
    let plan: Vec<String> = sqlx::query(&format!("EXPLAIN {}", store.reap_statement()))
        .fetch_all(&pool)
        .await?
        .iter()
        .map(|row| row.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?;
    eprintln!(
        "reaper: {} in {vacuum_time:.1?}; table {:.1} MiB; set up in {:.1?}",
        if vacuum {
            "VACUUM (ANALYZE) and CHECKPOINT"
        } else {
            "ANALYZE and CHECKPOINT"
        },
        bytes_before as f64 / (1 << 20) as f64,
        started.elapsed()
    );

    // Baseline, then the reap, with the live loop running throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let live = spawn_live_loop(store.clone(), stop.clone());
    // A second of warm-up (connections, prepared statements) is left out of the baseline.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline_start = Instant::now();
    tokio::time::sleep(baseline).await;
    let reap_start = Instant::now();
    let mut calls: Vec<(u64, Duration)> = Vec::new();
    let reap_result = loop {
        let call = Instant::now();
        match store.reap_expired().await {
            Ok(n) => {
                calls.push((n, call.elapsed()));
                if n == 0 {
                    break Ok(());
                }
            }
            Err(error) => break Err(error),
        }
    };
    let reap_end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let samples = live.await?;
    reap_result?;
    let reaped: u64 = calls.iter().map(|(n, _)| n).sum();
    let reap_time = reap_end - reap_start;
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM idempotency_records WHERE expires_at <= now()")
            .fetch_one(&pool)
            .await?;
    let bytes_after = table_bytes(&pool).await?;
    // What a reap costs once nothing is left to delete (the reaper's usual call): nothing is
    // expired, so this deletes nothing.
    let idle_plan: Vec<String> = sqlx::query(&format!(
        "EXPLAIN (ANALYZE, BUFFERS) {}",
        store.reap_statement()
    ))
    .fetch_all(&pool)
    .await?
    .iter()
    .map(|row| row.try_get::<String, _>(0))
    .collect::<Result<_, _>>()?;

    let before: Vec<Duration> = samples
        .samples
        .iter()
        .filter(|(at, _)| *at >= baseline_start && *at < reap_start)
        .map(|(_, d)| *d)
        .collect();
    let during: Vec<Duration> = samples
        .samples
        .iter()
        .filter(|(at, _)| *at >= reap_start && *at < reap_end)
        .map(|(_, d)| *d)
        .collect();
    let before = latency(before, reap_start - baseline_start);
    let during = latency(during, reap_time);

    println!();
    println!("## reap_expired on {inserted} expired rows");
    println!();
    println!("Plan of the reap statement:");
    println!();
    println!("```");
    for line in &plan {
        println!("{line}");
    }
    println!("```");
    println!();
    println!(
        "Set-up: INSERT ... SELECT of {inserted} rows in {fill_time:.1?}; {} in {vacuum_time:.1?}; \
         table + indexes {:.1} MiB before the reap, {:.1} MiB after it (deleted rows leave their \
         space to vacuum).",
        if vacuum {
            "VACUUM (ANALYZE) + CHECKPOINT"
        } else {
            "ANALYZE + CHECKPOINT"
        },
        bytes_before as f64 / (1 << 20) as f64,
        bytes_after as f64 / (1 << 20) as f64
    );
    println!();
    println!("| reap | value |");
    println!("|---|---:|");
    println!("| rows deleted | {reaped} |");
    println!("| expired rows left | {left} |");
    println!("| calls (the last one returned 0) | {} |", calls.len());
    println!("| total time | {:.2} s |", reap_time.as_secs_f64());
    println!(
        "| rows/s overall | {:.0} |",
        reaped as f64 / reap_time.as_secs_f64().max(1e-9)
    );
    let mut full: Vec<Duration> = calls
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(_, d)| *d)
        .collect();
    full.sort_unstable();
    if !full.is_empty() {
        let at = |q: f64| full[((full.len() - 1) as f64 * q).round() as usize];
        println!(
            "| call duration min / p50 / max | {:.0} / {:.0} / {:.0} ms |",
            ms(full[0]),
            ms(at(0.5)),
            ms(full[full.len() - 1])
        );
        let mut rates: Vec<f64> = calls
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, d)| *n as f64 / d.as_secs_f64().max(1e-9))
            .collect();
        rates.sort_unstable_by(f64::total_cmp);
        println!(
            "| rows/s per call min / p50 / max | {:.0} / {:.0} / {:.0} |",
            rates[0],
            rates[(rates.len() - 1) / 2],
            rates[rates.len() - 1]
        );
    }
    if let Some((_, last)) = calls.last() {
        println!("| the final call (0 rows) | {:.1} ms |", ms(*last));
    }
    println!();
    println!("Calls in order (does a call slow down as the table empties?):");
    println!();
    println!("| call | rows | ms | rows/s |");
    println!("|---:|---:|---:|---:|");
    let shown: std::collections::BTreeSet<usize> = [0, 1, 2]
        .into_iter()
        .chain((1..10).map(|k| calls.len() * k / 10))
        .chain([calls.len().saturating_sub(2), calls.len().saturating_sub(1)])
        .filter(|&i| i < calls.len())
        .collect();
    for i in shown {
        let (n, d) = calls[i];
        println!(
            "| {} | {n} | {:.1} | {:.0} |",
            i + 1,
            ms(d),
            n as f64 / d.as_secs_f64().max(1e-9)
        );
    }
    println!();
    println!("`EXPLAIN (ANALYZE, BUFFERS)` of the reap statement once nothing is expired:");
    println!();
    println!("```");
    for line in &idle_plan {
        println!("{line}");
    }
    println!("```");
    println!();
    println!("Live requests (`begin` + `complete` on a fresh key, back to back, one at a time):");
    println!();
    println!("| window | requests | requests/s | p50 | p99 | max |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, l) in [
        ("before the reap (baseline)", &before),
        ("during the reap", &during),
    ] {
        println!(
            "| {name} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms |",
            l.count,
            l.per_second,
            ms(l.p50),
            ms(l.p99),
            ms(l.max)
        );
    }
    if samples.errors > 0 {
        println!();
        println!(
            "{} live requests failed; the first: {}",
            samples.errors,
            samples.first_error.as_deref().unwrap_or("?")
        );
    }
    println!();
    println!("reaper: done in {:.1?}", started.elapsed());
    pool.close().await;
    Ok(())
}
