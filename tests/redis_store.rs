//! What only the Redis store promises: round trips, its key layout, script reloads, and corrupt
//! records.

mod common;

use futures_util::StreamExt;
use http::StatusCode;
use redis::AsyncCommands;
use test_support::{connections_accepted, unique_prefix, TestRedis};
use tower_idempotency::{IdempotencyLayer, RedisStore, ReplayCache, StoreKey};

use common::{logs, post, send, Handler};

/// Watches `MONITOR` to count the commands clients send; commands a script runs are not round
/// trips, so lines from `lua` are left out.
struct RoundTrips {
    monitor: std::pin::Pin<Box<dyn futures_util::Stream<Item = String> + Send>>,
    probe: redis::aio::MultiplexedConnection,
    marks: u32,
    /// The commands scripts ran, by name, up to the last `since_last`.
    scripted: Vec<String>,
}

impl RoundTrips {
    async fn watch(redis: &TestRedis) -> Self {
        let client = redis::Client::open(redis.url()).unwrap();
        let monitor = client
            .get_async_monitor()
            .await
            .unwrap()
            .into_on_message::<String>();
        let mut this = Self {
            monitor: Box::pin(monitor),
            probe: redis.connection().await,
            marks: 0,
            scripted: Vec::new(),
        };
        this.since_last().await;
        this
    }

    /// The client commands since the last call, in order, by name.
    async fn since_last(&mut self) -> Vec<String> {
        self.marks += 1;
        let mark = format!("round-trip-mark-{}", self.marks);
        let _: String = redis::cmd("ECHO")
            .arg(&mark)
            .query_async(&mut self.probe)
            .await
            .unwrap();
        let mut commands = Vec::new();
        self.scripted.clear();
        loop {
            let line = tokio::time::timeout(common::DEADLINE, self.monitor.next())
                .await
                .expect("MONITOR line")
                .expect("MONITOR open");
            if line.contains(&mark) {
                return commands;
            }
            if line.contains("round-trip-mark-") {
                continue;
            }
            let name = line
                .split('"')
                .nth(1)
                .unwrap_or_default()
                .to_ascii_uppercase();
            if line.contains(" lua]") {
                self.scripted.push(name);
            } else {
                commands.push(name);
            }
        }
    }
}

#[tokio::test]
async fn a_first_execution_costs_two_round_trips_and_a_replay_one() {
    let redis = TestRedis::start_own().await;
    let store = RedisStore::connect(redis.url()).await.unwrap();
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    let mut round_trips = RoundTrips::watch(&redis).await;

    assert_eq!(
        send(&svc, post("/orders", Some("k"), "{}")).await.status,
        StatusCode::CREATED
    );
    assert_eq!(round_trips.since_last().await, ["EVALSHA", "EVALSHA"]);

    let replay = send(&svc, post("/orders", Some("k"), "{}")).await;
    assert!(replay.replayed());
    assert_eq!(round_trips.since_last().await, ["EVALSHA"]);
    assert_eq!(
        round_trips.scripted,
        ["GET"],
        "a replay reads the record and nothing else"
    );
    assert_eq!(handler.executions(), 1);
}

/// A local replay tier asks Redis how long a record lives (the `PTTL` a plain replay skips),
/// keeps it, and answers later replays without a round trip.
#[tokio::test]
async fn a_replay_cache_learns_the_expiry_and_then_skips_redis() {
    let redis = TestRedis::start_own().await;
    let connect = || async {
        let store = RedisStore::connect(redis.url()).await.unwrap();
        ReplayCache::new(store)
    };
    let handler = Handler::new();
    let first = handler.service(IdempotencyLayer::new(connect().await));
    let second = handler.service(IdempotencyLayer::new(connect().await));
    let mut round_trips = RoundTrips::watch(&redis).await;

    assert_eq!(
        send(&first, post("/orders", Some("k"), "{}")).await.status,
        StatusCode::CREATED
    );
    round_trips.since_last().await;

    assert!(send(&second, post("/orders", Some("k"), "{}"))
        .await
        .replayed());
    assert_eq!(round_trips.since_last().await, ["EVALSHA"]);
    assert_eq!(round_trips.scripted, ["GET", "PTTL"]);

    for service in [&first, &second] {
        assert!(send(service, post("/orders", Some("k"), "{}"))
            .await
            .replayed());
    }
    assert_eq!(
        round_trips.since_last().await,
        Vec::<String>::new(),
        "both instances replay from their caches"
    );
    assert_eq!(handler.executions(), 1);
}

/// Asked to wait for a replica that does not exist, the store refuses to let a handler run:
/// 503, the handler untouched, and the lock it took released at once.
#[tokio::test]
async fn without_the_replicas_it_waits_for_no_handler_runs() {
    let redis = TestRedis::start_own().await;
    let plain = RedisStore::connect(redis.url()).await.unwrap();
    let store = plain
        .clone()
        .with_replica_acks(1, std::time::Duration::from_millis(20));
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    let mut round_trips = RoundTrips::watch(&redis).await;

    let refused = send(&svc, post("/orders", Some("k"), "{}")).await;
    refused.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "store-unavailable");
    assert_eq!(handler.executions(), 0);
    // begin (with WAIT in the same round trip), then the release.
    let sent = round_trips.since_last().await;
    assert_eq!(sent[..2], ["EVALSHA", "WAIT"]);

    // Released: a store that does not wait may take the key at once.
    let svc = handler.service(IdempotencyLayer::new(plain));
    let answer = common::send_until_not(&svc, StatusCode::CONFLICT, || {
        post("/orders", Some("k"), "{}")
    })
    .await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert_eq!(handler.executions(), 1);
}

#[tokio::test]
async fn scripts_are_reloaded_after_the_server_forgets_them() {
    let redis = TestRedis::start_own().await;
    let store = RedisStore::connect(redis.url()).await.unwrap();
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    let mut probe = redis.connection().await;
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut probe)
        .await
        .unwrap();

    assert_eq!(
        send(&svc, post("/orders", Some("k"), "{}")).await.status,
        StatusCode::CREATED
    );
    assert!(send(&svc, post("/orders", Some("k"), "{}"))
        .await
        .replayed());
    assert_eq!(handler.executions(), 1);
}

#[tokio::test]
async fn a_record_is_one_hash_tagged_key_with_no_raw_key_text() {
    let redis = TestRedis::start().await;
    let prefix = unique_prefix("layout");
    let store = RedisStore::connect(redis.url())
        .await
        .unwrap()
        .with_key_prefix(&prefix);
    let svc = Handler::new().service(IdempotencyLayer::new(store.clone()));
    let hostile = "{tag}:key with\tspaces";
    let mut req = post("/orders", None, "{}");
    req.headers_mut()
        .insert("idempotency-key", format!("\"{hostile}\"").parse().unwrap());
    // A tab is not visible ASCII: refused before it reaches the store.
    assert_eq!(send(&svc, req).await.status, StatusCode::BAD_REQUEST);
    let key_text = "{tag}:key";
    assert_eq!(
        send(&svc, post("/orders", Some(key_text), "{}"))
            .await
            .status,
        StatusCode::CREATED
    );

    let mut probe = redis.connection().await;
    let mut keys: Vec<String> = probe.keys(format!("{prefix}*")).await.unwrap();
    keys.sort();
    let record = store.record_key(&StoreKey::derive(None, "POST", "/orders", key_text));
    assert_eq!(keys, [record], "one Redis key per idempotency key");
    for key in &keys {
        assert!(!key.contains("tag"), "raw key text leaked into {key}");
        let tag = &key[key.find('{').unwrap()..=key.find('}').unwrap()];
        assert_eq!(tag.len(), 66, "hash tag of {key} is the 64-digit digest");
        assert_eq!(key.matches('{').count(), 1);
    }
}

#[tokio::test]
async fn a_corrupt_record_is_500_and_never_reruns_the_handler() {
    logs::capture();
    let redis = TestRedis::start().await;
    let store = RedisStore::connect(redis.url())
        .await
        .unwrap()
        .with_key_prefix(unique_prefix("corrupt"));
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store.clone()));
    assert_eq!(
        send(&svc, post("/orders", Some("k"), "{}")).await.status,
        StatusCode::CREATED
    );

    let record = store.record_key(&StoreKey::derive(None, "POST", "/orders", "k"));
    let mut probe = redis.connection().await;
    let stored: Vec<u8> = probe.get(&record).await.unwrap();
    // The state byte and fingerprint survive, the response after them does not.
    let mut damaged = stored[..33].to_vec();
    damaged.extend_from_slice(b"garbage");
    let () = probe.set(&record, damaged).await.unwrap();
    send(&svc, post("/orders", Some("k"), "{}"))
        .await
        .assert_problem(StatusCode::INTERNAL_SERVER_ERROR, "record-corrupt");
    // Nothing of the layout is left.
    let () = probe.set(&record, "garbage").await.unwrap();
    send(&svc, post("/orders", Some("k"), "{}"))
        .await
        .assert_problem(StatusCode::INTERNAL_SERVER_ERROR, "record-corrupt");

    assert_eq!(handler.executions(), 1);
    let hash = StoreKey::derive(None, "POST", "/orders", "k").to_hex();
    assert_eq!(logs::lines_with(&["ERROR", "corrupt", &hash]).len(), 2);
}

#[tokio::test]
async fn a_record_holds_no_private_header() {
    let redis = TestRedis::start().await;
    let store = RedisStore::connect(redis.url())
        .await
        .unwrap()
        .with_key_prefix(unique_prefix("privacy"));
    let svc = Handler::new().service(IdempotencyLayer::new(store.clone()));
    let first = send(&svc, post("/orders", Some("k"), "{}")).await;
    assert_eq!(first.values("set-cookie"), ["session=secret"]);

    let record = store.record_key(&StoreKey::derive(None, "POST", "/orders", "k"));
    let mut probe = redis.connection().await;
    let stored: Vec<u8> = probe.get(&record).await.unwrap();
    let stored = String::from_utf8_lossy(&stored);
    assert!(
        stored.contains("/orders/1"),
        "the record holds the response: {stored}"
    );
    for secret in ["session=secret", "leaked-token", "Bearer realm"] {
        assert!(!stored.contains(secret), "{secret} was stored");
    }
}

/// A Redis that is not there: the error names the store and its address, never the password.
#[tokio::test]
async fn connecting_to_no_redis_names_the_store_and_the_address() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://:hunter2@127.0.0.1:{port}");
    let error = RedisStore::connect(&url).await.unwrap_err().to_string();
    assert!(
        error.contains(&format!("could not connect to Redis at 127.0.0.1:{port}")),
        "{error}"
    );
    assert!(!error.contains("hunter2"), "{error}");
}

/// `WAIT` blocks the connection it is sent on. A store made by `connect` sends each call that
/// waits for replicas on a connection of its own: eight first executions wait at once (here for
/// a replica that never comes, with a 30 s timeout), and a call that does not wait still gets its
/// answer meanwhile. On one shared connection, the eight waited one after another and the peek
/// queued behind them (`scripts/load.sh`, variant `ca`: 0.04 of the throughput without acks at
/// 0.5 ms of round trip).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_for_replicas_wait_side_by_side_and_hold_up_nothing() {
    use tower_idempotency::{Fingerprint, IdempotencyStore, LeaseToken, ReplayTier};

    let redis = TestRedis::start_own().await;
    let store = RedisStore::connect(redis.url())
        .await
        .unwrap()
        .with_replica_acks(1, std::time::Duration::from_secs(30));
    let mut probe = redis.connection().await;
    let blocked_in_wait = |list: String| {
        list.lines()
            .filter(|client| client.contains(" cmd=wait "))
            .count()
    };

    let mut waiting = tokio::task::JoinSet::new();
    for n in 0..8 {
        let store = store.clone();
        waiting.spawn(async move {
            let key = StoreKey::derive(None, "POST", "/orders", &format!("k{n}"));
            let fingerprint = Fingerprint::sha256(b"{}");
            store
                .begin(
                    &key,
                    &fingerprint,
                    &LeaseToken::generate(),
                    std::time::Duration::from_secs(60),
                )
                .await
        });
    }
    let deadline = tokio::time::Instant::now() + common::DEADLINE;
    loop {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut probe)
            .await
            .unwrap();
        if blocked_in_wait(list) == 8 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the eight calls never waited side by side"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    // A call that does not wait answers while the eight still wait.
    let other = StoreKey::derive(None, "POST", "/orders", "other");
    let fingerprint = Fingerprint::sha256(b"{}");
    assert!(store.peek(&other, &fingerprint).await.unwrap().is_none());
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut probe)
        .await
        .unwrap();
    assert_eq!(blocked_in_wait(list), 8, "the peek waited for a WAIT");
    assert!(waiting.try_join_next().is_none(), "a WAIT ended early");
    waiting.abort_all();
}

/// A store waiting for one replica on a server that has none: every confirmed call that
/// reaches the server waits out `WAIT`'s 200 ms and answers `Unreplicated`.
async fn unreplicated_store(redis: &TestRedis) -> RedisStore {
    RedisStore::connect(redis.url())
        .await
        .unwrap()
        .with_replica_acks(1, std::time::Duration::from_millis(200))
}

/// `begin` on a key of its own, `n`: a call that waits for replicas.
async fn begin_waiting(
    store: &RedisStore,
    n: u32,
) -> Result<tower_idempotency::BeginOutcome, tower_idempotency::StoreError> {
    use tower_idempotency::{Fingerprint, IdempotencyStore, LeaseToken};

    let key = StoreKey::derive(None, "POST", "/orders", &format!("k{n}"));
    store
        .begin(
            &key,
            &Fingerprint::sha256(b"{}"),
            &LeaseToken::generate(),
            std::time::Duration::from_secs(60),
        )
        .await
}

/// How a call of [`unreplicated_store`] that reached the server answers.
fn reached_the_server<T>(result: &Result<T, tower_idempotency::StoreError>) -> bool {
    matches!(
        result,
        Err(tower_idempotency::StoreError::Unreplicated {
            acked: 0,
            wanted: 1
        })
    )
}

/// A server of its own and an [`unreplicated_store`] on it that made three waiting calls at
/// once: three connections of their own, kept idle afterwards.
async fn three_kept_waiting_connections() -> (TestRedis, RedisStore) {
    let redis = TestRedis::start_own().await;
    let store = unreplicated_store(&redis).await;
    let (a, b, c) = tokio::join!(
        begin_waiting(&store, 0),
        begin_waiting(&store, 1),
        begin_waiting(&store, 2)
    );
    for result in [&a, &b, &c] {
        assert!(reached_the_server(result), "{result:?}");
    }
    (redis, store)
}

/// After a restart, the connections kept for calls that wait for replicas are all broken: one
/// call finds out, and the rest get new ones (and the scripts loaded again) instead of failing
/// one request each in turn.
#[tokio::test]
async fn after_a_restart_one_waiting_call_fails_and_the_next_reaches_the_server() {
    let (mut redis, store) = three_kept_waiting_connections().await;

    let server = redis.server().expect("a spawned server");
    server.stop();
    server.start().unwrap();

    let mut failed = 0;
    for n in 3..6 {
        let result = begin_waiting(&store, n).await;
        if !reached_the_server(&result) {
            assert!(
                matches!(result, Err(tower_idempotency::StoreError::Backend(_))),
                "{result:?}"
            );
            failed += 1;
        }
    }
    assert_eq!(failed, 1, "each kept connection failed a call of its own");
}

/// A waiting call cut off by a timeout (a server gone silent, here paused) closes the kept
/// connections too: each would otherwise cost a request a full timeout of its own.
#[tokio::test]
async fn a_waiting_call_cut_off_by_a_timeout_drops_the_kept_connections() {
    let (redis, store) = three_kept_waiting_connections().await;
    let mut probe = redis.connection().await;
    let accepted = connections_accepted(&mut probe).await;

    // Paused, the server answers nothing; the next call waits for the pause to end.
    test_support::pause_all_clients(&mut probe, std::time::Duration::from_millis(1000)).await;
    let cut_off = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        begin_waiting(&store, 3),
    )
    .await;
    assert!(cut_off.is_err(), "the paused server answered: {cut_off:?}");

    let next = begin_waiting(&store, 4).await;
    assert!(reached_the_server(&next), "{next:?}");
    assert_eq!(
        connections_accepted(&mut probe).await - accepted,
        1,
        "the next call reused a connection kept from before the timeout"
    );
}

/// An error reply (here `OOM`) leaves the connection as good as before: it is kept, and the
/// next call opens none.
#[tokio::test]
async fn a_waiting_call_answered_with_an_error_keeps_its_connection() {
    let (redis, store) = three_kept_waiting_connections().await;
    let mut probe = redis.connection().await;
    let accepted = connections_accepted(&mut probe).await;

    let set_maxmemory = |bytes: &'static str| {
        let mut probe = probe.clone();
        async move {
            let () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory")
                .arg(bytes)
                .query_async(&mut probe)
                .await
                .unwrap();
        }
    };
    set_maxmemory("1").await;
    let refused = begin_waiting(&store, 3).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|error| error.to_string().contains("OOM")),
        "{refused:?}"
    );
    set_maxmemory("0").await;

    let next = begin_waiting(&store, 4).await;
    assert!(reached_the_server(&next), "{next:?}");
    assert_eq!(
        connections_accepted(&mut probe).await,
        accepted,
        "a connection was opened after an error reply"
    );
}
