//! Helpers of the Redis Cluster tests, over TCP and over TLS.

use std::time::Duration;

use routera_auth_test::RedisCluster;
use tokio::task::JoinSet;

use super::Replica;

/// Every replica asks for a token at once, within `bound`: the tokens they
/// got, and how many requests failed.
pub async fn all_ask(replicas: &[Replica], bound: Duration) -> (Vec<String>, usize) {
    let mut asks = JoinSet::new();
    for replica in replicas {
        let provider = replica.provider.clone();
        asks.spawn(async move { provider.token().await });
    }
    let mut tokens = Vec::new();
    let mut failed = 0;
    let all = async {
        while let Some(joined) = asks.join_next().await {
            match joined.unwrap() {
                Ok(token) => tokens.push(token.secret().to_owned()),
                Err(error) => {
                    eprintln!("a request failed: {error}");
                    failed += 1;
                }
            }
        }
    };
    tokio::time::timeout(bound, all).await.unwrap();
    (tokens, failed)
}

/// The indexes of the running nodes that hold keys.
pub async fn nodes_with_keys(cluster: &RedisCluster) -> Vec<usize> {
    let mut holding = Vec::new();
    for (index, node) in cluster.nodes().iter().enumerate() {
        if node.pid().is_some() && !node.dump().await.unwrap().is_empty() {
            holding.push(index);
        }
    }
    holding
}
