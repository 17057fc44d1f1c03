//! `RedisStore` on a real three-primary Redis Cluster: keys spread over every primary, and each
//! script call stays on one node (the conformance suite runs here too).
#![cfg(feature = "redis-cluster")]

mod common;

use http::StatusCode;
use redis::AsyncCommands;
use tower_idempotency::IdempotencyLayer;

use common::{post, send, Handler};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_land_on_every_primary_and_replay_from_it() {
    let (store, cluster) = common::cluster_store().await;
    let handler = Handler::new();
    let svc = handler.service(IdempotencyLayer::new(store));
    for n in 0..60 {
        let answer = send(&svc, post("/orders", Some(&format!("key-{n}")), "{}")).await;
        assert_eq!(answer.status, StatusCode::CREATED);
    }
    for n in 0..60 {
        assert!(send(&svc, post("/orders", Some(&format!("key-{n}")), "{}"))
            .await
            .replayed());
    }
    assert_eq!(handler.executions(), 60);

    for url in cluster.urls() {
        let mut node = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let keys: Vec<String> = node.keys("test:cluster:*").await.unwrap();
        assert!(!keys.is_empty(), "{url} holds no record");
    }
}
