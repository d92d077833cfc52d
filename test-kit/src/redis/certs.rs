//! [`TestCa`]: a certificate authority made at run time, for TLS tests.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate authority of its own, made when it is created (feature
/// `redis`): a new ECDSA P-256 key and a self-signed CA
/// certificate, trusted by nothing until a test trusts it. It signs server
/// certificates for `localhost` and `127.0.0.1`, and client certificates,
/// each with a new key; everything comes out as PEM.
///
/// [`RedisTlsServer`](super::RedisTlsServer) makes one for each server;
/// give [`TestCa::certificate_pem`] to the client that should trust it
/// (`RedisStoreBuilder::add_root_certificates`).
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    certificate_pem: String,
}

impl TestCa {
    /// A new CA whose certificate's common name is `name`.
    ///
    /// # Errors
    ///
    /// The key or the certificate could not be made.
    pub fn new(name: &str) -> io::Result<TestCa> {
        let key = KeyPair::generate().map_err(certificate_error)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(certificate_error)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let certificate = params.self_signed(&key).map_err(certificate_error)?;
        Ok(TestCa {
            certificate_pem: pem("CERTIFICATE", certificate.der()),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA's certificate, PEM: what a client that trusts this CA adds
    /// to its roots.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// A server certificate for `localhost` and `127.0.0.1`, signed by
    /// this CA, and its key: `(certificate, key)`, PEM (the key PKCS#8).
    ///
    /// # Errors
    ///
    /// The key or the certificate could not be made.
    pub fn server_certificate(&self) -> io::Result<(String, String)> {
        let mut params =
            CertificateParams::new(vec![String::from("localhost")]).map_err(certificate_error)?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A certificate for a node of a Redis Cluster over TLS, and its key:
    /// `(certificate, key)`, PEM (the key PKCS#8), naming the host names
    /// `dns_names` and the addresses `ip_addresses` (either may be empty),
    /// for both server and client authentication (a node presents it to
    /// clients, and to the other nodes when it connects to their cluster
    /// bus).
    ///
    /// # Errors
    ///
    /// A name that is not a valid host name, or the key or the certificate
    /// could not be made.
    pub fn node_certificate(
        &self,
        dns_names: &[&str],
        ip_addresses: &[IpAddr],
    ) -> io::Result<(String, String)> {
        let names: Vec<String> = dns_names.iter().map(|name| String::from(*name)).collect();
        let mut params = CertificateParams::new(names).map_err(certificate_error)?;
        params.subject_alt_names.extend(
            ip_addresses
                .iter()
                .map(|address| SanType::IpAddress(*address)),
        );
        params
            .distinguished_name
            .push(DnType::CommonName, "routera-auth test Redis node");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params)
    }

    /// A client certificate whose common name is `name`, signed by this
    /// CA, and its key: `(certificate, key)`, PEM (the key PKCS#8), for
    /// `RedisStoreBuilder::client_certificate`.
    ///
    /// # Errors
    ///
    /// The key or the certificate could not be made.
    pub fn client_certificate(&self, name: &str) -> io::Result<(String, String)> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(certificate_error)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> io::Result<(String, String)> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(certificate_error)?;
        let certificate = params
            .signed_by(&key, &self.issuer)
            .map_err(certificate_error)?;
        Ok((
            pem("CERTIFICATE", certificate.der()),
            pem("PRIVATE KEY", &key.serialize_der()),
        ))
    }
}

impl fmt::Debug for TestCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// `der` as a PEM block labelled `label`.
fn pem(label: &str, der: &[u8]) -> String {
    let encoded = STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    let mut rest = encoded.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        text.push_str(line);
        text.push('\n');
        rest = tail;
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

fn certificate_error(error: rcgen::Error) -> io::Error {
    io::Error::other(format!("could not make a test certificate: {error}"))
}
