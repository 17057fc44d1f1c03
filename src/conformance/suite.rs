//! The conformance suite: every behaviour the layer promises, against any store.
//!
//! Each function takes a fresh store; [`conformance_tests!`](crate::conformance_tests) runs
//! them all, once per store.

use std::time::Duration;

use crate::{
    BeginOutcome, CompletedRecord, ConflictPolicy, Fingerprint, IdempotencyLayer, IdempotencyStore,
    LeaseToken, RecordedResponse, StoreKey,
};
use bytes::Bytes;
use http::StatusCode;
use tokio::task::JoinSet;

use super::{
    counting_store::CountingStore,
    harness::{
        eventually, frame_text, post, post_raw_key, post_streaming, send, send_streamed,
        send_until_not, try_send, with_header, Answer, Handler, User, DEADLINE,
    },
};

/// First response and replay are identical.
pub async fn first_response_and_replay_are_identical<St: IdempotencyStore>(store: St) {
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));

    let first = send(&svc, post("/orders", Some("key-1"), "{\"amount\":1200}")).await;
    let retry = send(&svc, post("/orders", Some("key-1"), "{\"amount\":1200}")).await;

    assert_eq!(handler.executions(), 1);
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed());
    assert!(retry.replayed());
    assert_eq!(retry.status, first.status);
    assert_eq!(retry.body, first.body);
    assert_eq!(
        retry.text(),
        "{\"execution\":1,\"echo\":\"{\\\"amount\\\":1200}\"}"
    );
    for name in ["content-type", "location", "x-multi", "x-fence"] {
        assert_eq!(retry.values(name), first.values(name), "header {name}");
    }
    assert_eq!(retry.values("x-multi"), ["first", "second"]);
    // The first client gets its cookie; nobody else does.
    assert_eq!(first.values("set-cookie"), ["session=secret"]);
    for private in ["set-cookie", "www-authenticate", "authorization"] {
        assert!(retry.values(private).is_empty(), "{private} was replayed");
    }
}

/// Quoted and bare keys are the same key.
pub async fn quoted_and_bare_keys_are_the_same_key<St: IdempotencyStore>(store: St) {
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    let first = send(&svc, post("/orders", Some("\"abc\""), "{}")).await;
    let retry = send(&svc, post("/orders", Some("abc"), "{}")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(retry.replayed());
    assert_eq!(handler.executions(), 1);
}

/// A different payload is 422.
pub async fn a_different_payload_is_422<St: IdempotencyStore>(store: St) {
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    assert_eq!(
        send(&svc, post("/orders", Some("k"), "{\"amount\":1}"))
            .await
            .status,
        StatusCode::CREATED
    );

    send(&svc, post("/orders", Some("k"), "{\"amount\":2}"))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "key-reused");
    send(&svc, post("/orders?dry_run=1", Some("k"), "{\"amount\":1}"))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "key-reused");
    assert_eq!(handler.executions(), 1);
}

/// A key reused with another payload is a mismatch while the first request runs, too, not a
/// conflict to wait out; the same payload is a conflict.
pub async fn a_different_payload_is_a_mismatch_while_in_progress<St: IdempotencyStore>(store: St) {
    let key = StoreKey::derive(None, "POST", "/orders", "in-progress");
    let (first, other) = (
        Fingerprint::sha256(b"{\"amount\":1}"),
        Fingerprint::sha256(b"{\"amount\":2}"),
    );
    let lease = Duration::from_secs(30);
    let holder = LeaseToken::generate();
    assert!(matches!(
        store.begin(&key, &first, &holder, lease).await.unwrap(),
        BeginOutcome::Acquired { .. }
    ));
    let retry = LeaseToken::generate();
    assert_eq!(
        store.begin(&key, &other, &retry, lease).await.unwrap(),
        BeginOutcome::Mismatch
    );
    assert!(matches!(
        store.begin(&key, &first, &retry, lease).await.unwrap(),
        BeginOutcome::InProgress { .. }
    ));
    let record = CompletedRecord::Tombstone {
        status: StatusCode::CREATED,
    };
    assert!(store
        .complete(&key, &holder, &first, &record, lease)
        .await
        .unwrap());
    assert_eq!(
        store.begin(&key, &other, &retry, lease).await.unwrap(),
        BeginOutcome::Mismatch
    );
}

/// 64 requests with one key while the first is held: one runs, the rest get 409 at once.
pub async fn concurrent_duplicates_run_once_under_reject<St: IdempotencyStore>(store: St) {
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    let mut tasks = JoinSet::new();
    for _ in 0..64 {
        let svc = svc.clone();
        tasks.spawn(async move { send(&svc, post("/gated", Some("same"), "{}")).await });
    }
    let mut answers = Vec::new();
    let collect_63 = async {
        while answers.len() < 63 {
            answers.push(tasks.join_next().await.expect("task").expect("no panic"));
        }
    };
    tokio::time::timeout(DEADLINE, collect_63)
        .await
        .expect("63 duplicates answered while the first ran");
    assert_eq!(handler.executions(), 1);
    for answer in &answers {
        answer.assert_problem(StatusCode::CONFLICT, "in-progress");
        let retry_after: u64 = answer.headers["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry_after >= 1);
    }
    handler.open_gate();
    let last = tasks.join_next().await.expect("task").expect("no panic");
    assert_eq!(last.status, StatusCode::CREATED);
    assert!(!last.replayed());
    assert_eq!(handler.executions(), 1);
}

/// 64 requests with one key under `Wait`: one runs, the other 63 wait and get its response.
pub async fn concurrent_duplicates_run_once_under_wait<St: IdempotencyStore + Clone>(store: St) {
    let store = CountingStore::new(store);
    let handler = Handler::new();
    let layer = IdempotencyLayer::new(store.clone()).with_conflict_policy(ConflictPolicy::Wait {
        poll: Duration::from_millis(5),
        timeout: DEADLINE,
    });
    let svc = handler.service(layer);
    let mut tasks = JoinSet::new();
    for _ in 0..64 {
        let svc = svc.clone();
        tasks.spawn(async move { send(&svc, post("/gated", Some("same"), "{}")).await });
    }
    // Every request has reached the store (and found the key taken) before the first finishes.
    eventually("64 begin calls", || store.begins() >= 64).await;
    assert_eq!(handler.executions(), 1);
    handler.open_gate();
    let answers: Vec<Answer> = tokio::time::timeout(DEADLINE, tasks.join_all())
        .await
        .expect("all answered");
    assert_eq!(handler.executions(), 1);
    assert!(answers.iter().all(|a| a.status == StatusCode::CREATED));
    assert_eq!(answers.iter().filter(|a| a.replayed()).count(), 63);
    assert!(answers.iter().all(|a| a.body == answers[0].body));
}

/// Wait gives up with 409 after its timeout.
pub async fn wait_gives_up_with_409_after_its_timeout<St: IdempotencyStore>(store: St) {
    let handler = Handler::new();
    let layer = IdempotencyLayer::new(store).with_conflict_policy(ConflictPolicy::Wait {
        poll: Duration::from_millis(5),
        timeout: Duration::from_millis(100),
    });
    let svc = handler.service(layer);
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { send(&svc, post("/gated", Some("k"), "{}")).await }
    });
    eventually("the first request to start", || handler.executions() == 1).await;
    send(&svc, post("/gated", Some("k"), "{}"))
        .await
        .assert_problem(StatusCode::CONFLICT, "in-progress");
    handler.open_gate();
    assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
    assert_eq!(handler.executions(), 1);
}

/// A lease that ran out lets the next request in, and its old holder can touch nothing.
pub async fn an_expired_lease_lets_a_later_request_in_and_fences_the_old_holder<
    St: IdempotencyStore,
>(
    store: St,
) {
    let key = StoreKey::derive(None, "POST", "/orders", "lease");
    let fp = Fingerprint::sha256(b"request");
    let (old, new) = (LeaseToken::generate(), LeaseToken::generate());
    let long = Duration::from_secs(30);

    let BeginOutcome::Acquired {
        fencing_token: old_fence,
    } = store
        .begin(&key, &fp, &old, Duration::from_millis(150))
        .await
        .unwrap()
    else {
        panic!("first begin must acquire");
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let new_fence = loop {
        match store.begin(&key, &fp, &new, long).await.unwrap() {
            BeginOutcome::Acquired { fencing_token } => break fencing_token,
            BeginOutcome::InProgress { .. } => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the lease never expired"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(
        new_fence > old_fence,
        "fencing tokens must grow: {old_fence:?} then {new_fence:?}"
    );

    let record = CompletedRecord::Response(RecordedResponse::new(
        StatusCode::CREATED,
        Default::default(),
        Bytes::from_static(b"new holder"),
    ));
    let stale = CompletedRecord::Tombstone {
        status: StatusCode::OK,
    };
    assert!(!store.complete(&key, &old, &fp, &stale, long).await.unwrap());
    assert!(!store.renew(&key, &old, long).await.unwrap());
    assert!(!store.release(&key, &old).await.unwrap());
    assert!(matches!(
        store
            .begin(&key, &fp, &LeaseToken::generate(), long)
            .await
            .unwrap(),
        BeginOutcome::InProgress { .. }
    ));
    assert!(store.renew(&key, &new, long).await.unwrap());
    assert!(store
        .complete(&key, &new, &fp, &record, long)
        .await
        .unwrap());
    assert!(
        !store.release(&key, &new).await.unwrap(),
        "a completed record is not released"
    );
    match store
        .begin(&key, &fp, &LeaseToken::generate(), long)
        .await
        .unwrap()
    {
        // Whether plain `begin` reports the expiry is the store's choice.
        BeginOutcome::Completed {
            record: stored,
            expires_in,
        } => {
            assert_eq!(stored, record);
            assert!(expires_in.is_none_or(|e| e <= long));
        }
        other => panic!("expected the completed record, got {other:?}"),
    }
    match store
        .begin_with_expiry(&key, &fp, &LeaseToken::generate(), long)
        .await
        .unwrap()
    {
        BeginOutcome::Completed {
            record: stored,
            expires_in,
        } => {
            assert_eq!(stored, record);
            let expires_in = expires_in.expect("the store knows when the record expires");
            assert!(expires_in <= long && expires_in > long - Duration::from_secs(10));
        }
        other => panic!("expected the completed record, got {other:?}"),
    }
}

/// Server errors and handler failures are not recorded.
pub async fn server_errors_and_handler_failures_are_not_recorded<St: IdempotencyStore>(store: St) {
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));

    let first = send(&svc, post("/fail", Some("k"), "{}")).await;
    let retry = send(&svc, post("/fail", Some("k"), "{}")).await;
    assert_eq!(first.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(retry.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!retry.replayed());
    assert_eq!(handler.executions(), 2);
    let (f1, f2): (u64, u64) = (
        first.values("x-fence")[0].parse().unwrap(),
        retry.values("x-fence")[0].parse().unwrap(),
    );
    assert!(
        f2 > f1,
        "a new acquisition of the key gets a larger fencing token"
    );

    assert!(try_send(&svc, post("/error", Some("k2"), "{}"))
        .await
        .is_err());
    assert!(try_send(&svc, post("/error", Some("k2"), "{}"))
        .await
        .is_err());
    assert_eq!(handler.executions(), 4);
}

/// A body over the limit is 413 and never runs.
pub async fn a_body_over_the_limit_is_413_and_never_runs<St: IdempotencyStore>(store: St) {
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store).with_body_limit(1024));

    send(&svc, post("/orders", Some("k"), vec![b'a'; 1025]))
        .await
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large");
    let chunks = vec![Bytes::from(vec![b'a'; 600]), Bytes::from(vec![b'a'; 600])];
    send(&svc, post_streaming("/orders", "k", chunks))
        .await
        .assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large");
    assert_eq!(handler.executions(), 0);

    // Nothing was stored: the same key with a body within the limit runs.
    let ok = send(&svc, post("/orders", Some("k"), vec![b'a'; 1024])).await;
    assert_eq!(ok.status, StatusCode::CREATED);
    assert_eq!(handler.executions(), 1);
}

/// Bad or missing keys are 400.
pub async fn bad_or_missing_keys_are_400<St: IdempotencyStore>(store: St) {
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store).with_key_required(true));

    send(&svc, post("/orders", None, "{}"))
        .await
        .assert_problem(StatusCode::BAD_REQUEST, "key-missing");
    for key in [
        &b""[..],
        b"\"\"",
        &[b'k'; 256],
        "clé".as_bytes(),
        b"a b",
        b"\"open",
    ] {
        send(&svc, post_raw_key(key))
            .await
            .assert_problem(StatusCode::BAD_REQUEST, "key-invalid");
    }
    assert_eq!(handler.executions(), 0);
    assert_eq!(
        send(&svc, post_raw_key(&[b'k'; 255])).await.status,
        StatusCode::CREATED
    );
    assert_eq!(handler.executions(), 1);
}

/// Optional keys and uncovered methods pass through.
pub async fn optional_keys_and_uncovered_methods_pass_through<St: IdempotencyStore>(store: St) {
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    for _ in 0..2 {
        let answer = send(&svc, post("/orders", None, "{}")).await;
        assert_eq!(answer.status, StatusCode::CREATED);
        assert!(!answer.replayed());
    }
    for _ in 0..2 {
        let get = http::Request::get("/orders")
            .header("idempotency-key", "k")
            .body(http_body_util::BodyExt::boxed(http_body_util::Empty::new()))
            .unwrap();
        assert!(!send(&svc, get).await.replayed());
    }
    assert_eq!(handler.executions(), 4);
}

/// Scopes never share records.
pub async fn scopes_never_share_records<St: IdempotencyStore>(store: St) {
    let handler = Handler::new();
    let layer = IdempotencyLayer::new(store).with_scope(|parts: &http::request::Parts| {
        parts
            .headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let svc = handler.service(layer);
    let as_tenant = |tenant: &str| {
        let mut req = post("/orders", Some("shared-key"), "{}");
        req.headers_mut()
            .insert("x-tenant", tenant.parse().unwrap());
        req
    };
    let a = send(&svc, as_tenant("a")).await;
    let b = send(&svc, as_tenant("b")).await;
    let unscoped = send(&svc, post("/orders", Some("shared-key"), "{}")).await;
    assert!(!a.replayed() && !b.replayed() && !unscoped.replayed());
    assert_eq!(handler.executions(), 3);
    let a_again = send(&svc, as_tenant("a")).await;
    assert!(a_again.replayed());
    assert_eq!(a_again.body, a.body);
    assert_ne!(a.body, b.body);
    assert_eq!(handler.executions(), 3);
}

/// A response too large to record leaves a tombstone.
pub async fn a_response_too_large_to_record_leaves_a_tombstone<St: IdempotencyStore>(store: St) {
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store).with_record_limit(1000));
    let first = send(&svc, post("/big", Some("k"), "{}")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(
        first.body.len(),
        4096,
        "the first client still gets the whole body"
    );

    let retry = send(&svc, post("/big", Some("k"), "{}")).await;
    retry.assert_problem(StatusCode::CONFLICT, "response-not-recorded");
    assert!(retry.replayed());
    assert!(retry.headers.get("retry-after").is_none());
    let json: serde_json::Value = serde_json::from_slice(&retry.body).unwrap();
    assert_eq!(json["original_status"], 201);
    assert_eq!(handler.executions(), 1);
}

/// Trailers are recorded and replayed.
pub async fn trailers_are_recorded_and_replayed<St: IdempotencyStore>(store: St) {
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    let first = send(&svc, post("/grpc", Some("k"), "{}")).await;
    let retry = send(&svc, post("/grpc", Some("k"), "{}")).await;
    assert_eq!(handler.executions(), 1);
    assert!(retry.replayed());
    assert_eq!(retry.body, "message");
    let trailers = first
        .trailers
        .as_ref()
        .expect("the first response keeps its trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(retry.trailers.as_ref(), Some(trailers));
}

/// A handler that runs three times its lease keeps the key: renewals hold the lease.
pub async fn a_handler_slower_than_its_lease_lets_no_duplicate_in<St: IdempotencyStore + Clone>(
    store: St,
) {
    let store = CountingStore::new(store);
    let handler = Handler::new();
    let lease = Duration::from_millis(200);
    let svc = handler.service(IdempotencyLayer::new(store.clone()).with_lease_ttl(lease));
    let first = tokio::spawn(send(&svc, post("/gated", Some("slow"), "{}")));
    eventually("the first request to start", || handler.executions() == 1).await;
    let started = tokio::time::Instant::now();
    let mut duplicates = 0;
    while started.elapsed() < lease * 3 + lease / 2 {
        send(&svc, post("/gated", Some("slow"), "{}"))
            .await
            .assert_problem(StatusCode::CONFLICT, "in-progress");
        duplicates += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(duplicates > 10);
    assert!(store.renewals() >= 3, "only {} renewals", store.renewals());
    handler.open_gate();
    assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
    assert!(send(&svc, post("/gated", Some("slow"), "{}"))
        .await
        .replayed());
    assert_eq!(handler.executions(), 1);
}

/// A client that hangs up mid-handler: the handler finishes, its response is recorded, and the
/// retry replays it long before the (long) lease would have run out.
pub async fn a_dropped_request_still_records_its_response<St: IdempotencyStore>(store: St) {
    let handler = Handler::new();
    let layer = IdempotencyLayer::new(store).with_lease_ttl(Duration::from_secs(60));
    let svc = handler.service(layer);
    let first = tokio::spawn(send(&svc, post("/gated", Some("gone"), "{}")));
    eventually("the first request to start", || handler.executions() == 1).await;
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    handler.open_gate();

    let retry = send_until_not(&svc, StatusCode::CONFLICT, || {
        post("/gated", Some("gone"), "{}")
    })
    .await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert!(retry.replayed(), "the retry replays the finished result");
    assert_eq!(handler.executions(), 1);
}

/// A request dropped while its `begin` is in flight (it acquired, but never learnt it did)
/// releases the key at once instead of leaving it locked for the whole lease.
pub async fn a_request_dropped_during_begin_releases_the_key<St: IdempotencyStore + Clone>(
    store: St,
) {
    let store = CountingStore::new(store);
    let handler = Handler::new();
    let layer = IdempotencyLayer::new(store.clone()).with_lease_ttl(Duration::from_secs(60));
    let svc = handler.service(layer);
    store.stall_next_acquire();
    let first = tokio::spawn(send(&svc, post("/orders", Some("k"), "{}")));
    eventually("the first begin to acquire and stall", || {
        store.stalled() == 1
    })
    .await;
    first.abort();

    let retry = send_until_not(&svc, StatusCode::CONFLICT, || {
        post("/orders", Some("k"), "{}")
    })
    .await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert!(!retry.replayed());
    assert_eq!(handler.executions(), 1);
}

/// Under `Wait`, no more than `max_waiters` requests wait; the others get 409 at once.
pub async fn waiters_are_capped<St: IdempotencyStore>(store: St) {
    let handler = Handler::new();
    let layer = IdempotencyLayer::new(store)
        .with_conflict_policy(ConflictPolicy::Wait {
            poll: Duration::from_millis(5),
            timeout: DEADLINE,
        })
        .with_max_waiters(2);
    let svc = handler.service(layer);
    let first = tokio::spawn(send(&svc, post("/gated", Some("k"), "{}")));
    eventually("the first request to start", || handler.executions() == 1).await;
    let mut duplicates = JoinSet::new();
    for _ in 0..5 {
        duplicates.spawn(send(&svc, post("/gated", Some("k"), "{}")));
    }
    for _ in 0..3 {
        let answer = tokio::time::timeout(DEADLINE, duplicates.join_next())
            .await
            .expect("three duplicates refused while two wait")
            .unwrap()
            .unwrap();
        answer.assert_problem(StatusCode::CONFLICT, "in-progress");
    }
    handler.open_gate();
    assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
    for answer in duplicates.join_all().await {
        assert_eq!(answer.status, StatusCode::CREATED);
        assert!(answer.replayed());
    }
    assert_eq!(handler.executions(), 1);
}

/// Keys that look like store syntax are hashed; keys that are not visible ASCII are refused.
pub async fn hostile_keys_are_hashed_or_refused<St: IdempotencyStore>(store: St) {
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    let accepted = [
        "{",
        "}",
        "a:b",
        "{tag}",
        "\"spaced key\"",
        "*",
        "idempotency:{x}",
    ];
    for key in accepted {
        assert_eq!(
            send(&svc, post_raw_key(key.as_bytes())).await.status,
            StatusCode::CREATED
        );
    }
    assert_eq!(
        handler.executions(),
        accepted.len(),
        "every key is its own record"
    );
    for key in accepted {
        assert!(send(&svc, post_raw_key(key.as_bytes())).await.replayed());
    }
    let long = vec![b'k'; 10 * 1024];
    // Other control characters never get this far: `http` refuses them in a header value.
    let refused: [&[u8]; 5] = [b"tab\tkey", b"\"a\tb\"", b"a b", &long, "ключ".as_bytes()];
    for key in refused {
        send(&svc, post_raw_key(key))
            .await
            .assert_problem(StatusCode::BAD_REQUEST, "key-invalid");
    }
    assert_eq!(handler.executions(), accepted.len());
}

/// A handler that panics releases its key, and the panic reaches the caller.
pub async fn a_panicking_handler_releases_the_key<St: IdempotencyStore>(store: St) {
    let handler = Handler::new();
    let layer = IdempotencyLayer::new(store).with_lease_ttl(Duration::from_secs(60));
    let svc = handler.service(layer);
    let first = tokio::spawn(send(&svc, post("/panic", Some("k"), "{}"))).await;
    assert!(
        first.unwrap_err().is_panic(),
        "the panic reaches the caller"
    );
    assert_eq!(handler.executions(), 1);

    // The release is spawned as the handler's task unwinds: until it lands, retries get 409.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match tokio::spawn(send(&svc, post("/panic", Some("k"), "{}"))).await {
            Err(error) if error.is_panic() => break,
            Err(error) => panic!("{error}"),
            Ok(answer) => answer.assert_problem(StatusCode::CONFLICT, "in-progress"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the key stayed locked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        handler.executions(),
        2,
        "the retry ran instead of waiting out the lease"
    );
}

/// Unscoped, a record is bound to its client's credentials: another client with the same key
/// (and body) is refused, never replayed, and so is the same client after a token refresh;
/// nothing runs twice.
pub async fn unscoped_records_never_cross_credentials<St: IdempotencyStore>(store: St) {
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    let as_client = |credentials: Option<(&'static str, &str)>| {
        let req = post("/orders", Some("1"), "{\"amount\":1200}");
        match credentials {
            Some((name, value)) => with_header(req, name, value),
            None => req,
        }
    };
    let alice = send(
        &svc,
        as_client(Some(("authorization", "Bearer alice-secret"))),
    )
    .await;
    assert_eq!(alice.status, StatusCode::CREATED);
    let again = send(
        &svc,
        as_client(Some(("authorization", "Bearer alice-secret"))),
    )
    .await;
    assert!(again.replayed());
    assert_eq!(again.body, alice.body);
    for other in [
        Some(("authorization", "Bearer mallory-secret")),
        Some(("authorization", "Bearer alice-refreshed")),
        Some(("cookie", "session=alice-secret")),
        Some(("x-api-key", "alice-secret")),
        None,
    ] {
        let answer = send(&svc, as_client(other)).await;
        answer.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "key-reused");
        assert!(!answer.replayed(), "{other:?} got a replay");
        assert!(
            !answer.text().contains("execution"),
            "{other:?} saw the record"
        );
    }
    assert_eq!(handler.executions(), 1, "nothing ran twice");
}

/// Scoped by the principal an auth layer found: every token of one user replays (a retry after
/// a token refresh), another user's same key is simply another key (no 422 oracle).
pub async fn scoped_by_principal_replays_across_tokens_and_isolates_users<St: IdempotencyStore>(
    store: St,
) {
    let handler = Handler::new();
    let svc = handler
        .service_behind_auth(IdempotencyLayer::new(store).with_scope_from_extension::<User>());
    let order = |token: &str, body: &'static str| {
        with_header(
            post("/orders", Some("1"), body),
            "authorization",
            &format!("Bearer {token}"),
        )
    };
    let first = send(&svc, order("alice-1", "{\"amount\":1}")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let refreshed = send(&svc, order("alice-2", "{\"amount\":1}")).await;
    assert!(
        refreshed.replayed(),
        "a retry after a token refresh replays"
    );
    assert_eq!(refreshed.body, first.body);
    assert_eq!(handler.executions(), 1);

    let mallory_same = send(&svc, order("mallory-1", "{\"amount\":1}")).await;
    let mallory_other = send(&svc, order("mallory-1", "{\"amount\":2}")).await;
    assert_eq!(mallory_same.status, StatusCode::CREATED);
    assert!(!mallory_same.replayed());
    assert_ne!(mallory_same.body, first.body, "no response crosses users");
    mallory_other.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "key-reused");
    assert_eq!(handler.executions(), 2);
    // Alice's key is still hers.
    let alice_again = send(&svc, order("alice-3", "{\"amount\":1}")).await;
    assert_eq!(alice_again.body, first.body);
    assert_eq!(handler.executions(), 2);
}

/// A scope holds at most `max` keys in progress: past it 429 with `Retry-After`, other scopes
/// unaffected, and the place comes back when a request finishes.
pub async fn in_progress_keys_are_capped_per_scope<St: IdempotencyStore>(store: St) {
    let handler = Handler::new();
    let layer = IdempotencyLayer::new(store)
        .with_scope(|parts: &http::request::Parts| {
            parts
                .headers
                .get("x-tenant")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .with_max_in_progress_per_scope(2);
    let svc = handler.service(layer);
    let as_tenant = |path: &str, tenant: &str, key: &str| {
        with_header(post(path, Some(key), "{}"), "x-tenant", tenant)
    };
    let gated = |tenant: &str, key: &str| as_tenant("/gated", tenant, key);
    let done = send(&svc, as_tenant("/orders", "a", "done")).await;
    assert_eq!(done.status, StatusCode::CREATED);
    let a1 = tokio::spawn(send(&svc, gated("a", "k1")));
    let a2 = tokio::spawn(send(&svc, gated("a", "k2")));
    eventually("two of a's requests to run", || handler.executions() == 3).await;
    let refused = send(&svc, gated("a", "k3")).await;
    refused.assert_problem(StatusCode::TOO_MANY_REQUESTS, "too-many-in-progress");
    assert_eq!(refused.values("retry-after"), ["1"]);
    // Only keys that would start count: a replay and a duplicate of a running key are answered
    // as ever.
    let replay = send(&svc, as_tenant("/orders", "a", "done")).await;
    assert!(replay.replayed(), "a replay at the cap is a replay");
    send(&svc, gated("a", "k1"))
        .await
        .assert_problem(StatusCode::CONFLICT, "in-progress");
    let b1 = tokio::spawn(send(&svc, gated("b", "k1")));
    eventually("b's request to run", || handler.executions() == 4).await;
    handler.open_gate();
    for answer in [a1, a2, b1] {
        assert_eq!(answer.await.unwrap().status, StatusCode::CREATED);
    }
    let later = send(&svc, gated("a", "k3")).await;
    assert_eq!(later.status, StatusCode::CREATED);
    assert!(!later.replayed(), "the refused request had not run");
    assert_eq!(handler.executions(), 5);
}

/// Sends `request()` again while the answer is 409 `in-progress` (the first request's record is
/// still being written), failing after [`DEADLINE`].
async fn send_until_settled(
    svc: &super::harness::TestService,
    request: impl Fn() -> http::Request<super::harness::TestBody>,
) -> Answer {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let answer = send(svc, request()).await;
        let in_progress =
            answer.status == StatusCode::CONFLICT && answer.text().contains("#in-progress\"");
        if !in_progress {
            return answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still in progress at the deadline"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A streamed answer reaches its client frame by frame before the handler has made the rest,
/// and its replay is the same frames (their boundaries kept) and the same trailers.
pub async fn a_stream_reaches_its_client_as_it_comes_and_replays_frame_by_frame<
    St: IdempotencyStore,
>(
    store: St,
) {
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    let path = "/stream?frames=200&size=10&gated";
    let mut first = send_streamed(&svc, post(path, Some("s"), "{}")).await;
    assert_eq!(first.status, StatusCode::OK);
    assert!(!first.replayed());
    // The handler waits at its gate after its first frame: the client has that frame already.
    assert_eq!(first.next_data().await, frame_text(1, 0, 10));
    handler.open_gate();
    let rest = first.rest().await;
    assert!(rest.error.is_none());
    assert_eq!(rest.frames.len(), 199);
    let expected: Vec<_> = (0..200).map(|i| frame_text(1, i, 10)).collect();
    assert_eq!(rest.frames, expected[1..]);
    assert_eq!(rest.trailers.as_ref().unwrap()["x-execution"], "1");

    // The first client has seen the end, so the record is written: a retry replays at once.
    let retry = send_streamed(&svc, post(path, Some("s"), "{}")).await;
    assert_eq!(retry.status, StatusCode::OK);
    assert!(retry.replayed());
    assert_eq!(retry.headers["x-multi"], "first");
    let replayed = retry.rest().await;
    assert_eq!(
        replayed.frames, expected,
        "the same frames, boundaries kept"
    );
    assert_eq!(replayed.trailers, rest.trailers);
    assert_eq!(handler.executions(), 1);
}

/// A stream past the record limit still reaches its client whole; the key is a tombstone.
pub async fn a_stream_past_the_record_limit_reaches_its_client_and_leaves_a_tombstone<
    St: IdempotencyStore,
>(
    store: St,
) {
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store).with_record_limit(1000));
    let path = "/stream?frames=300&size=10";
    let first = send_streamed(&svc, post(path, Some("big"), "{}")).await;
    let rest = first.rest().await;
    assert_eq!(rest.frames.len(), 300, "the client gets every frame");
    assert!(rest.frames.iter().all(|f| f.len() == 10));
    assert_eq!(rest.trailers.as_ref().unwrap()["x-execution"], "1");
    let retry = send(&svc, post(path, Some("big"), "{}")).await;
    retry.assert_problem(StatusCode::CONFLICT, "response-not-recorded");
    assert!(retry.replayed());
    assert_eq!(handler.executions(), 1);
}

/// gRPC is decided on the final status in the trailers: a transient one releases the key (the
/// retry runs), OK and the deterministic codes are recorded, trailers included.
pub async fn a_grpc_stream_is_recorded_by_its_final_status<St: IdempotencyStore>(store: St) {
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    let grpc = |path: &'static str, key: &'static str| {
        with_header(
            post(path, Some(key), "msg"),
            "content-type",
            "application/grpc",
        )
    };
    let unavailable = send(&svc, grpc("/grpc-stream?status=14", "u")).await;
    assert_eq!(unavailable.trailers.as_ref().unwrap()["grpc-status"], "14");
    let again = send(&svc, grpc("/grpc-stream?status=14", "u")).await;
    assert!(!again.replayed(), "UNAVAILABLE is not recorded");
    assert_eq!(handler.executions(), 2);

    let trailers_only = send(&svc, grpc("/grpc-now?status=13", "i")).await;
    assert_eq!(trailers_only.headers["grpc-status"], "13");
    let again = send(&svc, grpc("/grpc-now?status=13", "i")).await;
    assert!(
        !again.replayed(),
        "INTERNAL in a trailers-only answer is not recorded"
    );
    assert_eq!(handler.executions(), 4);

    for (path, key) in [
        ("/grpc-stream?status=0", "ok"),
        ("/grpc-stream?status=5", "nf"),
    ] {
        let first = send(&svc, grpc(path, key)).await;
        let retry = send(&svc, grpc(path, key)).await;
        assert!(retry.replayed(), "{path}");
        assert_eq!(retry.body, first.body);
        assert_eq!(retry.trailers, first.trailers);
        assert_eq!(retry.headers["content-type"], "application/grpc");
    }
    assert_eq!(handler.executions(), 6);
    // The layer's own refusals to a gRPC client are gRPC statuses.
    let reused = send(&svc, grpc("/grpc-stream?status=5", "ok")).await;
    assert_eq!(reused.status, StatusCode::OK);
    assert_eq!(reused.headers["grpc-status"], "9", "FAILED_PRECONDITION");
    assert_eq!(handler.executions(), 6);
}

/// A body that fails part-way: the client's body ends in an error, and the key is a tombstone
/// that says so; the side effect may have happened, so nothing runs again. Likewise when the
/// body fails before anything was sent (the first client then gets 500 `response-failed`).
pub async fn a_body_that_breaks_leaves_a_broken_tombstone_and_never_runs_again<
    St: IdempotencyStore,
>(
    store: St,
) {
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    let path = "/stream-broken?frames=3";
    let first = send_streamed(&svc, post(path, Some("b"), "{}")).await;
    assert_eq!(first.status, StatusCode::OK);
    let rest = first.rest().await;
    assert_eq!(
        rest.frames,
        (0..3).map(|i| frame_text(1, i, 8)).collect::<Vec<_>>()
    );
    assert!(rest.error.is_some(), "the client sees the body fail");
    let retry = send_until_settled(&svc, || post(path, Some("b"), "{}")).await;
    retry.assert_problem(StatusCode::CONFLICT, "response-broken");
    assert!(retry.replayed());
    assert_eq!(handler.executions(), 1);

    let now = "/stream-broken?frames=2&now";
    send(&svc, post(now, Some("n"), "{}"))
        .await
        .assert_problem(StatusCode::INTERNAL_SERVER_ERROR, "response-failed");
    send(&svc, post(now, Some("n"), "{}"))
        .await
        .assert_problem(StatusCode::CONFLICT, "response-broken");
    assert_eq!(handler.executions(), 2);
}

/// A client that leaves mid-stream does not stop the recording: the rest is drained and
/// recorded, and its retry gets every frame from the record.
pub async fn a_client_that_leaves_mid_stream_gets_the_whole_record_on_its_retry<
    St: IdempotencyStore,
>(
    store: St,
) {
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    let path = "/stream?frames=20&size=16&gated";
    let mut first = send_streamed(&svc, post(path, Some("gone"), "{}")).await;
    assert_eq!(first.next_data().await, frame_text(1, 0, 16));
    drop(first);
    handler.open_gate();
    let retry = send_until_settled(&svc, || post(path, Some("gone"), "{}")).await;
    assert_eq!(retry.status, StatusCode::OK);
    assert!(retry.replayed());
    let expected: Vec<u8> = (0..20).flat_map(|i| frame_text(1, i, 16)).collect();
    assert_eq!(retry.body, expected);
    assert_eq!(retry.trailers.as_ref().unwrap()["x-execution"], "1");
    assert_eq!(handler.executions(), 1);
}

/// The store contract: a `begin` or `complete` that the same holder sends twice (its first
/// reply lost) succeeds twice; another holder's does not.
pub async fn the_same_holder_may_repeat_begin_and_complete<St: IdempotencyStore>(store: St) {
    let key = StoreKey::derive(None, "POST", "/orders", "repeated");
    let fingerprint = Fingerprint::sha256(b"{}");
    let lease = Duration::from_secs(30);
    let (holder, other) = (LeaseToken::generate(), LeaseToken::generate());
    let acquired = |outcome: &BeginOutcome| matches!(outcome, BeginOutcome::Acquired { .. });
    assert!(acquired(
        &store
            .begin(&key, &fingerprint, &holder, lease)
            .await
            .unwrap()
    ));
    assert!(
        acquired(
            &store
                .begin(&key, &fingerprint, &holder, lease)
                .await
                .unwrap()
        ),
        "a repeated begin by the holder gets its lease back"
    );
    assert!(matches!(
        store
            .begin(&key, &fingerprint, &other, lease)
            .await
            .unwrap(),
        BeginOutcome::InProgress { .. }
    ));
    let record = CompletedRecord::Response(RecordedResponse::new(
        StatusCode::CREATED,
        http::HeaderMap::new(),
        Bytes::from_static(b"done"),
    ));
    assert!(store
        .complete(&key, &holder, &fingerprint, &record, lease)
        .await
        .unwrap());
    assert!(
        store
            .complete(&key, &holder, &fingerprint, &record, lease)
            .await
            .unwrap(),
        "a repeated complete by the holder succeeds"
    );
    // Another holder never lands a record of its own. (With the very same record, a store may
    // not tell it from a repeat: Redis compares the stored value, which has no token.)
    let another = CompletedRecord::Response(RecordedResponse::new(
        StatusCode::CREATED,
        http::HeaderMap::new(),
        Bytes::from_static(b"another run"),
    ));
    assert!(!store
        .complete(&key, &other, &fingerprint, &another, lease)
        .await
        .unwrap());
    assert!(
        !store.release(&key, &holder).await.unwrap(),
        "a completed record stays"
    );
    assert!(matches!(
        store
            .begin(&key, &fingerprint, &other, lease)
            .await
            .unwrap(),
        BeginOutcome::Completed { .. }
    ));
}
