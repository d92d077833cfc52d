//! Token sharing on a real Redis Cluster: three masters started by
//! `routera_auth_test::RedisCluster` (Debian packages `redis-server` and
//! `redis-tools`), against the emulator. Each replica is a provider over an
//! exchange under its own `SharedCache` on its own `RedisStore::cluster`.
//!
//! These tests run on real time and wait for events (a poll with a bounded
//! deadline), except where a token's lifetime must pass (its refresh).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::cluster::{Load, all_ask, nodes_with_keys};
use common::{Replica, layered, total};
use routera_auth::store::{RedisStore, SharedCache};
use routera_auth_test::{Emulator, RedisCluster};
use tokio::time::Instant;

/// Bounds every wait of a test, so a regression fails it instead of hanging.
const BOUND: Duration = Duration::from_secs(30);

async fn cluster() -> RedisCluster {
    match RedisCluster::start().await {
        Ok(cluster) => cluster,
        Err(error) => panic!("these tests need a real Redis Cluster: {error}"),
    }
}

async fn fleet(n: usize, cluster: &RedisCluster, emulator: &Emulator) -> Vec<Replica> {
    let mut replicas = Vec::with_capacity(n);
    for _ in 0..n {
        let store = RedisStore::cluster_builder(cluster.urls())
            .connect()
            .await
            .unwrap();
        let exchange = emulator.exchange();
        let cache =
            SharedCache::for_exchange(store, &exchange).breaker(3, Duration::from_millis(500));
        replicas.push(layered(
            cache,
            exchange,
            emulator.credentials(),
            routera_auth::defaults::EXCHANGE_TIMEOUT,
        ));
    }
    replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_a_cluster_makes_one_exchange_and_its_keys_share_one_master() {
    let cluster = cluster().await;
    let emulator = Emulator::builder()
        .expires_in(Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    let replicas = fleet(20, &cluster, &emulator).await;

    let (tokens, failed) = all_ask(&replicas, BOUND).await;
    assert_eq!(failed, 0);
    assert_eq!(tokens.len(), 20);
    assert!(tokens.iter().all(|token| *token == tokens[0]));
    assert_eq!(emulator.exchange_count(), 1);
    assert_eq!(total(&replicas, |stats| stats.errors), 0);
    assert_eq!(total(&replicas, |stats| stats.lock_wins), 1);

    // The token's hash (and the lock, while it was held) sit on one slot:
    // one master holds every key, the others none.
    let holding = nodes_with_keys(&cluster).await;
    assert_eq!(holding.len(), 1, "{holding:?}");
    let keys = cluster.nodes()[holding[0]].dump().await.unwrap();
    assert!(
        keys.iter().any(|(key, _)| key.ends_with(b":token")),
        "{keys:?}"
    );
    assert!(keys.iter().all(|(key, _)| key.contains(&b'{')));
}

/// The master that holds the fleet's keys is killed while every replica
/// asks for tokens (and renews them), then restarted. A restarted master
/// rather than a failover to a replica: three processes instead of six on
/// a 2-core CI machine, no election to wait for, and the same outcome for
/// the fleet, a master that comes back without the keys (as when a replica
/// that had not yet received them is promoted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keys_master_killed_under_load_fails_no_request_and_sharing_resumes() {
    let cluster = cluster().await;
    // 4 s tokens: served until 3 s, refreshed from 2.0–2.2 s.
    let emulator = Emulator::builder()
        .expires_in(Duration::from_secs(4))
        .start()
        .await
        .unwrap();
    let replicas = Arc::new(fleet(5, &cluster, &emulator).await);
    let (_, failed) = all_ask(&replicas, BOUND).await;
    assert_eq!(failed, 0);
    assert_eq!(emulator.exchange_count(), 1);
    let holding = nodes_with_keys(&cluster).await;
    assert_eq!(holding.len(), 1, "{holding:?}");
    let master = &cluster.nodes()[holding[0]];

    // Load: every replica asks every 20 ms until told to stop.
    let load = Load::start(Arc::clone(&replicas), BOUND);

    // Killed under load, down across a refresh: the replicas renew on
    // their own, and no request fails.
    tokio::time::sleep(Duration::from_millis(300)).await;
    master.kill().unwrap();
    let killed = Instant::now();
    let renewed = emulator.exchange_count() + replicas.len() as u64;
    while emulator.exchange_count() < renewed && killed.elapsed() < BOUND {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        emulator.exchange_count() >= renewed,
        "the replicas renewed on their own"
    );
    assert!(
        total(&replicas, |stats| stats.errors) > 0,
        "the store failed while its master was down"
    );
    assert_eq!(load.failures(), 0);

    // Back, empty; once the cluster is whole and the breakers have let
    // the store in again, one refresh of the fleet is one exchange again.
    master.restart().await.unwrap();
    cluster.wait_until_ok().await.unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (hits, exchanges) = (
        total(&replicas, |stats| stats.hits),
        emulator.exchange_count(),
    );
    // Every replica has refreshed once since (a token's life).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (requests, failures) = load.finish().await;

    assert_eq!(failures, 0);
    assert!(requests > 100);
    let refreshed = emulator.exchange_count() - exchanges;
    let shared = total(&replicas, |stats| stats.hits) - hits;
    assert!(
        (1..=2).contains(&refreshed),
        "{refreshed} exchanges for one refresh of 5 replicas"
    );
    assert!(shared >= 3, "{shared} replicas took the shared token");
    assert_eq!(nodes_with_keys(&cluster).await, holding);
}

#[test]
fn a_cluster_store_needs_nodes_and_valid_urls() {
    let error = RedisStore::cluster(Vec::<String>::new()).unwrap_err();
    assert!(
        error.to_string().contains("no Redis Cluster node"),
        "{error}"
    );
    let error =
        RedisStore::cluster(["redis://127.0.0.1:7000", "rediss://127.0.0.1:7001"]).unwrap_err();
    assert!(
        error.to_string().contains("mix redis:// and rediss://"),
        "{error}"
    );
    let error = RedisStore::cluster(["http://127.0.0.1:7000"]).unwrap_err();
    assert!(
        error.to_string().contains("invalid Redis Cluster node URL"),
        "{error}"
    );
    let store = RedisStore::cluster(["redis://:hunter2@127.0.0.1:7000"]).unwrap();
    let debug = format!("{store:?}");
    assert!(debug.contains("cluster 127.0.0.1:7000"), "{debug}");
    assert!(!debug.contains("hunter2"), "{debug}");
}
