//! Authenticated calls to the Routera API for tower stacks.
//!
//! The Routera API takes OAuth 2.0 client-credentials tokens: a client posts
//! its id and secret to `POST /oauth2/token` and gets a Bearer token that
//! lives `expires_in` seconds. This crate fetches that token, caches it,
//! shares it between every concurrent request, renews it, and puts it on
//! each request, the tower way:
//!
//! - [`RouteraAuthLayer`] wraps any tower HTTP service (a hyper-util client,
//!   a tonic `Channel`, reqwest through [`ReqwestService`], …) and attaches
//!   `Authorization: Bearer <token>`. With a fresh token that costs about as
//!   much as a static header.
//! - [`TokenProvider`] is the shared cache: one per set of credentials,
//!   cloned into every stack. At most one exchange runs at a time, whatever
//!   the number of callers.
//! - The token exchange is a tower service of its own
//!   ([`HttpTokenExchange`]), so tests mock it and users wrap it with tower
//!   layers (timeout, retry, concurrency limit).
//!
//! ```no_run
//! # #[cfg(feature = "rustls")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use routera_auth::{ClientCredentials, HttpTokenExchange, ReqwestService, RouteraAuthLayer, TokenProvider};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! let provider = TokenProvider::new(HttpTokenExchange::reqwest()?, ClientCredentials::from_env()?);
//!
//! let api = ServiceBuilder::new()
//!     .layer(RouteraAuthLayer::new(provider.clone()))
//!     .service(ReqwestService::new(reqwest::Client::new()));
//!
//! let request = http::Request::get("https://api.routera.io/v1/routes").body(String::new())?;
//! let response = api.oneshot(request).await?;
//! # let _ = response;
//! # Ok(())
//! # }
//! ```
//!
//! # Guarantees
//!
//! - **Fail closed**: a request is never sent without a token. If none can
//!   be had, the inner service is not called and the caller gets the
//!   [`TokenError`] (inside the `BoxError`).
//! - **Secrets stay secret**: the client secret and access tokens never
//!   appear in `Debug`, `Display`, errors or logs; the header is marked
//!   sensitive; plain-http token URLs are refused except on loopback. A
//!   token is never taken from a redirect: the exchange does not follow
//!   redirects, nor does the client of [`HttpTokenExchange::reqwest`] or a
//!   hyper-util client, so the credentials go to the token URL only. Over
//!   a [`ReqwestService`] whose client follows redirects (reqwest's
//!   default), an answer from another URL is refused with an error that
//!   says how to fix the client; the follow-up request reqwest has sent by
//!   then carries the credentials nowhere but to the token URL's own
//!   origin (see [`ReqwestService`]).
//! - **Never an expired token**: whether a token may be sent is decided on
//!   every request by comparing the clock with the token's deadline, never
//!   by a timer, so a busy runtime cannot make a request carry it late.
//! - **Time is tokio's**: expiry uses `tokio::time::Instant`, so tests run on
//!   paused time.
//!
//! # Features
//!
//! - `rustls` (default): [`HttpTokenExchange::reqwest`] over rustls with
//!   the aws-lc-rs crypto provider, as reqwest's own default. With either
//!   rustls feature, the exchange's client is given its crypto provider
//!   explicitly: it neither needs nor installs a process-wide default
//!   `CryptoProvider`.
//! - `rustls-ring`: [`HttpTokenExchange::reqwest`] over rustls with ring,
//!   for applications on ring (with `default-features = false`): nothing in
//!   the build depends on aws-lc-rs or aws-lc-sys.
//! - `native-tls`: [`HttpTokenExchange::reqwest`] over the platform's TLS
//!   library (OpenSSL on Linux).
//! - `reqwest` (on with each of the three above): [`ReqwestService`], for a
//!   `reqwest::Client` you build, and the `routera_auth::reqwest`
//!   re-export, without choosing a TLS.
//! - `reqwest-middleware`: [`RouteraAuthMiddleware`] for reqwest-middleware
//!   clients.
//! - `metrics`: the provider's exchanges, failures, waits, invalidations,
//!   refreshes, exchange latency and token expiry on the `metrics` facade
//!   (see the `metrics` module).
//! - `shared-store`: [`store::SharedCache`], a tower layer over the token
//!   exchange that gives the processes of a fleet one token and one
//!   exchange, on a [`store::TokenStore`] backend.
//! - `multi-client`: [`TokenProviders`], a bounded set of providers, one
//!   per client key (a tenant, an account), and
//!   [`RouteraAuthLayer::per_client`], which puts each request's own
//!   client's token on it: many Routera clients in one process (see the
//!   [`clients`] module).
//! - `redis`: [`store::RedisStore`], the shared store on Redis 6+ or
//!   Valkey, over TLS with a TLS feature.
//! - `redis-cluster`: `store::RedisStore::cluster`, on a Redis Cluster,
//!   over TCP or TLS.
//!
//! # Testing
//!
//! The test kit is a crate of its own, `routera-auth-test` (a
//! dev-dependency): `MockExchange` in place of the token exchange, a
//! Routera `Emulator` in process or as the `routera-emulator` binary,
//! `MemoryStore` and real Redis test servers for fleets.
//!
// The items of optional features: links within these docs when the feature
// is on (docs.rs builds them all), to docs.rs when it is off.
#![cfg_attr(
    feature = "reqwest-middleware",
    doc = "[`RouteraAuthMiddleware`]: crate::RouteraAuthMiddleware\n"
)]
#![cfg_attr(
    not(feature = "reqwest-middleware"),
    doc = "[`RouteraAuthMiddleware`]: https://docs.rs/routera-auth/latest/routera_auth/struct.RouteraAuthMiddleware.html\n"
)]
#![cfg_attr(
    feature = "shared-store",
    doc = "[`store::SharedCache`]: crate::store::SharedCache\n[`store::TokenStore`]: crate::store::TokenStore\n"
)]
#![cfg_attr(
    not(feature = "shared-store"),
    doc = "[`store::SharedCache`]: https://docs.rs/routera-auth/latest/routera_auth/store/struct.SharedCache.html\n[`store::TokenStore`]: https://docs.rs/routera-auth/latest/routera_auth/store/trait.TokenStore.html\n"
)]
#![cfg_attr(
    feature = "multi-client",
    doc = "[`TokenProviders`]: crate::TokenProviders\n[`RouteraAuthLayer::per_client`]: crate::RouteraAuthLayer::per_client\n[`clients`]: crate::clients\n"
)]
#![cfg_attr(
    not(feature = "multi-client"),
    doc = "[`TokenProviders`]: https://docs.rs/routera-auth/latest/routera_auth/clients/struct.TokenProviders.html\n[`RouteraAuthLayer::per_client`]: https://docs.rs/routera-auth/latest/routera_auth/auth/struct.RouteraAuthLayer.html#method.per_client\n[`clients`]: https://docs.rs/routera-auth/latest/routera_auth/clients/index.html\n"
)]
#![cfg_attr(
    feature = "redis",
    doc = "[`store::RedisStore`]: crate::store::RedisStore\n"
)]
#![cfg_attr(
    not(feature = "redis"),
    doc = "[`store::RedisStore`]: https://docs.rs/routera-auth/latest/routera_auth/store/struct.RedisStore.html\n"
)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod auth;
#[cfg(feature = "multi-client")]
#[cfg_attr(docsrs, doc(cfg(feature = "multi-client")))]
pub mod clients;
mod clock;
mod credentials;
pub mod defaults;
pub mod error;
pub mod exchange;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
#[cfg(feature = "reqwest-middleware")]
mod middleware;
mod provider;
#[cfg(feature = "reqwest")]
mod reqwest_adapter;
#[cfg(feature = "shared-store")]
#[cfg_attr(docsrs, doc(cfg(feature = "shared-store")))]
pub mod store;
#[cfg(test)]
mod test_double;
mod token;

pub use auth::{ReplayableBody, RetryOnUnauthorized, RouteraAuth, RouteraAuthLayer};
#[cfg(feature = "multi-client")]
#[cfg_attr(docsrs, doc(cfg(feature = "multi-client")))]
pub use clients::TokenProviders;
pub use credentials::{
    AuthMethod, CLIENT_ID_ENV, CLIENT_SECRET_ENV, ClientCredentials, TOKEN_URL_ENV,
};
pub use error::{BoxError, ConfigError, OAuthError, TokenError, TokenErrorKind};
pub use exchange::HttpTokenExchange;
#[cfg(feature = "reqwest-middleware")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest-middleware")))]
pub use middleware::RouteraAuthMiddleware;
pub use provider::{
    MAX_RETRY_AFTER, MAX_TOKEN_LIFETIME, ProviderStats, TokenProvider, TokenProviderBuilder,
    TokenTiming,
};
/// The `reqwest` crate whose types [`ReqwestService`] and
/// [`HttpTokenExchange::reqwest`] take (0.13): build clients with
/// `routera_auth::reqwest::Client` when the application depends on another
/// reqwest version.
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub use reqwest;
#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub use reqwest_adapter::{ReqwestFuture, ReqwestService};
pub use token::{AccessToken, Token, TokenReason, TokenRequest};

/// The README's examples, compiled as doctests (with the features they
/// use: `cargo test --all-features`). Its blocks hide no line, so that
/// they paste as shown (`tests/readme.rs`).
#[cfg(all(
    doctest,
    feature = "rustls",
    feature = "reqwest-middleware",
    feature = "redis",
    feature = "redis-cluster",
    feature = "multi-client"
))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
