//! An axum server that calls the Routera API on behalf of its own clients,
//! through one shared, authorized client.
//!
//! The client stack is built once and held in axum state:
//!
//! ```text
//! RetryOnUnauthorized  (retries a request once after a 401)
//!   RouteraAuthLayer   (attaches the Bearer token; a 401 invalidates it)
//!     ReqwestService   (reqwest::Client)
//! ```
//!
//! Every handler clones it (one `Arc`-backed provider, one connection pool)
//! and sends its request with `oneshot`, so any number of concurrent inbound
//! requests share one token and cause one token exchange. `GET /ping` GETs
//! the upstream URL and relays its status, `Content-Type` and body.
//!
//! With no credentials in the environment it starts the in-process Routera
//! emulator as upstream, serves the gateway on `127.0.0.1` (a port chosen by
//! the system), calls itself a few times through a plain HTTP client, revokes
//! the token to show the 401 recovery, prints the exchange count and exits:
//!
//! ```text
//! cargo run --example axum_gateway
//! ```
//!
//! Against a real endpoint it serves until interrupted (Ctrl-C):
//!
//! ```text
//! ROUTERA_CLIENT_ID=… ROUTERA_CLIENT_SECRET=… \
//! ROUTERA_API_URL=https://api.routera.io/v1/… \
//! [ROUTERA_TOKEN_URL=https://api.routera.io/oauth2/token] [ROUTERA_AUTH_METHOD=body|basic] \
//! [ROUTERA_GATEWAY_ADDR=127.0.0.1:3000] \
//! cargo run --example axum_gateway
//! # then: curl http://127.0.0.1:3000/ping
//! ```
//!
//! Exits non-zero with a message on any failure.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};
use routera_auth::defaults;
use routera_auth::{
    AuthMethod, BoxError, CLIENT_ID_ENV, CLIENT_SECRET_ENV, ClientCredentials, HttpTokenExchange,
    ReqwestService, RetryOnUnauthorized, RouteraAuthLayer, TokenError, TokenProvider,
};
use routera_auth_test::Emulator;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

/// Where the gateway listens when `ROUTERA_GATEWAY_ADDR` is not set.
const DEFAULT_GATEWAY_ADDR: &str = "127.0.0.1:3000";

/// The authorized Routera API client shared by every handler: `Clone`,
/// `Send + Sync`, and nameable, so it fits in axum state.
pub type ApiClient =
    BoxCloneSyncService<http::Request<String>, http::Response<reqwest::Body>, BoxError>;

/// Builds the client stack. Build it once per provider and clone it.
///
/// The retry policy sits outside the auth layer: the auth layer sees a 401,
/// invalidates the token the request carried, and the retried request picks
/// up a fresh one on its way back through.
pub fn api_client(provider: TokenProvider) -> ApiClient {
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .retry(RetryOnUnauthorized::new())
            .layer(RouteraAuthLayer::new(provider))
            .service(ReqwestService::new(reqwest::Client::new())),
    )
}

/// The gateway's state: the upstream URL and the shared client.
#[derive(Clone)]
struct Gateway {
    upstream_url: Arc<str>,
    api: ApiClient,
}

/// The gateway: `GET /ping` GETs `upstream_url` through `api` and relays
/// the answer.
pub fn app(upstream_url: String, api: ApiClient) -> Router {
    Router::new().route("/ping", get(ping)).with_state(Gateway {
        upstream_url: upstream_url.into(),
        api,
    })
}

/// Serves `app` on `listener` in a task until `shutdown` resolves; returns
/// the bound address and the server task.
pub fn spawn_server(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok((addr, server))
}

async fn ping(State(gateway): State<Gateway>) -> Response {
    let request = match http::Request::get(&*gateway.upstream_url).body(String::new()) {
        Ok(request) => request,
        Err(err) => return failure(StatusCode::INTERNAL_SERVER_ERROR, "bad upstream URL", err),
    };
    match gateway.api.oneshot(request).await {
        Ok(upstream) => relay(upstream),
        Err(err) => match err.downcast_ref::<TokenError>() {
            // Fail closed: the request never left without a token.
            Some(token_error) => failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "could not authenticate to the Routera API",
                token_error,
            ),
            None => failure(
                StatusCode::BAD_GATEWAY,
                "the Routera API could not be reached",
                err,
            ),
        },
    }
}

/// The upstream answer as the gateway's: status, `Content-Type`, and the
/// body streamed through. Other headers (connection management, the
/// upstream's authentication challenge) stay upstream.
fn relay(upstream: http::Response<reqwest::Body>) -> Response {
    let (parts, body) = upstream.into_parts();
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = parts.status;
    if let Some(content_type) = parts.headers.get(header::CONTENT_TYPE) {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, content_type.clone());
    }
    response
}

/// Logs the cause and answers `status` with a short message; the cause is
/// not sent to the gateway's client.
fn failure(status: StatusCode, message: &'static str, cause: impl std::fmt::Display) -> Response {
    eprintln!("GET /ping: {message}: {cause}");
    let mut response = (status, message).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("axum_gateway failed: {err}");
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

/// One GET through a plain (unauthenticated) client: status and body.
async fn call(client: &reqwest::Client, url: &str) -> Result<(StatusCode, String), BoxError> {
    let response = client.get(url).send().await?;
    let status = response.status();
    let body = response.text().await?;
    Ok((status, body))
}

async fn against_emulator() -> Result<(), BoxError> {
    println!("No {CLIENT_ID_ENV}/{CLIENT_SECRET_ENV} set: starting the local Routera emulator.");
    let emulator = Emulator::start().await?;
    let app = app(emulator.resource_url(), api_client(emulator.provider()));

    let (stop, stopped) = oneshot::channel::<()>();
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let (addr, server) = spawn_server(listener, app, async {
        let _ = stopped.await;
    })?;
    let url = format!("http://{addr}/ping");
    println!("gateway on {url} -> upstream {}", emulator.resource_url());

    let client = reqwest::Client::new();
    let check = |i: usize, (status, body): (StatusCode, String)| {
        println!("call {i}: GET {url} -> {status} {body}");
        if status == StatusCode::OK {
            Ok(())
        } else {
            Err(BoxError::from(format!(
                "GET {url} answered {status}: {body}"
            )))
        }
    };

    // Concurrent inbound requests, one token exchange between them.
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { call(&client, &url).await })
        })
        .collect();
    for (i, handle) in calls.into_iter().enumerate() {
        check(i + 1, handle.await??)?;
    }
    println!("token exchanges so far: {}", emulator.exchange_count());
    if emulator.exchange_count() != 1 {
        return Err("expected the five calls to share one token".into());
    }

    // The API stops accepting the token: the 401 invalidates it and the
    // request is retried once with a new one; the caller never sees the 401.
    println!("revoking every token the emulator issued…");
    emulator.revoke_all();
    check(6, call(&client, &url).await?)?;
    check(7, call(&client, &url).await?)?;
    println!("token exchanges so far: {}", emulator.exchange_count());
    if emulator.exchange_count() != 2 {
        return Err("expected exactly one new token after the revocation".into());
    }

    drop(client);
    let _ = stop.send(());
    server.await??;
    println!("ok");
    Ok(())
}

async fn against_real_endpoint() -> Result<(), BoxError> {
    let credentials = ClientCredentials::from_env()?;
    let token_url =
        std::env::var("ROUTERA_TOKEN_URL").unwrap_or_else(|_| defaults::TOKEN_URL.to_owned());
    let api_url = std::env::var("ROUTERA_API_URL")
        .map_err(|_| "ROUTERA_API_URL is not set: set it to the Routera API URL to relay")?;
    let auth_method = match std::env::var("ROUTERA_AUTH_METHOD") {
        Ok(value) => AuthMethod::parse(&value)?,
        Err(_) => AuthMethod::default(),
    };
    let gateway_addr =
        std::env::var("ROUTERA_GATEWAY_ADDR").unwrap_or_else(|_| DEFAULT_GATEWAY_ADDR.to_owned());
    let gateway_addr: SocketAddr = gateway_addr.parse().map_err(|err| {
        format!("ROUTERA_GATEWAY_ADDR is not an address such as {DEFAULT_GATEWAY_ADDR}: {gateway_addr:?} ({err})")
    })?;
    // Refuse a URL the handler could not use before serving anything.
    http::Uri::try_from(api_url.as_str())
        .map_err(|err| format!("ROUTERA_API_URL is not a valid URL: {err}"))?;

    let exchange = HttpTokenExchange::reqwest()?
        .with_token_url(&token_url)?
        .with_auth_method(auth_method);
    println!(
        "client {} -> token URL {token_url} ({auth_method:?})",
        credentials.client_id()
    );
    let provider = TokenProvider::new(exchange, credentials);
    let app = app(api_url.clone(), api_client(provider));

    let listener = TcpListener::bind(gateway_addr)
        .await
        .map_err(|err| format!("cannot listen on {gateway_addr}: {err}"))?;
    println!(
        "gateway on http://{}/ping -> upstream {api_url} (Ctrl-C to stop)",
        listener.local_addr()?
    );
    // Runs until the process is interrupted: Ctrl-C ends it.
    axum::serve(listener, app).await?;
    Ok(())
}
