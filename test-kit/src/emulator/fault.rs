//! [`Fault`], and the answers the token endpoint gives under one.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::json;

use super::fault_body::{OversizedBody, RESET_DECLARED_LENGTH, ResetBody};
use super::response::{Aborted, Body, full};
use super::state::State;

/// A way for the token endpoint to misbehave; see
/// [`Emulator::inject`](super::Emulator::inject).
///
/// A faulty token endpoint still reads the whole request first, counts it in
/// [`Emulator::token_requests`](super::Emulator::token_requests) and records
/// it for [`Emulator::last_token_request`](super::Emulator::last_token_request),
/// but issues no token, whatever the credentials:
/// [`Emulator::exchange_count`](super::Emulator::exchange_count) does not
/// move. The exception is [`Fault::Slow`], a normal answer that comes late.
/// Faults apply to every request to `/oauth2/token`, whatever its method.
///
/// The constructors take the status as a number; a number that is not a
/// valid HTTP status (outside `100..=999`) becomes 500. 1xx statuses cannot
/// be sent as a final answer: hyper replaces them with a 500 (and treats 101
/// as a protocol switch). hyper adds a `Date` header and, unless a
/// `Content-Length` or `Transfer-Encoding` header is given, a `Content-Length`
/// matching the body. It sends no body for 204 and 304, nor to `HEAD`.
///
/// ```
/// use routera_auth_test::Fault;
///
/// let unavailable = Fault::retry_after(503, 30);
/// let gateway_page = Fault::html(502);
/// let huge = Fault::Oversized { len: 1 << 20, declare_length: false };
/// let slow = Fault::slow(std::time::Duration::from_secs(5));
/// # let _ = (unavailable, gateway_page, huge, slow);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Fault {
    /// Answer with this status, exactly these headers (plus those hyper
    /// adds) and this body instead of serving the request.
    Respond {
        /// The status of the answer.
        status: StatusCode,
        /// The headers of the answer.
        headers: HeaderMap,
        /// The body of the answer.
        body: Bytes,
    },
    /// Read the request, then never answer: the connection stays open, with
    /// no byte of response, until the client closes it or the
    /// [`Emulator`](super::Emulator) is dropped, which closes it.
    ///
    /// The emulator sets no timer: only a client-side timeout ends the wait.
    /// Under paused Tokio time, such a timeout fires as soon as the runtime
    /// has nothing else to do.
    Hang,
    /// Send a `200` with `Content-Type: application/json` and
    /// `Content-Length: 1000`, then the first 17 bytes of a token response
    /// (`{"access_token":"`), then abort the connection: a reset in the middle
    /// of the body. A client gets the status and headers, then an error
    /// while reading the body, never a clean short body.
    ResetMidResponse,
    /// Answer `200` with `Content-Type: application/json` and a body of
    /// exactly `len` bytes, streamed in chunks of 16 KiB, so that a client
    /// must enforce its own size limit.
    ///
    /// The body is the JSON object `{"padding":"aaa…a"}` (or `len` spaces
    /// when `len` is under 14): valid JSON, but not a token response.
    Oversized {
        /// Size of the body, in bytes.
        len: usize,
        /// `false`: no `Content-Length`, the body is sent with
        /// `Transfer-Encoding: chunked`, so its size is only known by
        /// reading it. `true`: `Content-Length: len` is sent, so a client can
        /// refuse the body before reading it.
        declare_length: bool,
    },
    /// Answer normally, but only `delay` after the request was read: the
    /// request is counted and recorded at once; the credentials are checked
    /// and the token is issued (its lifetime starting) when the delay is
    /// over. Build it with [`Fault::slow`].
    ///
    /// The delay is a [`tokio::time::sleep`], so under paused Tokio time it
    /// passes as soon as the runtime has nothing else to do, and a client's
    /// own timeout, if shorter, fires first. Like [`Fault::Hang`], a slow
    /// answer still waiting when the [`Emulator`](super::Emulator) is
    /// dropped is never sent: the connection is closed.
    ///
    /// It is one fault among others, not a modifier: injecting it replaces
    /// any other fault, and a slow error answer cannot be made.
    /// [`Emulator::inject`](super::Emulator::inject) makes every token
    /// request slow until [`Emulator::clear_fault`](super::Emulator::clear_fault);
    /// [`Emulator::inject_times`](super::Emulator::inject_times) only the
    /// next `n`. The delay is chosen when a request arrives: clearing the
    /// fault does not hurry requests already waiting.
    #[non_exhaustive]
    Slow {
        /// How long the answer waits.
        delay: Duration,
    },
}

impl Fault {
    /// `status` with no body.
    pub fn status(status: u16) -> Self {
        Self::respond(status, HeaderMap::new(), Bytes::new())
    }

    /// `status` with `body` sent as is, labelled
    /// `Content-Type: application/json` (whether or not it is JSON).
    pub fn json(status: u16, body: &str) -> Self {
        Self::respond(
            status,
            content_type("application/json"),
            Bytes::from(body.to_owned()),
        )
    }

    /// `status` with a small HTML error page, as a proxy or load balancer
    /// in front of the server would send it, with
    /// `Content-Type: text/html; charset=utf-8`.
    pub fn html(status: u16) -> Self {
        let code = status_code(status);
        let title = match code.canonical_reason() {
            Some(reason) => format!("{} {reason}", code.as_u16()),
            None => code.as_u16().to_string(),
        };
        let page = format!(
            "<!DOCTYPE html>\n<html>\n<head><title>{title}</title></head>\n\
             <body>\n<h1>{title}</h1>\n<hr><p>routera-emulator</p>\n</body>\n</html>\n"
        );
        Self::respond(
            status,
            content_type("text/html; charset=utf-8"),
            Bytes::from(page),
        )
    }

    /// `status` with `Retry-After: <seconds>` and an RFC 6749 §5.2 style JSON
    /// body, `{"error":"temporarily_unavailable","error_description":…}`,
    /// as for a `429 Too Many Requests` or a `503 Service Unavailable`.
    pub fn retry_after(status: u16, seconds: u64) -> Self {
        let body = json!({
            "error": "temporarily_unavailable",
            "error_description": format!("retry after {seconds} seconds"),
        });
        let mut headers = content_type("application/json");
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        Self::respond(status, headers, Bytes::from(body.to_string()))
    }

    /// `status` (meant to be a 3xx such as 302 or 307, used as given) with
    /// `Location: <location>` and no body. Bytes of `location` that cannot
    /// appear in a header value as they are (controls, space, non-ASCII) are
    /// percent-encoded.
    pub fn redirect(status: u16, location: &str) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(header::LOCATION, location_value(location));
        Self::respond(status, headers, Bytes::new())
    }

    /// [`Fault::Slow`]: the normal answer, `delay` late.
    pub fn slow(delay: Duration) -> Self {
        Self::Slow { delay }
    }

    /// [`Fault::Respond`] with `status` read as [`status_code`] does.
    fn respond(status: u16, headers: HeaderMap, body: Bytes) -> Self {
        Self::Respond {
            status: status_code(status),
            headers,
            body,
        }
    }
}

/// `code` as a status, 500 if it is not a valid one.
fn status_code(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Headers holding only this `Content-Type`.
fn content_type(value: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
    headers
}

/// `location` as a header value, percent-encoding every byte outside visible
/// ASCII.
fn location_value(location: &str) -> HeaderValue {
    let mut encoded = String::with_capacity(location.len());
    for &byte in location.as_bytes() {
        if byte.is_ascii_graphic() {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static("/"))
}

/// Resolves once the [`Emulator`](super::Emulator) handle is dropped.
async fn dropped(state: &State) {
    // Nothing is ever sent on the channel: `changed` fails once the handle
    // is dropped. If the client closes the connection first, hyper drops
    // the future waiting on this.
    let mut shutdown = state.shutdown.clone();
    while shutdown.changed().await.is_ok() {}
}

/// The answer of the token endpoint under `fault`, or `None` for the normal
/// answer (after the wait of a [`Fault::Slow`]). An error closes the
/// connection without an answer.
pub(super) async fn respond(
    state: &State,
    fault: Fault,
) -> Result<Option<Response<Body>>, Aborted> {
    let (status, headers, body) = match fault {
        Fault::Respond {
            status,
            headers,
            body,
        } => (status, headers, full(body)),
        Fault::Hang => {
            dropped(state).await;
            return Err(Aborted(
                "hung token request released by dropping the emulator",
            ));
        }
        Fault::Slow { delay } => {
            return match tokio::time::timeout(delay, dropped(state)).await {
                Err(_elapsed) => Ok(None),
                Ok(()) => Err(Aborted(
                    "slow token request released by dropping the emulator",
                )),
            };
        }
        Fault::ResetMidResponse => {
            let mut headers = content_type("application/json");
            headers.insert(
                header::CONTENT_LENGTH,
                HeaderValue::from(RESET_DECLARED_LENGTH),
            );
            (StatusCode::OK, headers, ResetBody::new().boxed())
        }
        Fault::Oversized {
            len,
            declare_length,
        } => {
            let mut headers = content_type("application/json");
            if declare_length {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
            let body = OversizedBody::new(len, declare_length);
            (StatusCode::OK, headers, body.boxed())
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    Ok(Some(response))
}

#[cfg(test)]
mod tests {
    use std::error::Error as StdError;

    use http::{Method, Request};
    use http_body_util::Full;
    use serde_json::Value;

    use super::super::Emulator;
    use super::super::fault_body::RESET_PREFIX;
    use super::super::test_client::{
        body_auth, connect, exchange_body, exchange_request, exchange_response, host, issue_token,
        ping, read_frames, send, token_request,
    };
    use super::*;

    #[tokio::test]
    async fn respond_faults_answer_as_told() {
        let emulator = Emulator::start().await.unwrap();
        let token = issue_token(&emulator).await;
        let bearer = format!("Bearer {token}");

        emulator.inject(Fault::status(502));
        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
        assert!(answer.body.is_empty(), "{:?}", answer.body);
        assert_eq!(answer.header(header::CONTENT_TYPE), None);
        assert_eq!(answer.header(header::CONTENT_LENGTH), Some("0"));

        let body = r#"{"error":"invalid_client","error_description":"nope"}"#;
        emulator.inject(Fault::json(401, body));
        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            answer.header(header::CONTENT_TYPE),
            Some("application/json")
        );
        assert_eq!(answer.body, Bytes::from(body));

        emulator.inject(Fault::html(503));
        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            answer.header(header::CONTENT_TYPE),
            Some("text/html; charset=utf-8")
        );
        let page = String::from_utf8(answer.body.to_vec()).unwrap();
        assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
        assert!(
            page.contains("<title>503 Service Unavailable</title>"),
            "{page}"
        );
        assert!(serde_json::from_slice::<Value>(&answer.body).is_err());

        emulator.inject(Fault::retry_after(429, 7));
        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(answer.header(header::RETRY_AFTER), Some("7"));
        assert_eq!(
            answer.header(header::CONTENT_TYPE),
            Some("application/json")
        );
        assert_eq!(answer.json()["error"], "temporarily_unavailable");
        assert!(answer.json()["error_description"].is_string());

        emulator.inject(Fault::redirect(
            307,
            "http://elsewhere.example/oauth2/token",
        ));
        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.status, StatusCode::TEMPORARY_REDIRECT);
        assert_eq!(
            answer.header(header::LOCATION),
            Some("http://elsewhere.example/oauth2/token")
        );
        assert!(answer.body.is_empty());

        emulator.inject(Fault::redirect(302, "/a b/é"));
        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.status, StatusCode::FOUND);
        assert_eq!(answer.header(header::LOCATION), Some("/a%20b/%C3%A9"));

        // Not a valid status: 500 rather than a panic.
        emulator.inject(Fault::status(1000));
        assert_eq!(
            exchange_body(&emulator).await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );

        let mut headers = HeaderMap::new();
        headers.insert("x-request-id", HeaderValue::from_static("abc"));
        emulator.inject(Fault::Respond {
            status: StatusCode::OK,
            headers,
            body: Bytes::from_static(b"not json"),
        });
        let answer = exchange_body(&emulator).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.header("x-request-id".parse().unwrap()), Some("abc"));
        assert_eq!(answer.header(header::CONTENT_TYPE), None);
        assert_eq!(answer.body, Bytes::from_static(b"not json"));

        // Requests are still read, counted and recorded; no token is issued.
        assert_eq!(emulator.token_requests(), 9);
        assert_eq!(emulator.exchange_count(), 1);
        assert_eq!(emulator.issued_tokens(), vec![token]);
        let recorded = emulator.last_token_request().unwrap();
        assert_eq!(recorded.method, Method::POST);
        assert_eq!(recorded.form()[0].1, "client_credentials");

        // The protected resource does not care.
        assert_eq!(ping(&emulator, Some(&bearer)).await.status, StatusCode::OK);
        assert_eq!(ping(&emulator, None).await.status, StatusCode::UNAUTHORIZED);
        assert_eq!(emulator.resource_requests(), 2);
        let other = Request::get("/elsewhere")
            .header(header::HOST, host(&emulator))
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(&emulator, other).await.status, StatusCode::NOT_FOUND);
        assert_eq!(emulator.token_requests(), 9);
    }

    #[tokio::test]
    async fn reset_mid_response_fails_the_body_not_the_head() {
        let emulator = Emulator::start().await.unwrap();
        emulator.inject(Fault::ResetMidResponse);
        let response = exchange_response(&emulator).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "1000");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let mut body = response.into_body();
        let (data, _, error) = read_frames(&mut body).await;
        assert_eq!(data, RESET_PREFIX);
        let error = error.expect("the body ended cleanly");
        // The connection ended before the declared length: an early EOF.
        let cause = StdError::source(&error)
            .and_then(|cause| cause.downcast_ref::<std::io::Error>())
            .unwrap_or_else(|| panic!("{error:?}"));
        assert_eq!(cause.kind(), std::io::ErrorKind::UnexpectedEof, "{error:?}");

        // With a client that collects the body in one go.
        let response = exchange_response(&emulator).await;
        assert!(response.into_body().collect().await.is_err());

        assert_eq!(emulator.token_requests(), 2);
        assert_eq!(emulator.exchange_count(), 0);
        assert!(emulator.issued_tokens().is_empty());
    }

    #[tokio::test]
    async fn oversized_streams_exactly_len_bytes() {
        let emulator = Emulator::start().await.unwrap();
        let len = (1 << 20) + 5;

        emulator.inject(Fault::Oversized {
            len,
            declare_length: false,
        });
        let response = exchange_response(&emulator).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(response.headers().get(header::CONTENT_LENGTH), None);
        assert_eq!(response.headers()[header::TRANSFER_ENCODING], "chunked");
        let mut body = response.into_body();
        let (data, frames, error) = read_frames(&mut body).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(data.len(), len);
        assert!(frames > 1, "{frames}");
        assert!(data.starts_with(br#"{"padding":"aaa"#));
        assert!(data.ends_with(br#"aaa"}"#));
        let json: Value = serde_json::from_slice(&data).unwrap();
        assert_eq!(json["padding"].as_str().unwrap().len(), len - 14);

        emulator.inject(Fault::Oversized {
            len,
            declare_length: true,
        });
        let response = exchange_response(&emulator).await;
        assert_eq!(
            response.headers()[header::CONTENT_LENGTH],
            len.to_string().as_str()
        );
        assert_eq!(response.headers().get(header::TRANSFER_ENCODING), None);
        let data = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(data.len(), len);
        assert!(serde_json::from_slice::<Value>(&data).is_ok());

        // Small and empty bodies keep their framing.
        for (len, expected) in [(14, &br#"{"padding":""}"#[..]), (5, b"     "), (0, b"")] {
            emulator.inject(Fault::Oversized {
                len,
                declare_length: false,
            });
            let response = exchange_response(&emulator).await;
            assert_eq!(response.headers()[header::TRANSFER_ENCODING], "chunked");
            assert_eq!(response.headers().get(header::CONTENT_LENGTH), None);
            let data = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&data[..], expected, "{len}");
        }

        assert_eq!(emulator.token_requests(), 5);
        assert_eq!(emulator.exchange_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_answers_normally_once_the_delay_has_passed_on_tokio_time() {
        let emulator = Emulator::start().await.unwrap();
        emulator.set_expires_in(Duration::from_secs(60));
        let delay = Duration::from_secs(30);
        emulator.inject_times(Fault::slow(delay), 1);

        let start = tokio::time::Instant::now();
        let answer = exchange_body(&emulator).await;
        let waited = start.elapsed();
        assert!(
            delay <= waited && waited < delay + Duration::from_secs(1),
            "{waited:?}"
        );
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.json()["expires_in"], 60);
        let token = answer.json()["access_token"].as_str().unwrap().to_owned();
        assert_eq!(emulator.issued_tokens(), std::slice::from_ref(&token));
        assert_eq!(emulator.token_requests(), 1);

        // The token's lifetime started when it was issued, after the delay.
        let validator = emulator.token_validator();
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(validator.is_valid(&token));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!validator.is_valid(&token));

        // Injected once: the next answer comes at once.
        let start = tokio::time::Instant::now();
        issue_token(&emulator).await;
        assert_eq!(start.elapsed(), Duration::ZERO);

        // Still a normal answer: wrong credentials are refused, late.
        emulator.inject(Fault::slow(delay));
        let wrong = body_auth("routera-test-client", "wrong");
        let start = tokio::time::Instant::now();
        let request = token_request(&emulator, None, &wrong);
        let answer = send(&emulator, request).await;
        assert!(start.elapsed() >= delay);
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
        assert_eq!(emulator.exchange_count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_answer_is_never_sent_once_the_emulator_is_dropped() {
        let emulator = Emulator::start().await.unwrap();
        emulator.inject(Fault::slow(Duration::from_secs(3600)));
        let (mut sender, _connection) = connect(&emulator).await;
        let request = exchange_request(&emulator);
        let pending = tokio::spawn(async move { sender.send_request(request).await });
        // Yielding lets the I/O run without moving the paused clock.
        while emulator.token_requests() == 0 {
            tokio::task::yield_now().await;
        }
        drop(emulator);
        // Were the answer not released, the clock would jump an hour and
        // the answer would be a 200.
        let outcome = pending.await.unwrap();
        let error = outcome.expect_err("a slow answer outlived the emulator");
        assert!(error.is_incomplete_message(), "{error:?}");
    }
}
