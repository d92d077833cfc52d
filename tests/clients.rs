//! A keyed set of providers and the per-client layer: one lookup and one
//! exchange per new client under a herd, clients that never wait on each
//! other, eviction by size and by idle time, failures that stay with their
//! client, rotation, and the request path's allocations.

mod common;

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Waker};
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use routera_auth::clients::{CredentialSource, CredentialsError, MissingClientKey, TokenProviders};
use routera_auth::{
    BoxError, ClientCredentials, RetryOnUnauthorized, RouteraAuthLayer, TokenError, TokenErrorKind,
    TokenProvider,
};
use routera_auth_test::MockExchange;
use tokio::sync::Semaphore;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

const HOUR: Duration = Duration::from_secs(3600);

/// The key of a request: which tenant it is for.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
struct Tenant(u32);

fn credentials(tenant: u32, version: u32) -> ClientCredentials {
    ClientCredentials::new(
        format!("tenant-{tenant}"),
        format!("secret-{tenant}-v{version}"),
    )
}

/// A credential source over a table the test edits: the version of each
/// tenant's secret (1 unless set), failing for tenants marked missing, and
/// counting its lookups per tenant.
#[derive(Clone, Default)]
struct Secrets {
    versions: Arc<Mutex<HashMap<u32, u32>>>,
    missing: Arc<Mutex<Vec<u32>>>,
    lookups: Arc<Mutex<HashMap<u32, usize>>>,
    /// Lookups for this tenant wait for a permit, when set.
    gate: Option<(u32, Arc<Semaphore>)>,
    delay: Duration,
}

impl Secrets {
    fn source(&self) -> CredentialSource<Tenant> {
        let secrets = self.clone();
        CredentialSource::from_fn(move |Tenant(tenant)| {
            let secrets = secrets.clone();
            async move {
                *secrets.lookups.lock().unwrap().entry(tenant).or_default() += 1;
                if let Some((gated, gate)) = &secrets.gate
                    && *gated == tenant
                {
                    drop(gate.acquire().await);
                }
                if !secrets.delay.is_zero() {
                    tokio::time::sleep(secrets.delay).await;
                }
                if secrets.missing.lock().unwrap().contains(&tenant) {
                    return Err(std::io::Error::other(format!(
                        "no secret for tenant {tenant}"
                    )));
                }
                let version = secrets.versions.lock().unwrap().get(&tenant).copied();
                Ok(credentials(tenant, version.unwrap_or(1)))
            }
        })
    }

    fn lookups(&self, tenant: u32) -> usize {
        self.lookups
            .lock()
            .unwrap()
            .get(&tenant)
            .copied()
            .unwrap_or(0)
    }
}

fn tenant_of(request: &Request<()>) -> Option<Tenant> {
    request.extensions().get::<Tenant>().copied()
}

fn request_for(tenant: u32) -> Request<()> {
    let mut request = Request::new(());
    request.extensions_mut().insert(Tenant(tenant));
    request
}

/// An inner service that answers with the request's `Authorization`
/// header, counting its calls.
fn echo(
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<()>,
    Response = Response<String>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<String>, Infallible>>,
> + Clone {
    service_fn(move |request: Request<()>| {
        calls.fetch_add(1, Ordering::SeqCst);
        let authorization = request.headers()[AUTHORIZATION]
            .to_str()
            .unwrap()
            .to_owned();
        std::future::ready(Ok(Response::new(authorization)))
    })
}

/// The per-client layer over `providers`, on [`echo`], the tenant read
/// from the request's extension.
fn api(
    providers: &TokenProviders<Tenant>,
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<()>,
    Response = Response<String>,
    Error = BoxError,
    Future = impl Future<Output = Result<Response<String>, BoxError>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    RouteraAuthLayer::per_client(providers.clone(), tenant_of).layer(echo(calls))
}

/// The `Authorization` of a request for `tenant` through `api`.
async fn send<S>(api: &S, tenant: u32) -> Result<String, BoxError>
where
    S: Service<Request<()>, Response = Response<String>, Error = BoxError> + Clone,
{
    Ok(api.clone().oneshot(request_for(tenant)).await?.into_body())
}

#[tokio::test(start_paused = true)]
async fn a_herd_on_a_new_client_makes_one_lookup_and_one_exchange() {
    let exchange = MockExchange::new(HOUR).with_delay(Duration::from_millis(50));
    let secrets = Secrets {
        delay: Duration::from_millis(20),
        ..Secrets::default()
    };
    let providers = TokenProviders::new(exchange.clone(), secrets.source());
    let calls = Arc::new(AtomicUsize::new(0));
    let api = api(&providers, calls.clone());

    let herd: Vec<_> = (0..1_000)
        .map(|i| {
            tokio::spawn(
                api.clone()
                    .oneshot(request_for(if i % 2 == 0 { 1 } else { 2 })),
            )
        })
        .collect();
    for (i, request) in herd.into_iter().enumerate() {
        let response = request.await.unwrap().unwrap();
        let expected = exchange
            .credentials_seen()
            .iter()
            .position(|seen| seen.client_id() == format!("tenant-{}", 1 + i % 2))
            .map(|n| format!("Bearer token-{}", n + 1))
            .unwrap();
        assert_eq!(response.body(), &expected);
    }
    assert_eq!(secrets.lookups(1), 1);
    assert_eq!(secrets.lookups(2), 1);
    assert_eq!(exchange.calls(), 2, "one exchange per client");
    assert_eq!(calls.load(Ordering::SeqCst), 1_000);
    providers.run_pending_tasks();
    assert_eq!(providers.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_client_whose_lookup_hangs_holds_no_other_client_back() {
    let gate = Arc::new(Semaphore::new(0));
    let secrets = Secrets {
        gate: Some((1, gate.clone())),
        ..Secrets::default()
    };
    let exchange = MockExchange::new(HOUR);
    let providers = TokenProviders::new(exchange.clone(), secrets.source());
    let api = api(&providers, Arc::default());

    // Tenant 1's lookup is held at the gate.
    let held: Vec<_> = (0..10)
        .map(|_| {
            let api = api.clone();
            tokio::spawn(async move { send(&api, 1).await })
        })
        .collect();
    while secrets.lookups(1) == 0 {
        tokio::task::yield_now().await;
    }
    // Tenants 2 and 3 are served meanwhile.
    assert_eq!(send(&api, 2).await.unwrap(), "Bearer token-1");
    assert_eq!(send(&api, 3).await.unwrap(), "Bearer token-2");
    assert!(held.iter().all(|request| !request.is_finished()));

    gate.add_permits(1);
    for request in held {
        assert_eq!(request.await.unwrap().unwrap(), "Bearer token-3");
    }
    assert_eq!(secrets.lookups(1), 1);
}

#[tokio::test(start_paused = true)]
async fn failures_stay_with_their_client() {
    let secrets = Secrets::default();
    secrets.missing.lock().unwrap().push(3);
    // Tenant 4's exchange fails: the token endpoint rejects it.
    let good = MockExchange::new(HOUR);
    let rejecting = MockExchange::new(HOUR);
    rejecting.fail_until(
        tokio::time::Instant::now() + HOUR,
        TokenError::new(TokenErrorKind::InvalidClient),
    );
    let providers = TokenProviders::builder_with(secrets.source(), {
        let (good, rejecting) = (good.clone(), rejecting.clone());
        move |tenant: &Tenant, credentials| match tenant.0 {
            4 => TokenProvider::new(rejecting.clone(), credentials),
            _ => TokenProvider::new(good.clone(), credentials),
        }
    })
    .build();
    let calls = Arc::new(AtomicUsize::new(0));
    let api = api(&providers, calls.clone());

    let missing = send(&api, 3).await.unwrap_err();
    let error = missing
        .downcast_ref::<CredentialsError>()
        .expect("a CredentialsError");
    let cause = std::error::Error::source(error).unwrap().to_string();
    assert_eq!(cause, "no secret for tenant 3");
    let rejected = send(&api, 4).await.unwrap_err();
    let error = rejected.downcast_ref::<TokenError>().expect("a TokenError");
    assert_eq!(error.kind(), TokenErrorKind::InvalidClient);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "no request was sent for them"
    );

    // Every other client is served as if nothing happened.
    for tenant in [1, 2, 5] {
        assert!(
            send(&api, tenant)
                .await
                .unwrap()
                .starts_with("Bearer token-")
        );
    }
    assert_eq!(good.calls(), 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(
        !providers.contains(&Tenant(3)),
        "a failed lookup builds no provider"
    );

    // Once the source knows tenant 3, its next request after the pause
    // is served.
    secrets.missing.lock().unwrap().clear();
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(send(&api, 3).await.unwrap(), "Bearer token-4");
    assert_eq!(secrets.lookups(3), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failed_lookup_is_the_answer_for_a_pause_that_doubles_up_to_the_recheck_interval() {
    let secrets = Secrets::default();
    secrets.missing.lock().unwrap().push(3);
    let providers = TokenProviders::builder(MockExchange::new(HOUR), secrets.source())
        .recheck_interval(Duration::from_secs(4))
        .build();
    let api = api(&providers, Arc::default());
    let start = tokio::time::Instant::now();
    // A request every 100 ms for 12 s: lookups at 0, 1, 3 (2 s after),
    // 7 and 11 s (4 s after, the interval), and the error every time.
    let mut lookups_at = Vec::new();
    while start.elapsed() < Duration::from_secs(12) {
        let before = secrets.lookups(3);
        let error = send(&api, 3).await.unwrap_err();
        assert!(error.is::<CredentialsError>(), "{error}");
        if secrets.lookups(3) > before {
            lookups_at.push(start.elapsed().as_millis());
        }
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert_eq!(lookups_at, [0, 1_000, 3_000, 7_000, 11_000]);
    assert!(!providers.contains(&Tenant(3)));

    // Found at last: served at the end of the pause.
    secrets.missing.lock().unwrap().clear();
    tokio::time::advance(Duration::from_secs(4)).await;
    assert_eq!(send(&api, 3).await.unwrap(), "Bearer token-1");
    assert_eq!(secrets.lookups(3), 6);

    // A success starts the count over: removed and missing again, the
    // client is looked up again 1 s after its next failure.
    providers.remove(&Tenant(3));
    secrets.missing.lock().unwrap().push(3);
    send(&api, 3).await.unwrap_err();
    tokio::time::advance(Duration::from_millis(900)).await;
    send(&api, 3).await.unwrap_err();
    assert_eq!(secrets.lookups(3), 7);
    tokio::time::advance(Duration::from_millis(100)).await;
    send(&api, 3).await.unwrap_err();
    assert_eq!(secrets.lookups(3), 8);
}

#[tokio::test(start_paused = true)]
async fn clients_whose_lookup_fails_take_no_place_from_a_provider() {
    let exchange = MockExchange::new(HOUR);
    let secrets = Secrets::default();
    let providers = TokenProviders::builder(exchange.clone(), secrets.source())
        .max_clients(2)
        .build();
    let api = api(&providers, Arc::default());
    send(&api, 1).await.unwrap();
    send(&api, 2).await.unwrap();
    // Requests for unknown tenants, some again and again, some once.
    secrets.missing.lock().unwrap().extend(100..120);
    for round in 0..10 {
        for tenant in [100, 101, 102 + round] {
            let error = send(&api, tenant).await.unwrap_err();
            assert!(error.is::<CredentialsError>(), "{error}");
            providers.run_pending_tasks();
        }
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert!(providers.contains(&Tenant(1)) && providers.contains(&Tenant(2)));
    assert_eq!(providers.len(), 2);
    assert_eq!(send(&api, 1).await.unwrap(), "Bearer token-1");
    assert_eq!(send(&api, 2).await.unwrap(), "Bearer token-2");
    assert_eq!(
        exchange.calls(),
        2,
        "no provider was evicted and built again"
    );
}

#[tokio::test(start_paused = true)]
async fn new_credentials_for_a_client_whose_lookup_failed_are_looked_up_at_once() {
    let secrets = Secrets::default();
    secrets.missing.lock().unwrap().push(3);
    let providers = TokenProviders::new(MockExchange::new(HOUR), secrets.source());
    let api = api(&providers, Arc::default());
    send(&api, 3).await.unwrap_err();
    // The secret is created, and the set told so: no pause to wait out.
    secrets.missing.lock().unwrap().clear();
    assert!(!providers.set_credentials(&Tenant(3), credentials(3, 1)));
    assert_eq!(send(&api, 3).await.unwrap(), "Bearer token-1");
    assert_eq!(secrets.lookups(3), 2);
}

#[tokio::test(start_paused = true)]
async fn a_herd_on_a_client_whose_lookup_fails_shares_one_lookup_and_its_error() {
    let secrets = Secrets {
        delay: Duration::from_millis(20),
        ..Secrets::default()
    };
    secrets.missing.lock().unwrap().push(3);
    let exchange = MockExchange::new(HOUR);
    let providers = TokenProviders::new(exchange.clone(), secrets.source());
    let calls = Arc::new(AtomicUsize::new(0));
    let api = api(&providers, calls.clone());

    let herd: Vec<_> = (0..100)
        .map(|_| tokio::spawn(api.clone().oneshot(request_for(3))))
        .collect();
    for request in herd {
        let error = request.await.unwrap().unwrap_err();
        assert!(error.is::<CredentialsError>(), "{error}");
    }
    assert_eq!(
        secrets.lookups(3),
        1,
        "one lookup, its error for every request"
    );
    assert_eq!(exchange.calls(), 0);
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    // The failure is the answer for a second, with no new lookup.
    let error = send(&api, 3).await.unwrap_err();
    assert!(error.is::<CredentialsError>(), "{error}");
    assert_eq!(secrets.lookups(3), 1);
    assert!(!providers.contains(&Tenant(3)));
}

/// With no pause after a failed lookup (a recheck interval of 0), the
/// requests that waited on it still share its error.
#[tokio::test(start_paused = true)]
async fn without_a_pause_a_herd_still_shares_its_failed_lookup() {
    let secrets = Secrets {
        delay: Duration::from_millis(20),
        ..Secrets::default()
    };
    secrets.missing.lock().unwrap().push(3);
    let providers = TokenProviders::builder(MockExchange::new(HOUR), secrets.source())
        .recheck_interval(Duration::ZERO)
        .build();
    let api = api(&providers, Arc::default());
    let herd: Vec<_> = (0..100)
        .map(|_| tokio::spawn(api.clone().oneshot(request_for(3))))
        .collect();
    for request in herd {
        let error = request.await.unwrap().unwrap_err();
        assert!(error.is::<CredentialsError>(), "{error}");
    }
    assert_eq!(secrets.lookups(3), 1);
    // The next request asks again.
    send(&api, 3).await.unwrap_err();
    assert_eq!(secrets.lookups(3), 2);
}

#[tokio::test(start_paused = true)]
async fn a_request_naming_no_client_is_refused_and_not_sent() {
    let providers = TokenProviders::new(MockExchange::new(HOUR), Secrets::default().source());
    let calls = Arc::new(AtomicUsize::new(0));
    let api = api(&providers, calls.clone());
    let error = api.oneshot(Request::new(())).await.unwrap_err();
    assert!(error.is::<MissingClientKey>(), "{error}");
    assert!(
        error.to_string().contains("names no Routera client"),
        "{error}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert!(providers.is_empty());
}

/// Not the least recently used: tenant 1, used again, is kept over tenant
/// 2, used once, though tenant 2 was used last (S3-FIFO: a new client is
/// on probation until the set needs its place).
#[tokio::test(start_paused = true)]
async fn beyond_max_clients_a_client_used_once_is_evicted_before_one_used_again() {
    let exchange = MockExchange::new(HOUR);
    let secrets = Secrets::default();
    let providers = TokenProviders::builder(exchange.clone(), secrets.source())
        .max_clients(2)
        .build();
    let api = api(&providers, Arc::default());

    for tenant in [1, 1, 2, 3] {
        send(&api, tenant).await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(providers.len(), 2);
    assert!(providers.contains(&Tenant(1)), "used again: kept");
    assert!(!providers.contains(&Tenant(2)), "used once: evicted");
    assert!(providers.contains(&Tenant(3)), "new: on probation");
    assert_eq!(exchange.calls(), 3);

    // The next request for tenant 2 builds a new provider: a lookup and an
    // exchange.
    assert_eq!(send(&api, 2).await.unwrap(), "Bearer token-4");
    assert_eq!(secrets.lookups(2), 2);
    assert_eq!(exchange.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_client_idle_past_the_timeout_is_dropped_and_a_busy_one_kept() {
    let exchange = MockExchange::new(HOUR);
    let secrets = Secrets::default();
    let providers = TokenProviders::builder(exchange.clone(), secrets.source())
        .idle_timeout(Duration::from_secs(60))
        .build();
    let api = api(&providers, Arc::default());

    send(&api, 1).await.unwrap();
    // Tenant 2 is used every 20 s; tenant 1 never again.
    for _ in 0..4 {
        send(&api, 2).await.unwrap();
        tokio::time::sleep(Duration::from_secs(20)).await;
    }
    // 80 s: tenant 1 has been idle past 60 s: never used again, though
    // kept (no timer drops it) until run_pending_tasks, a request for it
    // or the bound.
    assert!(!providers.contains(&Tenant(1)), "idle: not used again");
    assert!(providers.get(&Tenant(1)).is_none());
    assert_eq!(providers.len(), 2);
    providers.run_pending_tasks();
    assert!(providers.contains(&Tenant(2)), "busy: kept");
    assert_eq!(providers.len(), 1, "idle: dropped");
    assert_eq!(exchange.calls(), 2);

    send(&api, 1).await.unwrap();
    assert_eq!(secrets.lookups(1), 2, "a new provider for the next request");
    assert_eq!(exchange.calls(), 3);
    assert_eq!(secrets.lookups(2), 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_in_flight_across_an_eviction_completes_with_its_token() {
    // Tenant 1's exchanges wait at a gate; tenant 2's answer at once.
    let gated = MockExchange::new(HOUR).gated();
    let open = MockExchange::new(HOUR);
    let secrets = Secrets::default();
    let providers = TokenProviders::builder_with(secrets.source(), {
        let (gated, open) = (gated.clone(), open.clone());
        move |tenant: &Tenant, credentials| match tenant.0 {
            1 => TokenProvider::new(gated.clone(), credentials),
            _ => TokenProvider::new(open.clone(), credentials),
        }
    })
    .max_clients(2)
    .build();
    let api = api(&providers, Arc::default());
    // Tenant 3 holds one place, used again and again.
    for _ in 0..3 {
        assert_eq!(send(&api, 3).await.unwrap(), "Bearer token-1");
    }

    // Tenant 1's request waits for its exchange...
    let in_flight = tokio::spawn({
        let api = api.clone();
        async move { send(&api, 1).await }
    });
    gated.wait_for_calls(1).await;
    // ...while tenant 2 takes the other place: tenant 1, new and unused
    // since, is evicted.
    assert_eq!(send(&api, 2).await.unwrap(), "Bearer token-2");
    assert!(!providers.contains(&Tenant(1)), "evicted by size");
    assert!(providers.contains(&Tenant(2)) && providers.contains(&Tenant(3)));

    gated.open_gate();
    assert_eq!(in_flight.await.unwrap().unwrap(), "Bearer token-1");
    // The next request builds a new provider, with its own exchange.
    assert_eq!(send(&api, 1).await.unwrap(), "Bearer token-2");
    assert_eq!(secrets.lookups(1), 2);
    assert_eq!(gated.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_client_removed_while_its_provider_is_built_is_built_again_by_the_next_request() {
    let exchange = MockExchange::new(HOUR);
    let secrets = Secrets::default();
    let set: Arc<OnceLock<TokenProviders<Tenant>>> = Arc::default();
    let providers = TokenProviders::builder_with(secrets.source(), {
        let (set, exchange) = (Arc::clone(&set), exchange.clone());
        move |tenant: &Tenant, credentials| {
            // Removed (or evicted) between its lookup and its first use.
            if let Some(providers) = set.get() {
                providers.remove(tenant);
            }
            TokenProvider::new(exchange.clone(), credentials)
        }
    })
    .build();
    let _ = set.set(providers.clone());
    let api = api(&providers, Arc::default());

    // The request that built it is served by it...
    assert_eq!(send(&api, 1).await.unwrap(), "Bearer token-1");
    // ...but the request path does not keep what the set dropped.
    assert!(!providers.contains(&Tenant(1)));
    assert_eq!(send(&api, 1).await.unwrap(), "Bearer token-2");
    assert_eq!(secrets.lookups(1), 2);
}

#[tokio::test(start_paused = true)]
async fn a_request_in_flight_across_a_removal_completes_with_its_token() {
    let exchange = MockExchange::new(HOUR).gated();
    let secrets = Secrets::default();
    let providers = TokenProviders::new(exchange.clone(), secrets.source());
    let api = api(&providers, Arc::default());

    let in_flight = tokio::spawn({
        let api = api.clone();
        async move { send(&api, 1).await }
    });
    exchange.wait_for_calls(1).await;
    providers.remove(&Tenant(1));
    providers.run_pending_tasks();
    assert!(!providers.contains(&Tenant(1)));

    exchange.open_gate();
    assert_eq!(in_flight.await.unwrap().unwrap(), "Bearer token-1");
    assert_eq!(send(&api, 1).await.unwrap(), "Bearer token-2");
    assert_eq!(secrets.lookups(1), 2);
}

#[tokio::test(start_paused = true)]
async fn set_credentials_rotates_one_client_only() {
    let exchange = MockExchange::new(HOUR);
    let providers = TokenProviders::new(exchange.clone(), Secrets::default().source());
    let api = api(&providers, Arc::default());
    send(&api, 1).await.unwrap();
    send(&api, 2).await.unwrap();

    assert!(providers.set_credentials(&Tenant(1), credentials(1, 2)));
    assert!(!providers.set_credentials(&Tenant(9), credentials(9, 2)));
    let provider = providers.get(&Tenant(1)).unwrap();
    provider.refresh().await.unwrap();
    let seen = exchange.credentials_seen();
    assert_eq!(seen[2], credentials(1, 2));
    // Tenant 2 keeps its token and its credentials.
    assert_eq!(send(&api, 2).await.unwrap(), "Bearer token-2");
    assert_eq!(exchange.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_401_looks_the_credentials_up_again_and_a_new_secret_rotates_the_client() {
    let exchange = MockExchange::new(HOUR);
    let secrets = Secrets::default();
    let providers = TokenProviders::new(exchange.clone(), secrets.source());
    // The API refuses the token the test names.
    let refused = Arc::new(Mutex::new(String::new()));
    let inner = service_fn({
        let refused = refused.clone();
        move |request: Request<()>| {
            let authorization = request.headers()[AUTHORIZATION]
                .to_str()
                .unwrap()
                .to_owned();
            let mut response = Response::new(authorization.clone());
            if authorization == *refused.lock().unwrap() {
                *response.status_mut() = StatusCode::UNAUTHORIZED;
            }
            std::future::ready(Ok::<_, Infallible>(response))
        }
    });
    let api = ServiceBuilder::new()
        .retry(RetryOnUnauthorized::new())
        .layer(RouteraAuthLayer::per_client(providers.clone(), tenant_of))
        .service(inner);
    assert_eq!(send(&api, 2).await.unwrap(), "Bearer token-1");
    assert_eq!(send(&api, 1).await.unwrap(), "Bearer token-2");

    // Tenant 1's secret is rotated in the source, and its token revoked.
    secrets.versions.lock().unwrap().insert(1, 2);
    *refused.lock().unwrap() = "Bearer token-2".to_owned();
    let retried = api.clone().oneshot(request_for(1)).await.unwrap();
    assert_eq!(retried.status(), StatusCode::OK);
    assert_eq!(
        retried.body(),
        "Bearer token-3",
        "retried once with a new token"
    );
    // The 401 asked the source again, in the background.
    for _ in 0..100 {
        if secrets.lookups(1) == 2 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(secrets.lookups(1), 2);
    let provider = providers.get(&Tenant(1)).unwrap();
    provider.refresh().await.unwrap();
    assert_eq!(exchange.credentials_seen().last(), Some(&credentials(1, 2)));
    // Tenant 2 was never touched.
    assert_eq!(secrets.lookups(2), 1);
    assert_eq!(send(&api, 2).await.unwrap(), "Bearer token-1");
}

#[tokio::test(start_paused = true)]
async fn a_storm_of_401s_looks_the_credentials_up_once_per_interval() {
    let exchange = MockExchange::new(HOUR);
    let secrets = Secrets::default();
    let providers = TokenProviders::builder(exchange.clone(), secrets.source())
        .recheck_interval(Duration::from_secs(10))
        .build();
    let unauthorized = service_fn(|_: Request<()>| {
        let mut response = Response::new(String::new());
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let api = RouteraAuthLayer::per_client(providers.clone(), tenant_of).layer(unauthorized);
    for _ in 0..50 {
        let response = api.clone().oneshot(request_for(1)).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        tokio::task::yield_now().await;
    }
    assert_eq!(secrets.lookups(1), 2, "the first lookup and one recheck");
    tokio::time::sleep(Duration::from_secs(10)).await;
    api.clone().oneshot(request_for(1)).await.unwrap();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(secrets.lookups(1), 3);
}

/// A request with a fresh token allocates nothing, however long since its
/// client's last request (within the idle timeout).
#[test]
fn a_request_with_a_fresh_token_allocates_nothing() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let providers = TokenProviders::new(MockExchange::new(HOUR), Secrets::default().source());
    for tenant in 0..100 {
        let provider = runtime
            .block_on(providers.provider(&Tenant(tenant)))
            .unwrap();
        runtime.block_on(provider.token()).unwrap();
    }
    let _context = runtime.enter();
    let inner = service_fn(|request: Request<()>| {
        assert!(request.headers()[AUTHORIZATION].is_sensitive());
        std::future::ready(Ok::<_, Infallible>(Response::new(())))
    });
    let mut service = RouteraAuthLayer::per_client(providers, tenant_of).layer(inner);
    let mut cx = Context::from_waker(Waker::noop());
    let mut requests: Vec<_> = (0..20_100)
        .map(|i| {
            let mut request = request_for(i % 100);
            request.headers_mut().reserve(4);
            request
        })
        .collect();
    let mut send = |request: Request<()>| common::call_now(&mut service, request);
    // Warm-up: thread-local state of the runtime is set up on first use.
    for request in requests.drain(..100) {
        send(request);
    }
    // Requests in a row: nothing.
    let count = requests.len() as u64 / 2;
    let mut requests = requests.into_iter();
    let measured = allocation_counter::measure(|| {
        for request in requests.by_ref().take(count as usize) {
            send(request);
        }
    });
    println!(
        "{count} requests with a fresh token: {} allocations ({measured:?})",
        measured.count_total
    );
    assert_eq!(measured.count_total, 0, "{measured:?}");
    // A second between each client's uses: nothing either (the cache
    // marks a client used in place, with no log of reads to apply).
    let mut spaced = 0;
    for _ in 0..count / 100 {
        runtime.block_on(tokio::time::advance(Duration::from_secs(1)));
        spaced += allocation_counter::measure(|| {
            for request in requests.by_ref().take(100) {
                send(request);
            }
        })
        .count_total;
    }
    println!("{count} requests, a second apart per client: {spaced} allocations");
    assert_eq!(spaced, 0);
    // The counter does see allocations: a new client's first request
    // allocates.
    let first = allocation_counter::measure(|| {
        let future = pin!(service.call(request_for(1_000)));
        let _ = future.poll(&mut cx);
    });
    assert!(first.count_total > 0, "{first:?}");
}
