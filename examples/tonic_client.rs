//! Calls a gRPC service through `RouteraAuthLayer` on a tonic `Channel`.
//!
//! The whole setup is in [`health_client`]: a channel, the auth layer with
//! its token provider around the channel, and the generated client on top.
//!
//! With no credentials in the environment it starts the in-process Routera
//! emulator and a local gRPC health server that accepts only the emulator's
//! tokens, then makes a few authenticated health checks:
//!
//! ```text
//! cargo run --example tonic_client
//! ```
//!
//! Against a real endpoint (its `grpc.health.v1.Health/Check`), over TLS:
//!
//! ```text
//! ROUTERA_CLIENT_ID=… ROUTERA_CLIENT_SECRET=… \
//! ROUTERA_GRPC_URL=https://host:port \
//! [ROUTERA_TOKEN_URL=https://api.routera.io/oauth2/token] \
//! cargo run --example tonic_client
//! ```
//!
//! An `https://` URL gets a TLS channel: `ClientTlsConfig` with the
//! platform's root certificates (tonic's features `tls-aws-lc` and
//! `tls-native-roots`; `tls-ring` instead of `tls-aws-lc` for an
//! application on ring, `tls-webpki-roots` and `with_webpki_roots()` for
//! roots compiled in). An `http://` URL, as the emulator's health server
//! has, stays plain text.
//!
//! Exits non-zero with a message on any failure, including a health check
//! that is refused or not SERVING.

use std::process::ExitCode;

use routera_auth::defaults;
use routera_auth::{
    BoxError, CLIENT_ID_ENV, CLIENT_SECRET_ENV, ClientCredentials, HttpTokenExchange, RouteraAuth,
    RouteraAuthLayer, TokenProvider,
};
use routera_auth_test::{Emulator, TokenValidator};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Server};
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceBuilder;

/// The generated client over the authenticated channel.
type AuthenticatedHealthClient = HealthClient<RouteraAuth<Channel>>;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("tonic_client failed: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let configured =
        std::env::var_os(CLIENT_ID_ENV).is_some() || std::env::var_os(CLIENT_SECRET_ENV).is_some();
    if configured {
        against_real_endpoint().await
    } else {
        against_emulator().await
    }
}

/// The setup: tokens from `provider`, attached to every RPC on `grpc_url`.
async fn health_client(
    provider: TokenProvider,
    grpc_url: &str,
) -> Result<AuthenticatedHealthClient, BoxError> {
    let channel = endpoint(grpc_url)?.connect().await?;
    let authenticated = ServiceBuilder::new()
        .layer(RouteraAuthLayer::new(provider))
        .service(channel);
    Ok(HealthClient::new(authenticated))
}

/// The endpoint for `grpc_url`: over TLS for `https://`, verified against
/// the platform's root certificates; plain text for `http://`.
fn endpoint(grpc_url: &str) -> Result<Endpoint, BoxError> {
    let endpoint = Endpoint::from_shared(grpc_url.to_owned())?;
    if endpoint.uri().scheme_str() == Some("https") {
        return Ok(endpoint.tls_config(ClientTlsConfig::new().with_native_roots())?);
    }
    Ok(endpoint)
}

/// `grpc.health.v1.Health/Check` for the server as a whole; a refusal or
/// anything but SERVING is an error.
async fn check(client: &mut AuthenticatedHealthClient) -> Result<ServingStatus, BoxError> {
    let request = HealthCheckRequest {
        service: String::new(),
    };
    let status = client.check(request).await?.into_inner().status();
    if status != ServingStatus::Serving {
        return Err(format!("the health check answered {status:?}").into());
    }
    Ok(status)
}

async fn against_emulator() -> Result<(), BoxError> {
    println!("No {CLIENT_ID_ENV}/{CLIENT_SECRET_ENV} set: starting the local Routera emulator.");
    let emulator = Emulator::start().await?;
    let grpc_url = start_health_server(emulator.token_validator()).await?;
    println!("gRPC health server at {grpc_url}, accepting only the emulator's tokens.");

    let mut client = health_client(emulator.provider(), &grpc_url).await?;
    for i in 1..=3 {
        println!("call {i}: Health/Check -> {:?}", check(&mut client).await?);
    }

    // The same RPC on a bare channel, without the layer, is refused.
    let mut bare = HealthClient::new(endpoint(&grpc_url)?.connect().await?);
    match bare.check(HealthCheckRequest::default()).await {
        Err(status) if status.code() == Code::Unauthenticated => {
            println!("without the layer: Health/Check -> {:?}", status.code());
        }
        other => {
            return Err(format!("expected Unauthenticated without a token, got {other:?}").into());
        }
    }

    println!("token exchanges: {}", emulator.exchange_count());
    if emulator.exchange_count() != 1 {
        return Err("expected the three calls to share one token".into());
    }
    println!("ok");
    Ok(())
}

async fn against_real_endpoint() -> Result<(), BoxError> {
    let credentials = ClientCredentials::from_env()?;
    let token_url =
        std::env::var("ROUTERA_TOKEN_URL").unwrap_or_else(|_| defaults::TOKEN_URL.to_owned());
    let grpc_url = std::env::var("ROUTERA_GRPC_URL").map_err(
        |_| "ROUTERA_GRPC_URL is not set: set it to the gRPC endpoint (https://host:port)",
    )?;
    println!(
        "client {} -> token URL {token_url}, gRPC {grpc_url}",
        credentials.client_id()
    );
    let exchange = HttpTokenExchange::reqwest()?.with_token_url(&token_url)?;
    let provider = TokenProvider::new(exchange, credentials);
    let mut client = health_client(provider, &grpc_url).await?;
    for i in 1..=3 {
        println!("call {i}: Health/Check -> {:?}", check(&mut client).await?);
    }
    println!("ok");
    Ok(())
}

/// A gRPC health server on `127.0.0.1:0` whose interceptor accepts only
/// `authorization: Bearer <token>` with a token the emulator issued; returns
/// its URL.
async fn start_health_server(validator: TokenValidator) -> Result<String, BoxError> {
    let require_token = move |request: Request<()>| -> Result<Request<()>, Status> {
        let authorization = request.metadata().get("authorization");
        match authorization.and_then(|value| value.to_str().ok()) {
            Some(value) if validator.is_valid_authorization(value) => Ok(request),
            _ => Err(Status::unauthenticated("missing or invalid bearer token")),
        }
    };
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = Server::builder()
        .add_service(InterceptedService::new(health, require_token))
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(async move {
        if let Err(err) = server.await {
            eprintln!("the gRPC health server stopped: {err}");
        }
    });
    Ok(url)
}
