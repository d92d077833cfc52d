//! The default of each option of [`TokenProviderBuilder`](crate::TokenProviderBuilder)
//! and of [`HttpTokenExchange`](crate::HttpTokenExchange)'s token URL. Each
//! builder method's docs give its default too; these are for code that
//! derives its own settings from them (a test that advances time past the
//! expiry skew, a configuration that halves the exchange timeout).

pub use crate::provider::{
    DEFAULT_ASSUMED_LIFETIME as ASSUMED_LIFETIME, DEFAULT_EXCHANGE_TIMEOUT as EXCHANGE_TIMEOUT,
    DEFAULT_EXPIRY_SKEW as EXPIRY_SKEW, DEFAULT_MAX_BACKOFF as MAX_BACKOFF,
    DEFAULT_MIN_BACKOFF as MIN_BACKOFF, DEFAULT_REFRESH_AHEAD as REFRESH_AHEAD,
};

/// The Routera token endpoint.
pub const TOKEN_URL: &str = "https://api.routera.io/oauth2/token";
