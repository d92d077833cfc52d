//! The test kit of [`routera_auth`]: test doubles for code built on it,
//! one for each seam of the stack.
//!
//! | what is tested | double | in place of |
//! |---|---|---|
//! | a [`TokenProvider`](routera_auth::TokenProvider) and what uses it | [`MockExchange`] | the token exchange |
//! | a stack with [`RouteraAuthLayer`](routera_auth::RouteraAuthLayer) | `tower_test::mock` | the inner HTTP service |
//! | the whole flow, over real HTTP | [`Emulator`] | the Routera server |
//!
//! (The fourth seam, the HTTP client under
//! [`HttpTokenExchange`](routera_auth::HttpTokenExchange), takes any
//! `tower::Service<http::Request<Full<Bytes>>>`, a `service_fn` included.)
//!
//! # The exchange under the provider: [`MockExchange`]
//!
//! No socket: the mock answers each exchange with a new token, or from a
//! script, and counts what it was asked. With paused Tokio time, expiry,
//! refresh and backoff run without waiting.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use std::time::Duration;
//! use routera_auth_test::MockExchange;
//!
//! let exchange = MockExchange::new(Duration::from_secs(3600)).with_delay(Duration::from_secs(1));
//! let provider = exchange.provider();
//!
//! // A hundred concurrent callers wait on one exchange.
//! let callers: Vec<_> = (0..100)
//!     .map(|_| {
//!         let provider = provider.clone();
//!         tokio::spawn(async move { provider.token().await })
//!     })
//!     .collect();
//! for caller in callers {
//!     assert_eq!(caller.await??.secret(), "token-1");
//! }
//! assert_eq!(exchange.calls(), 1);
//!
//! // An hour later the token has been renewed, once.
//! tokio::time::sleep(Duration::from_secs(3600)).await;
//! assert_eq!(provider.token().await?.secret(), "token-2");
//! assert_eq!(exchange.calls(), 2);
//! # Ok(())
//! # }
//! ```
//!
//! # The service under the layer: `tower_test`
//!
//! `tower_test::mock::pair` hands the test every request the layer lets
//! through, headers included, and lets it choose the response. A clone of
//! the mock starts not ready and panics if called unready, so it also
//! catches a stack that skips `poll_ready`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use std::time::Duration;
//! use http::{Request, Response, header::AUTHORIZATION};
//! use routera_auth::RouteraAuthLayer;
//! use routera_auth_test::MockExchange;
//! use tower::{Layer, ServiceExt};
//!
//! let provider = MockExchange::new(Duration::from_secs(3600)).provider();
//! let (inner, mut handle) = tower_test::mock::pair::<Request<String>, Response<String>>();
//! let service = RouteraAuthLayer::new(provider).layer(inner);
//!
//! handle.allow(1);
//! let call = tokio::spawn(service.oneshot(Request::new(String::from("hello"))));
//! let (request, respond) = handle.next_request().await.ok_or("no request reached the mock")?;
//! let authorization = &request.headers()[AUTHORIZATION];
//! assert_eq!(authorization, "Bearer token-1");
//! assert!(authorization.is_sensitive());
//! assert_eq!(request.body(), "hello");
//!
//! respond.send_response(Response::new(String::from("world")));
//! assert_eq!(call.await??.into_body(), "world");
//! # Ok(())
//! # }
//! ```
//!
//! # End to end: [`Emulator`]
//!
//! The emulator serves the token endpoint (`POST /oauth2/token`, as the
//! Routera contract and RFC 6749 describe it) and one protected resource
//! (`/v1/ping`, which accepts only the tokens it issued) over plain
//! HTTP/1.1 on `127.0.0.1`, so the whole client-credentials flow runs
//! without the network. [`Emulator::provider`] is a provider wired to it;
//! [`Emulator::exchange`] the exchange under it, for providers with other
//! options. Token expiry follows [`tokio::time::Instant`], so it obeys
//! paused time.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! # use bytes::Bytes;
//! # use http_body_util::Empty;
//! # use hyper_util::client::legacy::Client;
//! # use hyper_util::rt::TokioExecutor;
//! use http::{Request, StatusCode};
//! use routera_auth::RouteraAuthLayer;
//! use routera_auth_test::Emulator;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let emulator = Emulator::start().await?;
//! let api = ServiceBuilder::new()
//!     .layer(RouteraAuthLayer::new(emulator.provider()))
//!     .service(Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>());
//!
//! for _ in 0..3 {
//!     let request = Request::get(emulator.resource_url()).body(Empty::new())?;
//!     assert_eq!(api.clone().oneshot(request).await?.status(), StatusCode::OK);
//! }
//! assert_eq!(emulator.exchange_count(), 1);
//! # Ok(())
//! # }
//! ```
//!
//! While it runs, a test can make the token endpoint misbehave with a
//! [`Fault`] ([`Emulator::inject`], [`Emulator::inject_times`]): error
//! statuses, HTML pages, `Retry-After`, redirects, a slow answer, a request
//! that never gets an answer, a connection reset in the middle of the body,
//! or a body too large to accept. It can also rotate a client's secret
//! ([`Emulator::set_client`]), revoke every token, or shorten their
//! lifetime. It counts requests, records the last token request for
//! wire-format assertions, and lists every token issued
//! ([`Emulator::issued_tokens`]), for asserting that none leaks into logs
//! or errors.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use routera_auth_test::{Emulator, Fault};
//!
//! let emulator = Emulator::builder()
//!     .client("my-service", "s3cr3t")
//!     .start()
//!     .await?;
//! assert!(emulator.token_url().ends_with("/oauth2/token"));
//! assert_eq!(emulator.credentials().client_id(), "my-service");
//!
//! // The next two token requests get a 503, then the endpoint recovers.
//! emulator.inject_times(Fault::retry_after(503, 1), 2);
//! # Ok(())
//! # }
//! ```
//!
//! # From a shell: the `routera-emulator` binary
//!
//! The crate also installs `routera-emulator` (`cargo install
//! routera-auth-test`; in the repository, `cargo run -p routera-auth-test
//! --bin routera-emulator`): an [`Emulator`] with its control API
//! ([`EmulatorBuilder::control_api`]) on `127.0.0.1:7357`, for programs
//! that are not Rust tests. It prints the URLs and the `export` lines a
//! program needs (`ROUTERA_TOKEN_URL`, `ROUTERA_CLIENT_ID`,
//! `ROUTERA_CLIENT_SECRET`, `ROUTERA_API_URL`, and `SSL_CERT_FILE` with
//! `--https`), so that one built on `HttpTokenExchange::reqwest()` (which
//! honours `ROUTERA_TOKEN_URL`) and
//! [`ClientCredentials::from_env`](routera_auth::ClientCredentials::from_env)
//! runs against it unchanged, and serves until Ctrl-C or SIGTERM.
//! `routera-emulator --help` lists its flags (port, clients, token
//! lifetime, HTTPS, a fault from the start); the crate's README shows a
//! session.
//!
//! # A fleet's Redis: `RedisServer`, `RedisTlsServer`, `RedisCluster`
//!
//! With the feature `redis`, `RedisServer` runs a real `redis-server`
//! (Debian package `redis-server`) on a unix socket, to kill, restart,
//! freeze and read back; `RedisTlsServer` runs one that serves TLS with a
//! `TestCa`-made certificate (and can require client certificates); with
//! `redis-cluster`, `RedisCluster` runs a Redis Cluster of three masters
//! (`redis-cli` from the Debian package `redis-tools` creates it), over
//! TCP or, with `RedisCluster::start_tls`, over TLS only. A test
//! that cannot find these binaries fails with the package to install.
//!
//! This crate is for tests: the emulator is not a hardened server.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod emulator;
#[cfg(feature = "shared-store")]
mod memory_store;
mod mock;
#[cfg(feature = "redis")]
mod redis;

#[cfg(feature = "redis-cluster")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis-cluster")))]
pub use self::redis::{ClusterTlsOptions, RedisCluster};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{RedisServer, RedisTlsServer, TestCa};
pub use emulator::{
    Emulator, EmulatorBuilder, EmulatorExchange, Fault, RecordedRequest, TokenValidator,
};
#[cfg(feature = "shared-store")]
#[cfg_attr(docsrs, doc(cfg(feature = "shared-store")))]
pub use memory_store::MemoryStore;
pub use mock::{MOCK_CLIENT_ID, MOCK_CLIENT_SECRET, MockAnswer, MockExchange};
