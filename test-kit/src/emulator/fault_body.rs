//! The two bodies of [`Fault`] that no `http-body-util` type produces: one
//! that breaks in the middle, one that streams a large size in chunks.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};

#[cfg(doc)]
use super::Fault;
use super::response::Aborted;

/// What [`Fault::ResetMidResponse`] sends of its body before aborting.
pub(super) const RESET_PREFIX: &[u8] = br#"{"access_token":""#;
/// `Content-Length` that [`Fault::ResetMidResponse`] declares.
pub(super) const RESET_DECLARED_LENGTH: usize = 1000;
/// Size of the chunks of a [`Fault::Oversized`] body.
const OVERSIZED_CHUNK: usize = 16 * 1024;
/// Start of an [`Fault::Oversized`] body of at least
/// `OVERSIZED_PREFIX.len() + OVERSIZED_SUFFIX.len()` bytes.
const OVERSIZED_PREFIX: &[u8] = br#"{"padding":""#;
/// End of such a body.
const OVERSIZED_SUFFIX: &[u8] = br#""}"#;

/// The body of [`Fault::ResetMidResponse`]: `prefix`, then one `Pending` so
/// that hyper flushes what it has, then an error, on which hyper drops the
/// connection. Its size is unknown and it never reports its end in advance.
pub(super) struct ResetBody {
    prefix: Option<Bytes>,
    paused: bool,
}

impl ResetBody {
    /// A body that has sent nothing yet.
    pub(super) fn new() -> Self {
        Self {
            prefix: Some(Bytes::from_static(RESET_PREFIX)),
            paused: false,
        }
    }
}

impl http_body::Body for ResetBody {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        let this = self.get_mut();
        if let Some(prefix) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        if !this.paused {
            this.paused = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(Some(Err(Aborted(
            "response aborted mid-body by fault injection",
        ))))
    }
}

/// The body of [`Fault::Oversized`]: `len` bytes in chunks, `sent` so far.
/// It never reports its end in advance: a chunked body stays chunked even
/// when empty.
pub(super) struct OversizedBody {
    sent: usize,
    len: usize,
    declare_length: bool,
}

impl OversizedBody {
    /// A body of `len` bytes, none sent yet.
    pub(super) fn new(len: usize, declare_length: bool) -> Self {
        Self {
            sent: 0,
            len,
            declare_length,
        }
    }
}

impl http_body::Body for OversizedBody {
    type Data = Bytes;
    type Error = Aborted;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Aborted>>> {
        let this = self.get_mut();
        if this.sent >= this.len {
            return Poll::Ready(None);
        }
        let end = this.len.saturating_sub(this.sent).min(OVERSIZED_CHUNK) + this.sent;
        let chunk: Vec<u8> = (this.sent..end)
            .map(|at| oversized_byte(at, this.len))
            .collect();
        this.sent = end;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn size_hint(&self) -> SizeHint {
        let remaining = u64::try_from(self.len.saturating_sub(self.sent)).unwrap_or(u64::MAX);
        if self.declare_length {
            SizeHint::with_exact(remaining)
        } else {
            // No upper bound, or hyper would send a Content-Length.
            let mut hint = SizeHint::new();
            hint.set_lower(remaining);
            hint
        }
    }
}

/// Byte `at` of an oversized body of `len` bytes: `{"padding":"aaa…a"}`, or
/// spaces when that does not fit.
fn oversized_byte(at: usize, len: usize) -> u8 {
    let frame = OVERSIZED_PREFIX.len() + OVERSIZED_SUFFIX.len();
    if len < frame {
        return b' ';
    }
    let suffix_start = len - OVERSIZED_SUFFIX.len();
    if let Some(&byte) = OVERSIZED_PREFIX.get(at) {
        byte
    } else if at >= suffix_start {
        OVERSIZED_SUFFIX
            .get(at - suffix_start)
            .copied()
            .unwrap_or(b' ')
    } else {
        b'a'
    }
}

#[cfg(test)]
mod tests {
    use super::super::Fault;
    use super::*;

    #[test]
    fn oversized_bodies_are_valid_json_when_they_can_be() {
        let body = |len| {
            (0..len)
                .map(|at| oversized_byte(at, len))
                .collect::<Vec<u8>>()
        };
        assert_eq!(body(14), br#"{"padding":""}"#);
        assert_eq!(body(15), br#"{"padding":"a"}"#);
        assert_eq!(body(13), b"             ");
        assert!(body(0).is_empty());
        let fault = Fault::Oversized {
            len: 3,
            declare_length: true,
        };
        assert!(format!("{:?}", fault.clone()).contains("Oversized"));
    }
}
