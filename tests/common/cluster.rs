//! Helpers of the Redis Cluster tests, over TCP and over TLS.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use routera_auth_test::RedisCluster;
use tokio::task::{JoinHandle, JoinSet};

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

/// Steady load on a fleet: every replica asks for a token every 20 ms
/// until [`Load::finish`], counting the requests and the failures.
pub struct Load {
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicUsize>,
    failures: Arc<AtomicUsize>,
    task: JoinHandle<()>,
    bound: Duration,
}

impl Load {
    /// Starts the load; each round of asks is bounded by `bound`.
    pub fn start(replicas: Arc<Vec<Replica>>, bound: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn({
            let (stop, requests, failures) = (stop.clone(), requests.clone(), failures.clone());
            async move {
                while !stop.load(Ordering::SeqCst) {
                    let (tokens, failed) = all_ask(&replicas, bound).await;
                    requests.fetch_add(tokens.len() + failed, Ordering::SeqCst);
                    failures.fetch_add(failed, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        Self {
            stop,
            requests,
            failures,
            task,
            bound,
        }
    }

    /// The requests that failed so far.
    pub fn failures(&self) -> usize {
        self.failures.load(Ordering::SeqCst)
    }

    /// Stops the load: the requests made, and how many failed.
    pub async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(self.bound, self.task)
            .await
            .unwrap()
            .unwrap();
        (
            self.requests.load(Ordering::SeqCst),
            self.failures.load(Ordering::SeqCst),
        )
    }
}
