//! Client credentials and how they are presented to the token endpoint.

use std::fmt;
use std::sync::Arc;

use crate::error::ConfigError;

/// Environment variable read by [`ClientCredentials::from_env`] for the client id.
pub const CLIENT_ID_ENV: &str = "ROUTERA_CLIENT_ID";
/// Environment variable read by [`ClientCredentials::from_env`] for the client secret.
pub const CLIENT_SECRET_ENV: &str = "ROUTERA_CLIENT_SECRET";
/// Environment variable read by `HttpTokenExchange::reqwest()` for the token
/// URL, when it is set (the Routera emulator's, a staging endpoint's); the
/// same rules apply as to
/// [`HttpTokenExchange::with_token_url`](crate::HttpTokenExchange::with_token_url).
pub const TOKEN_URL_ENV: &str = "ROUTERA_TOKEN_URL";

/// The OAuth 2.0 client id and secret of a Routera API client.
///
/// Cloning is cheap (one reference count). `Debug` shows the client id and
/// never the secret:
///
/// ```
/// use routera_auth::ClientCredentials;
///
/// let credentials = ClientCredentials::new("my-service", "s3cr3t");
/// assert_eq!(credentials.client_id(), "my-service");
/// assert!(!format!("{credentials:?}").contains("s3cr3t"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    inner: Arc<Inner>,
}

#[derive(PartialEq, Eq)]
struct Inner {
    client_id: Arc<str>,
    client_secret: String,
}

impl ClientCredentials {
    /// Credentials from a client id and a client secret.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                client_id: Arc::from(client_id.into()),
                client_secret: client_secret.into(),
            }),
        }
    }

    /// Credentials from the `ROUTERA_CLIENT_ID` and `ROUTERA_CLIENT_SECRET`
    /// environment variables.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the variable that is missing, empty or not
    /// valid Unicode. The error never contains the secret.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(std::env::var)
    }

    /// [`ClientCredentials::from_env`] over any variable lookup, so the
    /// logic is testable without touching the process environment.
    fn from_lookup(
        lookup: impl Fn(&'static str) -> Result<String, std::env::VarError>,
    ) -> Result<Self, ConfigError> {
        match (
            read_env(CLIENT_ID_ENV, &lookup),
            read_env(CLIENT_SECRET_ENV, &lookup),
        ) {
            (Ok(client_id), Ok(client_secret)) => Ok(Self::new(client_id, client_secret)),
            (Err(first), Err(second)) if first.is_env_missing() && second.is_env_missing() => Err(
                ConfigError::env_both_missing(CLIENT_ID_ENV, CLIENT_SECRET_ENV),
            ),
            (Err(err), _) | (_, Err(err)) => Err(err),
        }
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The client id, shared: for log fields and metric labels without a
    /// copy.
    pub(crate) fn label(&self) -> &Arc<str> {
        &self.inner.client_id
    }

    /// The client secret.
    ///
    /// Handle with care: everything else in this crate keeps it out of
    /// `Debug`, `Display`, errors and logs.
    pub fn client_secret(&self) -> &str {
        &self.inner.client_secret
    }
}

pub(crate) fn read_env(
    name: &'static str,
    lookup: &impl Fn(&'static str) -> Result<String, std::env::VarError>,
) -> Result<String, ConfigError> {
    match lookup(name) {
        Ok(value) if !value.is_empty() => Ok(value),
        Ok(_) => Err(ConfigError::env_empty(name)),
        Err(std::env::VarError::NotPresent) => Err(ConfigError::env_missing(name)),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::env_not_unicode(name)),
    }
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("client_id", &self.inner.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

/// How the client authenticates to the token endpoint.
///
/// Both are accepted by Routera; the request body is the contract's primary
/// form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AuthMethod {
    /// `client_id` and `client_secret` as form fields in the request body,
    /// beside `grant_type=client_credentials`.
    #[default]
    RequestBody,
    /// `Authorization: Basic base64(urlencode(client_id) ":" urlencode(client_secret))`
    /// as RFC 6749 §2.3.1 specifies; the body carries only
    /// `grant_type=client_credentials`.
    BasicAuth,
}

impl AuthMethod {
    /// Parses `body` or `basic` (any case), the spellings used by the
    /// `ROUTERA_AUTH_METHOD` environment variable of the examples.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for any other value.
    pub fn parse(value: &str) -> Result<Self, ConfigError> {
        if value.eq_ignore_ascii_case("body") || value.eq_ignore_ascii_case("request_body") {
            Ok(Self::RequestBody)
        } else if value.eq_ignore_ascii_case("basic") || value.eq_ignore_ascii_case("basic_auth") {
            Ok(Self::BasicAuth)
        } else {
            Err(ConfigError::invalid_auth_method(value))
        }
    }
}

impl std::str::FromStr for AuthMethod {
    type Err = ConfigError;

    /// Same as [`AuthMethod::parse`].
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

/// Encodes a value with the `application/x-www-form-urlencoded` byte
/// serializer (space as `+`, everything but `*-._` and alphanumerics
/// percent-encoded).
pub(crate) fn form_urlencode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let credentials = ClientCredentials::new("id-123", "very-secret-value");
        let debug = format!("{credentials:?}");
        assert!(debug.contains("id-123"));
        assert!(!debug.contains("very-secret-value"));
        assert!(debug.contains("[redacted]"));
    }

    fn lookup<'a>(
        vars: &'a [(&'a str, &'a str)],
    ) -> impl Fn(&'static str) -> Result<String, std::env::VarError> + 'a {
        move |name| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
                .ok_or(std::env::VarError::NotPresent)
        }
    }

    #[test]
    fn from_env_reads_both_variables() {
        let vars = [(CLIENT_ID_ENV, "svc"), (CLIENT_SECRET_ENV, "pw")];
        let credentials = ClientCredentials::from_lookup(lookup(&vars)).unwrap();
        assert_eq!(credentials.client_id(), "svc");
        assert_eq!(credentials.client_secret(), "pw");
    }

    #[test]
    fn from_env_names_the_missing_variable() {
        let only_id = [(CLIENT_ID_ENV, "svc")];
        let err = ClientCredentials::from_lookup(lookup(&only_id)).unwrap_err();
        assert!(err.to_string().contains(CLIENT_SECRET_ENV), "{err}");
        assert!(!err.to_string().contains(CLIENT_ID_ENV), "{err}");

        let err = ClientCredentials::from_lookup(lookup(&[])).unwrap_err();
        assert!(err.to_string().contains(CLIENT_ID_ENV), "{err}");
        assert!(
            err.to_string().contains(CLIENT_SECRET_ENV),
            "both are named: {err}"
        );
        assert_eq!(err.env_var(), Some(CLIENT_ID_ENV));

        let empty_secret = [(CLIENT_ID_ENV, "svc"), (CLIENT_SECRET_ENV, "")];
        let err = ClientCredentials::from_lookup(lookup(&empty_secret)).unwrap_err();
        assert!(err.to_string().contains(CLIENT_SECRET_ENV), "{err}");
        assert!(err.to_string().contains("empty"), "{err}");
    }

    #[test]
    fn auth_method_parses_the_documented_spellings() {
        assert_eq!(
            AuthMethod::parse("body").ok(),
            Some(AuthMethod::RequestBody)
        );
        assert_eq!(AuthMethod::parse("BASIC").ok(), Some(AuthMethod::BasicAuth));
        assert!(AuthMethod::parse("digest").is_err());
        assert_eq!(
            "Body".parse::<AuthMethod>().ok(),
            Some(AuthMethod::RequestBody)
        );
        assert_eq!(AuthMethod::default(), AuthMethod::RequestBody);
    }

    #[test]
    fn form_urlencode_follows_the_form_serializer() {
        assert_eq!(
            form_urlencode("a b+c/d&e%f=g:h"),
            "a+b%2Bc%2Fd%26e%25f%3Dg%3Ah"
        );
        assert_eq!(form_urlencode("é"), "%C3%A9");
        assert_eq!(form_urlencode("A-z_0.9*~"), "A-z_0.9*%7E");
    }
}
