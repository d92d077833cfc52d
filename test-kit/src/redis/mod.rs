//! Real Redis servers for tests, benchmarks and examples of the Redis
//! store: [`RedisServer`] (one server on a unix socket),
//! [`RedisTlsServer`] (TLS on a loopback port, with a [`TestCa`]) and
//! [`RedisCluster`] (three masters on loopback ports).

mod certs;
#[cfg(feature = "redis-cluster")]
mod cluster;
mod readback;
mod server;
mod tls;

pub use certs::TestCa;
#[cfg(feature = "redis-cluster")]
pub use cluster::{ClusterTlsOptions, RedisCluster};
pub use server::RedisServer;
pub use tls::RedisTlsServer;
