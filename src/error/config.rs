//! [`ConfigError`]: a configuration value that is missing or not acceptable.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

/// A configuration value is missing or not acceptable.
///
/// Its `Debug` is the sentence of its `Display`, so that `main` returning
/// it prints what to fix; with `{:#?}`, the fields.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigError {
    kind: ConfigErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ConfigErrorKind {
    /// The first missing variable, and a second one missing as well.
    EnvMissing(&'static str, Option<&'static str>),
    EnvEmpty(&'static str),
    EnvNotUnicode(&'static str),
    /// A variable whose value is not acceptable, and why.
    EnvInvalid(&'static str, Box<ConfigError>),
    InvalidAuthMethod,
    InvalidTokenUrl(Cow<'static, str>),
    /// The refused host.
    InsecureTokenUrl(String),
    HttpClient(String),
}

impl ConfigError {
    pub(crate) fn env_missing(name: &'static str) -> Self {
        Self {
            kind: ConfigErrorKind::EnvMissing(name, None),
        }
    }

    pub(crate) fn env_both_missing(first: &'static str, second: &'static str) -> Self {
        Self {
            kind: ConfigErrorKind::EnvMissing(first, Some(second)),
        }
    }

    pub(crate) fn env_empty(name: &'static str) -> Self {
        Self {
            kind: ConfigErrorKind::EnvEmpty(name),
        }
    }

    pub(crate) fn env_not_unicode(name: &'static str) -> Self {
        Self {
            kind: ConfigErrorKind::EnvNotUnicode(name),
        }
    }

    pub(crate) fn env_invalid(name: &'static str, reason: ConfigError) -> Self {
        Self {
            kind: ConfigErrorKind::EnvInvalid(name, Box::new(reason)),
        }
    }

    pub(crate) fn invalid_auth_method(_value: &str) -> Self {
        Self {
            kind: ConfigErrorKind::InvalidAuthMethod,
        }
    }

    pub(crate) fn invalid_token_url(reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind: ConfigErrorKind::InvalidTokenUrl(reason.into()),
        }
    }

    pub(crate) fn insecure_token_url(host: &str) -> Self {
        Self {
            kind: ConfigErrorKind::InsecureTokenUrl(host.to_owned()),
        }
    }

    #[cfg_attr(
        not(any(feature = "rustls", feature = "rustls-ring", feature = "native-tls")),
        allow(dead_code)
    )]
    pub(crate) fn http_client(reason: impl fmt::Display) -> Self {
        Self {
            kind: ConfigErrorKind::HttpClient(reason.to_string()),
        }
    }

    pub(crate) fn is_env_missing(&self) -> bool {
        matches!(self.kind, ConfigErrorKind::EnvMissing(..))
    }

    /// The environment variable this error is about, if it is about one
    /// (the first, when two are missing).
    pub fn env_var(&self) -> Option<&'static str> {
        match self.kind {
            ConfigErrorKind::EnvMissing(name, _)
            | ConfigErrorKind::EnvEmpty(name)
            | ConfigErrorKind::EnvNotUnicode(name)
            | ConfigErrorKind::EnvInvalid(name, _) => Some(name),
            _ => None,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ConfigErrorKind::EnvMissing(name, None) => {
                write!(f, "the environment variable {name} is not set")
            }
            ConfigErrorKind::EnvMissing(first, Some(second)) => {
                write!(
                    f,
                    "the environment variables {first} and {second} are not set"
                )
            }
            ConfigErrorKind::EnvEmpty(name) => {
                write!(f, "the environment variable {name} is empty")
            }
            ConfigErrorKind::EnvNotUnicode(name) => {
                write!(f, "the environment variable {name} is not valid Unicode")
            }
            ConfigErrorKind::EnvInvalid(name, reason) => {
                write!(
                    f,
                    "the environment variable {name} is not acceptable: {reason}"
                )
            }
            ConfigErrorKind::InvalidAuthMethod => {
                f.write_str("the auth method must be `body` or `basic`")
            }
            ConfigErrorKind::InvalidTokenUrl(reason) => {
                write!(f, "the token URL is not valid: {reason}")
            }
            ConfigErrorKind::InsecureTokenUrl(host) => write!(
                f,
                "the token URL must use https: plain http is refused for host `{host}` \
                 (it is accepted only for localhost, 127.0.0.0/8 and [::1])"
            ),
            ConfigErrorKind::HttpClient(reason) => {
                write!(f, "the HTTP client could not be built: {reason}")
            }
        }
    }
}

impl fmt::Debug for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            f.debug_struct("ConfigError")
                .field("kind", &self.kind)
                .finish()
        } else {
            fmt::Display::fmt(self, f)
        }
    }
}

impl StdError for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_reads_as_the_sentence() {
        let err = ConfigError::env_missing("ROUTERA_CLIENT_ID");
        assert_eq!(format!("{err:?}"), err.to_string());
        assert!(format!("{err:#?}").contains("EnvMissing"));
    }

    #[test]
    fn config_errors_name_the_variable() {
        let err = ConfigError::env_missing("ROUTERA_CLIENT_ID");
        assert_eq!(err.env_var(), Some("ROUTERA_CLIENT_ID"));
        assert!(err.to_string().contains("ROUTERA_CLIENT_ID"));
    }
}
