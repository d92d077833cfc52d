//! Property test of the per-client layer: over random interleavings of
//! requests for many clients, with 401s, evictions (by size and by hand)
//! and rotations, no request is ever sent with another client's token.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};
use proptest::prelude::*;
use routera_auth::clients::{CredentialSource, TokenProviders};
use routera_auth::{
    BoxError, ClientCredentials, RetryOnUnauthorized, RouteraAuthLayer, Token, TokenError,
    TokenRequest,
};
use tower::{ServiceBuilder, ServiceExt, service_fn};

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
struct Tenant(u8);

#[derive(Debug, Clone)]
enum Op {
    /// A request for the tenant, answered 401 by the API if `refused`,
    /// after the API yields `yields` times.
    Send {
        tenant: u8,
        refused: bool,
        yields: u8,
    },
    /// The tenant's provider is removed.
    Remove(u8),
    /// The tenant gets a new secret.
    Rotate(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..8u8, prop::bool::weighted(0.2), 0..4u8)
            .prop_map(|(tenant, refused, yields)| Op::Send { tenant, refused, yields }),
        1 => (0..8u8).prop_map(Op::Remove),
        1 => (0..8u8).prop_map(Op::Rotate),
    ]
}

/// Header the test puts on a request the API must refuse.
const REFUSE: &str = "x-refuse";

/// Runs `batches` of concurrent operations; returns the requests that
/// reached the API, or came back, with a token not of their own tenant, as
/// `(tenant, authorization)`. With `misroute`, the layer's key function
/// names the next tenant: a broken layer, for checking the check.
fn run(batches: Vec<Vec<Op>>, misroute: bool) -> Vec<(u8, String)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        // Each token names the client it was issued to.
        let issued = Arc::new(AtomicUsize::new(0));
        let exchange = service_fn(move |request: TokenRequest| {
            let n = issued.fetch_add(1, Ordering::SeqCst);
            let client = request.credentials().client_id().to_owned();
            async move {
                Ok::<_, TokenError>(Token::new(
                    format!("{client}.{n}"),
                    Duration::from_secs(3600),
                ))
            }
        });
        let source = CredentialSource::from_fn(|Tenant(tenant)| async move {
            Ok::<_, Infallible>(ClientCredentials::new(format!("tenant-{tenant}"), "secret"))
        });
        let providers = TokenProviders::builder(exchange, source)
            .max_clients(3)
            .build();
        let mismatches = Arc::new(Mutex::new(Vec::new()));
        let api = service_fn({
            let mismatches = Arc::clone(&mismatches);
            move |request: Request<()>| {
                let mismatches = Arc::clone(&mismatches);
                async move {
                    let Tenant(tenant) = *request.extensions().get::<Tenant>().unwrap();
                    let authorization = request.headers()[AUTHORIZATION]
                        .to_str()
                        .unwrap()
                        .to_owned();
                    if !authorization.starts_with(&format!("Bearer tenant-{tenant}.")) {
                        mismatches
                            .lock()
                            .unwrap()
                            .push((tenant, authorization.clone()));
                    }
                    let yields = request
                        .headers()
                        .get("x-yields")
                        .map_or(0, |v| v.as_bytes()[0] - b'0');
                    for _ in 0..yields {
                        tokio::task::yield_now().await;
                    }
                    let mut response = Response::new(authorization);
                    if request.headers().contains_key(REFUSE) {
                        *response.status_mut() = StatusCode::UNAUTHORIZED;
                    }
                    Ok::<_, Infallible>(response)
                }
            }
        });
        let api = ServiceBuilder::new()
            .retry(RetryOnUnauthorized::new())
            .layer(RouteraAuthLayer::per_client(
                providers.clone(),
                move |request: &Request<()>| {
                    let Tenant(tenant) = *request.extensions().get::<Tenant>()?;
                    Some(Tenant(if misroute { (tenant + 1) % 8 } else { tenant }))
                },
            ))
            .service(api);
        let mut secret = 0u32;
        for batch in batches {
            let mut running = Vec::new();
            for op in batch {
                match op {
                    Op::Send {
                        tenant,
                        refused,
                        yields,
                    } => {
                        let mut request = Request::new(());
                        request.extensions_mut().insert(Tenant(tenant));
                        request
                            .headers_mut()
                            .insert("x-yields", HeaderValue::from(u16::from(yields)));
                        if refused {
                            request
                                .headers_mut()
                                .insert(REFUSE, HeaderValue::from_static("1"));
                        }
                        let api = api.clone();
                        running.push(tokio::spawn(async move {
                            let response = api.oneshot(request).await?;
                            Ok::<_, BoxError>((tenant, response.into_body()))
                        }));
                    }
                    Op::Remove(tenant) => providers.remove(&Tenant(tenant)),
                    Op::Rotate(tenant) => {
                        secret += 1;
                        let credentials = ClientCredentials::new(
                            format!("tenant-{tenant}"),
                            format!("secret-{secret}"),
                        );
                        providers.set_credentials(&Tenant(tenant), credentials);
                    }
                }
            }
            for request in running {
                let (tenant, authorization) = request.await.unwrap().unwrap();
                if !authorization.starts_with(&format!("Bearer tenant-{tenant}.")) {
                    mismatches.lock().unwrap().push((tenant, authorization));
                }
            }
        }
        providers.run_pending_tasks();
        assert!(providers.len() <= 3, "max_clients holds");
        mismatches.lock().unwrap().clone()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn no_request_carries_another_clients_token(
        batches in prop::collection::vec(prop::collection::vec(op(), 1..24), 1..8)
    ) {
        let mismatches = run(batches, false);
        prop_assert!(mismatches.is_empty(), "{mismatches:?}");
    }
}

/// The check itself can fail: a layer that picks the wrong provider is
/// caught.
#[test]
fn the_check_catches_a_request_with_another_clients_token() {
    let send = |tenant| Op::Send {
        tenant,
        refused: false,
        yields: 0,
    };
    let mismatches = run(vec![vec![send(1), send(2)]], true);
    assert_eq!(mismatches.len(), 4, "at the API and back, {mismatches:?}");
    assert!(run(vec![vec![send(1), send(2)]], false).is_empty());
}
