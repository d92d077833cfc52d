//! What makes a shared entry unreadable: key names, fingerprints and sealed
//! values, all derived from the client secret or a user's key ring.
//!
//! From the client secret, HMAC-SHA256 derives three keys: one that names
//! the entries (a keyed hash of the token URL, client id and auth method),
//! one for token fingerprints, and one that seals values when no key ring
//! is given. Values are sealed with XChaCha20-Poly1305 under a random
//! 24-byte nonce; the key name, the issue and expiry times and the key id
//! are associated data, so a value moved to another key or given another
//! lifetime does not open.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{StoreKeys, StoredToken};
use crate::{AuthMethod, ClientCredentials};

type HmacSha256 = Hmac<Sha256>;

/// The first byte of a sealed value: its layout.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
/// The id a key derived from the client secret is sealed under.
const DERIVED_KEY_ID: &str = "secret";

/// Keys that seal the values of a [`SharedCache`](super::SharedCache),
/// instead of the key derived from the client secret.
///
/// Each key has an id, stored beside the values it sealed. New values are
/// sealed with the current key; values sealed with a previous key still
/// open, so a key can be rotated without a fleet-wide miss: add the new key
/// as current and keep the old one as previous until every replica has it.
///
/// ```
/// use routera_auth::store::StoreKeyRing;
///
/// let ring = StoreKeyRing::new("2026-11", [7; 32]).with_previous("2026-05", [3; 32]);
/// assert_eq!(format!("{ring:?}"), r#"StoreKeyRing { current: "2026-11", previous: ["2026-05"] }"#);
/// ```
#[derive(Clone)]
pub struct StoreKeyRing {
    current: (String, [u8; 32]),
    previous: Vec<(String, [u8; 32])>,
}

impl StoreKeyRing {
    /// A ring whose key `id` seals new values. Ids longer than 255 bytes are
    /// cut to 255.
    pub fn new(id: impl Into<String>, key: [u8; 32]) -> Self {
        Self {
            current: (short_id(id.into()), key),
            previous: Vec::new(),
        }
    }

    /// Adds a key that still opens the values it sealed, and seals nothing.
    pub fn with_previous(mut self, id: impl Into<String>, key: [u8; 32]) -> Self {
        self.previous.push((short_id(id.into()), key));
        self
    }
}

impl fmt::Debug for StoreKeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let previous: Vec<&str> = self.previous.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("StoreKeyRing")
            .field("current", &self.current.0)
            .field("previous", &previous)
            .finish()
    }
}

fn short_id(mut id: String) -> String {
    if id.len() > 255 {
        let mut end = 255;
        while !id.is_char_boundary(end) {
            end -= 1;
        }
        id.truncate(end);
    }
    id
}

/// Names, fingerprints and seals the entries of one set of credentials.
pub(crate) struct Sealer {
    keys: StoreKeys,
    fingerprint_key: [u8; 32],
    /// The first seals; all open.
    ciphers: Vec<(String, XChaCha20Poly1305)>,
}

impl Sealer {
    /// `None` for an empty client secret, or if a primitive refuses its key
    /// (which HMAC never does).
    pub(crate) fn new(
        prefix: &str,
        token_url: &str,
        auth_method: AuthMethod,
        credentials: &ClientCredentials,
        ring: Option<&StoreKeyRing>,
    ) -> Option<Self> {
        if credentials.client_secret().is_empty() {
            // Keys derived from nothing would be everyone's keys.
            return None;
        }
        let base = hmac(
            credentials.client_secret().as_bytes(),
            &[b"routera-auth/v1"],
        )?;
        let names = hmac(&base, &[b"names"])?;
        let method: &[u8] = match auth_method {
            AuthMethod::RequestBody => b"body",
            AuthMethod::BasicAuth => b"basic",
        };
        let id = credentials.client_id().as_bytes();
        let tag = hmac(&names, &[token_url.as_bytes(), b"\0", id, b"\0", method])?;
        let keys = StoreKeys::new(prefix, &hex(&tag[..16]));
        let cipher = |key: &[u8; 32]| XChaCha20Poly1305::new_from_slice(key).ok();
        let ciphers = match ring {
            None => vec![(
                DERIVED_KEY_ID.to_owned(),
                cipher(&hmac(&base, &[b"seal"])?)?,
            )],
            Some(ring) => std::iter::once(&ring.current)
                .chain(&ring.previous)
                .map(|(id, key)| Some((id.clone(), cipher(key)?)))
                .collect::<Option<_>>()?,
        };
        Some(Self {
            keys,
            fingerprint_key: hmac(&base, &[b"fingerprint"])?,
            ciphers,
        })
    }

    pub(crate) fn keys(&self) -> &StoreKeys {
        &self.keys
    }

    /// A keyed hash of `token`: equal for equal tokens, and useless to
    /// anyone without the client secret.
    pub(crate) fn fingerprint(&self, token: &str) -> String {
        hmac(&self.fingerprint_key, &[token.as_bytes()])
            .map(|mac| hex(&mac[..16]))
            .unwrap_or_default()
    }

    /// `token`, sealed under the current key; `None` if no random nonce
    /// could be had.
    pub(crate) fn seal(
        &self,
        token: &str,
        issued_at_ms: u64,
        expires_at_ms: u64,
    ) -> Option<StoredToken> {
        let (id, cipher) = self.ciphers.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).ok()?;
        let aad = self.aad(id, issued_at_ms, expires_at_ms);
        let payload = Payload {
            msg: token.as_bytes(),
            aad: &aad,
        };
        let ciphertext = cipher.encrypt(&XNonce::from(nonce), payload).ok()?;
        let id_len = u8::try_from(id.len()).ok()?;
        let mut sealed = Vec::with_capacity(2 + id.len() + NONCE_LEN + ciphertext.len());
        sealed.extend_from_slice(&[VERSION, id_len]);
        sealed.extend_from_slice(id.as_bytes());
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&ciphertext);
        Some(StoredToken {
            issued_at_ms,
            expires_at_ms,
            fingerprint: self.fingerprint(token),
            sealed,
        })
    }

    /// The token in `stored`, if it was sealed by a key of this sealer for
    /// this key name and lifetime, and matches its fingerprint.
    pub(crate) fn open(&self, stored: &StoredToken) -> Option<String> {
        let (id, rest) = split_header(&stored.sealed)?;
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let (_, cipher) = self.ciphers.iter().find(|(known, _)| known == id)?;
        let aad = self.aad(id, stored.issued_at_ms, stored.expires_at_ms);
        let nonce = XNonce::try_from(nonce).ok()?;
        let payload = Payload {
            msg: ciphertext,
            aad: &aad,
        };
        let token = String::from_utf8(cipher.decrypt(&nonce, payload).ok()?).ok()?;
        (self.fingerprint(&token) == stored.fingerprint).then_some(token)
    }

    fn aad(&self, id: &str, issued_at_ms: u64, expires_at_ms: u64) -> Vec<u8> {
        let name = self.keys.token().as_bytes();
        let mut aad = Vec::with_capacity(name.len() + 17 + id.len());
        aad.extend_from_slice(name);
        aad.push(0);
        aad.extend_from_slice(&issued_at_ms.to_be_bytes());
        aad.extend_from_slice(&expires_at_ms.to_be_bytes());
        aad.extend_from_slice(id.as_bytes());
        aad
    }
}

/// The key id and the rest of a sealed value (at least a nonce long), if
/// it is one of this version.
fn split_header(sealed: &[u8]) -> Option<(&str, &[u8])> {
    let (&version, rest) = sealed.split_first()?;
    let (&id_len, rest) = rest.split_first()?;
    if version != VERSION || rest.len() < usize::from(id_len) + NONCE_LEN {
        return None;
    }
    let (id, rest) = rest.split_at(usize::from(id_len));
    Some((std::str::from_utf8(id).ok()?, rest))
}

/// The id of the key that sealed `stored`, if it reads as a sealed value:
/// no secret (ids name keys), for the log of a value that does not open.
pub(crate) fn key_id(stored: &StoredToken) -> Option<&str> {
    split_header(&stored.sealed).map(|(id, _)| id)
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Option<[u8; 32]> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    for part in parts {
        mac.update(part);
    }
    Some(mac.finalize().into_bytes().into())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// A random id, to tell one lock owner from another.
pub(crate) fn random_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    Some(hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://auth.routera.io/oauth2/token";

    fn sealer(secret: &str, ring: Option<&StoreKeyRing>) -> Sealer {
        let credentials = ClientCredentials::new("client-a", secret);
        Sealer::new(
            "routera-auth",
            URL,
            AuthMethod::RequestBody,
            &credentials,
            ring,
        )
        .unwrap()
    }

    #[test]
    fn a_sealed_token_opens_with_the_same_keys_only() {
        let sealer = sealer("s3cret", None);
        let stored = sealer.seal("the-token", 1_000, 3_601_000).unwrap();
        assert_eq!(sealer.open(&stored).as_deref(), Some("the-token"));
        // Another secret: other key names, and the value does not open.
        let other = self::sealer("another", None);
        assert_ne!(other.keys(), sealer.keys());
        assert_eq!(other.open(&stored), None);
    }

    #[test]
    fn a_value_with_another_lifetime_or_name_does_not_open() {
        let sealer = sealer("s3cret", None);
        let stored = sealer.seal("the-token", 1_000, 3_601_000).unwrap();
        let longer = StoredToken {
            expires_at_ms: 9_999_000,
            ..stored.clone()
        };
        assert_eq!(sealer.open(&longer), None);
        let newer = StoredToken {
            issued_at_ms: 2_000,
            ..stored.clone()
        };
        assert_eq!(sealer.open(&newer), None);
        let mut flipped = stored.clone();
        let last = flipped.sealed.len() - 1;
        flipped.sealed[last] ^= 1;
        assert_eq!(sealer.open(&flipped), None);
        let credentials = ClientCredentials::new("client-b", "s3cret");
        let other_client = Sealer::new(
            "routera-auth",
            URL,
            AuthMethod::RequestBody,
            &credentials,
            None,
        )
        .unwrap();
        assert_eq!(other_client.open(&stored), None);
        for cut in 0..stored.sealed.len() {
            let short = StoredToken {
                sealed: stored.sealed[..cut].to_vec(),
                ..stored.clone()
            };
            assert_eq!(sealer.open(&short), None, "cut at {cut}");
        }
    }

    #[test]
    fn a_key_ring_rotates_without_a_miss() {
        let old = StoreKeyRing::new("old", [1; 32]);
        let rotated = StoreKeyRing::new("new", [2; 32]).with_previous("old", [1; 32]);
        let before = sealer("s3cret", Some(&old)).seal("t", 1, 2).unwrap();
        let after = sealer("s3cret", Some(&rotated));
        assert_eq!(after.open(&before).as_deref(), Some("t"));
        let sealed_after = after.seal("t", 1, 2).unwrap();
        assert_eq!(sealer("s3cret", Some(&old)).open(&sealed_after), None);
        // The derived key opens neither.
        assert_eq!(sealer("s3cret", None).open(&before), None);
    }

    #[test]
    fn nothing_stored_shows_the_secret_or_the_token() {
        let sealer = sealer("s3cret-value", None);
        let stored = sealer.seal("token-value-123", 1, 2).unwrap();
        let names = format!("{:?}{:?}", sealer.keys(), stored);
        assert!(
            names.starts_with(r#"StoreKeys { token: "routera-auth:{"#),
            "{names}"
        );
        for haystack in [
            names.as_bytes(),
            &stored.sealed,
            stored.fingerprint.as_bytes(),
        ] {
            for needle in [&b"s3cret-value"[..], b"token-value-123", b"client-a"] {
                assert!(!haystack.windows(needle.len()).any(|w| w == needle));
            }
        }
        // Two seals of one token differ (random nonces); fingerprints agree.
        let again = sealer.seal("token-value-123", 1, 2).unwrap();
        assert_ne!(again.sealed, stored.sealed);
        assert_eq!(again.fingerprint, stored.fingerprint);
    }
}
