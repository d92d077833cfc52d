//! What the handle and the server tasks share: the clients, the issued
//! tokens, the counters, the last token request, the armed fault and
//! whether the control API is on.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Uri};
use tokio::sync::watch;
use tokio::time::Instant;

use super::Fault;

/// A request as it reached the emulator, for asserting the wire format in
/// tests.
///
/// This is a test helper holding plain data: its `Debug` output shows the
/// headers and the body as they were sent, credentials included.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecordedRequest {
    /// The request method.
    pub method: Method,
    /// The request target (path and query).
    pub uri: Uri,
    /// The request headers.
    pub headers: HeaderMap,
    /// The request body, as received.
    pub body: Bytes,
}

impl RecordedRequest {
    /// The body parsed as `application/x-www-form-urlencoded` pairs, decoded,
    /// in the order they were sent.
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body)
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect()
    }
}

/// State shared between the handle and the server tasks.
pub(super) struct State {
    /// Registered clients, in registration order, ids unique.
    pub(super) clients: Mutex<Vec<(String, String)>>,
    /// Lifetime of tokens issued from now on.
    pub(super) expires_in: Mutex<Duration>,
    /// Every token issued.
    pub(super) tokens: Mutex<Tokens>,
    pub(super) exchange_count: AtomicU64,
    pub(super) token_requests: AtomicU64,
    pub(super) resource_requests: AtomicU64,
    pub(super) last_token_request: Mutex<Option<RecordedRequest>>,
    /// The fault the token endpoint answers with, if any.
    pub(super) fault: Mutex<Option<ArmedFault>>,
    /// Closed when the handle is dropped.
    pub(super) shutdown: watch::Receiver<()>,
    /// Whether `/emulator/...` serves the control API.
    pub(super) control_api: bool,
}

/// Issued tokens, by value and in the order they were issued.
#[derive(Default)]
pub(super) struct Tokens {
    pub(super) by_value: HashMap<String, Issued>,
    pub(super) in_order: Vec<String>,
}

/// What the emulator remembers about an issued token.
pub(super) struct Issued {
    pub(super) expires_at: Instant,
    pub(super) revoked: bool,
}

/// A fault and how many more token requests it applies to (`None`: all).
pub(super) struct ArmedFault {
    pub(super) fault: Fault,
    pub(super) remaining: Option<u64>,
}

impl State {
    /// A fresh state: no token issued, nothing counted, no fault.
    pub(super) fn new(
        clients: Vec<(String, String)>,
        expires_in: Duration,
        shutdown: watch::Receiver<()>,
        control_api: bool,
    ) -> Self {
        Self {
            clients: Mutex::new(clients),
            expires_in: Mutex::new(expires_in),
            tokens: Mutex::new(Tokens::default()),
            exchange_count: AtomicU64::new(0),
            token_requests: AtomicU64::new(0),
            resource_requests: AtomicU64::new(0),
            last_token_request: Mutex::new(None),
            fault: Mutex::new(None),
            shutdown,
            control_api,
        }
    }

    /// Marks every token issued so far as revoked.
    pub(super) fn revoke_all(&self) {
        for issued in lock(&self.tokens).by_value.values_mut() {
            issued.revoked = true;
        }
    }

    /// Arms `fault` for the next `times` token requests (`None`: until
    /// cleared), replacing any fault armed before. `Some(0)` clears it.
    pub(super) fn arm(&self, fault: Fault, times: Option<u64>) {
        *lock(&self.fault) = match times {
            Some(0) => None,
            remaining => Some(ArmedFault { fault, remaining }),
        };
    }

    /// Removes the armed fault, if any.
    pub(super) fn clear_fault(&self) {
        *lock(&self.fault) = None;
    }

    /// The fault for a token request that just arrived, if any, using up one
    /// of its remaining uses.
    pub(super) fn take_fault(&self) -> Option<Fault> {
        let mut armed = lock(&self.fault);
        let current = armed.as_mut()?;
        let fault = current.fault.clone();
        if let Some(remaining) = &mut current.remaining {
            *remaining = remaining.saturating_sub(1);
            if *remaining == 0 {
                *armed = None;
            }
        }
        Some(fault)
    }
}

/// Registers `id` with `secret` in `clients`: replaces the secret if `id`
/// is known, appends the client otherwise.
pub(super) fn set_client(clients: &mut Vec<(String, String)>, id: String, secret: String) {
    match clients.iter_mut().find(|(known, _)| *known == id) {
        Some(entry) => entry.1 = secret,
        None => clients.push((id, secret)),
    }
}

/// Locks a mutex, recovering the data if a holder panicked.
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> State {
        let (_sender, shutdown) = watch::channel(());
        State::new(Vec::new(), Duration::from_secs(1), shutdown, false)
    }

    #[test]
    fn counted_faults_run_out_and_others_do_not() {
        let state = state();
        assert!(state.take_fault().is_none());

        *lock(&state.fault) = Some(ArmedFault {
            fault: Fault::status(503),
            remaining: Some(2),
        });
        assert!(state.take_fault().is_some());
        assert!(state.take_fault().is_some());
        assert!(state.take_fault().is_none());

        *lock(&state.fault) = Some(ArmedFault {
            fault: Fault::Hang,
            remaining: None,
        });
        for _ in 0..3 {
            assert!(matches!(state.take_fault(), Some(Fault::Hang)));
        }
    }

    #[test]
    fn form_decodes_pairs_in_order() {
        let recorded = RecordedRequest {
            method: Method::POST,
            uri: Uri::from_static("/oauth2/token"),
            headers: HeaderMap::new(),
            body: Bytes::from_static(b"b=1+2&a=%C3%A9&b="),
        };
        assert_eq!(
            recorded.form(),
            vec![
                ("b".to_owned(), "1 2".to_owned()),
                ("a".to_owned(), "é".to_owned()),
                ("b".to_owned(), String::new()),
            ]
        );
    }
}
