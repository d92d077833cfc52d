//! A Redis Cluster over TLS on a rustls build whose application has not
//! installed rustls' process-wide default provider: the `redis` crate,
//! which makes a cluster's handshakes, would panic there (or install one
//! for the whole process); the store fails its operations with an error
//! that says what to install, and connects once the application has.
//!
//! One test in a binary of its own: the provider is process-wide, and the
//! other tests install it.
#![cfg(any(feature = "rustls", feature = "rustls-ring"))]

mod common;

use std::time::Duration;

use common::chain;
use routera_auth::store::{RedisStore, StoreKeys, TokenStore};
use routera_auth_test::RedisCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_process_wide_provider_the_error_says_what_to_install() {
    assert!(
        rustls::crypto::CryptoProvider::get_default().is_none(),
        "nothing in this process installs a provider before the test does"
    );
    let cluster = match RedisCluster::start_tls().await {
        Ok(cluster) => cluster,
        Err(error) => panic!("this test needs a real Redis Cluster over TLS: {error}"),
    };
    let store = RedisStore::cluster_builder(cluster.urls())
        .add_root_certificates(cluster.ca_pem().unwrap())
        .build()
        .unwrap();
    let keys = StoreKeys::new("provider", "client");

    let error = store
        .lock(&keys, "me", Duration::from_secs(5))
        .await
        .unwrap_err();
    let text = chain(&error);
    assert!(
        text.contains("process-wide default CryptoProvider")
            && text.contains("rustls::crypto::aws_lc_rs::default_provider().install_default()"),
        "{text}"
    );
    let error = RedisStore::cluster_builder(cluster.urls())
        .add_root_certificates(cluster.ca_pem().unwrap())
        .connect()
        .await
        .unwrap_err();
    assert!(chain(&error).contains("install_default()"), "{error}");
    // A redis::Client given as is for a TLS address connects with the
    // redis crate's TLS too: the same error.
    let client = redis::Client::open(cluster.urls()[0].as_str()).unwrap();
    let error = RedisStore::new(client).load(&keys).await.unwrap_err();
    assert!(chain(&error).contains("install_default()"), "{error}");
    // Nothing was installed behind the application's back.
    assert!(rustls::crypto::CryptoProvider::get_default().is_none());

    // Once the application installs one, the same store connects.
    rustls::crypto::aws_lc_rs::default_provider()
        .install_default()
        .unwrap();
    assert!(
        store
            .lock(&keys, "me", Duration::from_secs(5))
            .await
            .unwrap()
    );
}
