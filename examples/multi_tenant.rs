//! An axum gateway that calls the Routera API on behalf of many tenants,
//! each with Routera credentials of its own.
//!
//! One client stack serves every tenant; the tenant of each outgoing
//! request rides in a request extension, and the per-client layer puts
//! that tenant's token on it:
//!
//! ```text
//! RetryOnUnauthorized                 (retries a request once after a 401)
//!   RouteraAuthLayer::per_client      (the tenant's own token; a 401 invalidates it)
//!     ReqwestService                  (reqwest::Client)
//! ```
//!
//! The tenants' credentials come from a credential source: here a table in
//! memory, standing in for a secrets manager. A tenant's provider is built
//! on its first request and dropped after 15 idle minutes, with at most
//! 10,000 kept.
//!
//! `GET /tenants/{tenant}/ping` GETs the upstream URL as that tenant and
//! relays its status. The example starts the in-process Routera emulator
//! with five clients, serves the gateway on `127.0.0.1`, calls it for
//! every tenant at once, rotates one tenant's secret, asks for a tenant the
//! source does not know, prints what happened and exits:
//!
//! ```text
//! cargo run --example multi_tenant --features multi-client
//! ```
//!
//! Exits non-zero with a message on any failure.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::StatusCode;
use routera_auth::clients::{CredentialSource, CredentialsError, TokenProviders};
use routera_auth::{
    BoxError, ClientCredentials, ReqwestService, RetryOnUnauthorized, RouteraAuthLayer, TokenError,
};
use routera_auth_test::Emulator;
use tokio::net::TcpListener;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};

/// The tenant an outgoing request is sent for: the key of its provider.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Tenant(Arc<str>);

/// The client stack shared by every handler and every tenant.
type ApiClient =
    BoxCloneSyncService<http::Request<String>, http::Response<reqwest::Body>, BoxError>;

/// The tenants' secrets: what a secrets manager would hold.
type Secrets = Arc<RwLock<HashMap<String, ClientCredentials>>>;

fn api_client(providers: TokenProviders<Tenant>) -> ApiClient {
    let tenant_of = |request: &http::Request<String>| request.extensions().get::<Tenant>().cloned();
    BoxCloneSyncService::new(
        ServiceBuilder::new()
            .retry(RetryOnUnauthorized::new())
            .layer(RouteraAuthLayer::per_client(providers, tenant_of))
            .service(ReqwestService::new(reqwest::Client::new())),
    )
}

#[derive(Clone)]
struct Gateway {
    upstream_url: Arc<str>,
    api: ApiClient,
}

async fn ping(State(gateway): State<Gateway>, Path(tenant): Path<String>) -> Response {
    let mut request = http::Request::get(&*gateway.upstream_url)
        .body(String::new())
        .unwrap_or_default();
    request.extensions_mut().insert(Tenant(tenant.into()));
    match gateway.api.oneshot(request).await {
        Ok(upstream) => (upstream.status(), "relayed").into_response(),
        Err(err) if err.is::<CredentialsError>() => {
            (StatusCode::NOT_FOUND, "unknown tenant").into_response()
        }
        Err(err) if err.is::<TokenError>() => {
            eprintln!("GET /ping: could not authenticate: {err}");
            (StatusCode::SERVICE_UNAVAILABLE, "could not authenticate").into_response()
        }
        Err(err) => {
            eprintln!("GET /ping: the Routera API could not be reached: {err}");
            (StatusCode::BAD_GATEWAY, "upstream unreachable").into_response()
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("multi_tenant failed: {err}");
            ExitCode::FAILURE
        }
    }
}

const TENANTS: [&str; 5] = ["acme", "globex", "initech", "umbrella", "hooli"];

async fn run() -> Result<(), BoxError> {
    // The emulator knows a Routera client per tenant; so do the secrets.
    let mut emulator = Emulator::builder();
    let secrets: Secrets = Arc::default();
    for tenant in TENANTS {
        let credentials =
            ClientCredentials::new(format!("client-{tenant}"), format!("secret-{tenant}"));
        emulator = emulator.client(credentials.client_id(), credentials.client_secret());
        secrets
            .write()
            .map_err(|_| "poisoned")?
            .insert(tenant.to_owned(), credentials);
    }
    let emulator = emulator.start().await?;

    let source = CredentialSource::from_fn({
        let secrets = Arc::clone(&secrets);
        move |Tenant(tenant)| {
            let found = secrets
                .read()
                .ok()
                .and_then(|table| table.get(&*tenant).cloned());
            async move { found.ok_or_else(|| format!("no Routera credentials for tenant {tenant}")) }
        }
    });
    let providers = TokenProviders::builder(emulator.exchange(), source)
        .max_clients(10_000)
        .idle_timeout(Duration::from_secs(15 * 60))
        .build();
    let gateway = Gateway {
        upstream_url: emulator.resource_url().into(),
        api: api_client(providers.clone()),
    };
    let app = Router::new()
        .route("/tenants/{tenant}/ping", get(ping))
        .with_state(gateway);
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    println!(
        "gateway on http://{addr}/tenants/{{tenant}}/ping -> {}",
        emulator.resource_url()
    );

    let client = reqwest::Client::new();
    let ping = |tenant: &str| {
        let (client, url) = (
            client.clone(),
            format!("http://{addr}/tenants/{tenant}/ping"),
        );
        async move { Ok::<_, BoxError>(client.get(url).send().await?.status()) }
    };

    // Four concurrent requests per tenant: one exchange per tenant.
    let mut calls = Vec::new();
    for tenant in TENANTS {
        for _ in 0..4 {
            calls.push((tenant, tokio::spawn(ping(tenant))));
        }
    }
    for (tenant, call) in calls {
        let status = call.await??;
        if status != StatusCode::OK {
            return Err(format!("{tenant}: the gateway answered {status}").into());
        }
    }
    println!(
        "{} requests for {} tenants: {} token exchanges, {} providers kept",
        4 * TENANTS.len(),
        TENANTS.len(),
        emulator.exchange_count(),
        {
            providers.run_pending_tasks();
            providers.len()
        },
    );
    if emulator.exchange_count() != TENANTS.len() as u64 {
        return Err("expected one exchange per tenant".into());
    }

    // Initech's secret is rotated at Routera and in the secrets table; the
    // gateway hands it to initech's provider, and every token is revoked.
    let rotated = ClientCredentials::new("client-initech", "secret-initech-2");
    emulator.set_client(rotated.client_id(), rotated.client_secret());
    secrets
        .write()
        .map_err(|_| "poisoned")?
        .insert("initech".to_owned(), rotated.clone());
    providers.set_credentials(&Tenant("initech".into()), rotated);
    emulator.revoke_all();
    for tenant in TENANTS {
        let status = ping(tenant).await?;
        println!("after the rotation and revocation, {tenant}: {status}");
        if status != StatusCode::OK {
            return Err(format!("{tenant}: the gateway answered {status}").into());
        }
    }
    if emulator.exchange_count() != 2 * TENANTS.len() as u64 {
        return Err("expected one new token per tenant after the revocation".into());
    }

    // A tenant the source does not know gets its own error; the others are
    // served as before.
    let unknown = ping("wayne").await?;
    println!("unknown tenant wayne: {unknown}");
    if unknown != StatusCode::NOT_FOUND || ping("acme").await? != StatusCode::OK {
        return Err("an unknown tenant must fail alone".into());
    }

    server.abort();
    println!("ok");
    Ok(())
}
