//! `RouteraAuthLayer` on a real tonic stack: a tonic `Channel` (HTTP/2,
//! tower `Buffer` inside) wrapped in the layer, the generated `HealthClient`
//! on top, against a real tonic server whose interceptor accepts only Bearer
//! tokens the in-process emulator issued.
//!
//! Everything listens on `127.0.0.1:0`; nothing sleeps. Each test is bounded
//! by a timeout so that a deadlock fails instead of hanging.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use routera_auth::{BoxError, RouteraAuthLayer};
use routera_auth_test::{Emulator, TokenValidator};
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::ServiceBuilder;

/// Upper bound on any one test; only reached if something deadlocks.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The HTTP status and `grpc-status` header of a response.
type SeenResponse = (http::StatusCode, Option<String>);

/// What the server's interceptor decided, for assertions.
#[derive(Default)]
struct Verdicts {
    accepted: AtomicUsize,
    rejected: AtomicUsize,
}

/// A tonic server on `127.0.0.1:0` serving `grpc.health.v1.Health` behind an
/// interceptor that accepts only `authorization: Bearer <token>` with a token
/// the emulator issued (unexpired, unrevoked), and answers
/// `Status::unauthenticated` to anything else.
async fn start_health_server(
    validator: TokenValidator,
) -> Result<(SocketAddr, Arc<Verdicts>), BoxError> {
    let verdicts = Arc::new(Verdicts::default());
    let counted = Arc::clone(&verdicts);
    let check_auth = move |request: Request<()>| -> Result<Request<()>, Status> {
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok());
        match authorization {
            Some(value) if validator.is_valid_authorization(value) => {
                counted.accepted.fetch_add(1, Ordering::SeqCst);
                Ok(request)
            }
            _ => {
                counted.rejected.fetch_add(1, Ordering::SeqCst);
                Err(Status::unauthenticated("missing or invalid bearer token"))
            }
        }
    };
    let (_reporter, health) = tonic_health::server::health_reporter();

    // Bound before the server task starts: the address is known and
    // connections queue in the backlog until it accepts them.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = Server::builder()
        .add_service(InterceptedService::new(health, check_auth))
        .serve_with_incoming(TcpIncoming::from(listener));
    tokio::spawn(async move {
        if let Err(err) = server.await {
            panic!("the tonic server failed: {err}");
        }
    });
    Ok((addr, verdicts))
}

async fn connect(addr: SocketAddr) -> Result<Channel, BoxError> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?)
}

fn overall_health() -> HealthCheckRequest {
    // The empty service name is the server as a whole, SERVING by default.
    HealthCheckRequest {
        service: String::new(),
    }
}

async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("the test deadlocked")
}

/// Test A: 2,000 concurrent RPCs through one layered `Channel`, which buffers
/// at most 1,024 requests. Every RPC must be served (the layer polls the
/// channel ready and sends the request through the very instance it polled,
/// else tower's `Buffer` panics or the call fails), and all of them must
/// share a single token exchange. (A layer that called a clone of the
/// channel instead makes every task panic with "`send_item` called without
/// first calling `poll_reserve`".)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_rpcs_share_one_token() -> Result<(), BoxError> {
    bounded(async {
        const RPCS: usize = 2_000;
        let emulator = Emulator::start().await?;
        let (addr, verdicts) = start_health_server(emulator.token_validator()).await?;
        let provider = emulator.provider();
        let channel = connect(addr).await?;
        let authenticated = ServiceBuilder::new()
            .layer(RouteraAuthLayer::new(provider.clone()))
            .service(channel);
        let client = HealthClient::new(authenticated);

        // Spawned all at once, before any token exists: every RPC starts
        // on the slow path and waits for the same exchange.
        let rpcs: Vec<_> = (0..RPCS)
            .map(|_| {
                let mut client = client.clone();
                tokio::spawn(async move { client.check(overall_health()).await })
            })
            .collect();
        let mut served = 0;
        for (i, rpc) in rpcs.into_iter().enumerate() {
            // A panic inside a task (tower's `Buffer` on a call without a
            // reserved slot) surfaces here as a `JoinError`.
            let response = rpc
                .await
                .map_err(|err| format!("RPC {i} panicked: {err}"))?
                .map_err(|status| format!("RPC {i} failed: {status}"))?;
            assert_eq!(
                response.get_ref().status(),
                ServingStatus::Serving,
                "RPC {i}"
            );
            served += 1;
        }

        assert_eq!(served, RPCS);
        assert_eq!(verdicts.accepted.load(Ordering::SeqCst), RPCS);
        assert_eq!(verdicts.rejected.load(Ordering::SeqCst), 0);
        assert_eq!(emulator.exchange_count(), 1, "one exchange for all RPCs");
        assert_eq!(provider.stats().exchanges, 1);
        Ok(())
    })
    .await
}

/// Test B: without the layer the same server rejects the same RPC, so test A
/// passes only because the layer attached a valid token.
#[tokio::test]
async fn rpc_without_the_layer_is_rejected() -> Result<(), BoxError> {
    bounded(async {
        let emulator = Emulator::start().await?;
        let (addr, verdicts) = start_health_server(emulator.token_validator()).await?;
        let mut client = HealthClient::new(connect(addr).await?);

        let status = client
            .check(overall_health())
            .await
            .expect_err("the interceptor must reject an RPC without a token");
        assert_eq!(status.code(), Code::Unauthenticated, "{status}");
        assert_eq!(verdicts.accepted.load(Ordering::SeqCst), 0);
        assert_eq!(verdicts.rejected.load(Ordering::SeqCst), 1);
        assert_eq!(emulator.exchange_count(), 0);
        Ok(())
    })
    .await
}

/// Test C: a revoked token is refused by the server, and the layer does
/// **not** notice.
///
/// A gRPC "unauthenticated" is not an HTTP 401: the server answers HTTP
/// `200 OK` with `grpc-status: 16` (UNAUTHENTICATED) in the headers of a
/// trailers-only response. `RouteraAuth` treats that like a 401 and
/// invalidates the token the call carried, so the next call fetches a new
/// one. (A status sent in the trailers of a response already under way is
/// not seen: that would take wrapping every response body.) The failed call
/// itself is not retried: gRPC bodies are streams and cannot be replayed.
#[tokio::test]
async fn a_revoked_token_fails_one_call_and_the_next_gets_a_new_token() -> Result<(), BoxError> {
    bounded(async {
        let emulator = Emulator::start().await?;
        let (addr, verdicts) = start_health_server(emulator.token_validator()).await?;
        let provider = emulator.provider();

        // Records the HTTP status and `grpc-status` header of each response,
        // as the auth layer sees them (this sits just inside it).
        let seen: Arc<Mutex<Vec<SeenResponse>>> = Arc::default();
        let record = Arc::clone(&seen);
        let authenticated = ServiceBuilder::new()
            .layer(RouteraAuthLayer::new(provider.clone()))
            .map_response(move |response: http::Response<tonic::body::Body>| {
                let grpc_status = response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned);
                record
                    .lock()
                    .unwrap()
                    .push((response.status(), grpc_status));
                response
            })
            .service(connect(addr).await?);
        let mut client = HealthClient::new(authenticated);

        let response = client.check(overall_health()).await?;
        assert_eq!(response.get_ref().status(), ServingStatus::Serving);
        assert_eq!(emulator.exchange_count(), 1);

        emulator.revoke_all();
        let status = client
            .check(overall_health())
            .await
            .expect_err("the server must refuse a revoked token");
        assert_eq!(status.code(), Code::Unauthenticated, "{status}");
        assert_eq!(verdicts.rejected.load(Ordering::SeqCst), 1);

        // What the layer saw: HTTP 200, the refusal only in `grpc-status`.
        let rejection = seen.lock().unwrap().last().cloned();
        assert_eq!(
            rejection,
            Some((http::StatusCode::OK, Some("16".to_owned()))),
            "a gRPC UNAUTHENTICATED is an HTTP 200 with grpc-status 16"
        );

        // The rejection invalidated the revoked token: the next call gets a
        // new one and is served.
        assert_eq!(provider.stats().invalidations, 1);
        let response = client.check(overall_health()).await?;
        assert_eq!(response.get_ref().status(), ServingStatus::Serving);
        assert_eq!(emulator.exchange_count(), 2);
        assert_eq!(verdicts.accepted.load(Ordering::SeqCst), 2);
        assert_eq!(verdicts.rejected.load(Ordering::SeqCst), 1);
        Ok(())
    })
    .await
}

/// A gRPC call whose body can be replayed (a buffered message on a hyper
/// HTTP/2 client) is retried by `RetryOnUnauthorized` after an
/// UNAUTHENTICATED, with a new token, as a 401 is.
#[tokio::test]
async fn a_refused_grpc_call_with_a_buffered_body_is_retried_with_a_new_token()
-> Result<(), BoxError> {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use routera_auth::RetryOnUnauthorized;
    use tower::ServiceExt;

    bounded(async {
        let emulator = Emulator::start().await?;
        let (addr, verdicts) = start_health_server(emulator.token_validator()).await?;
        let h2c = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http::<Full<Bytes>>();
        let api = ServiceBuilder::new()
            .retry(RetryOnUnauthorized::new())
            .layer(RouteraAuthLayer::new(emulator.provider()))
            .service(h2c);
        // `HealthCheckRequest { service: "" }`: an empty message in its
        // gRPC frame (not compressed, 0 bytes long).
        let check = || {
            http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        };
        // The call's `grpc-status`: in the headers of a trailers-only
        // answer, else in the trailers.
        let grpc_status = |response: http::Response<hyper::body::Incoming>| async move {
            if let Some(status) = response.headers().get("grpc-status") {
                return Ok::<_, BoxError>(status.to_str()?.to_owned());
            }
            let trailers = response.into_body().collect().await?.trailers().cloned();
            let status = trailers.and_then(|t| t.get("grpc-status").cloned());
            Ok(status.ok_or("no grpc-status")?.to_str()?.to_owned())
        };

        let first = api.clone().oneshot(check()?).await?;
        assert_eq!(grpc_status(first).await?, "0");

        emulator.revoke_all();
        let retried = api.clone().oneshot(check()?).await?;
        assert_eq!(grpc_status(retried).await?, "0", "retried with a new token");
        assert_eq!(verdicts.rejected.load(Ordering::SeqCst), 1);
        assert_eq!(verdicts.accepted.load(Ordering::SeqCst), 2);
        assert_eq!(emulator.exchange_count(), 2);
        Ok(())
    })
    .await
}

/// A tonic call's body is a stream that cannot be replayed: under
/// `RetryOnUnauthorized` a refused call is not retried (the policy has no
/// body to resend) and fails with UNAUTHENTICATED, and the next call gets a
/// new token.
#[tokio::test]
async fn a_refused_tonic_call_is_not_retried_and_the_next_gets_a_new_token() -> Result<(), BoxError>
{
    use routera_auth::RetryOnUnauthorized;
    use routera_auth::auth::empty_body_only;

    bounded(async {
        let emulator = Emulator::start().await?;
        let (addr, verdicts) = start_health_server(emulator.token_validator()).await?;
        let stack = ServiceBuilder::new()
            .retry(RetryOnUnauthorized::new().with_replay(empty_body_only::<tonic::body::Body>))
            .layer(RouteraAuthLayer::new(emulator.provider()))
            .service(connect(addr).await?);
        let mut client = HealthClient::new(stack);
        client.check(overall_health()).await?;

        emulator.revoke_all();
        let status = client
            .check(overall_health())
            .await
            .expect_err("a tonic call is not replayed");
        assert_eq!(status.code(), Code::Unauthenticated, "{status}");
        assert_eq!(verdicts.rejected.load(Ordering::SeqCst), 1, "sent once");

        let response = client.check(overall_health()).await?;
        assert_eq!(response.get_ref().status(), ServingStatus::Serving);
        assert_eq!(emulator.exchange_count(), 2);
        Ok(())
    })
    .await
}
