//! Metrics of the token's life (feature `metrics`), on the [`metrics`]
//! facade: they cost nothing without a recorder, and nothing is recorded on
//! the fresh-token path. Every metric carries a `client_id` label; none
//! carries a secret or a token.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `routera_auth_token_exchanges_total` | counter | `client_id` | exchange attempts started |
//! | `routera_auth_token_exchange_failures_total` | counter | `client_id`, `kind` | failed attempts, by [`TokenErrorKind`] (`server_error`, `invalid_client`, …) |
//! | `routera_auth_token_exchange_duration_seconds` | histogram | `client_id`, `outcome` (`success`, `failure`) | how long each attempt took |
//! | `routera_auth_token_waits_total` | counter | `client_id` | callers that waited for an exchange because no token was fresh |
//! | `routera_auth_token_invalidations_total` | counter | `client_id` | tokens dropped by `invalidate` or a rejecting response |
//! | `routera_auth_token_background_refreshes_total` | counter | `client_id` | refreshes started ahead of expiry while the token was served |
//! | `routera_auth_token_expiry_timestamp_seconds` | gauge | `client_id` | Unix time at which the current token stops being served; minus the current time, its remaining lifetime |

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::TokenErrorKind;

/// Something worth counting, from the slow path.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) enum Event {
    ExchangeStarted,
    ExchangeSucceeded {
        took: Duration,
    },
    /// A token became the current one, from an exchange or the fleet's
    /// store.
    TokenStored {
        served_until: Instant,
    },
    ExchangeFailed {
        took: Duration,
        kind: TokenErrorKind,
    },
    Wait,
    Invalidation,
    BackgroundRefresh,
}

/// Records `event` for `client_id`; nothing without the `metrics` feature.
#[cfg(feature = "metrics")]
pub(crate) fn record(client_id: &Arc<str>, event: Event) {
    // A label shares the worker's copy of the client id: no copy per event.
    let client_id = Arc::clone(client_id);
    match event {
        Event::ExchangeStarted => {
            metrics::counter!("routera_auth_token_exchanges_total", "client_id" => client_id)
                .increment(1);
        }
        Event::ExchangeSucceeded { took } => {
            metrics::histogram!(
                "routera_auth_token_exchange_duration_seconds",
                "client_id" => client_id, "outcome" => "success"
            )
            .record(took.as_secs_f64());
        }
        Event::TokenStored { served_until } => {
            let remaining = served_until.saturating_duration_since(Instant::now());
            let unix = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                + remaining;
            metrics::gauge!("routera_auth_token_expiry_timestamp_seconds", "client_id" => client_id)
                .set(unix.as_secs_f64());
        }
        Event::ExchangeFailed { took, kind } => {
            metrics::histogram!(
                "routera_auth_token_exchange_duration_seconds",
                "client_id" => client_id.clone(), "outcome" => "failure"
            )
            .record(took.as_secs_f64());
            metrics::counter!(
                "routera_auth_token_exchange_failures_total",
                "client_id" => client_id, "kind" => kind.label()
            )
            .increment(1);
        }
        Event::Wait => {
            metrics::counter!("routera_auth_token_waits_total", "client_id" => client_id)
                .increment(1);
        }
        Event::Invalidation => {
            metrics::counter!("routera_auth_token_invalidations_total", "client_id" => client_id)
                .increment(1);
        }
        Event::BackgroundRefresh => {
            metrics::counter!(
                "routera_auth_token_background_refreshes_total",
                "client_id" => client_id
            )
            .increment(1);
        }
    }
}

/// Records `event` for `client_id`; nothing without the `metrics` feature.
#[cfg(not(feature = "metrics"))]
#[inline(always)]
pub(crate) fn record(_client_id: &Arc<str>, _event: Event) {}
