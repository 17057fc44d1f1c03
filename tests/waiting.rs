//! Waiting without polling: duplicates under `with_wait` are woken by the store when the key
//! changes, on every store that can tell (`WatchKeys`).

mod common;

use std::time::Duration;

use http::StatusCode;
use test_support::TestRedis;
use tokio::{task::JoinSet, time::Instant};
use tower_idempotency::{IdempotencyLayer, RedisStore, StoreKey, WatchKeys};

use common::{counting_store::CountingStore, eventually, post, send, Handler, DEADLINE};

/// 64 duplicates wait on one key; when the first request is recorded, every one of them is
/// answered with its replay at once, and none looked at the store more than three times (its
/// first look, one after subscribing, one after the wake-up): no polling.
async fn waiters_are_woken_when_the_first_completes<St: WatchKeys + Clone>(store: St) {
    let store = CountingStore::new(store);
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store.clone()).with_wait(DEADLINE));
    let first = tokio::spawn(send(&svc, post("/gated", Some("k"), "{}")));
    eventually("the first request to run", || handler.executions() == 1).await;
    let mut waiters = JoinSet::new();
    for _ in 0..64 {
        let svc = svc.clone();
        waiters.spawn(async move {
            let answer = send(&svc, post("/gated", Some("k"), "{}")).await;
            (answer, Instant::now())
        });
    }
    // Each waiter looks twice before it waits: once, and once after subscribing.
    eventually("64 waiters to be waiting", || store.begins() == 1 + 64 * 2).await;
    // Long enough that polling would show: 300 ms of waiting with nothing to wake them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        store.begins(),
        1 + 64 * 2,
        "a waiter looked again before any change"
    );
    handler.open_gate();
    let first = first.await.unwrap();
    let completed = Instant::now();
    assert_eq!(first.status, StatusCode::CREATED);
    for (answer, at) in waiters.join_all().await {
        assert!(answer.replayed(), "{}", answer.text());
        assert_eq!(answer.body, first.body);
        let late = at.saturating_duration_since(completed);
        assert!(
            late < Duration::from_millis(500),
            "answered {late:?} after the completion"
        );
    }
    assert_eq!(handler.executions(), 1);
    assert!(
        store.begins() <= 1 + 64 * 3,
        "{} looks for 64 waiters",
        store.begins()
    );
}

/// No wake-up is lost: 1000 keys, each with 8 duplicates racing its first request; a lost one
/// would leave its waiter waiting out its timeout and answering 409.
async fn no_wake_up_is_lost_under_load<St: WatchKeys>(store: St) {
    let handler = Handler::new();
    let layer = IdempotencyLayer::new(store)
        // A lease longer than the wait: a lost wake-up is not rescued by the look at lease end.
        .with_lease_ttl(Duration::from_secs(120))
        .with_wait(Duration::from_secs(30))
        // Every duplicate may wait at once: none is turned away by the cap, nor by a store
        // slowed by 9,000 requests at once on a shared machine.
        .with_max_waiters(8000)
        .with_store_timeout(Duration::from_secs(30));
    let svc = handler.service(layer);
    let mut requests = JoinSet::new();
    for key in 0..1000 {
        for _ in 0..9 {
            let svc = svc.clone();
            let key = format!("stress-{key}");
            requests.spawn(async move { send(&svc, post("/orders", Some(&key), "{}")).await });
        }
    }
    let answers = requests.join_all().await;
    let refused: Vec<_> = answers
        .iter()
        .filter(|a| a.status != StatusCode::CREATED)
        .collect();
    assert!(
        refused.is_empty(),
        "{} of 9000 not answered 201, e.g. {}",
        refused.len(),
        refused[0].text()
    );
    assert_eq!(handler.executions(), 1000);
}

/// A key released by a 5xx wakes its waiters: one of them acquires it and runs, the others
/// replay what it recorded.
async fn a_released_key_wakes_its_waiters_and_one_runs<St: WatchKeys>(store: St) {
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store).with_wait(DEADLINE));
    let path = "/gated?fail_first";
    let first = tokio::spawn(send(&svc, post(path, Some("k"), "{}")));
    eventually("the first request to run", || handler.executions() == 1).await;
    let mut waiters = JoinSet::new();
    for _ in 0..8 {
        waiters.spawn(send(&svc, post(path, Some("k"), "{}")));
    }
    handler.open_gate();
    assert_eq!(
        first.await.unwrap().status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let answers = waiters.join_all().await;
    assert!(answers.iter().all(|a| a.status == StatusCode::CREATED));
    assert_eq!(
        answers.iter().filter(|a| !a.replayed()).count(),
        1,
        "one ran"
    );
    assert_eq!(handler.executions(), 2);
}

macro_rules! waiting {
    ($($store:ident => $make:path;)+) => {$(
        mod $store {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn waiters_are_woken_when_the_first_completes() {
                let (store, _keep) = $make().await;
                super::waiters_are_woken_when_the_first_completes(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn no_wake_up_is_lost_under_load() {
                let (store, _keep) = $make().await;
                super::no_wake_up_is_lost_under_load(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_released_key_wakes_its_waiters_and_one_runs() {
                let (store, _keep) = $make().await;
                super::a_released_key_wakes_its_waiters_and_one_runs(store).await;
            }
        }
    )+};
}

waiting! {
    memory => common::memory_store;
    cached_memory => common::cached_memory_store;
    redis => common::redis_store;
    cached_redis => common::cached_redis_store;
}

#[cfg(feature = "redis-cluster")]
waiting! {
    cluster => common::cluster_store;
}

#[cfg(feature = "postgres")]
waiting! {
    postgres => common::postgres_store;
}

/// The subscriber connection killed while duplicates wait (`CLIENT KILL`): they poll until it
/// is back and has subscribed again, and every one of them finishes with the replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_finish_when_the_redis_subscriber_is_killed() {
    let redis = TestRedis::start_own().await;
    let store = CountingStore::new(RedisStore::connect(redis.url()).await.expect("connect"));
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store.clone()).with_wait(DEADLINE));
    let first = tokio::spawn(send(&svc, post("/gated", Some("k"), "{}")));
    eventually("the first request to run", || handler.executions() == 1).await;
    let mut waiters = JoinSet::new();
    for _ in 0..16 {
        waiters.spawn(send(&svc, post("/gated", Some("k"), "{}")));
    }
    eventually("16 waiters to be waiting", || store.begins() == 1 + 16 * 2).await;

    let mut admin = redis.connection().await;
    let killed = kill_subscribers(&mut admin).await;
    assert!(killed >= 1, "no subscriber connection to kill");
    // Back: a new subscriber connection holds the key's channel again.
    let deadline = Instant::now() + DEADLINE;
    while subscribers(&mut admin).await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the subscriber did not come back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    handler.open_gate();
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    for answer in waiters.join_all().await {
        assert!(answer.replayed(), "{}", answer.text());
        assert_eq!(answer.body, first.body);
    }
    assert_eq!(handler.executions(), 1);
}

/// The backends of PostgreSQL listeners, other than the caller's.
#[cfg(feature = "postgres")]
async fn listener_pids(admin: &sqlx::PgPool) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE query ILIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .fetch_all(admin)
    .await
    .expect("pg_stat_activity")
}

/// The PostgreSQL store listens only once a request waits, and on a connection of its own: a
/// store on a pool of one connection still makes its statements while its listener listens.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_listener_comes_with_the_first_waiter_and_is_not_the_pools() {
    let (_, pg) = common::postgres_store().await;
    let admin = sqlx::PgPool::connect(pg.url()).await.expect("connect");
    let listeners = || listener_pids(&admin);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(pg.url())
        .await
        .expect("connect");
    let handler = Handler::new();
    let layer = IdempotencyLayer::new(tower_idempotency::PostgresStore::new(pool));
    let svc = handler.service(layer.with_wait(DEADLINE));
    for n in 0..3 {
        let answer = send(&svc, post("/orders", Some(&format!("k{n}")), "{}")).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text());
    }
    assert!(listeners().await.is_empty(), "a listener before any wait");

    let first = tokio::spawn(send(&svc, post("/gated", Some("g"), "{}")));
    eventually("the first request to run", || handler.executions() == 4).await;
    let waiter = tokio::spawn(send(&svc, post("/gated", Some("g"), "{}")));
    let deadline = Instant::now() + DEADLINE;
    while listeners().await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no listener while a request waits"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The pool's one connection is still the statements': the other keys replay meanwhile.
    let replay = send(&svc, post("/orders", Some("k0"), "{}")).await;
    assert!(replay.replayed(), "{}", replay.text());
    handler.open_gate();
    assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
    let waited = waiter.await.unwrap();
    assert!(waited.replayed(), "{}", waited.text());
    assert_eq!(handler.executions(), 4);
}

/// The PostgreSQL listener's backend terminated while duplicates wait: they poll until the
/// listener is back, and every one of them finishes with the replay.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_finish_when_the_postgres_listener_is_killed() {
    let (store, pg) = common::postgres_store().await;
    let store = CountingStore::new(store);
    let admin = sqlx::PgPool::connect(pg.url()).await.expect("connect");
    let listeners = || listener_pids(&admin);
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store.clone()).with_wait(DEADLINE));
    let first = tokio::spawn(send(&svc, post("/gated", Some("k"), "{}")));
    eventually("the first request to run", || handler.executions() == 1).await;
    let mut waiters = JoinSet::new();
    for _ in 0..16 {
        waiters.spawn(send(&svc, post("/gated", Some("k"), "{}")));
    }
    eventually("16 waiters to be waiting", || store.begins() == 1 + 16 * 2).await;

    let killed = listeners().await;
    assert!(!killed.is_empty(), "no listener to kill");
    for pid in &killed {
        sqlx::query("SELECT pg_terminate_backend($1)")
            .bind(pid)
            .execute(&admin)
            .await
            .expect("pg_terminate_backend");
    }
    let deadline = Instant::now() + DEADLINE;
    while listeners().await.iter().all(|pid| killed.contains(pid)) {
        assert!(Instant::now() < deadline, "the listener did not come back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    handler.open_gate();
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    for answer in waiters.join_all().await {
        assert!(answer.replayed(), "{}", answer.text());
        assert_eq!(answer.body, first.body);
    }
    assert_eq!(handler.executions(), 1);
}

/// How many backends wait behind `holder`: for a lock it holds, or behind one that does (a
/// row's second waiter waits for the first, not for the holder). Other tests' locks do not
/// count, on a shared `DATABASE_URL` too.
#[cfg(feature = "postgres")]
async fn backends_behind(admin: &sqlx::PgPool, holder: i32) -> i64 {
    sqlx::query_scalar(
        "WITH RECURSIVE behind(pid) AS (
             SELECT pid FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))
             UNION
             SELECT a.pid FROM pg_stat_activity a, behind b
             WHERE b.pid = ANY(pg_blocking_pids(a.pid))
         )
         SELECT count(*) FROM behind",
    )
    .bind(holder)
    .fetch_one(admin)
    .await
    .expect("pg_stat_activity")
}

/// Polls until `backends` wait behind the row `hold` holds, failing after [`DEADLINE`].
#[cfg(feature = "postgres")]
async fn until_blocked(admin: &sqlx::PgPool, hold: &HeldRow, backends: i64, what: &str) {
    let deadline = Instant::now() + DEADLINE;
    while backends_behind(admin, hold.pid).await < backends {
        assert!(
            Instant::now() < deadline,
            "{what} never waited for the lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A PostgreSQL store whose waiters are woken only by a notification (its lease and its wait
/// outlast the test), with a first request on key `k` running (gated) and its row held.
#[cfg(feature = "postgres")]
struct Waiting {
    store: CountingStore<tower_idempotency::PostgresStore>,
    admin: sqlx::PgPool,
    handler: Handler,
    svc: common::TestService,
    first: tokio::task::JoinHandle<common::Answer>,
    hold: HeldRow,
    _pg: test_support::TestPostgres,
}

#[cfg(feature = "postgres")]
impl Waiting {
    /// Sends the first request to `path`, and holds its row once it runs.
    async fn start(path: &str) -> Self {
        let (store, pg) = common::postgres_store().await;
        let store = CountingStore::new(store);
        let admin = sqlx::PgPool::connect(pg.url()).await.expect("connect");
        let handler = Handler::new();
        let layer = IdempotencyLayer::new(store.clone())
            .with_lease_ttl(Duration::from_secs(120))
            .with_wait(DEADLINE);
        let svc = handler.service(layer);
        let first = tokio::spawn(send(&svc, post(path, Some("k"), "{}")));
        eventually("the first request to run", || handler.executions() == 1).await;
        let hold = hold_row(&admin, StoreKey::derive(None, "POST", "/gated", "k")).await;
        Self {
            store,
            admin,
            handler,
            svc,
            first,
            hold,
            _pg: pg,
        }
    }
}

/// A row locked by a transaction of its own, and that transaction's backend.
#[cfg(feature = "postgres")]
struct HeldRow {
    key: StoreKey,
    transaction: sqlx::Transaction<'static, sqlx::Postgres>,
    pid: i32,
}

/// Locks `key`'s row until the returned transaction ends.
#[cfg(feature = "postgres")]
async fn hold_row(admin: &sqlx::PgPool, key: StoreKey) -> HeldRow {
    let mut transaction = admin.begin().await.expect("begin");
    let pid = sqlx::query_scalar(
        "SELECT pg_backend_pid() FROM idempotency_records WHERE key = $1 FOR UPDATE",
    )
    .bind(&key.as_bytes()[..])
    .fetch_one(&mut *transaction)
    .await
    .expect("lock the row");
    HeldRow {
        key,
        transaction,
        pid,
    }
}

/// Two waiters were let look at a key with no execution in progress: one of them runs
/// (gated), and once the other has looked again and waits, the execution ends. The other must
/// be woken: both are answered within 5 s, one with the replay.
#[cfg(feature = "postgres")]
async fn one_waiter_runs_and_wakes_the_other<St: WatchKeys>(
    handler: &Handler,
    store: &CountingStore<St>,
    waiters: JoinSet<common::Answer>,
) {
    eventually("a waiter to run", || handler.executions() == 2).await;
    // The first request's look, and two for each waiter.
    eventually("the other to wait", || store.begins() == 1 + 2 * 2).await;
    handler.open_gate();
    let answers = tokio::time::timeout(Duration::from_secs(5), waiters.join_all())
        .await
        .expect("both waiters answered within 5 s of the execution");
    assert!(answers.iter().all(|a| a.status == StatusCode::CREATED));
    assert_eq!(answers.iter().filter(|a| a.replayed()).count(), 1);
    assert_eq!(handler.executions(), 2);
}

/// The key is released before the waiters' mark reaches its row, and one of them takes it
/// over: the execution it runs still wakes the other waiter. (A mark of the live row in
/// progress only: it found the released row expired and marked nothing, the takeover
/// kept the row unmarked, and its completion notified no one, so the other waiter waited out
/// its whole wait.) The row is held with `FOR UPDATE` so that the release queues first and the
/// mark behind it.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_key_released_before_the_waiters_mark_still_wakes_them() {
    let path = "/gated?fail_first";
    let Waiting {
        store,
        admin,
        handler,
        svc,
        first,
        hold,
        _pg,
    } = Waiting::start(path).await;
    handler.open_gate_once();
    until_blocked(&admin, &hold, 1, "the release").await;
    let mut waiters = JoinSet::new();
    for _ in 0..2 {
        waiters.spawn(send(&svc, post(path, Some("k"), "{}")));
    }
    // One mark serves both waiters of the process: both must have looked before it goes on.
    eventually("both waiters to have looked", || store.begins() == 1 + 2).await;
    until_blocked(&admin, &hold, 2, "the waiters' mark").await;
    hold.transaction.commit().await.expect("commit");

    assert_eq!(
        first.await.unwrap().status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    one_waiter_runs_and_wakes_the_other(&handler, &store, waiters).await;
}

/// The key's row is gone before the waiters' mark reaches it (the reaper deleted it: here a
/// transaction holding the row, then deleting it), and one of the waiters makes the key anew:
/// the mark left a row for the key, so the execution that makes it anew keeps the mark and
/// wakes the other waiter. (A mark of existing rows only marked nothing.)
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_key_deleted_before_the_waiters_mark_still_wakes_them() {
    let Waiting {
        store,
        admin,
        handler,
        svc,
        first,
        mut hold,
        _pg,
    } = Waiting::start("/gated").await;
    let mut waiters = JoinSet::new();
    for _ in 0..2 {
        waiters.spawn(send(&svc, post("/gated", Some("k"), "{}")));
    }
    eventually("both waiters to have looked", || store.begins() == 1 + 2).await;
    until_blocked(&admin, &hold, 1, "the waiters' mark").await;
    sqlx::query("DELETE FROM idempotency_records WHERE key = $1")
        .bind(&hold.key.as_bytes()[..])
        .execute(&mut *hold.transaction)
        .await
        .expect("delete the row");
    hold.transaction.commit().await.expect("commit");

    one_waiter_runs_and_wakes_the_other(&handler, &store, waiters).await;
    // The first execution lost its row: its answer still reaches its client.
    assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
}

/// The ids of the clients subscribed to a channel.
async fn subscribers(admin: &mut ::redis::aio::MultiplexedConnection) -> Vec<String> {
    let list: String = ::redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(admin)
        .await
        .expect("CLIENT LIST");
    list.lines()
        .filter(|line| {
            line.split(' ')
                .any(|field| field.starts_with("sub=") && field != "sub=0")
        })
        .filter_map(|line| line.split(' ').find_map(|f| f.strip_prefix("id=")))
        .map(str::to_owned)
        .collect()
}

async fn kill_subscribers(admin: &mut ::redis::aio::MultiplexedConnection) -> usize {
    let ids = subscribers(admin).await;
    for id in &ids {
        let _: i64 = ::redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(admin)
            .await
            .expect("CLIENT KILL");
    }
    ids.len()
}
