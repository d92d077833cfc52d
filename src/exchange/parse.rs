//! Reading token endpoint responses: success bodies, OAuth error bodies and
//! everything else real servers and proxies send.
//!
//! Nothing here ever copies body text into an error except the OAuth
//! `error`, `error_description` and `error_uri` fields, which are cleaned
//! (control characters dropped, length bounded, client secret redacted).
//! serde's own messages are never used, since they can quote input.

use std::time::Duration;

use http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{OAuthError, TokenError};
use crate::token::Token;

/// The largest token endpoint response body read, in bytes.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// Longest OAuth error text kept, in characters.
const MAX_ERROR_TEXT: usize = 256;

#[derive(Deserialize)]
struct RawToken {
    access_token: Option<Value>,
    token_type: Option<Value>,
    expires_in: Option<Value>,
}

#[derive(Deserialize)]
struct RawError {
    error: Option<Value>,
    error_description: Option<Value>,
    error_uri: Option<Value>,
}

/// Parses a 2xx token response body.
pub(crate) fn parse_token(status: StatusCode, body: &[u8]) -> Result<Token, TokenError> {
    let raw: RawToken = serde_json::from_slice(body)
        .map_err(|err| TokenError::invalid_response(status, describe_json_error(body, &err)))?;

    let access_token = match raw.access_token {
        Some(Value::String(token)) if !token.is_empty() => token,
        Some(Value::String(_)) => {
            return Err(TokenError::invalid_response(
                status,
                "`access_token` is empty",
            ));
        }
        None | Some(Value::Null) => {
            return Err(TokenError::invalid_response(
                status,
                "`access_token` is missing",
            ));
        }
        Some(_) => {
            return Err(TokenError::invalid_response(
                status,
                "`access_token` is not a string",
            ));
        }
    };

    match raw.token_type {
        Some(Value::String(kind)) if kind.eq_ignore_ascii_case("bearer") => {}
        None | Some(Value::Null) => {
            return Err(TokenError::invalid_response(
                status,
                "`token_type` is missing (expected `Bearer`)",
            ));
        }
        Some(_) => {
            return Err(TokenError::invalid_response(
                status,
                "`token_type` is not `Bearer`",
            ));
        }
    }

    match parse_expires_in(raw.expires_in.as_ref()) {
        Ok(Some(lifetime)) => Ok(Token::new(access_token, lifetime)),
        Ok(None) => Ok(Token::with_unknown_lifetime(access_token)),
        Err(reason) => Err(TokenError::invalid_response(status, reason)),
    }
}

/// `expires_in` as a non-negative number of seconds, given as a JSON number
/// or a numeric string. Missing, `null` and `0` mean "not said" (`None`);
/// fractions are rounded down; values too large for a `Duration` saturate.
fn parse_expires_in(value: Option<&Value>) -> Result<Option<Duration>, &'static str> {
    let seconds = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(number)) => number_seconds(number)?,
        Some(Value::String(text)) => {
            let text = text.trim();
            if let Ok(whole) = text.parse::<u64>() {
                whole
            } else {
                match text.parse::<f64>() {
                    Ok(value) => float_seconds(value)?,
                    Err(_) => return Err("`expires_in` is not a number"),
                }
            }
        }
        Some(_) => return Err("`expires_in` is not a number"),
    };
    Ok((seconds > 0).then(|| Duration::from_secs(seconds)))
}

fn number_seconds(number: &serde_json::Number) -> Result<u64, &'static str> {
    if let Some(whole) = number.as_u64() {
        Ok(whole)
    } else if number.as_i64().is_some() {
        Err("`expires_in` is negative")
    } else {
        float_seconds(number.as_f64().unwrap_or(f64::NAN))
    }
}

fn float_seconds(value: f64) -> Result<u64, &'static str> {
    if value.is_nan() {
        Err("`expires_in` is not a number")
    } else if value < 0.0 {
        Err("`expires_in` is negative")
    } else if value >= u64::MAX as f64 {
        Ok(u64::MAX)
    } else if value > 0.0 && value < 1.0 {
        // A lifetime under a second is still a lifetime, not "unknown".
        Ok(1)
    } else {
        // In range and non-negative: the cast rounds toward zero.
        Ok(value as u64)
    }
}

/// Builds the error for a non-2xx response, reading an OAuth error body if
/// there is one.
pub(crate) fn parse_error(
    status: StatusCode,
    headers: &HeaderMap,
    body: Option<&[u8]>,
    secret: &str,
) -> TokenError {
    let retry_after = retry_after(headers);
    if status.is_redirection() {
        return TokenError::from_status(
            status,
            None,
            retry_after,
            Some("redirects are never followed, so the credentials stay with the configured endpoint".into()),
        );
    }
    let Some(body) = body else {
        return TokenError::from_status(
            status,
            None,
            retry_after,
            Some("the response body was too large to read".into()),
        );
    };
    match serde_json::from_slice::<RawError>(body) {
        Ok(RawError {
            error: Some(Value::String(code)),
            error_description,
            error_uri,
        }) if !code.is_empty() => {
            let oauth = OAuthError {
                code: clean_text(&code, secret),
                description: text_field(error_description, secret),
                uri: text_field(error_uri, secret),
            };
            TokenError::from_status(status, Some(oauth), retry_after, None)
        }
        _ => TokenError::from_status(
            status,
            None,
            retry_after,
            Some(describe_body(headers, body).into()),
        ),
    }
}

fn text_field(value: Option<Value>, secret: &str) -> Option<String> {
    match value {
        Some(Value::String(text)) if !text.is_empty() => Some(clean_text(&text, secret)),
        _ => None,
    }
}

/// Drops control characters, bounds the length and redacts the secret in
/// every form it was sent in: as it is, form-urlencoded, and inside the
/// base64 of Basic credentials.
fn clean_text(text: &str, secret: &str) -> String {
    let mut redacted = text.to_owned();
    if !secret.is_empty() {
        for form in secret_forms(secret) {
            if !form.is_empty() && redacted.contains(&form) {
                redacted = redacted.replace(&form, "[redacted]");
            }
        }
    }
    let text = redacted.as_str();
    let mut cleaned: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_ERROR_TEXT)
        .collect();
    if text
        .chars()
        .filter(|c| !c.is_control())
        .nth(MAX_ERROR_TEXT)
        .is_some()
    {
        cleaned.push('…');
    }
    cleaned
}

/// The secret as sent in a form body, and the base64 fragments that carry
/// it in a Basic header, whatever the client id (base64 of `:secret` at each
/// of the three alignments, trimmed to the characters that depend on the
/// secret alone).
fn secret_forms(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    let encoded = crate::credentials::form_urlencode(secret);
    let mut forms = vec![secret.to_owned(), encoded.clone()];
    for raw in [secret, encoded.as_str()] {
        for pad in 0..3 {
            let mut bytes = vec![b'x'; pad];
            bytes.push(b':');
            bytes.extend_from_slice(raw.as_bytes());
            let full = base64::engine::general_purpose::STANDARD.encode(&bytes);
            // Characters 4 and on of each group of 4 cover bytes after the
            // prefix; keep the middle that depends only on the secret.
            let skip = (pad + 1).div_ceil(3) * 4;
            let keep = (bytes.len() / 3) * 4;
            if keep > skip + 4 {
                forms.push(full[skip..keep].to_owned());
            }
        }
    }
    forms
}

/// Says what a body that is not an OAuth error looks like, without quoting it.
fn describe_body(headers: &HeaderMap, body: &[u8]) -> String {
    if body.iter().all(u8::is_ascii_whitespace) {
        return "the body is empty".to_owned();
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.split(';').next().unwrap_or(value).trim())
        .filter(|value| !value.is_empty() && value.len() <= 100);
    match content_type {
        Some(content_type) => format!(
            "the body is not an OAuth error ({} bytes of {content_type})",
            body.len()
        ),
        None => format!("the body is not an OAuth error ({} bytes)", body.len()),
    }
}

fn describe_json_error(body: &[u8], err: &serde_json::Error) -> String {
    if body.iter().all(u8::is_ascii_whitespace) {
        return "the body is empty".to_owned();
    }
    let what = match err.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            "is not valid JSON"
        }
        serde_json::error::Category::Data | serde_json::error::Category::Io => {
            "is not a JSON object"
        }
    };
    format!(
        "the body {what} (line {}, column {}, {} bytes)",
        err.line(),
        err.column(),
        body.len()
    )
}

/// `Retry-After` as delta-seconds. (An HTTP-date is not used: it depends on
/// a wall clock the provider does not trust.)
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::TokenErrorKind;

    const OK: StatusCode = StatusCode::OK;

    fn token(body: &str) -> Result<Token, TokenError> {
        parse_token(OK, body.as_bytes())
    }

    fn invalid(body: &str) -> TokenError {
        let err = token(body).expect_err(body);
        assert_eq!(err.kind(), TokenErrorKind::InvalidResponse, "{body}");
        assert_eq!(err.status(), Some(OK));
        assert!(!err.is_retryable());
        err
    }

    #[test]
    fn reads_the_contract_response() {
        let token =
            token(r#"{"access_token":"eyJ.abc","expires_in":3600,"token_type":"Bearer"}"#).unwrap();
        assert_eq!(token.access_token().secret(), "eyJ.abc");
        assert_eq!(token.expires_in(), Some(Duration::from_secs(3600)));
    }

    #[test]
    fn expires_in_may_be_a_string_or_a_fraction() {
        for (value, expected) in [
            (r#""3600""#, Some(3600)),
            (r#"" 60 ""#, Some(60)),
            ("59.9", Some(59)),
            ("0.5", Some(1)),
            (r#""59.9""#, Some(59)),
            ("0", None),
            (r#""0""#, None),
            ("null", None),
            ("1e30", Some(u64::MAX)),
            ("18446744073709551615", Some(u64::MAX)),
        ] {
            let body =
                format!(r#"{{"access_token":"t","token_type":"Bearer","expires_in":{value}}}"#);
            let token = token(&body).unwrap();
            assert_eq!(
                token.expires_in(),
                expected.map(Duration::from_secs),
                "{value}"
            );
        }
        let missing = token(r#"{"access_token":"t","token_type":"Bearer"}"#).unwrap();
        assert_eq!(missing.expires_in(), None);
    }

    #[test]
    fn rejects_unusable_expires_in() {
        for value in ["-1", "-0.5", r#""soon""#, "true", "[3600]", r#""-5""#] {
            let body =
                format!(r#"{{"access_token":"t","token_type":"Bearer","expires_in":{value}}}"#);
            let err = invalid(&body);
            assert!(err.to_string().contains("expires_in"), "{err}");
        }
    }

    #[test]
    fn token_type_must_be_bearer_in_any_case() {
        for kind in ["bearer", "BEARER", "Bearer"] {
            let body = format!(r#"{{"access_token":"t","token_type":"{kind}","expires_in":1}}"#);
            assert!(token(&body).is_ok(), "{kind}");
        }
        invalid(r#"{"access_token":"t","token_type":"mac","expires_in":1}"#);
        invalid(r#"{"access_token":"t","token_type":"","expires_in":1}"#);
        invalid(r#"{"access_token":"t","token_type":7,"expires_in":1}"#);
        invalid(r#"{"access_token":"t","expires_in":1}"#);
    }

    #[test]
    fn access_token_must_be_a_non_empty_string() {
        invalid(r#"{"token_type":"Bearer","expires_in":1}"#);
        invalid(r#"{"access_token":"","token_type":"Bearer","expires_in":1}"#);
        invalid(r#"{"access_token":null,"token_type":"Bearer","expires_in":1}"#);
        invalid(r#"{"access_token":42,"token_type":"Bearer","expires_in":1}"#);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = r#"{"access_token":"t","token_type":"Bearer","expires_in":5,"scope":"a b","extra":{"x":[1]}}"#;
        assert_eq!(
            token(body).unwrap().expires_in(),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn non_json_success_bodies_are_described_not_quoted() {
        let err = invalid("<html>secret-looking</html>");
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        assert!(!err.to_string().contains("secret-looking"));
        let err = invalid("");
        assert!(err.to_string().contains("empty"), "{err}");
        let err = invalid(r#""just-a-token-string""#);
        assert!(err.to_string().contains("not a JSON object"), "{err}");
        assert!(!err.to_string().contains("just-a-token-string"), "{err}");
        invalid(r#"{"access_token":"t","#);
    }

    #[test]
    fn oauth_error_bodies_are_read_and_cleaned() {
        let body = br#"{"error":"invalid_client","error_description":"bad\nsecret hunter2 given","error_uri":"https://docs"}"#;
        let err = parse_error(
            StatusCode::UNAUTHORIZED,
            &HeaderMap::new(),
            Some(body),
            "hunter2",
        );
        assert_eq!(err.kind(), TokenErrorKind::InvalidClient);
        assert_eq!(err.error_code(), Some("invalid_client"));
        assert_eq!(err.error_description(), Some("badsecret [redacted] given"));
        assert_eq!(
            err.oauth_error().and_then(OAuthError::uri),
            Some("https://docs")
        );
        assert!(!err.to_string().contains("hunter2"));
        assert!(!format!("{err:?}").contains("hunter2"));
    }

    #[test]
    fn the_secret_is_redacted_in_every_form_it_was_sent_in() {
        use base64::Engine as _;
        let secret = "s3cr3t+with/odd=chars and more";
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "client-id:{}",
            crate::credentials::form_urlencode(secret)
        ));
        for echoed in [
            secret.to_owned(),
            crate::credentials::form_urlencode(secret),
            format!("Basic {basic}"),
        ] {
            let body = serde_json::json!({"error": "invalid_client", "error_description": format!("got {echoed}")});
            let err = parse_error(
                StatusCode::UNAUTHORIZED,
                &HeaderMap::new(),
                Some(body.to_string().as_bytes()),
                secret,
            );
            let description = err.error_description().unwrap_or_default().to_owned();
            assert!(description.contains("[redacted]"), "{description}");
            assert!(!description.contains(&echoed), "{description}");
            // What is left of a base64 echo cannot be decoded back to the secret.
            assert!(
                !description.contains(&basic[12..basic.len() - 4]),
                "{description}"
            );
        }
    }

    #[test]
    fn long_descriptions_are_bounded() {
        let long = "x".repeat(10_000);
        let body = format!(r#"{{"error":"invalid_request","error_description":"{long}"}}"#);
        let err = parse_error(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            Some(body.as_bytes()),
            "s",
        );
        assert_eq!(err.kind(), TokenErrorKind::InvalidRequest);
        assert_eq!(
            err.error_description().map(|d| d.chars().count()),
            Some(MAX_ERROR_TEXT + 1)
        );
    }

    #[test]
    fn non_oauth_error_bodies_keep_the_status() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "text/html; charset=utf-8".parse().unwrap(),
        );
        let err = parse_error(
            StatusCode::BAD_GATEWAY,
            &headers,
            Some(b"<html>oops</html>"),
            "s",
        );
        assert_eq!(err.kind(), TokenErrorKind::ServerError);
        assert_eq!(err.status(), Some(StatusCode::BAD_GATEWAY));
        assert!(err.is_retryable());
        assert!(err.to_string().contains("17 bytes of text/html"), "{err}");
        assert!(err.error_code().is_none());

        let err = parse_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &HeaderMap::new(),
            Some(b""),
            "s",
        );
        assert!(err.to_string().contains("empty"), "{err}");
        let err = parse_error(
            StatusCode::BAD_REQUEST,
            &HeaderMap::new(),
            Some(b"{\"error\":5}"),
            "s",
        );
        assert_eq!(err.kind(), TokenErrorKind::InvalidRequest);
        assert!(err.error_code().is_none());
    }

    #[test]
    fn retry_after_is_read_in_seconds() {
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, "7".parse().unwrap());
        let err = parse_error(StatusCode::TOO_MANY_REQUESTS, &headers, Some(b""), "s");
        assert_eq!(err.kind(), TokenErrorKind::RateLimited);
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        headers.insert(header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn redirects_are_errors() {
        let err = parse_error(StatusCode::FOUND, &HeaderMap::new(), None, "s");
        assert_eq!(err.kind(), TokenErrorKind::UnexpectedStatus);
        assert!(!err.is_retryable());
        assert!(err.to_string().contains("never followed"), "{err}");
    }
}
