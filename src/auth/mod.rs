//! [`RouteraAuthLayer`] and [`RouteraAuth`]: attach the provider's token to
//! every request.
//!
//! ```
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! use std::time::Duration;
//! use http::{Request, Response, header::AUTHORIZATION};
//! use routera_auth::{ClientCredentials, RouteraAuthLayer, Token, TokenProvider, TokenRequest};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # let exchange = service_fn(|_: TokenRequest| async {
//! #     Ok::<_, routera_auth::TokenError>(Token::new("t0k3n", Duration::from_secs(3600)))
//! # });
//! let provider = TokenProvider::new(exchange, ClientCredentials::new("id", "secret"));
//!
//! // Any tower HTTP service: a hyper-util client, a tonic `Channel`, reqwest, …
//! let http_client = service_fn(|request: Request<String>| async move {
//!     let authorization = request.headers()[AUTHORIZATION].clone();
//!     Ok::<_, std::convert::Infallible>(Response::new(authorization))
//! });
//!
//! let client = ServiceBuilder::new()
//!     .layer(RouteraAuthLayer::new(provider))
//!     .service(http_client);
//!
//! let response = client.oneshot(Request::new(String::new())).await?;
//! assert_eq!(response.body(), "Bearer t0k3n");
//! # Ok(())
//! # }
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(run()).unwrap();
//! ```

mod future;
mod layer;
mod retry;
mod service;

pub use self::future::ResponseFuture;
#[cfg(feature = "multi-client")]
pub(crate) use self::future::{HeaderFuture, rejects_token};
pub use self::layer::RouteraAuthLayer;
pub use self::retry::{
    IfReplayable, ReplayBody, ReplayableBody, RetryOnUnauthorized, empty_body_only, never,
};
pub use self::service::RouteraAuth;
