//! The control API, `/emulator/...` ([`EmulatorBuilder::control_api`]):
//! revoking tokens and arming or clearing a fault over HTTP.
//!
//! [`EmulatorBuilder::control_api`]: super::EmulatorBuilder::control_api

use std::time::Duration;

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use serde_json::json;

use super::Fault;
use super::response::{Body, full, json_response};
use super::state::State;

/// `POST`: revokes every token issued so far.
pub(super) const REVOKE_PATH: &str = "/emulator/revoke";
/// `POST`: arms a fault; `DELETE`: clears it.
pub(super) const FAULT_PATH: &str = "/emulator/fault";
/// Largest form the control API reads.
const MAX_BODY: usize = 4 * 1024;
/// The statuses `status=` accepts: final answers.
const STATUSES: std::ops::RangeInclusive<u16> = 200..=599;
/// What a fault form may hold, for error descriptions.
const FAULT_FORM_HELP: &str = "send status=<200-599> (with retry_after=<seconds> if you \
     like) or delay_ms=<milliseconds>, and times=<n> to arm it for the next n token requests \
     only, e.g. status=503&retry_after=5&times=2";

/// Whether `path` belongs to the control API.
pub(super) fn is_control_path(path: &str) -> bool {
    path == REVOKE_PATH || path == FAULT_PATH
}

/// A request to one of the [control paths](is_control_path).
pub(super) async fn serve(state: &State, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path();
    match (path, request.method()) {
        (REVOKE_PATH, &Method::POST) => {
            state.revoke_all();
            no_content()
        }
        (REVOKE_PATH, _) => method_not_allowed("POST"),
        (FAULT_PATH, &Method::POST) => arm_fault(state, request).await,
        (FAULT_PATH, &Method::DELETE) => {
            state.clear_fault();
            no_content()
        }
        _ => method_not_allowed("POST, DELETE"),
    }
}

/// `POST /emulator/fault`: reads the form and arms the fault it describes.
async fn arm_fault(state: &State, request: Request<Incoming>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    if !form_or_untyped(&parts.headers) {
        return invalid_request(format!(
            "the body must be a form (application/x-www-form-urlencoded, as curl -d sends it): \
             {FAULT_FORM_HELP}"
        ));
    }
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return invalid_request(format!(
                "the form could not be read, or is over {MAX_BODY} bytes: {FAULT_FORM_HELP}"
            ));
        }
    };
    match FaultForm::parse(&body) {
        Ok(form) => {
            state.arm(form.fault, form.times);
            no_content()
        }
        Err(problem) => invalid_request(format!("{problem}: {FAULT_FORM_HELP}")),
    }
}

/// A fault form, read: the fault and how many token requests it applies to
/// (`None`: until cleared).
#[derive(Debug)]
struct FaultForm {
    fault: Fault,
    times: Option<u64>,
}

impl FaultForm {
    /// Reads `status`, `retry_after`, `delay_ms` and `times` from a form
    /// body; the error says what was wrong, in words.
    fn parse(body: &[u8]) -> Result<Self, String> {
        let mut status = None;
        let mut retry_after = None;
        let mut delay_ms = None;
        let mut times = None;
        for (name, value) in form_urlencoded::parse(body) {
            let slot = match name.as_ref() {
                "status" => &mut status,
                "retry_after" => &mut retry_after,
                "delay_ms" => &mut delay_ms,
                "times" => &mut times,
                other => return Err(format!("unknown field `{other}`")),
            };
            if slot.is_some() {
                return Err(format!("the field `{name}` is given twice"));
            }
            *slot = Some(value.into_owned());
        }

        let times = times
            .map(|value| match value.parse::<u64>() {
                Ok(times) if times > 0 => Ok(times),
                _ => Err(format!(
                    "times must be a whole number of at least 1, not `{value}` (leave it out \
                     for a fault that lasts until DELETE /emulator/fault)"
                )),
            })
            .transpose()?;
        let fault = match (status, delay_ms) {
            (Some(_), Some(_)) => {
                return Err("status and delay_ms cannot be armed together".to_owned());
            }
            (None, None) => return Err("the form has neither status nor delay_ms".to_owned()),
            (None, Some(delay_ms)) => {
                if retry_after.is_some() {
                    return Err("retry_after goes with status, not with delay_ms".to_owned());
                }
                let delay_ms = delay_ms.parse::<u64>().map_err(|_| {
                    format!("delay_ms must be a whole number of milliseconds, not `{delay_ms}`")
                })?;
                Fault::slow(Duration::from_millis(delay_ms))
            }
            (Some(status), None) => {
                let status = match status.parse::<u16>() {
                    Ok(code) if STATUSES.contains(&code) => code,
                    _ => {
                        return Err(format!(
                            "status must be an HTTP status from 200 to 599, not `{status}`"
                        ));
                    }
                };
                match retry_after {
                    None => Fault::status(status),
                    Some(seconds) => match seconds.parse::<u64>() {
                        Ok(seconds) => Fault::retry_after(status, seconds),
                        Err(_) => {
                            return Err(format!(
                                "retry_after must be a whole number of seconds, not `{seconds}`"
                            ));
                        }
                    },
                }
            }
        };
        Ok(Self { fault, times })
    }
}

/// Whether the body is declared a form, or not declared at all.
fn form_or_untyped(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return true;
    };
    value
        .to_str()
        .ok()
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// `204 No Content`.
fn no_content() -> Response<Body> {
    let mut response = Response::new(full(bytes::Bytes::new()));
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// A 400 `invalid_request` with this description.
fn invalid_request(description: String) -> Response<Body> {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({ "error": "invalid_request", "error_description": description }),
    )
}

/// A 405 naming the methods the path accepts.
fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({
            "error": "invalid_request",
            "error_description": format!("this path of the control API accepts {allow}"),
        }),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::Request;
    use http_body_util::Full;

    use super::super::Emulator;
    use super::super::test_client::{
        Answer, assert_invalid_token, exchange_body, host, issue_token, ping, send,
    };
    use super::*;

    /// A request to the control API, with a form body if there is one.
    async fn control(emulator: &Emulator, method: Method, path: &str, form: &str) -> Answer {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, host(emulator));
        if !form.is_empty() {
            builder = builder.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        }
        let request = builder
            .body(Full::new(Bytes::from(form.to_owned())))
            .unwrap();
        send(emulator, request).await
    }

    async fn with_control_api() -> Emulator {
        Emulator::builder().control_api().start().await.unwrap()
    }

    #[tokio::test]
    async fn revoke_revokes_every_token_issued_so_far() {
        let emulator = with_control_api().await;
        let before = issue_token(&emulator).await;
        let answer = control(&emulator, Method::POST, REVOKE_PATH, "").await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT);
        assert!(answer.body.is_empty());
        assert_invalid_token(&ping(&emulator, Some(&format!("Bearer {before}"))).await);

        let after = issue_token(&emulator).await;
        let answer = ping(&emulator, Some(&format!("Bearer {after}"))).await;
        assert_eq!(answer.status, StatusCode::OK);
        // The control API is neither a token request nor the resource.
        assert_eq!(emulator.token_requests(), 2);
        assert_eq!(emulator.resource_requests(), 2);
    }

    #[tokio::test]
    async fn a_status_fault_applies_as_many_times_as_asked() {
        let emulator = with_control_api().await;
        let form = "status=503&retry_after=5&times=2";
        let answer = control(&emulator, Method::POST, FAULT_PATH, form).await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT);
        for _ in 0..2 {
            let answer = exchange_body(&emulator).await;
            assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(answer.header(header::RETRY_AFTER), Some("5"));
            assert_eq!(answer.json()["error"], "temporarily_unavailable");
        }
        issue_token(&emulator).await;

        // Without retry_after: the bare status. Without times: until
        // cleared.
        let answer = control(&emulator, Method::POST, FAULT_PATH, "status=429").await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT);
        for _ in 0..3 {
            let answer = exchange_body(&emulator).await;
            assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(answer.header(header::RETRY_AFTER), None);
            assert!(answer.body.is_empty());
        }
        let answer = control(&emulator, Method::DELETE, FAULT_PATH, "").await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT);
        issue_token(&emulator).await;
        // Clearing with nothing armed is harmless.
        let answer = control(&emulator, Method::DELETE, FAULT_PATH, "").await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT);
        assert_eq!(emulator.token_requests(), 7);
        assert_eq!(emulator.exchange_count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delay_fault_answers_late_on_tokio_time() {
        let emulator = with_control_api().await;
        let answer = control(&emulator, Method::POST, FAULT_PATH, "delay_ms=2000&times=1").await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT);

        let start = tokio::time::Instant::now();
        assert_eq!(exchange_body(&emulator).await.status, StatusCode::OK);
        let waited = start.elapsed();
        assert!(
            Duration::from_secs(2) <= waited && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        let start = tokio::time::Instant::now();
        issue_token(&emulator).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn a_bad_form_is_a_400_that_says_what_to_send() {
        let emulator = with_control_api().await;
        let cases = [
            ("", "neither status nor delay_ms"),
            ("status=", "status must be an HTTP status"),
            ("status=abc", "not `abc`"),
            ("status=99", "from 200 to 599"),
            ("status=600", "from 200 to 599"),
            (
                "status=503&retry_after=soon",
                "retry_after must be a whole number",
            ),
            (
                "status=503&times=0",
                "times must be a whole number of at least 1",
            ),
            ("status=503&times=-1", "not `-1`"),
            ("status=503&status=500", "`status` is given twice"),
            ("status=503&delay_ms=5", "cannot be armed together"),
            ("delay_ms=5&retry_after=1", "retry_after goes with status"),
            (
                "delay_ms=1.5",
                "delay_ms must be a whole number of milliseconds",
            ),
            ("code=503", "unknown field `code`"),
        ];
        for (form, expected) in cases {
            let answer = control(&emulator, Method::POST, FAULT_PATH, form).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{form}");
            assert_eq!(
                answer.header(header::CONTENT_TYPE),
                Some("application/json")
            );
            let json = answer.json();
            assert_eq!(json["error"], "invalid_request", "{form}: {json}");
            let description = json["error_description"].as_str().unwrap();
            assert!(description.contains(expected), "{form}: {description}");
            assert!(
                description.contains("status=503&retry_after=5&times=2"),
                "{form}: {description}"
            );
        }

        let json_body = Request::post(FAULT_PATH)
            .header(header::HOST, host(&emulator))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(br#"{"status":503}"#)))
            .unwrap();
        let answer = send(&emulator, json_body).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        let description = answer.json()["error_description"].to_string();
        assert!(description.contains("must be a form"), "{description}");

        // Nothing was armed by any of them.
        assert_eq!(exchange_body(&emulator).await.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn an_untyped_form_is_read_and_a_typed_one_with_parameters_too() {
        let emulator = with_control_api().await;
        let untyped = Request::post(FAULT_PATH)
            .header(header::HOST, host(&emulator))
            .body(Full::new(Bytes::from_static(b"status=502&times=1")))
            .unwrap();
        assert_eq!(
            send(&emulator, untyped).await.status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            exchange_body(&emulator).await.status,
            StatusCode::BAD_GATEWAY
        );

        let typed = Request::post(FAULT_PATH)
            .header(header::HOST, host(&emulator))
            .header(
                header::CONTENT_TYPE,
                "Application/X-WWW-Form-Urlencoded; charset=utf-8",
            )
            .body(Full::new(Bytes::from_static(b"status=500&times=1")))
            .unwrap();
        assert_eq!(send(&emulator, typed).await.status, StatusCode::NO_CONTENT);
        assert_eq!(
            exchange_body(&emulator).await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[tokio::test]
    async fn other_methods_are_a_405_with_allow() {
        let emulator = with_control_api().await;
        let answer = control(&emulator, Method::GET, REVOKE_PATH, "").await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(answer.header(header::ALLOW), Some("POST"));
        let answer = control(&emulator, Method::PUT, FAULT_PATH, "status=503").await;
        assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(answer.header(header::ALLOW), Some("POST, DELETE"));
        assert_eq!(answer.json()["error"], "invalid_request");
        assert_eq!(exchange_body(&emulator).await.status, StatusCode::OK);
    }

    #[tokio::test]
    async fn without_the_option_the_paths_are_unknown() {
        let emulator = Emulator::start().await.unwrap();
        let token = issue_token(&emulator).await;
        for (method, path, form) in [
            (Method::POST, REVOKE_PATH, ""),
            (Method::POST, FAULT_PATH, "status=503"),
            (Method::DELETE, FAULT_PATH, ""),
        ] {
            let answer = control(&emulator, method, path, form).await;
            assert_eq!(answer.status, StatusCode::NOT_FOUND, "{path}");
        }
        assert_eq!(exchange_body(&emulator).await.status, StatusCode::OK);
        let answer = ping(&emulator, Some(&format!("Bearer {token}"))).await;
        assert_eq!(answer.status, StatusCode::OK);

        // With it, other paths under /emulator/ are still unknown.
        let emulator = with_control_api().await;
        let answer = control(&emulator, Method::POST, "/emulator/other", "").await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
        let answer = control(&emulator, Method::POST, "/emulator/revoke/", "").await;
        assert_eq!(answer.status, StatusCode::NOT_FOUND);
    }

    #[test]
    fn a_form_reads_into_the_fault_it_names() {
        let form = FaultForm::parse(b"status=503&retry_after=5&times=2").unwrap();
        assert_eq!(form.times, Some(2));
        let Fault::Respond {
            status, headers, ..
        } = form.fault
        else {
            panic!("{:?}", form.fault);
        };
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(headers[header::RETRY_AFTER], "5");

        let form = FaultForm::parse(b"times=3&delay_ms=250").unwrap();
        assert_eq!(form.times, Some(3));
        assert!(
            matches!(form.fault, Fault::Slow { delay } if delay == Duration::from_millis(250)),
            "{form:?}"
        );

        let form = FaultForm::parse(b"status=200").unwrap();
        assert_eq!(form.times, None);
        assert!(
            matches!(form.fault, Fault::Respond { status, .. } if status == StatusCode::OK),
            "{form:?}"
        );
    }
}
