//! The server the load comparison (`scripts/load.sh`) drives: one axum app, one handler, and the
//! idempotency variant named on the command line in front of it.
//!
//! `load_server VARIANT ADDR`, with `REDIS_URL` for the variants that use Redis:
//!
//! - `bare`: no idempotency.
//! - `manual-first`, `manual-replay`: the handler makes by hand the Redis round trips our store
//!   makes: two `EVALSHA` for a first execution, one for a replay.
//! - `ours-redis`, `ours-memory`, `ours-cached`: `IdempotencyLayer` over `RedisStore`,
//!   `MemoryStore`, and `ReplayCache<RedisStore>`.
//! - `axum-idempotent`: axum-idempotent 0.6 in header-key mode over ruts' in-memory `MokaStore`
//!   (ruts' Redis store needs `HEXPIRE`, Redis 7.4 or later; Debian 12 ships 7.0);
//!   `POST /login` creates the session it needs.

use std::{net::SocketAddr, sync::Arc};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::post,
    Router,
};
use redis::{aio::ConnectionManager, Script};
use tower_idempotency::{IdempotencyLayer, MemoryStore, RedisStore, ReplayCache};

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
    let orders = post(create_order);
    let app = match variant.as_str() {
        "bare" => Router::new().route("/orders", orders),
        "manual-first" | "manual-replay" => manual(&redis_url, variant == "manual-first").await?,
        "ours-redis" => {
            let store = RedisStore::connect(&redis_url).await?;
            Router::new().route("/orders", orders.layer(IdempotencyLayer::new(store)))
        }
        "ours-cached" => {
            let store = ReplayCache::new(RedisStore::connect(&redis_url).await?);
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

/// Scripts of the same shape as our store's: lock-or-read, then record; or one read.
struct Manual {
    conn: ConnectionManager,
    begin: Script,
    complete: Script,
    replay: Script,
}

async fn manual(redis_url: &str, first: bool) -> Result<Router, BoxError> {
    let conn = ConnectionManager::new(redis::Client::open(redis_url)?).await?;
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
