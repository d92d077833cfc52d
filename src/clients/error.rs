//! The errors of a keyed set of providers: [`CredentialsError`] when a
//! client's credentials cannot be loaded, [`MissingClientKey`] when a
//! request names no client.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use crate::error::{BoxError, ErrorChain};

/// The credential source failed to give the credentials of one client: no
/// provider was built for it, and its requests fail until the source
/// answers. Other clients are not affected.
///
/// `source()` is the source's own error, which the message ends with. Every
/// request waiting on the same lookup gets a clone of it; the next request
/// for the client looks its credentials up again.
#[derive(Clone)]
pub struct CredentialsError {
    source: Arc<dyn StdError + Send + Sync>,
}

impl CredentialsError {
    pub(crate) fn new(source: BoxError) -> Self {
        Self {
            source: Arc::from(source),
        }
    }
}

/// A sentence that ends with the cause: `the credential source failed to
/// give this client's credentials, so no request was sent for it (check
/// that the source knows the client and is reachable): <cause>`.
impl fmt::Display for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the credential source failed to give this client's credentials, so no \
             request was sent for it (check that the source knows the client and is \
             reachable): {}",
            self.source
        )
    }
}

/// The sentence of [`Display`](fmt::Display), followed by the cause's own
/// causes, so that `main` returning the error prints what went wrong; with
/// `{:#?}`, the fields.
impl fmt::Debug for CredentialsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            return write!(f, "{}", ErrorChain(self));
        }
        f.debug_struct("CredentialsError")
            .field("source", &self.source)
            .finish()
    }
}

impl StdError for CredentialsError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.source as &(dyn StdError + 'static))
    }
}

/// A request through
/// [`RouteraAuthLayer::per_client`](crate::RouteraAuthLayer::per_client)
/// named no client: its key function found no key in it. The request was
/// not sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct MissingClientKey;

impl fmt::Display for MissingClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the request names no Routera client, so it was not sent: set what the \
             per-client layer's key function reads (an extension, a header, a path \
             segment) before the request reaches the layer",
        )
    }
}

impl StdError for MissingClientKey {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_error_reads_as_a_sentence_with_its_cause_in_display_and_debug() {
        let cause = std::io::Error::other("no secret for tenant 3");
        let error = CredentialsError::new(Box::new(cause));
        let sentence = "the credential source failed to give this client's credentials, \
                        so no request was sent for it (check that the source knows the \
                        client and is reachable): no secret for tenant 3";
        assert_eq!(error.to_string(), sentence);
        assert_eq!(format!("{error:?}"), sentence, "the cause is written once");
        let source = StdError::source(&error).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("no secret for tenant 3"));
        assert!(format!("{error:#?}").starts_with("CredentialsError {"));
    }
}
