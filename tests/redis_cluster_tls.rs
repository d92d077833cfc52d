//! Token sharing on a real Redis Cluster over TLS: three masters that serve
//! TLS only, started by `routera_auth_test::RedisCluster::start_tls` (Debian
//! packages `redis-server` and `redis-tools`) with certificates of a
//! `TestCa`. Each replica is a provider over `MockExchange` under its own
//! `SharedCache` on its own `RedisStore::cluster_builder`, trusting the
//! test CA.
//!
//! The `redis` crate makes a cluster's TLS handshakes itself, on rustls
//! when a rustls feature is on, with rustls' process-wide default
//! provider: these tests install one, as an application must
//! (`redis_cluster_tls_provider.rs` checks the error without one).
//!
//! They run on real time and wait for events (a poll with a bounded
//! deadline), except where a token's lifetime must pass (its refresh).
#![cfg(any(feature = "rustls", feature = "rustls-ring"))]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::cluster::{Load, all_ask, nodes_with_keys};
use common::{Replica, chain, layered, total};
use routera_auth::AuthMethod;
use routera_auth::store::{RedisStore, RedisStoreBuilder, SharedCache, StoreKeys, TokenStore};
use routera_auth_test::{ClusterTlsOptions, MockExchange, RedisCluster};
use tokio::time::Instant;

/// Bounds every wait of a test, so a regression fails it instead of hanging.
const BOUND: Duration = Duration::from_secs(30);
/// The token endpoint the shared caches name (the mock's is not real).
const TOKEN_URL: &str = "https://auth.test/token";

/// Installs rustls' process-wide provider, as an application on rustls
/// must before a cluster store connects over TLS.
fn install_provider() {
    // Err: installed already, by another test of this process.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

async fn cluster(options: ClusterTlsOptions) -> RedisCluster {
    install_provider();
    match RedisCluster::start_tls_with(options).await {
        Ok(cluster) => cluster,
        Err(error) => panic!("these tests need a real Redis Cluster over TLS: {error}"),
    }
}

/// The store `builder` makes, connected to every master. A TLS connection
/// of the `redis` crate's rustls reads the platform's roots, tens of
/// milliseconds in a debug build: on a busy machine a first connection
/// may pass its 100 ms, so connecting is tried a few times.
async fn connected(builder: impl Fn() -> RedisStoreBuilder) -> RedisStore {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match builder().connect().await {
            Ok(store) => return store,
            Err(error) if attempt < 5 => eprintln!("connect, attempt {attempt}: {error}"),
            Err(error) => panic!("{}", chain(&error)),
        }
    }
}

/// A store on `cluster` that trusts its CA, connected to every master.
async fn store(cluster: &RedisCluster) -> RedisStore {
    connected(|| {
        RedisStore::cluster_builder(cluster.urls()).add_root_certificates(cluster.ca_pem().unwrap())
    })
    .await
}

/// `n` replicas of the mock's client, each on a store of its own.
async fn fleet(n: usize, cluster: &RedisCluster, exchange: &MockExchange) -> Vec<Replica> {
    let mut replicas = Vec::with_capacity(n);
    for _ in 0..n {
        let cache = SharedCache::new(store(cluster).await, TOKEN_URL, AuthMethod::RequestBody)
            .breaker(3, Duration::from_millis(500));
        replicas.push(layered(
            cache,
            exchange.clone(),
            MockExchange::credentials(),
            routera_auth::defaults::EXCHANGE_TIMEOUT,
        ));
    }
    replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_a_tls_cluster_makes_one_exchange() {
    let cluster = cluster(ClusterTlsOptions::default()).await;
    assert!(
        cluster
            .urls()
            .iter()
            .all(|url| url.starts_with("rediss://"))
    );
    let exchange = MockExchange::new(Duration::from_secs(3600));
    let replicas = fleet(10, &cluster, &exchange).await;

    let (tokens, failed) = all_ask(&replicas, BOUND).await;
    assert_eq!(failed, 0);
    assert_eq!(tokens.len(), 10);
    assert!(tokens.iter().all(|token| *token == tokens[0]));
    assert_eq!(exchange.calls(), 1);
    assert_eq!(total(&replicas, |stats| stats.errors), 0);
    assert_eq!(total(&replicas, |stats| stats.lock_wins), 1);
    // The fleet's keys sit on one slot, on one master.
    assert_eq!(nodes_with_keys(&cluster).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_requires_client_certificates_takes_the_one_given() {
    let mut options = ClusterTlsOptions::default();
    options.mutual = true;
    let cluster = cluster(options).await;
    let (certificate, key) = cluster.client_certificate().unwrap();
    let store = connected(|| {
        RedisStore::cluster_builder(cluster.urls())
            .add_root_certificates(cluster.ca_pem().unwrap())
            .client_certificate(certificate, key)
    })
    .await;
    let keys = StoreKeys::new("mutual", "client");
    assert!(
        store
            .lock(&keys, "me", Duration::from_secs(5))
            .await
            .unwrap()
    );

    // Without one, the nodes close the connection.
    let error = RedisStore::cluster_builder(cluster.urls())
        .add_root_certificates(cluster.ca_pem().unwrap())
        .connect()
        .await
        .unwrap_err();
    let text = chain(&error);
    assert!(text.contains("the client certificate"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_cluster_fails_with_a_clear_error() {
    let cluster = cluster(ClusterTlsOptions::default()).await;
    // A CA of its own, not the cluster's.
    let other = routera_auth_test::TestCa::new("another CA").unwrap();
    let error = RedisStore::cluster_builder(cluster.urls())
        .add_root_certificates(other.certificate_pem())
        .connect()
        .await
        .unwrap_err();
    let text = chain(&error);
    assert!(
        text.contains("could not reach Redis") && text.contains("add_root_certificates"),
        "{text}"
    );
}

/// The nodes announce their address (127.0.0.1) while their certificate
/// names only the host `localhost`: the `redis` crate verifies each node
/// against the address it announces, so the handshakes with the nodes
/// found in the slots fail, whatever the seed URLs name. Announcing the
/// host name (`cluster-announce-hostname`,
/// `cluster-preferred-endpoint-type hostname`) is what makes it work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_are_verified_against_the_endpoint_they_announce() {
    let mut options = ClusterTlsOptions::default();
    options.certificate_names_localhost_only = true;
    let announcing_ips = cluster(options).await;
    assert!(announcing_ips.urls()[0].starts_with("rediss://localhost:"));
    let by_address = RedisStore::cluster_builder(announcing_ips.urls())
        .add_root_certificates(announcing_ips.ca_pem().unwrap())
        .build()
        .unwrap();
    let keys = StoreKeys::new("announced", "client");
    let error = by_address
        .lock(&keys, "me", Duration::from_secs(5))
        .await
        .unwrap_err();
    eprintln!("announcing IPs: {}", chain(&error));
    drop(announcing_ips);

    options.announce_localhost = true;
    let announcing_names = cluster(options).await;
    let named = store(&announcing_names).await;
    assert!(
        named
            .lock(&keys, "me", Duration::from_secs(5))
            .await
            .unwrap()
    );
}

/// As `redis_cluster.rs` does over TCP: the master that holds the fleet's
/// keys is killed while every replica asks for tokens, then restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keys_master_killed_under_load_fails_no_request() {
    let cluster = cluster(ClusterTlsOptions::default()).await;
    // 4 s tokens: served until 3 s, refreshed from 2.0–2.2 s.
    let exchange = MockExchange::new(Duration::from_secs(4));
    let replicas = Arc::new(fleet(5, &cluster, &exchange).await);
    let (_, failed) = all_ask(&replicas, BOUND).await;
    assert_eq!(failed, 0);
    assert_eq!(exchange.calls(), 1);
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
    let renewed = exchange.calls() + replicas.len();
    while exchange.calls() < renewed && killed.elapsed() < BOUND {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        exchange.calls() >= renewed,
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
    let (hits, calls) = (total(&replicas, |stats| stats.hits), exchange.calls());
    // Every replica has refreshed once since (a token's life).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (requests, failures) = load.finish().await;

    assert_eq!(failures, 0);
    assert!(requests > 100);
    let refreshed = exchange.calls() - calls;
    let shared = total(&replicas, |stats| stats.hits) - hits;
    assert!(
        (1..=2).contains(&refreshed),
        "{refreshed} exchanges for one refresh of 5 replicas"
    );
    assert!(shared >= 3, "{shared} replicas took the shared token");
    assert_eq!(nodes_with_keys(&cluster).await, holding);
}

#[test]
fn a_tls_cluster_store_checks_its_urls_and_certificates() {
    let error =
        RedisStore::cluster(["rediss://127.0.0.1:7000", "redis://127.0.0.1:7001"]).unwrap_err();
    assert!(
        error.to_string().contains("mix redis:// and rediss://"),
        "{error}"
    );
    let error = RedisStore::cluster_builder(["redis://127.0.0.1:7000"])
        .add_root_certificates("-----BEGIN CERTIFICATE-----\n")
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("use rediss:// URLs"), "{error}");
    let error = RedisStore::cluster_builder(["rediss://127.0.0.1:7000"])
        .add_root_certificates("not a certificate")
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("hold no certificate"), "{error}");
    let error = RedisStore::cluster(["rediss://127.0.0.1:7000/#insecure"]).unwrap_err();
    assert!(error.to_string().contains("no #fragment"), "{error}");

    let ca = routera_auth_test::TestCa::new("a CA").unwrap();
    let store = RedisStore::cluster_builder(["rediss://:hunter2@127.0.0.1:7000"])
        .add_root_certificates(ca.certificate_pem())
        .build()
        .unwrap();
    let debug = format!("{store:?}");
    assert!(debug.contains("cluster 127.0.0.1:7000 (TLS)"), "{debug}");
    assert!(!debug.contains("hunter2"), "{debug}");
}
