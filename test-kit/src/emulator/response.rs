//! What every emulator response is made of: its body type, a body sent
//! whole, the error that cuts a connection, and JSON answers.

use std::error::Error as StdError;
use std::fmt;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use serde_json::Value;

/// The body of every emulator response: a [`Full`] one, or one of the
/// bodies of [`Fault`](super::Fault) that stream or break.
pub(super) type Body = BoxBody<Bytes, Aborted>;

/// A body sent whole, in one frame.
pub(super) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Why the emulator cut a connection: a hung request released, or a
/// response aborted on purpose.
#[derive(Debug)]
pub(super) struct Aborted(pub(super) &'static str);

impl fmt::Display for Aborted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl StdError for Aborted {}

/// A JSON response that must not be cached.
pub(super) fn json_response(status: StatusCode, body: &Value) -> Response<Body> {
    let mut response = Response::new(full(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_bodies_announce_their_length() {
        use http_body::Body as _;

        let body = full("four");
        assert_eq!(body.size_hint().exact(), Some(4));
        let empty = full(Bytes::new());
        assert!(empty.is_end_stream());
        assert_eq!(empty.size_hint().exact(), Some(0));
    }
}
