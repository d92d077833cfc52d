//! HTTPS: the CA and server certificate an emulator generates, and its
//! rustls server configuration.

use std::io;
use std::sync::Arc;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// The names the server certificate is issued for.
const SERVER_NAMES: [&str; 2] = ["localhost", "127.0.0.1"];

/// Which certificate an HTTPS emulator presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ServerCert {
    /// Issued by the emulator's CA.
    IssuedByCa,
    /// Self-signed: no CA issued it.
    SelfSigned,
}

/// What an HTTPS emulator serves with.
pub(super) struct Tls {
    pub(super) acceptor: TlsAcceptor,
    /// The CA certificate, PEM.
    pub(super) ca_pem: String,
}

/// Generates a CA and a server certificate, and the TLS configuration that
/// presents it.
pub(super) fn generate(cert: ServerCert) -> io::Result<Tls> {
    let ca_key = KeyPair::generate().map_err(certificate_error)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(certificate_error)?;
    // A name of its own, so that a client trusting another emulator's CA
    // finds no issuer for this one's certificates.
    let ca_id: String = ca_key
        .public_key_raw()
        .iter()
        .skip(1)
        .take(6)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    ca_params.distinguished_name.push(
        DnType::CommonName,
        format!("routera-auth emulator test CA {ca_id}"),
    );
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(certificate_error)?;

    let server_key = KeyPair::generate().map_err(certificate_error)?;
    let mut server_params = CertificateParams::new(SERVER_NAMES.map(String::from).to_vec())
        .map_err(certificate_error)?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let server_cert = match cert {
        ServerCert::IssuedByCa => {
            server_params.use_authority_key_identifier_extension = true;
            let issuer = Issuer::from_params(&ca_params, &ca_key);
            server_params.signed_by(&server_key, &issuer)
        }
        ServerCert::SelfSigned => server_params.self_signed(&server_key),
    }
    .map_err(certificate_error)?;

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?
        .with_no_client_auth()
        .with_single_cert(vec![server_cert.der().clone()], key)
        .map_err(config_error)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Tls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        ca_pem: pem("CERTIFICATE", ca_cert.der()),
    })
}

/// The crypto provider, passed explicitly: ring, as for the certificates
/// (a process-wide provider is neither needed nor installed).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `der` as a PEM block with this label, 64 characters a line.
fn pem(label: &str, der: &CertificateDer<'_>) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = format!("-----BEGIN {label}-----\n");
    let mut rest = encoded.as_str();
    while !rest.is_empty() {
        // Base64 is ASCII: every index is a character boundary.
        let (line, tail) = rest.split_at_checked(64).unwrap_or((rest, ""));
        pem.push_str(line);
        pem.push('\n');
        rest = tail;
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

fn certificate_error(error: rcgen::Error) -> io::Error {
    io::Error::other(format!(
        "the emulator could not generate its test certificates ({error}); \
         this is a bug of the test kit"
    ))
}

fn config_error(error: rustls::Error) -> io::Error {
    io::Error::other(format!(
        "the emulator could not build its TLS server configuration ({error})"
    ))
}

#[cfg(test)]
mod tests {
    use tower::ServiceExt as _;

    use tokio::net::TcpStream;

    use super::super::Emulator;
    use super::*;
    use routera_auth::{TokenErrorKind, TokenRequest};

    #[tokio::test]
    async fn an_https_emulator_hands_out_its_ca_and_https_urls() {
        let emulator = Emulator::builder().https().start().await.unwrap();
        let port = emulator.addr().port();
        assert_eq!(emulator.base_url(), format!("https://127.0.0.1:{port}"));
        assert_eq!(
            emulator.token_url(),
            format!("https://127.0.0.1:{port}/oauth2/token")
        );
        let ca_pem = emulator.ca_pem().unwrap();
        assert!(ca_pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(ca_pem.ends_with("-----END CERTIFICATE-----\n"));
        assert!(format!("{emulator:?}").contains("https: true"));

        // Each emulator has a CA of its own; a plain one has none.
        let other = Emulator::builder()
            .https_self_signed()
            .start()
            .await
            .unwrap();
        assert_ne!(other.ca_pem(), Some(ca_pem));
        let plain = Emulator::start().await.unwrap();
        assert_eq!(plain.ca_pem(), None);
        assert!(plain.token_url().starts_with("http://"));
    }

    #[tokio::test]
    async fn the_plain_http_exchange_fails_against_https_without_sending() {
        let emulator = Emulator::builder().https().start().await.unwrap();
        let error = emulator
            .exchange()
            .oneshot(TokenRequest::new(emulator.credentials()))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), TokenErrorKind::Transport, "{error:?}");
        assert_eq!(emulator.token_requests(), 0);
    }

    #[tokio::test]
    async fn a_handshake_never_completed_ends_with_the_emulator() {
        let emulator = Emulator::builder().https().start().await.unwrap();
        let idle = Arc::strong_count(&emulator.state);
        // A client that connects and never says hello.
        let _silent = TcpStream::connect(emulator.addr()).await.unwrap();
        super::super::test_client::eventually("the handshake is waiting", || {
            Arc::strong_count(&emulator.state) > idle
        })
        .await;
        let state = Arc::downgrade(&emulator.state);
        drop(emulator);
        super::super::test_client::eventually("the emulator's tasks end", || {
            state.strong_count() == 0
        })
        .await;
    }

    #[test]
    fn pem_wraps_at_64_characters() {
        let der = CertificateDer::from(vec![0xAB; 100]);
        let pem = pem("CERTIFICATE", &der);
        let lines: Vec<&str> = pem.lines().collect();
        assert_eq!(lines.first(), Some(&"-----BEGIN CERTIFICATE-----"));
        assert_eq!(lines.last(), Some(&"-----END CERTIFICATE-----"));
        assert_eq!(lines.len(), 5, "{pem}");
        assert_eq!(lines[1].len(), 64);
        assert_eq!(lines[3].len(), 136 - 128);
        let body: String = lines[1..4].concat();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        assert_eq!(decoded, vec![0xAB; 100]);
    }
}
