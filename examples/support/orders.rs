//! The orders API both examples serve, and the layer settings they read from the environment.

use std::{
    collections::hash_map::RandomState,
    env,
    hash::BuildHasher,
    io::{self, IsTerminal},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tower_idempotency::{ConflictPolicy, DynStore, IdempotencyLayer};

/// Sets up logging (`RUST_LOG`, default `info,tower_idempotency=debug`; to stderr, coloured
/// only on a terminal), runs the example, and exits with status 1 and the error on failure.
pub(crate) async fn main(
    name: &str,
    run: impl std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>,
) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_idempotency=debug".into()),
        )
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
    if let Err(error) = run.await {
        eprintln!("{name}: {error}");
        std::process::exit(1);
    }
}

/// What the examples read from the environment.
pub(crate) struct Settings {
    pub(crate) bind: SocketAddr,
    pub(crate) redis_url: Option<String>,
    pub(crate) database_url: Option<String>,
    pub(crate) tiered: bool,
    pub(crate) order_delay: Duration,
    pub(crate) conflict: ConflictPolicy,
    pub(crate) lease: Option<Duration>,
    pub(crate) result_ttl: Option<Duration>,
}

impl Settings {
    /// `BIND`, `REDIS_URL`, `ORDER_DELAY_MS`, `IDEMPOTENCY_CONFLICT`, `IDEMPOTENCY_LEASE_MS`,
    /// `IDEMPOTENCY_TTL_S`; a malformed value is an error that names the variable.
    pub(crate) fn from_env() -> Result<Self, String> {
        let bind = var("BIND")
            .unwrap_or_else(|| "127.0.0.1:3000".to_owned())
            .parse()
            .map_err(|e| format!("BIND: {e}"))?;
        let conflict = match var("IDEMPOTENCY_CONFLICT").as_deref() {
            None | Some("reject") => ConflictPolicy::Reject,
            Some("wait") => ConflictPolicy::wait_for(Duration::from_secs(10)),
            Some(other) => {
                return Err(format!(
                    "IDEMPOTENCY_CONFLICT: expected reject or wait, got {other:?}"
                ))
            }
        };
        Ok(Self {
            bind,
            redis_url: var("REDIS_URL"),
            database_url: var("DATABASE_URL"),
            tiered: match var("IDEMPOTENCY_STORE").as_deref() {
                None => false,
                Some("tiered") => true,
                Some(other) => {
                    return Err(format!("IDEMPOTENCY_STORE: expected tiered, got {other:?}"))
                }
            },
            order_delay: Duration::from_millis(number("ORDER_DELAY_MS")?.unwrap_or(300)),
            conflict,
            lease: number("IDEMPOTENCY_LEASE_MS")?.map(Duration::from_millis),
            result_ttl: number("IDEMPOTENCY_TTL_S")?.map(Duration::from_secs),
        })
    }

    /// The layer every covered route gets: the store from the environment, keys required, the
    /// chosen policy, lease and TTL. Also names the store, for the start-up log.
    pub(crate) async fn layer(
        &self,
    ) -> Result<(IdempotencyLayer<DynStore>, &'static str), Box<dyn std::error::Error>> {
        let (store, name) = crate::store::from_env(
            self.redis_url.as_deref(),
            self.database_url.as_deref(),
            self.tiered,
        )
        .await?;
        let mut layer = IdempotencyLayer::new(store).with_key_required(true);
        layer = match self.conflict {
            // Duplicates woken by the store the moment the first request is recorded.
            ConflictPolicy::Wait { timeout, .. } => layer.with_wait(timeout),
            policy => layer.with_conflict_policy(policy),
        };
        if let Some(lease) = self.lease {
            layer = layer.with_lease_ttl(lease);
        }
        if let Some(ttl) = self.result_ttl {
            layer = layer.with_result_ttl(ttl);
        }
        Ok((layer, name))
    }

    /// Listens on `BIND`. When another process holds the address (often the same example,
    /// still running in another terminal), the error says so and how to pick another one.
    pub(crate) async fn listen(&self) -> Result<tokio::net::TcpListener, String> {
        let addr = self.bind;
        tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                let mut other = addr;
                other.set_port(addr.port().checked_add(1).unwrap_or(3001));
                format!(
                    "cannot listen on {addr}: the address is already in use (is another example \
                     still running?); set BIND to another address, e.g. BIND={other}"
                )
            } else {
                format!("cannot listen on {addr} (BIND): {e}")
            }
        })
    }
}

/// Stands for the real work of creating an order (a payment, a database write): takes `delay`
/// (`ORDER_DELAY_MS`). Zero does not sleep at all, since a zero sleep still waits for the next
/// tick of tokio's timer (a millisecond).
pub(crate) async fn work(delay: Duration) {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

fn var(name: &str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.is_empty())
}

fn number(name: &str) -> Result<Option<u64>, String> {
    var(name)
        .map(|v| v.parse().map_err(|e| format!("{name}: {e}")))
        .transpose()
}

/// One order.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Order {
    pub(crate) id: String,
    pub(crate) customer_id: String,
    pub(crate) amount: u64,
    /// The fencing token of the request that wrote it: a real database keeps the highest per
    /// key and refuses a write with an older one (a holder that lost its lease).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fence: Option<u64>,
}

#[derive(Deserialize)]
struct NewOrder {
    customer_id: String,
    amount: u64,
}

/// Every order this process created, in order.
#[derive(Clone, Default)]
pub(crate) struct OrderBook {
    orders: Arc<Mutex<Vec<Order>>>,
    counter: Arc<AtomicU64>,
    seed: RandomState,
}

impl OrderBook {
    /// Creates an order from a JSON body `{"customer_id": "C001", "amount": 1200}`.
    pub(crate) fn create(&self, body: &[u8], fence: Option<u64>) -> Result<Order, String> {
        let new: NewOrder =
            serde_json::from_slice(body).map_err(|e| format!("invalid order: {e}"))?;
        if new.customer_id.is_empty() {
            return Err("invalid order: customer_id must not be empty".to_owned());
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // Unique across processes too, so two instances never hand out the same id.
        let id = format!("ord_{:016x}", self.seed.hash_one(n));
        let order = Order {
            id,
            customer_id: new.customer_id,
            amount: new.amount,
            fence,
        };
        self.lock().push(order.clone());
        Ok(order)
    }

    pub(crate) fn all(&self) -> Vec<Order> {
        self.lock().clone()
    }

    pub(crate) fn get(&self, id: &str) -> Option<Order> {
        self.lock().iter().find(|o| o.id == id).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Order>> {
        self.orders
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A problem+json body for the handler's own 400 and 404 answers.
pub(crate) fn problem(status: u16, title: &str, detail: &str) -> String {
    serde_json::json!({ "type": "about:blank", "title": title, "status": status, "detail": detail })
        .to_string()
}
