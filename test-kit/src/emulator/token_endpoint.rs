//! The token endpoint, `/oauth2/token`: client credentials as RFC 6749
//! describes them, with the injected fault taking over when there is one.

use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use hyper::body::Incoming;
use serde_json::json;
use tokio::time::Instant;
use tower::util::rng::{HasherRng, Rng as _};

use super::RecordedRequest;
use super::fault;
use super::response::{Aborted, Body, json_response};
use super::state::{Issued, State, lock};

/// Path of the token endpoint.
pub(super) const TOKEN_PATH: &str = "/oauth2/token";
/// Largest request body the emulator reads.
const MAX_BODY: usize = 64 * 1024;
/// `WWW-Authenticate` of a token-endpoint 401 when Basic was used.
const BASIC_CHALLENGE: &str = r#"Basic realm="routera""#;

/// `/oauth2/token`: counts, reads and records the request, then answers it
/// with the injected fault if there is one, with [`token_response`]
/// otherwise (or after a [`Fault::Slow`](super::Fault::Slow) delay).
pub(super) async fn serve(
    state: &State,
    request: Request<Incoming>,
) -> Result<Response<Body>, Aborted> {
    state.token_requests.fetch_add(1, Ordering::SeqCst);
    let fault = state.take_fault();
    let (parts, body) = request.into_parts();
    let recorded = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => {
            let recorded = RecordedRequest {
                method: parts.method,
                uri: parts.uri,
                headers: parts.headers,
                body: collected.to_bytes(),
            };
            *lock(&state.last_token_request) = Some(recorded.clone());
            Ok(recorded)
        }
        Err(error) => Err(error),
    };
    if let Some(fault) = fault
        && let Some(response) = fault::respond(state, fault).await?
    {
        return Ok(response);
    }
    Ok(match recorded {
        Ok(recorded) => token_response(state, &recorded),
        Err(error) => {
            let (status, description) = if error.is::<LengthLimitError>() {
                (StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
            } else {
                (StatusCode::BAD_REQUEST, "could not read the request body")
            };
            oauth_error(status, "invalid_request", description, false)
        }
    })
}

/// The answer of the token endpoint to a complete request. Every token
/// endpoint response is built here.
fn token_response(state: &State, request: &RecordedRequest) -> Response<Body> {
    if request.method != Method::POST {
        let mut response = oauth_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "the token endpoint only accepts POST",
            false,
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    if !is_form_urlencoded(&request.headers) {
        return bad_request(
            "invalid_request",
            "the request body must be application/x-www-form-urlencoded",
        );
    }

    let mut grant_type = None;
    let mut client_id = None;
    let mut client_secret = None;
    for (name, value) in form_urlencoded::parse(&request.body) {
        let slot = match name.as_ref() {
            "grant_type" => &mut grant_type,
            "client_id" => &mut client_id,
            "client_secret" => &mut client_secret,
            _ => continue,
        };
        if slot.is_some() {
            // RFC 6749 §3.2: parameters MUST NOT be included more than once.
            return bad_request("invalid_request", "a request parameter is repeated");
        }
        // RFC 6749 §3.1: parameters without a value are treated as omitted.
        *slot = Some(value.into_owned()).filter(|value| !value.is_empty());
    }

    let authorization = request.headers.get(header::AUTHORIZATION);
    if authorization.is_some() && (client_id.is_some() || client_secret.is_some()) {
        return bad_request(
            "invalid_request",
            "client credentials were sent both in the Authorization header and in the body",
        );
    }

    match grant_type.as_deref() {
        Some("client_credentials") => {}
        Some(_) => {
            return bad_request(
                "unsupported_grant_type",
                "grant_type must be client_credentials",
            );
        }
        None => return bad_request("invalid_request", "grant_type is missing"),
    }

    let basic = authorization.is_some();
    let (id, secret) = match authorization {
        Some(value) => match parse_basic(value) {
            Some(credentials) => credentials,
            None => {
                return unauthorized_client("malformed or unsupported Authorization header", true);
            }
        },
        None => match (client_id, client_secret) {
            (Some(id), Some(secret)) => (id, secret),
            (None, None) => return unauthorized_client("no client authentication included", false),
            _ => {
                return unauthorized_client(
                    "client_id and client_secret must be sent together",
                    false,
                );
            }
        },
    };
    let known = lock(&state.clients)
        .iter()
        .any(|(known_id, known_secret)| *known_id == id && *known_secret == secret);
    if !known {
        return unauthorized_client("client authentication failed", basic);
    }

    let lifetime = *lock(&state.expires_in);
    let token = new_token();
    {
        let mut tokens = lock(&state.tokens);
        tokens.by_value.insert(
            token.clone(),
            Issued {
                expires_at: expiry(Instant::now(), lifetime),
                revoked: false,
            },
        );
        tokens.in_order.push(token.clone());
    }
    state.exchange_count.fetch_add(1, Ordering::SeqCst);
    json_response(
        StatusCode::OK,
        &json!({
            "access_token": token,
            "expires_in": lifetime.as_secs(),
            "token_type": "Bearer",
        }),
    )
}

/// When a token issued at `now` for `lifetime` expires: about thirty years
/// ahead for a lifetime too long for the clock, such as
/// [`Duration::MAX`](std::time::Duration::MAX).
fn expiry(now: Instant, lifetime: std::time::Duration) -> Instant {
    const FAR_FUTURE: std::time::Duration = std::time::Duration::from_secs(30 * 365 * 86_400);
    now.checked_add(lifetime)
        .or_else(|| now.checked_add(FAR_FUTURE))
        .unwrap_or(now)
}

/// Decodes `Authorization: Basic` as RFC 6749 §2.3.1 says: base64, split at
/// the first `:`, then form-urldecode each half. `None` if any step fails.
fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("Basic") {
        return None;
    }
    let decoded = BASE64.decode(encoded.trim()).ok()?;
    let colon = decoded.iter().position(|&byte| byte == b':')?;
    let id = form_urldecode(&decoded[..colon])?;
    let secret = form_urldecode(&decoded[colon + 1..])?;
    Some((id, secret))
}

/// Decodes one `application/x-www-form-urlencoded` value: `+` is a space,
/// `%XX` a byte. Strict: a `%` not followed by two hex digits, or a result
/// that is not UTF-8, is `None`.
///
/// Not [`form_urlencoded::parse`], which decodes a whole form: it splits at
/// `&` and `=` (data here), keeps a stray `%` as it is and replaces bytes
/// that are not UTF-8, so a secret sent without the RFC's encoding could
/// still match.
fn form_urldecode(input: &[u8]) -> Option<String> {
    let mut output = Vec::with_capacity(input.len());
    let mut bytes = input.iter();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'+' => output.push(b' '),
            b'%' => {
                let high = hex_value(*bytes.next()?)?;
                let low = hex_value(*bytes.next()?)?;
                output.push(high << 4 | low);
            }
            other => output.push(other),
        }
    }
    String::from_utf8(output).ok()
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|value| u8::try_from(value).ok())
}

/// Whether `Content-Type` is `application/x-www-form-urlencoded`, parameters
/// (such as `charset`) allowed.
fn is_form_urlencoded(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// A fresh opaque token: `rt_` then hex digits, unique in the process (a
/// counter) and hard to guess (keyed SipHash from a fresh
/// [`RandomState`](std::collections::hash_map::RandomState), through
/// tower's [`HasherRng`]).
fn new_token() -> String {
    static SERIAL: AtomicU64 = AtomicU64::new(0);
    let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
    let mut rng = HasherRng::new();
    format!(
        "rt_{:016x}{:016x}{serial:x}",
        rng.next_u64(),
        rng.next_u64()
    )
}

/// A 400 with an RFC 6749 §5.2 body.
fn bad_request(error: &str, description: &str) -> Response<Body> {
    oauth_error(StatusCode::BAD_REQUEST, error, description, false)
}

/// A 401 `invalid_client`, with the Basic challenge if Basic was used.
fn unauthorized_client(description: &str, basic: bool) -> Response<Body> {
    oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        description,
        basic,
    )
}

/// An RFC 6749 §5.2 error response.
fn oauth_error(
    status: StatusCode,
    error: &str,
    description: &str,
    basic_challenge: bool,
) -> Response<Body> {
    let mut response = json_response(
        status,
        &json!({ "error": error, "error_description": description }),
    );
    if basic_challenge {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(BASIC_CHALLENGE),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http_body_util::Full;

    use super::super::test_client::{
        assert_oauth_error, basic_raw, basic_rfc, body_auth, exchange_body, form, host,
        issue_token, send, token_request,
    };
    use super::super::{Emulator, Fault};
    use super::*;

    #[tokio::test]
    async fn body_authentication_issues_a_bearer_token() {
        let emulator = Emulator::start().await.unwrap();
        assert_eq!(
            emulator.token_url(),
            format!("http://127.0.0.1:{}/oauth2/token", emulator.addr().port())
        );
        assert_eq!(
            emulator.resource_url(),
            format!("http://127.0.0.1:{}/v1/ping", emulator.addr().port())
        );
        let credentials = emulator.credentials();
        assert_eq!(credentials.client_id(), "routera-test-client");
        assert_eq!(credentials.client_secret(), "routera-test-secret");

        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.header(header::CONTENT_TYPE),
            Some("application/json")
        );
        assert_eq!(answer.header(header::CACHE_CONTROL), Some("no-store"));
        let json = answer.json();
        let object = json.as_object().unwrap();
        assert_eq!(object.len(), 3, "{json}");
        assert_eq!(json["expires_in"], 3600);
        assert_eq!(json["token_type"], "Bearer");
        let token = json["access_token"].as_str().unwrap();
        assert!(token.starts_with("rt_"), "{token}");
        assert!(token.len() > 32, "{token}");
        assert!(HeaderValue::from_str(&format!("Bearer {token}")).is_ok());

        let second = issue_token(&emulator).await;
        assert_ne!(second, token);
        assert_eq!(emulator.exchange_count(), 2);
        assert_eq!(emulator.token_requests(), 2);
        assert_eq!(emulator.resource_requests(), 0);

        let recorded = emulator.last_token_request().unwrap();
        assert_eq!(recorded.method, Method::POST);
        assert_eq!(recorded.uri.path(), TOKEN_PATH);
        assert_eq!(
            recorded.headers.get(header::CONTENT_TYPE).unwrap(),
            "application/x-www-form-urlencoded"
        );
        assert_eq!(
            recorded.form(),
            vec![
                ("grant_type".to_owned(), "client_credentials".to_owned()),
                ("client_id".to_owned(), "routera-test-client".to_owned()),
                ("client_secret".to_owned(), "routera-test-secret".to_owned()),
            ]
        );
    }

    #[tokio::test]
    async fn basic_authentication_follows_rfc_6749() {
        let id = "svc:1 é";
        let secret = "p: a+b/c&d%e=f é";
        let emulator = Emulator::builder()
            .client("first", "first-secret")
            .client(id, secret)
            .start()
            .await
            .unwrap();
        let grant = form(&[("grant_type", "client_credentials")]);

        let authorization = basic_rfc(id, secret);
        let answer = send(
            &emulator,
            token_request(&emulator, Some(&authorization), &grant),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        assert_eq!(answer.json()["token_type"], "Bearer");
        let recorded = emulator.last_token_request().unwrap();
        assert_eq!(
            recorded.headers.get(header::AUTHORIZATION).unwrap(),
            authorization.as_str()
        );
        assert_eq!(recorded.body, Bytes::from(grant.clone()));

        // The same credentials without form-urlencoding do not match once the
        // secret holds `+` or `%` (the colon in the id also splits wrongly).
        let plain_id = "svc";
        let emulator = Emulator::builder()
            .client(plain_id, "a+b")
            .client("svc2", "x%41y")
            .client("svc3", "50%")
            .client("svc4", "A-z_0.9~")
            .client("svc5", "p:q")
            .start()
            .await
            .unwrap();
        for (client, secret) in [(plain_id, "a+b"), ("svc2", "x%41y"), ("svc3", "50%")] {
            let ok = basic_rfc(client, secret);
            let answer = send(&emulator, token_request(&emulator, Some(&ok), &grant)).await;
            assert_eq!(answer.status, StatusCode::OK, "{secret}");

            let raw = basic_raw(client, secret);
            let answer = send(&emulator, token_request(&emulator, Some(&raw), &grant)).await;
            assert_oauth_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");
            assert_eq!(
                answer.header(header::WWW_AUTHENTICATE),
                Some(r#"Basic realm="routera""#)
            );
            assert!(!String::from_utf8_lossy(&answer.body).contains(secret));
        }

        // Unreserved characters read the same either way.
        let raw = basic_raw("svc4", "A-z_0.9~");
        let answer = send(&emulator, token_request(&emulator, Some(&raw), &grant)).await;
        assert_eq!(answer.status, StatusCode::OK);

        // The split is at the first colon: a raw colon in the secret stays in it.
        let raw = basic_raw("svc5", "p:q");
        let answer = send(&emulator, token_request(&emulator, Some(&raw), &grant)).await;
        assert_eq!(answer.status, StatusCode::OK);

        assert_eq!(emulator.exchange_count(), 5);
        assert_eq!(emulator.token_requests(), 8);
    }

    #[tokio::test]
    async fn missing_or_wrong_grant_type_is_a_400() {
        let emulator = Emulator::start().await.unwrap();
        let credentials = emulator.credentials();
        let (id, secret) = (credentials.client_id(), credentials.client_secret());

        let missing = form(&[("client_id", id), ("client_secret", secret)]);
        let answer = send(&emulator, token_request(&emulator, None, &missing)).await;
        assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");

        let empty = form(&[
            ("grant_type", ""),
            ("client_id", id),
            ("client_secret", secret),
        ]);
        let answer = send(&emulator, token_request(&emulator, None, &empty)).await;
        assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");

        let wrong = form(&[
            ("grant_type", "password"),
            ("client_id", id),
            ("client_secret", secret),
        ]);
        let answer = send(&emulator, token_request(&emulator, None, &wrong)).await;
        assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "unsupported_grant_type");

        let grant = form(&[("grant_type", "client_credentials")]);
        let both = format!("{grant}&{}", form(&[("client_id", id)]));
        let answer = send(
            &emulator,
            token_request(&emulator, Some(&basic_rfc(id, secret)), &both),
        )
        .await;
        assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");

        let repeated = format!("{}&{grant}", body_auth(id, secret));
        let answer = send(&emulator, token_request(&emulator, None, &repeated)).await;
        assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");

        let json = Request::post(TOKEN_PATH)
            .header(header::HOST, host(&emulator))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body_auth(id, secret))))
            .unwrap();
        let answer = send(&emulator, json).await;
        assert_oauth_error(&answer, StatusCode::BAD_REQUEST, "invalid_request");

        assert_eq!(emulator.exchange_count(), 0);
        assert_eq!(emulator.token_requests(), 6);
    }

    #[tokio::test]
    async fn bad_client_credentials_are_a_401() {
        let emulator = Emulator::start().await.unwrap();
        let id = emulator.credentials().client_id().to_owned();

        let wrong_secret = body_auth(&id, "not-the-secret");
        let answer = send(&emulator, token_request(&emulator, None, &wrong_secret)).await;
        assert_oauth_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");
        assert_eq!(answer.header(header::WWW_AUTHENTICATE), None);
        assert!(!String::from_utf8_lossy(&answer.body).contains("not-the-secret"));

        let unknown = body_auth("someone-else", "routera-test-secret");
        let answer = send(&emulator, token_request(&emulator, None, &unknown)).await;
        assert_oauth_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");

        let grant = form(&[("grant_type", "client_credentials")]);
        let answer = send(&emulator, token_request(&emulator, None, &grant)).await;
        assert_oauth_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");

        let basic = basic_rfc(&id, "not-the-secret");
        let answer = send(&emulator, token_request(&emulator, Some(&basic), &grant)).await;
        assert_oauth_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");
        assert_eq!(
            answer.header(header::WWW_AUTHENTICATE),
            Some(r#"Basic realm="routera""#)
        );
        assert!(!String::from_utf8_lossy(&answer.body).contains("not-the-secret"));

        let answer = send(
            &emulator,
            token_request(&emulator, Some("Basic !!not base64!!"), &grant),
        )
        .await;
        assert_oauth_error(&answer, StatusCode::UNAUTHORIZED, "invalid_client");

        assert_eq!(emulator.exchange_count(), 0);
        assert_eq!(emulator.token_requests(), 5);
    }

    #[tokio::test]
    async fn faults_apply_to_every_token_request_even_invalid_ones() {
        let emulator = Emulator::start().await.unwrap();
        emulator.inject(Fault::status(503));
        let get = Request::get(TOKEN_PATH)
            .header(header::HOST, host(&emulator))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(
            send(&emulator, get).await.status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let wrong = body_auth("someone", "wrong");
        let answer = send(&emulator, token_request(&emulator, None, &wrong)).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(emulator.last_token_request().unwrap().body, wrong);
        assert_eq!(emulator.token_requests(), 2);
        assert_eq!(emulator.exchange_count(), 0);
    }

    #[test]
    fn form_urldecode_is_strict_about_percent_escapes() {
        assert_eq!(form_urldecode(b"a+b%2Bc%C3%A9").as_deref(), Some("a b+cé"));
        assert_eq!(form_urldecode(b"50%"), None);
        assert_eq!(form_urldecode(b"%4"), None);
        assert_eq!(form_urldecode(b"%zz"), None);
        assert_eq!(form_urldecode(b"%FF"), None);
    }

    #[tokio::test]
    async fn a_lifetime_too_long_for_the_clock_is_decades() {
        let emulator = Emulator::builder()
            .expires_in(std::time::Duration::MAX)
            .start()
            .await
            .unwrap();
        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.json()["expires_in"], u64::MAX);
        let token = answer.json()["access_token"].as_str().unwrap().to_owned();
        assert!(emulator.token_validator().is_valid(&token));

        let now = Instant::now();
        let decades = std::time::Duration::from_secs(20 * 365 * 86_400);
        assert!(expiry(now, std::time::Duration::MAX) > now + decades);
        let hour = std::time::Duration::from_secs(3600);
        assert_eq!(expiry(now, hour), now + hour);
    }

    #[test]
    fn tokens_are_unique_and_header_safe() {
        let tokens: std::collections::HashSet<String> = (0..1000).map(|_| new_token()).collect();
        assert_eq!(tokens.len(), 1000);
        for token in &tokens {
            assert!(token.starts_with("rt_"));
            assert!(token[3..].chars().all(|c| c.is_ascii_hexdigit()), "{token}");
        }
    }
}
