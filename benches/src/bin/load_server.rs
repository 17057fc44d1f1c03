//! The server the load comparison (`scripts/load.sh`) drives: one axum app, one handler, and the
//! idempotency variant named on the command line in front of it.
//!
//! `load_server VARIANT ADDR`, with `REDIS_URL` for the variants that use Redis and
//! `DATABASE_URL` for those that use PostgreSQL:
//!
//! - `bare`: no idempotency.
//! - `manual-first`, `manual-replay`: the handler makes by hand the Redis round trips our store
//!   makes: two `EVALSHA` for a first execution, one for a replay.
//! - `manual-textbook`: the textbook design, by hand: `GET` the result (none), `SET NX` a lock,
//!   the handler, `SET` the result, release the lock by script: four round trips per first
//!   execution against our two.
//! - `ours-redis`, `ours-memory`, `ours-cached`: `IdempotencyLayer` over `RedisStore`,
//!   `MemoryStore`, and `ReplayCache<RedisStore>`.
//! - `ours-redis-acks`: `RedisStore::with_replica_acks(1, 100 ms)`: each lock and record is
//!   on a replica (`WAIT 1 100`, in the script's round trip) before the store counts on it.
//! - `manual-pg-first`, `manual-pg-replay` (one handler; the wrk script makes the difference):
//!   the handler makes by hand the statements `PostgresStore` makes, on the same table and the
//!   same kind of pool: its `begin` statement, then, when that acquired the key, its `complete`
//!   statement (a first execution: two statements), else nothing more (a replay: one).
//! - `ours-postgres`: `IdempotencyLayer` over `PostgresStore` (after `migrate()`).
//! - `ours-tiered`: `IdempotencyLayer` over `TieredStore<RedisStore, PostgresStore>`.
//! - `axum-idempotent`: axum-idempotent 0.6 in header-key mode over ruts' in-memory `MokaStore`
//!   (ruts' Redis store needs `HEXPIRE`, Redis 7.4 or later; Debian 12 ships 7.0);
//!   `POST /login` creates the session it needs.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use redis::{aio::ConnectionManager, Script};
use sqlx::{postgres::PgPoolOptions, PgPool, Row};
use tower_idempotency::{
    CompletedRecord, IdempotencyLayer, MemoryStore, PostgresStore, RecordedResponse, RedisStore,
    ReplayCache, TieredStore,
};

const ORDER: &str = r#"{"id":"ord_1","customer_id":"C001","amount":1200}"#;

/// The handler every variant runs: a create endpoint, so it reads the order it is sent (with a
/// handler that ignored the body, the layer's reading of it would be counted as its overhead,
/// although any real create endpoint pays for that read itself).
async fn create_order(order: Bytes) -> impl IntoResponse {
    let status = if order.is_empty() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::CREATED
    };
    (status, [("content-type", "application/json")], ORDER)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: load_server VARIANT ADDR";
    let variant = args.next().ok_or(usage)?;
    let addr: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let database_url = || std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set");
    let orders = post(create_order);
    let app = match variant.as_str() {
        "bare" => Router::new().route("/orders", orders),
        "manual-first" | "manual-replay" => manual(&redis_url, variant == "manual-first").await?,
        "manual-textbook" => textbook(&redis_url).await?,
        "ours-redis" => {
            let store = RedisStore::connect(&redis_url).await?;
            Router::new().route("/orders", orders.layer(IdempotencyLayer::new(store)))
        }
        "ours-redis-acks" => {
            let store = RedisStore::connect(&redis_url)
                .await?
                .with_replica_acks(1, std::time::Duration::from_millis(100));
            Router::new().route("/orders", orders.layer(IdempotencyLayer::new(store)))
        }
        "ours-cached" => {
            let store = ReplayCache::new(RedisStore::connect(&redis_url).await?);
            Router::new().route("/orders", orders.layer(IdempotencyLayer::new(store)))
        }
        "manual-pg-first" | "manual-pg-replay" => manual_pg(&database_url()?).await?,
        "ours-postgres" => {
            let store = postgres_store(&database_url()?).await?;
            Router::new().route("/orders", orders.layer(IdempotencyLayer::new(store)))
        }
        "ours-tiered" => {
            let fast = RedisStore::connect(&redis_url).await?;
            let store = TieredStore::new(fast, postgres_store(&database_url()?).await?);
            Router::new().route("/orders", orders.layer(IdempotencyLayer::new(store)))
        }
        "ours-memory" => Router::new().route(
            "/orders",
            orders.layer(IdempotencyLayer::new(MemoryStore::new())),
        ),
        "axum-idempotent" => axum_idempotent(),
        other => return Err(format!("unknown variant {other}").into()),
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// The hand-made variants' client: as `RedisStore::connect`'s, with `TCP_NODELAY` (redis-rs
/// leaves Nagle's algorithm on, which holds back requests written while others are unanswered).
fn redis_client(redis_url: &str) -> redis::RedisResult<redis::Client> {
    use redis::IntoConnectionInfo;
    let info = redis_url.into_connection_info()?;
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    redis::Client::open(info.set_tcp_settings(tcp))
}

/// Scripts of the same shape as our store's: lock-or-read, then record; or one read.
struct Manual {
    conn: ConnectionManager,
    begin: Script,
    complete: Script,
    replay: Script,
}

/// How a hand-made variant answers once its store calls have decided: the handler runs
/// (`None`), a refusal, or 503 when the store failed.
async fn answer<E>(decided: Result<Option<StatusCode>, E>, order: Bytes) -> Response {
    match decided {
        Ok(None) => create_order(order).await.into_response(),
        Ok(Some(status)) => status.into_response(),
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

async fn manual(redis_url: &str, first: bool) -> Result<Router, BoxError> {
    let conn = ConnectionManager::new(redis_client(redis_url)?).await?;
    let manual = Arc::new(Manual {
        conn,
        begin: Script::new(
            "local v = redis.call('GET', KEYS[1]) if v then return v end \
             redis.call('SET', KEYS[1], 'p', 'PX', ARGV[1]) return 0",
        ),
        complete: Script::new("redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1"),
        replay: Script::new(
            "local v = redis.call('GET', KEYS[1]) if v then return v end \
             redis.call('SET', KEYS[1], ARGV[1]) return 0",
        ),
    });
    let handler = move |State(m): State<Arc<Manual>>, headers: HeaderMap, order: Bytes| async move {
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        let mut conn = m.conn.clone();
        let result: redis::RedisResult<()> = async {
            if first {
                let _: redis::Value = m
                    .begin
                    .key(&key)
                    .arg(30_000)
                    .invoke_async(&mut conn)
                    .await?;
                let _: redis::Value = m
                    .complete
                    .key(&key)
                    .arg(ORDER)
                    .arg(86_400_000)
                    .invoke_async(&mut conn)
                    .await?;
            } else {
                let _: redis::Value = m
                    .replay
                    .key(&key)
                    .arg(ORDER)
                    .invoke_async(&mut conn)
                    .await?;
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => create_order(order).await.into_response(),
            Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
    };
    Ok(Router::new()
        .route("/orders", post(handler))
        .with_state(manual))
}

/// The textbook design's round trips for a first execution, by hand, in the order it makes them.
struct Textbook {
    conn: ConnectionManager,
    unlock: Script,
    tokens: AtomicU64,
}

async fn textbook(redis_url: &str) -> Result<Router, BoxError> {
    let conn = ConnectionManager::new(redis_client(redis_url)?).await?;
    let textbook = Arc::new(Textbook {
        conn,
        unlock: Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end \
             return 0",
        ),
        tokens: AtomicU64::new(0),
    });
    let handler = move |State(t): State<Arc<Textbook>>, headers: HeaderMap, order: Bytes| async move {
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none");
        let (result_key, lock_key) = (format!("idempotency:{key}"), format!("lock:{key}"));
        let token = t.tokens.fetch_add(1, Ordering::Relaxed).to_string();
        let mut conn = t.conn.clone();
        let outcome: redis::RedisResult<Option<StatusCode>> = async {
            // 1. A recorded result?
            let cached: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&result_key)
                .query_async(&mut conn)
                .await?;
            if cached.is_some() {
                return Ok(None);
            }
            // 2. The lock.
            let locked: Option<String> = redis::cmd("SET")
                .arg(&lock_key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut conn)
                .await?;
            if locked.is_none() {
                return Ok(Some(StatusCode::CONFLICT));
            }
            // 3. The result, then 4. the lock's release (by script: only if still ours).
            let () = redis::cmd("SET")
                .arg(&result_key)
                .arg(ORDER)
                .arg("PX")
                .arg(86_400_000)
                .query_async(&mut conn)
                .await?;
            let _: i64 = t
                .unlock
                .key(&lock_key)
                .arg(&token)
                .invoke_async(&mut conn)
                .await?;
            Ok(None)
        }
        .await;
        answer(outcome, order).await
    };
    Ok(Router::new()
        .route("/orders", post(handler))
        .with_state(textbook))
}

/// `PostgresStore` as its documentation makes it, on `PgPool::connect`'s pool, migrated.
async fn postgres_store(database_url: &str) -> Result<PostgresStore, BoxError> {
    let store = PostgresStore::new(pg_pool(database_url).await?);
    store.migrate().await?;
    Ok(store)
}

/// The pool of every PostgreSQL variant: `PgPool::connect`'s (sqlx's defaults: at most 10
/// connections, each checked with a round trip, a `Sync`, when taken from the pool), or the
/// same without that check with `PG_TEST_BEFORE_ACQUIRE=false`.
async fn pg_pool(database_url: &str) -> Result<PgPool, BoxError> {
    let check = std::env::var("PG_TEST_BEFORE_ACQUIRE").map_or(true, |v| v != "false");
    Ok(PgPoolOptions::new()
        .test_before_acquire(check)
        .connect(database_url)
        .await?)
}

/// The lease and the result TTL, in milliseconds: the layer's defaults.
const LEASE_MS: i64 = 30_000;
const RESULT_TTL_MS: i64 = 86_400_000;

/// What the hand-made handler binds: the same sizes as the store's (32-byte key and
/// fingerprint, 16-byte token, the record in the crate's encoding).
struct ManualPg {
    pool: PgPool,
    /// `PostgresStore`'s own `begin` and `complete` statements, as they are.
    begin: String,
    complete: String,
    fingerprint: [u8; 32],
    record: Vec<u8>,
    process: u64,
    tokens: AtomicU64,
}

async fn manual_pg(database_url: &str) -> Result<Router, BoxError> {
    // The same pool as the store's, on the shipped table.
    let pool = pg_pool(database_url).await?;
    for migration in tower_idempotency::MIGRATIONS {
        sqlx::raw_sql(migration).execute(&pool).await?;
    }
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse()?);
    let response = RecordedResponse::new(
        StatusCode::CREATED,
        headers,
        Bytes::from_static(ORDER.as_bytes()),
    );
    let store = PostgresStore::new(pool.clone());
    let (begin, complete) = store.begin_and_complete_statements();
    let (begin, complete) = (begin.to_owned(), complete.to_owned());
    let manual = Arc::new(ManualPg {
        pool,
        begin,
        complete,
        fingerprint: [7; 32],
        record: CompletedRecord::Response(response).encode().to_vec(),
        process: u64::from(std::process::id()),
        tokens: AtomicU64::new(0),
    });
    let handler = move |State(m): State<Arc<ManualPg>>, headers: HeaderMap, order: Bytes| async move {
        // The store binds a 32-byte digest: the key's bytes, zero-padded to 32 (no hashing, as
        // the Redis hand-made variants do not hash either).
        let raw = headers
            .get("idempotency-key")
            .map_or(&b"none"[..], |v| v.as_bytes());
        let mut padded = [0u8; 32];
        let key = if raw.len() <= 32 {
            padded[..raw.len()].copy_from_slice(raw);
            &padded[..]
        } else {
            raw
        };
        let count = m.tokens.fetch_add(1, Ordering::Relaxed);
        let token = ((u128::from(m.process) << 64) | u128::from(count)).to_be_bytes();
        let result: Result<Option<StatusCode>, sqlx::Error> = async {
            let row = sqlx::query(&m.begin)
                .bind(key)
                .bind(&m.fingerprint[..])
                .bind(&token[..])
                .bind(LEASE_MS)
                .fetch_optional(&m.pool)
                .await?;
            // No row: a concurrent insert won after the snapshot (the store retries).
            let Some(row) = row else {
                return Ok(Some(StatusCode::SERVICE_UNAVAILABLE));
            };
            let outcome: String = row.try_get("outcome")?;
            if outcome == "a" {
                let _fence: i64 = row.try_get("fence")?;
                let done = sqlx::query(&m.complete)
                    .bind(key)
                    .bind(&token[..])
                    .bind(&m.record[..])
                    .bind(RESULT_TTL_MS)
                    .fetch_one(&m.pool)
                    .await?;
                let changed: i64 = done.try_get("changed")?;
                return Ok((changed != 1).then_some(StatusCode::INTERNAL_SERVER_ERROR));
            }
            // A replay: what the store reads back from the row.
            let stored: Vec<u8> = row.try_get("fingerprint")?;
            let state: String = row.try_get("state")?;
            let record: Option<Vec<u8>> = row.try_get("record")?;
            let _remaining: Option<i64> = row.try_get("remaining_ms")?;
            Ok(match (stored == m.fingerprint, state.as_str(), record) {
                (true, "c", Some(_)) => None,
                (true, _, _) => Some(StatusCode::CONFLICT),
                (false, _, _) => Some(StatusCode::UNPROCESSABLE_ENTITY),
            })
        }
        .await;
        answer(result, order).await
    };
    Ok(Router::new()
        .route("/orders", post(handler))
        .with_state(manual))
}

fn axum_idempotent() -> Router {
    use axum_idempotent::{IdempotentLayer, IdempotentOptions};
    use ruts::{store::moka::MokaStore, CookieOptions, Session, SessionLayer};

    let store = Arc::new(MokaStore::builder().build());
    // axum-idempotent records only for requests that carry a session: the load client logs in
    // once and sends the cookie with every request.
    let login = |session: Session<MokaStore>| async move {
        let ttl = ruts::store::Ttl::new(3600).map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
        session
            .set("user", &"load", ttl, None)
            .await
            .map_err(|_| StatusCode::INTERNAL_SERVER_ERROR)?;
        Ok::<_, StatusCode>("logged in")
    };
    let options =
        IdempotentOptions::default().use_idempotency_key_header(Some("Idempotency-Key"), true);
    let cookies = CookieOptions::build().name("session").max_age(3600);
    Router::new()
        .route(
            "/orders",
            post(create_order).layer(IdempotentLayer::<MokaStore>::new(options)),
        )
        .route("/login", post(login))
        .layer(SessionLayer::new(store).with_cookie_options(cookies))
        .layer(tower_cookies::CookieManagerLayer::new())
}
