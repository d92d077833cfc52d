//! Sends a number of requests through one stack and exits: run under
//! `valgrind --tool=callgrind` by `benches/callgrind.sh`, which turns the
//! instruction counts of two request counts into instructions per request.
//! Instruction counts are steady on a shared machine where times are not.
//!
//! Usage: `instructions <stack>/<layer> <requests>`, where `<stack>` is
//! `noop` (a no-op inner service) or `real` (a hyper-util client against a
//! hyper server on 127.0.0.1, one request at a time on one connection) and
//! `<layer>` is `none`, `add_authorization` or `routera_auth`; or
//! `noop/routera_auth_keyed` and `noop/per_client`: each request for the
//! next of 1,000 clients (an extension), through the single-provider layer
//! (which ignores it) or the per-client layer.

use std::process::ExitCode;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use routera_auth::RouteraAuthLayer;
use routera_auth_benches::{
    AUTH_PATH, Noop, TOKEN, key_of, looped, looped_keys, start_server, warm_provider,
    warm_providers,
};
use tower::{Layer, Service, ServiceExt};
use tower_http::auth::AddAuthorizationLayer;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(variant), Some(Ok(requests))) = (args.get(1), args.get(2).map(|n| n.parse::<u64>()))
    else {
        eprintln!(
            "usage: instructions <noop|real>/<none|add_authorization|routera_auth> <requests>, \
             or noop/<routera_auth_keyed|per_client> <requests>"
        );
        return ExitCode::FAILURE;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let provider = warm_provider(&runtime);
    match variant.as_str() {
        "noop/none" => repeat(requests, looped(&mut Noop)),
        "noop/add_authorization" => {
            let mut service = AddAuthorizationLayer::bearer(TOKEN).layer(Noop);
            repeat(requests, looped(&mut service));
        }
        "noop/routera_auth" => {
            let mut service = RouteraAuthLayer::new(provider).layer(Noop);
            repeat(requests, looped(&mut service));
        }
        "noop/routera_auth_keyed" | "noop/per_client" => {
            keyed(variant, requests, &runtime, provider);
        }
        real => runtime.block_on(async {
            let addr = start_server().await;
            let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
            let uri: Uri = format!("http://{addr}{AUTH_PATH}").parse().expect("uri");
            match real {
                "real/none" => {
                    let plain: Uri = format!("http://{addr}/").parse().expect("uri");
                    sequential(client, &plain, requests, StatusCode::OK).await;
                }
                "real/add_authorization" => {
                    let service = AddAuthorizationLayer::bearer(TOKEN).layer(client);
                    sequential(service, &uri, requests, StatusCode::OK).await;
                }
                "real/routera_auth" => {
                    let service = RouteraAuthLayer::new(provider).layer(client);
                    sequential(service, &uri, requests, StatusCode::OK).await;
                }
                other => panic!("unknown variant {other}"),
            }
        }),
    }
    ExitCode::SUCCESS
}

/// Clients of the per-client variants.
const KEYS: u32 = 1_000;

/// The per-client variants, apart so that the code of the others stays as
/// it was.
#[inline(never)]
fn keyed(
    variant: &str,
    requests: u64,
    runtime: &tokio::runtime::Runtime,
    provider: routera_auth::TokenProvider,
) {
    if variant == "noop/per_client" {
        let providers = warm_providers(runtime, KEYS);
        let mut service = RouteraAuthLayer::per_client(providers, key_of).layer(Noop);
        repeat(requests, looped_keys(&mut service, KEYS, 0));
    } else {
        let mut service = RouteraAuthLayer::new(provider).layer(Noop);
        repeat(requests, looped_keys(&mut service, KEYS, 0));
    }
}

fn repeat(requests: u64, mut send: impl FnMut()) {
    for _ in 0..requests {
        send();
    }
}

/// `requests` GET requests to `uri`, one after the other, each body read to
/// the end so the connection is reused.
async fn sequential<S, B>(mut service: S, uri: &Uri, requests: u64, expected: StatusCode)
where
    S: Service<Request<Empty<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    for _ in 0..requests {
        let request = Request::get(uri.clone())
            .body(Empty::new())
            .expect("request");
        let response = service
            .ready()
            .await
            .expect("ready")
            .call(request)
            .await
            .expect("response");
        assert_eq!(response.status(), expected);
        response.into_body().collect().await.expect("body");
    }
}
