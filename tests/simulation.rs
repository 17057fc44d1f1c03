//! Deterministic simulation of the real `IdempotencyService` (issue #17, point 3).
//!
//! Each seed builds the real layer over a `MemoryStore` behind [`FaultStore`], a wrapper that
//! injects faults into store calls (delayed replies, lost replies: the call took effect but the
//! caller gets an error, failed calls: no effect and an error, duplicated `complete`/`release`/
//! `renew`, and an outage window where every call fails), a handler that sometimes sleeps past
//! its lease (a paused holder), and several clients per key that retry with seeded backoff.
//!
//! Why not turmoil or madsim: nothing in this path touches a network. The store is in process, so
//! all that needs simulating is time and scheduling. Tokio's current-thread runtime with a paused
//! clock gives both: tasks run one at a time in a fixed order, and virtual time only advances
//! when every task is idle. As long as nothing touches real I/O or real time (the memory store
//! and the layer read `tokio::time::Instant`), a seed replays exactly; the test
//! `one_seed_twice_gives_the_same_trace` checks that by hashing every event of a run twice.
//! Every random choice comes from one splitmix64 generator seeded per run.
//!
//! Leases: a key whose lease ran out while the layer still believed in its holder (a renewal or
//! a `complete` that failed or came too late, tracked by the wrapper from the replies the layer
//! got) is "lapsed", and may run its handler twice; every other key must run it at most once.
//! Not simulated: a delayed call whose caller gave up never reaches the store (a late request
//! landing after a timeout is not modelled), and only the memory store sits underneath.
//!
//! - CI: `cargo test --all-features --test simulation` (500 seeds; `SIM_SEEDS=n` for more).
//! - Nightly-style: `SIM_SEEDS=100000 cargo test --all-features --test simulation -- --nocapture`.
//! - One seed: `SIM_SEED=<n> cargo test --all-features --test simulation -- --nocapture`.

use std::{
    collections::{hash_map::DefaultHasher, HashMap},
    convert::Infallible,
    future::Future,
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::{sleep, Instant};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_idempotency::{
    BeginOutcome, CompletedRecord, FencingToken, Fingerprint, IdempotencyLayer, IdempotencyStore,
    LeaseToken, MemoryStore, RequestBody, StoreError, StoreKey,
};

const LEASE: Duration = Duration::from_millis(100);
const STORE_TIMEOUT: Duration = Duration::from_millis(60);
/// No client may take longer than this (virtual time) from its first send to its last answer.
const CLIENT_BOUND: Duration = Duration::from_secs(30);
/// No single answer may take longer than this: the handler sleeps at most 3 leases, and every
/// store call is bounded by the store timeout.
const ATTEMPT_BOUND: Duration = Duration::from_secs(2);
const HUNG: &str = "<no answer within the attempt bound>";

/// splitmix64: small, seedable, good enough for choosing faults.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// A deliberately broken store, to show that the checker finds violations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broken {
    /// The store is correct.
    No,
    /// `renew` answers `true` without renewing.
    Renew,
    /// `begin` is not exclusive: it answers `Acquired` to a key in progress.
    Begin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Begin,
    Complete,
    Release,
    Renew,
}

#[derive(Debug, Clone, Copy)]
enum Plan {
    Clean,
    Delay { before: Duration, after: Duration },
    Lost,
    Failed,
    Duplicate,
    Outage,
}

/// Which faults one seed saw happen.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    delayed: bool,
    lost: bool,
    failed: bool,
    duplicated: bool,
    outage: bool,
    paused_holder: bool,
    lease_lapsed: bool,
    lapsed_in_handler: bool,
    lapsed_after_handler: bool,
    ran_twice: bool,
    replayed: bool,
    conflict: bool,
    store_timeout: bool,
}

/// The lease as the layer knows it: granted or renewed at `since`, so held until `since + LEASE`
/// at least (the store's own expiry can only be later).
#[derive(Debug, Clone, Copy)]
struct Holder {
    token: LeaseToken,
    until: Instant,
}

#[derive(Debug)]
struct Sim {
    rng: Rng,
    faults_on: bool,
    outage: Option<(Instant, Instant)>,
    holders: HashMap<StoreKey, Holder>,
    /// Handler runs in flight per store key.
    running: HashMap<StoreKey, u32>,
    /// Keys whose lease ran out under a holder the layer still believed in (by a fault or a slow
    /// handler): the at-most-once property does not apply to them.
    lapsed: HashMap<StoreKey, bool>,
    seen: Seen,
    trace: Vec<String>,
    broken: Broken,
}

impl Sim {
    fn event(&mut self, origin: Instant, what: String) {
        let at = Instant::now().duration_since(origin).as_millis();
        self.trace.push(format!("{at} {what}"));
    }
}

/// A store wrapper that injects faults chosen by the simulation's generator.
#[derive(Debug, Clone)]
struct FaultStore {
    inner: MemoryStore,
    sim: Arc<Mutex<Sim>>,
    origin: Instant,
}

impl FaultStore {
    fn plan(&self, op: Op) -> Plan {
        let mut sim = self.sim.lock().unwrap();
        if !sim.faults_on {
            return Plan::Clean;
        }
        let now = Instant::now();
        if sim.outage.is_some_and(|(from, to)| from <= now && now < to) {
            sim.seen.outage = true;
            let origin = self.origin;
            sim.event(origin, format!("{op:?} Outage"));
            return Plan::Outage;
        }
        let roll = sim.rng.below(100);
        let plan = match roll {
            0..=69 => Plan::Clean,
            70..=79 => {
                let before = sim.rng.millis(0, 80);
                let after = sim.rng.millis(0, 80);
                Plan::Delay { before, after }
            }
            80..=86 => Plan::Lost,
            87..=93 => Plan::Failed,
            _ if op != Op::Begin => Plan::Duplicate,
            _ => Plan::Clean,
        };
        match plan {
            Plan::Delay { before, after } => {
                sim.seen.delayed = true;
                if before + after >= STORE_TIMEOUT {
                    sim.seen.store_timeout = true;
                }
            }
            Plan::Lost => sim.seen.lost = true,
            Plan::Failed => sim.seen.failed = true,
            Plan::Duplicate => sim.seen.duplicated = true,
            Plan::Clean | Plan::Outage => {}
        }
        let origin = self.origin;
        sim.event(origin, format!("{op:?} {plan:?}"));
        plan
    }

    async fn run<T, F, Fut>(&self, op: Op, call: F) -> Result<T, StoreError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        match self.plan(op) {
            Plan::Clean => call().await,
            Plan::Delay { before, after } => {
                sleep(before).await;
                let result = call().await;
                sleep(after).await;
                result
            }
            Plan::Lost => {
                let _ = call().await;
                Err(StoreError::backend("injected: reply lost"))
            }
            Plan::Failed => Err(StoreError::backend("injected: call failed")),
            Plan::Outage => Err(StoreError::backend("injected: outage")),
            Plan::Duplicate => {
                let _ = call().await;
                call().await
            }
        }
    }
}

impl IdempotencyStore for FaultStore {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<BeginOutcome, StoreError> {
        let issued = Instant::now();
        let result = self
            .run(Op::Begin, || async {
                let mut outcome = self.inner.begin(key, fingerprint, token, lease).await;
                let broken = self.sim.lock().unwrap().broken;
                if broken == Broken::Begin {
                    if let Ok(BeginOutcome::InProgress { .. }) = outcome {
                        outcome = Ok(BeginOutcome::Acquired {
                            fencing_token: FencingToken::new(u64::MAX),
                        });
                    }
                }
                if let Ok(BeginOutcome::Acquired { .. }) = outcome {
                    // The store handed the key over: if the layer still believed in an earlier
                    // holder, its lease lapsed (legitimately: the layer's view had run out).
                    let now = Instant::now();
                    let mut sim = self.sim.lock().unwrap();
                    if let Some(old) = sim.holders.remove(key) {
                        if old.until <= now {
                            sim.lapsed.insert(*key, true);
                            sim.seen.lease_lapsed = true;
                            if sim.running.get(key).is_some_and(|n| *n > 0) {
                                sim.seen.lapsed_in_handler = true;
                            } else {
                                sim.seen.lapsed_after_handler = true;
                            }
                        } else {
                            // A correct store cannot get here; recorded so the checker sees it.
                            sim.lapsed.entry(*key).or_insert(false);
                        }
                    }
                }
                outcome
            })
            .await;
        if let Ok(BeginOutcome::Acquired { .. }) = result {
            let mut sim = self.sim.lock().unwrap();
            sim.holders.insert(
                *key,
                Holder {
                    token: *token,
                    until: issued + lease,
                },
            );
        }
        result
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        fingerprint: &Fingerprint,
        record: &CompletedRecord,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.run(Op::Complete, || async {
            let done = self
                .inner
                .complete(key, token, fingerprint, record, ttl)
                .await;
            self.forget(key, token, &done);
            done
        })
        .await
    }

    async fn release(&self, key: &StoreKey, token: &LeaseToken) -> Result<bool, StoreError> {
        self.run(Op::Release, || async {
            let done = self.inner.release(key, token).await;
            self.forget(key, token, &done);
            done
        })
        .await
    }

    async fn renew(
        &self,
        key: &StoreKey,
        token: &LeaseToken,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let issued = Instant::now();
        let broken = self.sim.lock().unwrap().broken;
        let result = if broken == Broken::Renew {
            Ok(true)
        } else {
            self.run(Op::Renew, || self.inner.renew(key, token, lease))
                .await
        };
        if let Ok(true) = result {
            let mut sim = self.sim.lock().unwrap();
            if let Some(holder) = sim.holders.get_mut(key) {
                if holder.token == *token {
                    holder.until = holder.until.max(issued + lease);
                }
            }
        }
        result
    }
}

impl FaultStore {
    fn forget(&self, key: &StoreKey, token: &LeaseToken, done: &Result<bool, StoreError>) {
        if let Ok(true) = done {
            let mut sim = self.sim.lock().unwrap();
            if sim.holders.get(key).is_some_and(|h| h.token == *token) {
                sim.holders.remove(key);
            }
        }
    }
}

/// One run of the handler.
#[derive(Debug, Clone)]
struct Run {
    body: String,
    fencing: u64,
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

#[derive(Debug, Clone)]
struct Got {
    status: StatusCode,
    replayed: bool,
    body: String,
}

/// What one seed produced: a hash of its events, the faults it saw, and a violation if any.
#[derive(Debug)]
struct Outcome {
    trace_hash: u64,
    trace: Vec<String>,
    seen: Seen,
    violation: Option<String>,
}

fn key_name(k: usize) -> String {
    format!("key-{k}")
}

fn simulate(seed: u64, broken: Broken) -> Outcome {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(simulate_in(seed, broken))
}

async fn simulate_in(seed: u64, broken: Broken) -> Outcome {
    let origin = Instant::now();
    let mut rng = Rng(seed);
    let keys = 1 + rng.below(3) as usize;
    let outage = (rng.below(3) == 0).then(|| {
        let from = origin + rng.millis(0, 400);
        (from, from + rng.millis(50, 400))
    });
    let sim = Arc::new(Mutex::new(Sim {
        rng: Rng(rng.next()),
        faults_on: true,
        outage,
        holders: HashMap::new(),
        running: HashMap::new(),
        lapsed: HashMap::new(),
        seen: Seen::default(),
        trace: Vec::new(),
        broken,
    }));
    let store = FaultStore {
        inner: MemoryStore::new(),
        sim: sim.clone(),
        origin,
    };
    let runs: Arc<Mutex<HashMap<String, Vec<Run>>>> = Arc::default();
    let handler_rng = Arc::new(Mutex::new(Rng(rng.next())));
    let svc = {
        let runs = runs.clone();
        let sim = sim.clone();
        ServiceBuilder::new()
            .layer(
                IdempotencyLayer::new(store.clone())
                    .with_lease_ttl(LEASE)
                    .with_store_timeout(STORE_TIMEOUT),
            )
            .service_fn(move |req: Request<RequestBody<Body>>| {
                let runs = runs.clone();
                let sim = sim.clone();
                let handler_rng = handler_rng.clone();
                async move {
                    let key = req.headers()["idempotency-key"]
                        .to_str()
                        .unwrap()
                        .to_owned();
                    let fencing = req
                        .extensions()
                        .get::<FencingToken>()
                        .map_or(0, FencingToken::get);
                    let took = {
                        let mut rng = handler_rng.lock().unwrap();
                        if rng.below(5) == 0 {
                            sim.lock().unwrap().seen.paused_holder = true;
                            rng.millis(LEASE.as_millis() as u64 + 1, 3 * LEASE.as_millis() as u64)
                        } else {
                            rng.millis(0, 60)
                        }
                    };
                    let body = {
                        let mut runs = runs.lock().unwrap();
                        let list = runs.entry(key.clone()).or_default();
                        let body = format!("{key} run-{} fence-{fencing}", list.len() + 1);
                        list.push(Run {
                            body: body.clone(),
                            fencing,
                        });
                        body
                    };
                    let store_key = StoreKey::derive(None, "POST", "/orders", &key);
                    {
                        let mut sim = sim.lock().unwrap();
                        sim.event(origin, format!("handler {body} for {took:?}"));
                        *sim.running.entry(store_key).or_default() += 1;
                    }
                    sleep(took).await;
                    *sim.lock().unwrap().running.entry(store_key).or_default() -= 1;
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(StatusCode::CREATED)
                            .body(Full::new(Bytes::from(body)))
                            .unwrap(),
                    )
                }
            })
    };

    // Clients: each sends, and retries with the same key and body on 409, 5xx and errors.
    let mut tasks = Vec::new();
    for k in 0..keys {
        let clients = 2 + rng.below(3);
        for c in 0..clients {
            let svc = svc.clone();
            let sim = sim.clone();
            let start = rng.millis(0, 150);
            let attempts = 3 + rng.below(4);
            let mut backoff = Rng(rng.next());
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                let client = async {
                    sleep(start).await;
                    for attempt in 0..attempts {
                        let req = Request::post("/orders")
                            .header("idempotency-key", key_name(k))
                            .body(Full::new(Bytes::from_static(b"{\"n\":1}")).boxed())
                            .unwrap();
                        let answer = async {
                            let mut svc = svc.clone();
                            let response = svc.ready().await.unwrap().call(req).await.unwrap();
                            let (parts, body) = response.into_parts();
                            let bytes = body.collect().await.map(|c| c.to_bytes());
                            (parts, bytes)
                        };
                        let a = match tokio::time::timeout(ATTEMPT_BOUND, answer).await {
                            Ok((parts, Ok(bytes))) => Got {
                                status: parts.status,
                                replayed: parts
                                    .headers
                                    .get("idempotent-replayed")
                                    .is_some_and(|v| v == "true"),
                                body: String::from_utf8_lossy(&bytes).into_owned(),
                            },
                            Ok((_, Err(_))) => Got {
                                status: StatusCode::BAD_GATEWAY,
                                replayed: false,
                                body: String::new(),
                            },
                            // No single answer may take this long: it would be a hang.
                            Err(_) => Got {
                                status: StatusCode::GATEWAY_TIMEOUT,
                                replayed: false,
                                body: HUNG.to_owned(),
                            },
                        };
                        {
                            let mut sim = sim.lock().unwrap();
                            if a.replayed {
                                sim.seen.replayed = true;
                            }
                            if a.status == StatusCode::CONFLICT {
                                sim.seen.conflict = true;
                            }
                            let status = a.status.as_u16();
                            let replayed = a.replayed;
                            let line = if a.status.is_success() {
                                a.body.clone()
                            } else {
                                String::new()
                            };
                            sim.event(
                                origin,
                                format!("client {k}.{c} #{attempt} {status} {replayed} {line}"),
                            );
                        }
                        let retry = a.status == StatusCode::CONFLICT
                            || a.status.is_server_error()
                            || a.status == StatusCode::TOO_MANY_REQUESTS;
                        got.push(a);
                        if !retry {
                            break;
                        }
                        sleep(backoff.millis(10, 40 << attempt.min(4))).await;
                    }
                };
                let finished = tokio::time::timeout(CLIENT_BOUND, client).await.is_ok();
                (k, c, finished, got)
            }));
        }
    }
    let mut answers: Vec<(usize, u64, bool, Vec<Got>)> = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("client task"));
    }

    // Quiet down: no more faults, every lease past its end, then probe each key once.
    sleep(3 * LEASE + Duration::from_millis(500)).await;
    sim.lock().unwrap().faults_on = false;
    let runs_before: HashMap<String, Vec<Run>> = runs.lock().unwrap().clone();
    let mut violation = None;
    let mut fail = |what: String| {
        if violation.is_none() {
            violation = Some(what);
        }
    };
    for (k, c, finished, got) in &answers {
        if !finished {
            fail(format!(
                "client {k}.{c} did not finish within {CLIENT_BOUND:?}"
            ));
        }
        if got.iter().any(|a| a.body == HUNG) {
            fail(format!(
                "client {k}.{c}: an answer took over {ATTEMPT_BOUND:?}"
            ));
        }
    }
    for k in 0..keys {
        let name = key_name(k);
        let store_key = StoreKey::derive(None, "POST", "/orders", &name);
        let (lapsed, takeover_without_lapse) = {
            let sim = sim.lock().unwrap();
            match sim.lapsed.get(&store_key) {
                Some(true) => (true, false),
                Some(false) => (false, true),
                None => (false, false),
            }
        };
        let key_runs = runs_before.get(&name).cloned().unwrap_or_default();
        if key_runs.len() > 1 {
            sim.lock().unwrap().seen.ran_twice = true;
        }
        if !lapsed && key_runs.len() > 1 {
            fail(format!(
                "{name}: {} handler runs while leases held: {key_runs:?}",
                key_runs.len()
            ));
        }
        if takeover_without_lapse {
            fail(format!(
                "{name}: the store handed the key to another request while the layer's lease held"
            ));
        }
        // Fencing tokens grow with every run.
        if key_runs.windows(2).any(|w| w[0].fencing >= w[1].fencing) {
            fail(format!("{name}: fencing tokens did not grow: {key_runs:?}"));
        }
        // The probe: the key must be completed (a replay) or free (a run), never stuck.
        let mut probe = svc.clone();
        let req = Request::post("/orders")
            .header("idempotency-key", name.clone())
            .body(Full::new(Bytes::from_static(b"{\"n\":1}")).boxed())
            .unwrap();
        let response = probe.ready().await.unwrap().call(req).await.unwrap();
        let status = response.status();
        let replayed = response
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body).into_owned();
        if !status.is_success() {
            fail(format!(
                "{name}: still locked at the end: probe got {status} {body}"
            ));
            continue;
        }
        let committed = replayed.then_some(body);
        for (_, c, _, got) in answers.iter().filter(|a| a.0 == k) {
            for a in got.iter().filter(|a| a.status.is_success()) {
                if !key_runs.iter().any(|r| r.body == a.body) {
                    fail(format!(
                        "{name}: client {c} got a body no run produced: {a:?}"
                    ));
                }
                match &committed {
                    Some(committed) if a.replayed && a.body != *committed => fail(format!(
                        "{name}: client {c} got replay {:?}, committed is {committed:?}",
                        a.body
                    )),
                    Some(committed) if !lapsed && a.body != *committed => fail(format!(
                        "{name}: client {c} got {:?}, committed is {committed:?}",
                        a.body
                    )),
                    None if a.replayed => fail(format!(
                        "{name}: client {c} got a replay {:?} but the key ended free",
                        a.body
                    )),
                    _ => {}
                }
            }
        }
    }
    let sim = sim.lock().unwrap();
    let mut hasher = DefaultHasher::new();
    sim.trace.hash(&mut hasher);
    Outcome {
        trace_hash: hasher.finish(),
        trace: sim.trace.clone(),
        seen: sim.seen,
        violation,
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

fn replay_command(seed: u64) -> String {
    format!(
        "SIM_SEED={seed} cargo test --all-features --test simulation -- seeds_hold_the_properties --nocapture"
    )
}

/// Runs `seeds`, returning the first violating seed and the fault coverage.
fn run_seeds(
    print_trace: bool,
    seeds: impl Iterator<Item = u64>,
    broken: Broken,
) -> (Option<(u64, String)>, [usize; 13], usize) {
    let mut counts = [0usize; 13];
    let mut total = 0;
    for seed in seeds {
        let outcome = simulate(seed, broken);
        if print_trace {
            println!("seed {seed}, virtual ms and event:");
            for line in &outcome.trace {
                println!("  {line}");
            }
        }
        total += 1;
        let s = outcome.seen;
        for (i, hit) in [
            s.delayed,
            s.lost,
            s.failed,
            s.duplicated,
            s.outage,
            s.paused_holder,
            s.lease_lapsed,
            s.lapsed_in_handler,
            s.lapsed_after_handler,
            s.ran_twice,
            s.replayed,
            s.conflict,
            s.store_timeout,
        ]
        .into_iter()
        .enumerate()
        {
            counts[i] += usize::from(hit);
        }
        if let Some(violation) = outcome.violation {
            return (Some((seed, violation)), counts, total);
        }
    }
    (None, counts, total)
}

const COVERAGE: [&str; 13] = [
    "delayed reply",
    "lost reply",
    "failed call",
    "duplicated call",
    "store outage",
    "paused holder (handler past its lease)",
    "lease lapsed under a holder",
    "  ... while its handler ran",
    "  ... after its handler returned, before the record landed",
    "a key's handler ran twice (allowed only after a lapse)",
    "client saw a replay",
    "client saw 409 in progress",
    "delay reached the store timeout",
];

#[test]
fn seeds_hold_the_properties() {
    let started = std::time::Instant::now();
    let seeds: Box<dyn Iterator<Item = u64>> = match env_u64("SIM_SEED") {
        Some(seed) => Box::new(std::iter::once(seed)),
        None => Box::new(0..env_u64("SIM_SEEDS").unwrap_or(500)),
    };
    let (violation, counts, total) = run_seeds(env_u64("SIM_SEED").is_some(), seeds, Broken::No);
    if let Some((seed, what)) = violation {
        panic!(
            "seed {seed} violates a property: {what}\nreplay it with: {}",
            replay_command(seed)
        );
    }
    println!(
        "simulation: {total} seeds in {:.2?}; seeds that exercised each fault:",
        started.elapsed()
    );
    for (name, count) in COVERAGE.iter().zip(counts) {
        println!("  {count:>7}  {name}");
    }
}

#[test]
fn one_seed_twice_gives_the_same_trace() {
    for seed in [1, 42, 4242] {
        let a = simulate(seed, Broken::No);
        let b = simulate(seed, Broken::No);
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "seed {seed} is not deterministic"
        );
    }
    assert_ne!(
        simulate(1, Broken::No).trace_hash,
        simulate(2, Broken::No).trace_hash
    );
}

/// The checker earns its keep: a store whose `renew` answers `true` without renewing lets a
/// paused holder's lease run out while the layer believes it holds it; the simulation must find
/// a seed where that runs the handler twice.
#[test]
fn a_renew_that_lies_is_caught() {
    let (violation, _, total) = run_seeds(false, 0..500, Broken::Renew);
    let (seed, what) = violation.expect("no seed caught the lying renew");
    println!("broken renew caught at seed {seed} after {total} seeds: {what}");
    assert!(what.contains("handler runs while leases held"), "{what}");
}

/// And a `begin` that is not exclusive: two clients run the handler at once.
#[test]
fn a_begin_that_is_not_exclusive_is_caught() {
    let (violation, _, total) = run_seeds(false, 0..500, Broken::Begin);
    let (seed, what) = violation.expect("no seed caught the shared begin");
    println!("broken begin caught at seed {seed} after {total} seeds: {what}");
    assert!(what.contains("handler runs while leases held"), "{what}");
}
