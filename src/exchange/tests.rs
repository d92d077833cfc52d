//! The exchange against a `tower_test` mock HTTP client: wire format,
//! parsing, error mapping, body limits.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_test::mock;

use super::*;
use crate::error::TokenErrorKind;

const WEIRD_SECRET: &str = "p: a+b/c&d%e=f g é";

/// The HTTP client under the exchange: a `tower_test` mock that answers
/// with `Response<B>`.
type MockHttp<B = Full<Bytes>> = mock::Mock<Request<Full<Bytes>>, Response<B>>;

/// What the mock answers a request with: a response, or a transport error.
type Answer<B = Full<Bytes>> = Result<Response<B>, BoxError>;

/// An HTTP request as the exchange sent it.
#[derive(Debug)]
struct Sent {
    method: http::Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

/// Runs one exchange of `request` through `configure(HttpTokenExchange::new(mock))`,
/// answering its HTTP request with `answer`: the result, and the request it
/// sent, checked to be the only one (no retry, no redirect followed).
async fn exchange_with<B>(
    configure: impl FnOnce(HttpTokenExchange<MockHttp<B>>) -> HttpTokenExchange<MockHttp<B>>,
    request: TokenRequest,
    answer: Answer<B>,
) -> (Result<Token, TokenError>, Sent)
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let (http, mut handle) = mock::pair();
    let exchange = configure(HttpTokenExchange::new(http));
    let respond = async {
        let (sent, respond) = handle
            .next_request()
            .await
            .expect("the exchange sends a request");
        match answer {
            Ok(response) => respond.send_response(response),
            Err(err) => respond.send_error(err),
        }
        let (parts, body) = sent.into_parts();
        let Ok(body) = body.collect().await;
        Sent {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body: body.to_bytes(),
        }
    };
    let (result, sent) = tokio::join!(exchange.oneshot(request), respond);
    // Every clone of the mock is dropped and nothing more was queued.
    assert!(
        matches!(handle.poll_request(), Poll::Ready(None)),
        "the exchange sent more than one HTTP request"
    );
    (result, sent)
}

fn response(status: u16, content_type: Option<&str>, body: &str) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(status);
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    builder
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

fn ok_response() -> Answer {
    Ok(response(
        200,
        Some("application/json"),
        r#"{"access_token":"tok-1","expires_in":3600,"token_type":"Bearer"}"#,
    ))
}

fn request(secret: &str) -> TokenRequest {
    TokenRequest::new(crate::ClientCredentials::new("client id+1", secret))
}

async fn exchange_once(
    status: u16,
    content_type: Option<&str>,
    body: &str,
) -> Result<Token, TokenError> {
    let answer = Ok(response(status, content_type, body));
    exchange_with(|exchange| exchange, request("secret"), answer)
        .await
        .0
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

#[tokio::test]
async fn request_body_auth_sends_the_contract_request() {
    let (token, sent) =
        exchange_with(|exchange| exchange, request(WEIRD_SECRET), ok_response()).await;
    let token = token.unwrap();
    assert_eq!(token.access_token().secret(), "tok-1");
    assert_eq!(
        token.expires_in(),
        Some(std::time::Duration::from_secs(3600))
    );

    assert_eq!(sent.method, http::Method::POST);
    assert_eq!(sent.uri, crate::defaults::TOKEN_URL);
    assert_eq!(
        sent.headers[header::CONTENT_TYPE],
        "application/x-www-form-urlencoded"
    );
    assert_eq!(sent.headers[header::ACCEPT], "application/json");
    assert_eq!(
        sent.headers[header::CONTENT_LENGTH],
        sent.body.len().to_string().as_str()
    );
    assert!(sent.headers.get(header::AUTHORIZATION).is_none());
    assert_eq!(
        form(&sent.body),
        [
            ("grant_type".to_owned(), "client_credentials".to_owned()),
            ("client_id".to_owned(), "client id+1".to_owned()),
            ("client_secret".to_owned(), WEIRD_SECRET.to_owned()),
        ]
    );
    // The exact bytes: the form serializer's encoding of every special character.
    assert_eq!(
        std::str::from_utf8(&sent.body).unwrap(),
        "grant_type=client_credentials&client_id=client+id%2B1\
         &client_secret=p%3A+a%2Bb%2Fc%26d%25e%3Df+g+%C3%A9"
    );
}

#[tokio::test]
async fn basic_auth_urlencodes_each_part_before_base64() {
    let (token, sent) = exchange_with(
        |exchange| exchange.with_auth_method(AuthMethod::BasicAuth),
        request(WEIRD_SECRET),
        ok_response(),
    )
    .await;
    token.unwrap();

    assert_eq!(&sent.body[..], b"grant_type=client_credentials");
    let authorization = &sent.headers[header::AUTHORIZATION];
    assert!(authorization.is_sensitive());
    let encoded = authorization
        .to_str()
        .unwrap()
        .strip_prefix("Basic ")
        .unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    let decoded = String::from_utf8(decoded).unwrap();
    assert_eq!(decoded, "client+id%2B1:p%3A+a%2Bb%2Fc%26d%25e%3Df+g+%C3%A9");
    // RFC 6749 §2.3.1 decoding: split at the first ':', then form-decode each half.
    let (id, secret) = decoded.split_once(':').unwrap();
    let decode = |s: &str| {
        form_urlencoded::parse(s.as_bytes())
            .next()
            .unwrap()
            .0
            .into_owned()
    };
    assert_eq!(decode(id), "client id+1");
    assert_eq!(decode(secret), WEIRD_SECRET);
}

#[test]
fn the_token_url_comes_from_routera_token_url_when_it_is_set() {
    let (http, _): (MockHttp, _) = mock::pair();
    let exchange = HttpTokenExchange::new(http);
    let env = |value: Option<&'static str>| {
        move |name: &'static str| {
            assert_eq!(name, "ROUTERA_TOKEN_URL");
            value
                .map(str::to_owned)
                .ok_or(std::env::VarError::NotPresent)
        }
    };

    let unset = exchange.clone().with_token_url_from(env(None)).unwrap();
    assert_eq!(unset.token_url(), crate::defaults::TOKEN_URL);
    let emulator = "http://127.0.0.1:4000/oauth2/token";
    let set = exchange.clone().with_token_url_from(env(Some(emulator)));
    assert_eq!(set.unwrap().token_url(), emulator);

    let error = exchange
        .clone()
        .with_token_url_from(env(Some("http://auth.example.com/oauth2/token")))
        .unwrap_err();
    assert_eq!(error.env_var(), Some("ROUTERA_TOKEN_URL"));
    assert_eq!(
        error.to_string(),
        "the environment variable ROUTERA_TOKEN_URL is not acceptable: the token URL must \
         use https: plain http is refused for host `auth.example.com` (it is accepted only \
         for localhost, 127.0.0.0/8 and [::1])"
    );
    let empty = exchange.with_token_url_from(env(Some("")));
    assert_eq!(empty.unwrap_err().env_var(), Some("ROUTERA_TOKEN_URL"));
}

#[tokio::test]
async fn token_url_can_be_changed_and_is_validated() {
    let (token, sent) = exchange_with(
        |exchange| {
            exchange
                .with_token_url("http://127.0.0.1:8080/oauth2/token")
                .unwrap()
        },
        request("s"),
        ok_response(),
    )
    .await;
    token.unwrap();
    assert_eq!(sent.uri, "http://127.0.0.1:8080/oauth2/token");

    let (http, _): (MockHttp, _) = mock::pair();
    let exchange = HttpTokenExchange::new(http);
    for accepted in [
        "https://auth.example.com/oauth2/token",
        "http://localhost:9000/oauth2/token",
        "http://127.0.0.2/token",
        "http://[::1]:8080/token",
    ] {
        assert!(
            exchange.clone().with_token_url(accepted).is_ok(),
            "{accepted}"
        );
    }
    for refused in [
        "http://auth.example.com/oauth2/token",
        "http://10.0.0.1/token",
        "ftp://127.0.0.1/token",
        "/oauth2/token",
        "not a url",
        "https://id:secret@auth.example.com/oauth2/token",
    ] {
        assert!(
            exchange.clone().with_token_url(refused).is_err(),
            "{refused}"
        );
    }
    let err = exchange.with_token_url("http://example.com/t").unwrap_err();
    assert!(err.to_string().contains("https"), "{err}");
    assert!(
        err.to_string().contains("`example.com`"),
        "names the refused host: {err}"
    );
}

#[tokio::test]
async fn error_statuses_map_to_typed_errors() {
    let cases = [
        (
            400,
            r#"{"error":"invalid_request","error_description":"grant_type missing"}"#,
            TokenErrorKind::InvalidRequest,
            Some("invalid_request"),
            false,
        ),
        (
            400,
            r#"{"error":"unsupported_grant_type"}"#,
            TokenErrorKind::InvalidRequest,
            Some("unsupported_grant_type"),
            false,
        ),
        (
            401,
            r#"{"error":"invalid_client","error_description":"Client authentication failed"}"#,
            TokenErrorKind::InvalidClient,
            Some("invalid_client"),
            false,
        ),
        (403, "", TokenErrorKind::UnexpectedStatus, None, false),
        (
            429,
            r#"{"error":"slow_down"}"#,
            TokenErrorKind::RateLimited,
            Some("slow_down"),
            true,
        ),
        (
            500,
            "<html><body>Internal error</body></html>",
            TokenErrorKind::ServerError,
            None,
            true,
        ),
        (502, "", TokenErrorKind::ServerError, None, true),
        (
            503,
            "Service Unavailable",
            TokenErrorKind::ServerError,
            None,
            true,
        ),
    ];
    for (status, body, kind, code, retryable) in cases {
        let err = exchange_once(status, Some("text/html"), body)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), kind, "{status} {body}");
        assert_eq!(err.status().map(|s| s.as_u16()), Some(status));
        assert_eq!(err.error_code(), code, "{status} {body}");
        assert_eq!(err.is_retryable(), retryable, "{status}");
        assert!(!err.to_string().contains("secret"), "{err}");
    }
    let err = exchange_once(
        401,
        None,
        r#"{"error":"invalid_client","error_description":"Client authentication failed"}"#,
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.error_description(),
        Some("Client authentication failed")
    );
    assert_eq!(
        err.to_string(),
        "the token endpoint rejected the client credentials \
         (HTTP 401 Unauthorized, invalid_client: Client authentication failed)"
    );
}

#[tokio::test]
async fn success_statuses_with_unusable_bodies_are_invalid_responses() {
    for body in [
        "",
        "<html>maintenance</html>",
        "{\"access_token\":",
        r#"{"expires_in":3600,"token_type":"Bearer"}"#,
        r#"{"access_token":"","expires_in":3600,"token_type":"Bearer"}"#,
        r#"{"access_token":"t","expires_in":3600,"token_type":"MAC"}"#,
        r#"{"access_token":"t","expires_in":-5,"token_type":"Bearer"}"#,
    ] {
        let err = exchange_once(200, Some("application/json"), body)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), TokenErrorKind::InvalidResponse, "{body}");
        assert_eq!(err.status(), Some(StatusCode::OK));
    }
    let token = exchange_once(
        200,
        None,
        r#"{"access_token":"t","expires_in":"120","token_type":"bearer"}"#,
    )
    .await
    .unwrap();
    assert_eq!(
        token.expires_in(),
        Some(std::time::Duration::from_secs(120))
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let redirect = Response::builder()
        .status(302)
        .header(header::LOCATION, "http://127.0.0.1:1/steal")
        .body(Full::new(Bytes::new()))
        .unwrap();
    // `exchange_with` checks that this is the only request.
    let (result, sent) = exchange_with(|exchange| exchange, request("s"), Ok(redirect)).await;
    let err = result.unwrap_err();
    assert_eq!(err.kind(), TokenErrorKind::UnexpectedStatus);
    assert_eq!(err.status(), Some(StatusCode::FOUND));
    assert_eq!(
        sent.uri,
        crate::defaults::TOKEN_URL,
        "one request, to the token URL"
    );
}

#[tokio::test]
async fn transport_errors_are_retryable() {
    let refused: Answer = Err(Box::new(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connection refused",
    )));
    let (result, _) = exchange_with(|exchange| exchange, request("s"), refused).await;
    let err = result.unwrap_err();
    assert_eq!(err.kind(), TokenErrorKind::Transport);
    assert!(err.is_retryable());
    assert!(std::error::Error::source(&err).is_some());
}

/// A body that streams 16 KiB chunks forever and counts what was pulled.
struct EndlessBody {
    pulled: Arc<AtomicUsize>,
}

const CHUNK: usize = 16 * 1024;

impl http_body::Body for EndlessBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.pulled.fetch_add(CHUNK, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'a'; CHUNK])))))
    }
}

/// A response of `status` with an [`EndlessBody`], declaring
/// `content_length` if given; and the count of bytes the body gave out.
fn endless_response(
    status: u16,
    content_length: Option<usize>,
) -> (Answer<EndlessBody>, Arc<AtomicUsize>) {
    let pulled = Arc::new(AtomicUsize::new(0));
    let mut response = Response::builder().status(status);
    if let Some(length) = content_length {
        response = response.header(header::CONTENT_LENGTH, length);
    }
    let body = EndlessBody {
        pulled: pulled.clone(),
    };
    (Ok(response.body(body).unwrap()), pulled)
}

#[tokio::test]
async fn bodies_over_64_kib_are_not_read_past_the_limit() {
    for status in [200, 500] {
        let (answer, pulled) = endless_response(status, None);
        let (result, _) = exchange_with(|exchange| exchange, request("s"), answer).await;
        let err = result.unwrap_err();
        let expected = if status == 200 {
            TokenErrorKind::InvalidResponse
        } else {
            TokenErrorKind::ServerError
        };
        assert_eq!(err.kind(), expected);
        assert!(
            err.to_string().contains("too large") || err.to_string().contains("larger than"),
            "{err}"
        );
        let pulled = pulled.load(Ordering::SeqCst);
        assert!(
            pulled <= parse::MAX_BODY_BYTES + CHUNK,
            "read {pulled} bytes"
        );
    }
}

#[tokio::test]
async fn a_declared_oversized_body_is_not_read_at_all() {
    let (answer, pulled) = endless_response(200, Some(10 * 1024 * 1024));
    let (result, _) = exchange_with(|exchange| exchange, request("s"), answer).await;
    let err = result.unwrap_err();
    assert_eq!(err.kind(), TokenErrorKind::InvalidResponse);
    assert_eq!(pulled.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_body_of_exactly_the_limit_is_read() {
    let padding = " ".repeat(parse::MAX_BODY_BYTES - 64);
    let body = format!(r#"{{"access_token":"t","expires_in":1,"token_type":"Bearer"}}{padding}"#);
    assert!(body.len() <= parse::MAX_BODY_BYTES);
    assert!(exchange_once(200, None, &body).await.is_ok());
}

#[tokio::test]
async fn the_secret_never_reaches_errors_or_debug() {
    let echo =
        format!(r#"{{"error":"invalid_client","error_description":"bad secret {WEIRD_SECRET}"}}"#);
    let (result, _) = exchange_with(
        |exchange| {
            assert!(!format!("{exchange:?}").contains(WEIRD_SECRET));
            exchange
        },
        request(WEIRD_SECRET),
        Ok(response(401, None, &echo)),
    )
    .await;
    let err = result.unwrap_err();
    for text in [err.to_string(), format!("{err:?}")] {
        assert!(!text.contains(WEIRD_SECRET), "{text}");
        assert!(text.contains("[redacted]"), "{text}");
    }
}
