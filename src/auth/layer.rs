use tower_layer::Layer;

use super::RouteraAuth;
use crate::TokenProvider;

/// Wraps a tower HTTP service in [`RouteraAuth`], which puts
/// `Authorization: Bearer <token>` from a shared [`TokenProvider`] on every
/// request.
///
/// See the [module docs](crate::auth) for an example.
#[derive(Debug, Clone)]
pub struct RouteraAuthLayer {
    provider: TokenProvider,
}

impl RouteraAuthLayer {
    /// A layer that takes its tokens from `provider`.
    pub fn new(provider: TokenProvider) -> Self {
        Self { provider }
    }

    /// The provider the layer takes its tokens from.
    pub fn provider(&self) -> &TokenProvider {
        &self.provider
    }
}

impl<S> Layer<S> for RouteraAuthLayer {
    type Service = RouteraAuth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RouteraAuth::new(inner, self.provider.clone())
    }
}
