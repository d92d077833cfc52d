//! Test helpers: an in-process Routera emulator (feature `test-util`).
//!
//! [`Emulator`] serves the token endpoint (`POST /oauth2/token`, as the
//! Routera contract and RFC 6749 describe it) and one protected resource
//! (`/v1/ping`) over plain HTTP/1.1 on `127.0.0.1`, so tests and examples can
//! exercise the whole client-credentials flow without the network. It counts
//! requests, records the last token request for wire-format assertions, and
//! can revoke tokens or shorten their lifetime. Token expiry follows
//! [`tokio::time::Instant`], so it obeys paused time in tests.
//!
//! To test how a client survives a failing token endpoint, inject a
//! [`Fault`]: error statuses, HTML pages, `Retry-After`, redirects, a request
//! that never gets an answer, a connection reset in the middle of the body, or
//! a body too large to accept. [`Emulator::issued_tokens`] lists every token
//! issued, for asserting that none leaks into logs or errors.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! use routera_auth::test_util::{Emulator, Fault};
//!
//! let emulator = Emulator::builder()
//!     .client("my-service", "s3cr3t")
//!     .start()
//!     .await?;
//! assert!(emulator.token_url().ends_with("/oauth2/token"));
//! assert_eq!(emulator.credentials().client_id(), "my-service");
//! assert_eq!(emulator.exchange_count(), 0);
//!
//! // The next two token requests get a 503, then the endpoint recovers.
//! emulator.inject_times(Fault::retry_after(503, 1), 2);
//! # Ok(())
//! # }
//! ```
//!
//! This module is for tests: the emulator is not a hardened server.

mod emulator;
mod mock;

pub use emulator::{Emulator, EmulatorBuilder, Fault, RecordedRequest, TokenValidator};
pub use mock::{MOCK_CLIENT_ID, MOCK_CLIENT_SECRET, MockAnswer, MockExchange};
