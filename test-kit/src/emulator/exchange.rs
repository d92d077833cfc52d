//! The client side wired to an emulator: [`EmulatorExchange`],
//! [`Emulator::exchange`] and [`Emulator::provider`].

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::Emulator;
use routera_auth::exchange::ExchangeBody;
use routera_auth::{HttpTokenExchange, TokenProvider};

/// The token exchange [`Emulator::exchange`] returns: an
/// [`HttpTokenExchange`] over a plain-HTTP hyper-util client. Named so that
/// tests can store it, or wrap it in tower layers and name the result.
pub type EmulatorExchange = HttpTokenExchange<Client<HttpConnector, ExchangeBody>>;

impl Emulator {
    /// A token exchange pointed at [`Emulator::token_url`], with
    /// [`AuthMethod::RequestBody`](routera_auth::AuthMethod::RequestBody); chain
    /// [`with_auth_method`](HttpTokenExchange::with_auth_method) for Basic.
    ///
    /// Its HTTP client is a hyper-util legacy [`Client`] speaking HTTP/1.1
    /// over plain TCP, so it needs neither the `reqwest` feature nor TLS. It
    /// keeps no idle connection: every exchange opens a new one, so each
    /// meets the fault injected at that moment, and once the emulator is
    /// dropped an exchange fails to connect as it would against a server
    /// that went away. Use it with [`TokenProvider::builder`] for options
    /// other than the defaults:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> std::io::Result<()> {
    /// use std::time::Duration;
    /// use routera_auth::{AuthMethod, TokenProvider};
    /// use routera_auth_test::{Emulator, EmulatorExchange};
    ///
    /// let emulator = Emulator::start().await?;
    /// let exchange: EmulatorExchange = emulator.exchange().with_auth_method(AuthMethod::BasicAuth);
    /// let provider = TokenProvider::builder(exchange, emulator.credentials())
    ///     .exchange_timeout(Duration::from_secs(1))
    ///     .build();
    /// # let _ = provider;
    /// # Ok(())
    /// # }
    /// ```
    pub fn exchange(&self) -> EmulatorExchange {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build_http();
        // `http://127.0.0.1:PORT/oauth2/token` is loopback, so the exchange
        // takes it without https. Were it ever refused, the exchange would
        // keep the default https URL, which this plain-HTTP client refuses
        // to connect to: every exchange fails, nothing is sent.
        let exchange = HttpTokenExchange::new(client);
        match exchange.clone().with_token_url(&self.token_url()) {
            Ok(pointed) => pointed,
            Err(error) => {
                tracing::error!(%error, "routera emulator: the token URL was refused");
                exchange
            }
        }
    }

    /// A provider with default options that gets tokens from this emulator
    /// through [`Emulator::exchange`], for [`Emulator::credentials`] (the
    /// first registered client, `routera-test-client` unless the builder was
    /// given another).
    ///
    /// The provider keeps the credentials it was built with: after
    /// [`Emulator::set_client`], pass it the new ones with
    /// [`TokenProvider::set_credentials`].
    ///
    /// Like every provider, it spawns its worker on the Tokio runtime of its
    /// first caller.
    pub fn provider(&self) -> TokenProvider {
        TokenProvider::new(self.exchange(), self.credentials())
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::{Request, StatusCode};
    use http_body_util::Empty;
    use tower::{Layer as _, ServiceExt as _};

    use super::*;
    use routera_auth::{AuthMethod, RouteraAuthLayer, TokenErrorKind, TokenRequest};

    #[tokio::test]
    async fn the_exchange_points_at_the_token_endpoint() {
        let emulator = Emulator::start().await.unwrap();
        let exchange = emulator.exchange();
        assert_eq!(exchange.token_url().to_string(), emulator.token_url());
        assert_eq!(exchange.auth_method(), AuthMethod::RequestBody);
        let token = exchange
            .oneshot(TokenRequest::new(emulator.credentials()))
            .await
            .unwrap();
        assert!(
            emulator
                .token_validator()
                .is_valid(token.access_token().secret())
        );
    }

    #[tokio::test]
    async fn the_provider_gets_tokens_the_resource_accepts() {
        let emulator = Emulator::start().await.unwrap();
        let provider = emulator.provider();
        assert_eq!(provider.client_id(), emulator.credentials().client_id());
        let token = provider.token().await.unwrap();
        assert_eq!(emulator.issued_tokens(), [token.secret().to_owned()]);

        let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let request = Request::get(emulator.resource_url())
            .body(Empty::new())
            .unwrap();
        let api = RouteraAuthLayer::new(provider).layer(http);
        assert_eq!(api.oneshot(request).await.unwrap().status(), StatusCode::OK);
        assert_eq!(emulator.exchange_count(), 1);
    }

    #[tokio::test]
    async fn every_exchange_opens_a_new_connection() {
        let emulator = Emulator::start().await.unwrap();
        let exchange = emulator.exchange();
        let request = TokenRequest::new(emulator.credentials());
        exchange.clone().oneshot(request.clone()).await.unwrap();
        // A pooled connection would still reach the dropped emulator's
        // connection task, which keeps serving.
        drop(emulator);
        let error = exchange.oneshot(request).await.unwrap_err();
        assert_eq!(error.kind(), TokenErrorKind::Transport, "{error}");
    }
}
