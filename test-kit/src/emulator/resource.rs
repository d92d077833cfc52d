//! The protected resource, `/v1/ping`, and [`TokenValidator`], which applies
//! its rule to servers of a test's own.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use serde_json::json;
use tokio::time::Instant;

use super::response::{Body, json_response};
use super::state::{State, lock};

/// Path of the protected resource.
pub(super) const RESOURCE_PATH: &str = "/v1/ping";

/// `WWW-Authenticate` of a resource 401 when no bearer token was sent.
const BEARER_CHALLENGE: &str = r#"Bearer realm="routera""#;
/// `WWW-Authenticate` of a resource 401 for a bad bearer token.
const BEARER_INVALID_TOKEN: &str = r#"Bearer realm="routera", error="invalid_token""#;

/// Checks bearer tokens against an [`Emulator`](super::Emulator); from
/// [`Emulator::token_validator`](super::Emulator::token_validator).
#[derive(Clone)]
pub struct TokenValidator {
    pub(super) state: Arc<State>,
}

impl TokenValidator {
    /// Whether `token` was issued by the emulator and is neither revoked nor
    /// expired.
    pub fn is_valid(&self, token: &str) -> bool {
        token_problem(&self.state, token).is_none()
    }

    /// Whether an `Authorization` header value is `Bearer <token>` with a
    /// valid token.
    pub fn is_valid_authorization(&self, authorization: &str) -> bool {
        bearer_token(authorization).is_some_and(|token| self.is_valid(token))
    }
}

impl fmt::Debug for TokenValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenValidator").finish_non_exhaustive()
    }
}

/// Any method on `/v1/ping`.
pub(super) fn serve(state: &State, headers: &HeaderMap) -> Response<Body> {
    state.resource_requests.fetch_add(1, Ordering::SeqCst);
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer_token);
    let Some(token) = token else {
        return unauthorized(
            json!({ "error": "unauthorized", "error_description": "no bearer token" }),
            BEARER_CHALLENGE,
        );
    };
    match token_problem(state, token) {
        None => json_response(StatusCode::OK, &json!({ "ok": true })),
        Some(description) => unauthorized(
            json!({ "error": "invalid_token", "error_description": description }),
            BEARER_INVALID_TOKEN,
        ),
    }
}

/// A 401 with this body and challenge.
fn unauthorized(body: serde_json::Value, challenge: &'static str) -> Response<Body> {
    let mut response = json_response(StatusCode::UNAUTHORIZED, &body);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

/// Why `token` is not accepted, if it is not.
pub(super) fn token_problem(state: &State, token: &str) -> Option<&'static str> {
    match lock(&state.tokens).by_value.get(token) {
        None => Some("unknown token"),
        Some(issued) if issued.revoked => Some("token revoked"),
        Some(issued) if Instant::now() >= issued.expires_at => Some("token expired"),
        Some(_) => None,
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme in any
/// case), if there is one.
pub(super) fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("Bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http::header;
    use serde_json::json;

    use super::super::Emulator;
    use super::super::test_client::{assert_invalid_token, exchange_body, issue_token, ping};
    use super::*;

    #[tokio::test]
    async fn resource_accepts_only_live_issued_tokens() {
        let emulator = Emulator::start().await.unwrap();

        let answer = ping(&emulator, None).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            answer.header(header::WWW_AUTHENTICATE),
            Some(r#"Bearer realm="routera""#)
        );

        let token = issue_token(&emulator).await;
        let bearer = format!("Bearer {token}");
        let answer = ping(&emulator, Some(&bearer)).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(
            answer.header(header::CONTENT_TYPE),
            Some("application/json")
        );
        assert_eq!(answer.json(), json!({ "ok": true }));

        let answer = ping(&emulator, Some("Bearer rt_forged")).await;
        assert_invalid_token(&answer);

        emulator.revoke_all();
        let answer = ping(&emulator, Some(&bearer)).await;
        assert_invalid_token(&answer);

        // Tokens issued after the revocation work.
        let fresh = issue_token(&emulator).await;
        let answer = ping(&emulator, Some(&format!("Bearer {fresh}"))).await;
        assert_eq!(answer.status, StatusCode::OK);

        assert_eq!(emulator.resource_requests(), 5);
        assert_eq!(emulator.exchange_count(), 2);
        assert_eq!(emulator.token_requests(), 2);
    }

    #[tokio::test]
    async fn tokens_expire_on_the_tokio_clock() {
        let emulator = Emulator::builder()
            .expires_in(Duration::from_secs(120))
            .start()
            .await
            .unwrap();
        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.json()["expires_in"], 120);

        // Real I/O still works on paused time: neither side sets a timer, so
        // the clock does not auto-advance while waiting for the socket.
        tokio::time::pause();
        emulator.set_expires_in(Duration::from_secs(60));
        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.json()["expires_in"], 60);
        let bearer = format!("Bearer {}", answer.json()["access_token"].as_str().unwrap());

        tokio::time::advance(Duration::from_millis(59_999)).await;
        assert_eq!(ping(&emulator, Some(&bearer)).await.status, StatusCode::OK);
        tokio::time::advance(Duration::from_millis(1)).await;
        let answer = ping(&emulator, Some(&bearer)).await;
        assert_invalid_token(&answer);
        tokio::time::resume();

        assert_eq!(emulator.resource_requests(), 2);
        assert_eq!(emulator.exchange_count(), 2);
    }

    #[tokio::test]
    async fn validator_agrees_with_the_resource() {
        let emulator = Emulator::start().await.unwrap();
        let validator = emulator.token_validator();
        let token = issue_token(&emulator).await;
        assert!(validator.is_valid(&token));
        assert!(validator.is_valid_authorization(&format!("Bearer {token}")));
        assert!(validator.is_valid_authorization(&format!("bearer  {token} ")));
        assert!(!validator.is_valid_authorization(&format!("Basic {token}")));
        assert!(!validator.is_valid_authorization(&token));
        assert!(!validator.is_valid_authorization("Bearer "));
        assert!(!validator.is_valid("rt_forged"));
        assert!(!format!("{validator:?}").contains(&token));

        emulator.revoke_all();
        assert!(!validator.is_valid(&token));
        let fresh = issue_token(&emulator).await;
        drop(emulator);
        assert!(validator.is_valid(&fresh));
    }

    #[test]
    fn bearer_token_takes_any_case_and_trims() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("BEARER  abc "), Some("abc"));
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
        assert_eq!(bearer_token("Basic abc"), None);
    }
}
