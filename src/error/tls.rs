//! Recognising, in a transport failure's chain of causes, a server
//! certificate the client did not trust, so that the error says so and what
//! to do.

use std::error::Error as StdError;

/// Why a certificate was refused, as far as the TLS library says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No trusted CA issued it (or it is self-signed).
    Issuer,
    /// It is not valid for the host of the URL.
    Name,
    /// It has expired or is not valid yet.
    Dates,
}

/// The explanation for a transport failure caused by a server certificate
/// the client did not trust; `None` for any other failure.
pub(crate) fn untrusted_certificate(error: &(dyn StdError + 'static)) -> Option<&'static str> {
    let refusal = causes(error).find_map(refusal)?;
    Some(match refusal {
        Refusal::Issuer => {
            "the server's TLS certificate was not trusted: no CA the client trusts issued it. \
             For a private CA, add it to the roots the client trusts: `SSL_CERT_FILE` or \
             `SSL_CERT_DIR` for `HttpTokenExchange::reqwest()`, or a reqwest client built with \
             `tls_certs_merge` passed to `HttpTokenExchange::new(ReqwestService::new(..))`"
        }
        Refusal::Name => {
            "the server's TLS certificate was not trusted: it is not valid for the host of the \
             token URL; check the token URL"
        }
        Refusal::Dates => {
            "the server's TLS certificate was not trusted: it has expired or is not valid yet; \
             check the server's certificate and this machine's clock"
        }
    })
}

/// `error` and its causes, including the error an `io::Error` wraps (which
/// `io::Error::source` skips).
fn causes<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&cause| cause.source()).flat_map(|cause| {
        let wrapped = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn StdError + 'static));
        std::iter::once(cause).chain(wrapped)
    })
}

/// Whether this one cause is a refused certificate, and why.
fn refusal(cause: &(dyn StdError + 'static)) -> Option<Refusal> {
    #[cfg(any(feature = "rustls", feature = "rustls-ring"))]
    if let Some(rustls::Error::InvalidCertificate(error)) = cause.downcast_ref::<rustls::Error>() {
        use rustls::CertificateError as E;
        return Some(match error {
            E::NotValidForName | E::NotValidForNameContext { .. } => Refusal::Name,
            E::Expired
            | E::ExpiredContext { .. }
            | E::NotValidYet
            | E::NotValidYetContext { .. } => Refusal::Dates,
            _ => Refusal::Issuer,
        });
    }
    // The platform's TLS libraries, known by their messages: OpenSSL
    // ("certificate verify failed"), Security.framework, SChannel.
    let text = cause.to_string().to_ascii_lowercase();
    let refused = [
        "certificate verify failed",
        "invalid peer certificate",
        "certificate is not trusted",
        "certificate was not trusted",
        "not trusted",
    ]
    .iter()
    .any(|sign| text.contains(sign));
    if !refused {
        return None;
    }
    Some(
        if text.contains("hostname mismatch") || text.contains("notvalidforname") {
            Refusal::Name
        } else if text.contains("expired") || text.contains("not yet valid") {
            Refusal::Dates
        } else {
            Refusal::Issuer
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(&'static str, Option<Box<dyn StdError + Send + Sync>>);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn StdError + 'static))
        }
    }

    #[test]
    fn openssl_messages_deep_in_the_chain_are_recognised() {
        let openssl = "error:0A000086:SSL routines:tls_post_process_server_certificate:\
                       certificate verify failed:../ssl/statem/statem_clnt.c:2091: \
                       (unable to get local issuer certificate)";
        let io = std::io::Error::other(Wrapper(openssl, None));
        let chain = Wrapper("client error (Connect)", Some(Box::new(io)));
        let top = Wrapper("error sending request", Some(Box::new(chain)));
        let detail = untrusted_certificate(&top).unwrap();
        assert!(detail.contains("not trusted"), "{detail}");
        assert!(detail.contains("SSL_CERT_FILE"), "{detail}");

        let name = Wrapper("certificate verify failed: (Hostname mismatch)", None);
        assert!(untrusted_certificate(&name).unwrap().contains("host"));
        let dates = Wrapper("certificate verify failed (certificate has expired)", None);
        assert!(untrusted_certificate(&dates).unwrap().contains("clock"));
    }

    #[test]
    fn other_failures_are_not_blamed_on_certificates() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let top = Wrapper("client error (Connect)", Some(Box::new(refused)));
        assert_eq!(untrusted_certificate(&top), None);
    }

    #[cfg(any(feature = "rustls", feature = "rustls-ring"))]
    #[test]
    fn rustls_errors_are_recognised_by_type() {
        use rustls::CertificateError;

        let cases = [
            (CertificateError::UnknownIssuer, "SSL_CERT_FILE"),
            (CertificateError::NotValidForName, "host"),
            (CertificateError::Expired, "clock"),
        ];
        for (error, expected) in cases {
            let io = std::io::Error::other(rustls::Error::InvalidCertificate(error));
            let top = Wrapper("client error (Connect)", Some(Box::new(io)));
            let detail = untrusted_certificate(&top).unwrap();
            assert!(detail.contains(expected), "{detail}");
        }
    }
}
