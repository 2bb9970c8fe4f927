//! Whom a `wss://` connection trusts ([`TlsTrust`]) and the rustls client configuration made
//! from it, on the ring provider.
//!
//! Three ways to trust a broker:
//! - [`TlsTrust::System`]: the public certificate authorities (webpki-roots) and the host name,
//!   as a browser does; for a broker with a certificate from a public CA.
//! - [`TlsTrust::Ca`]: only these certificates as roots, with the chain and the name checked
//!   strictly. A self-signed broker certificate given as its own CA works too, as long as the
//!   URL's host is one of its names.
//! - [`TlsTrust::Fingerprint`]: exactly the certificate whose SHA-256 (of its DER) is this,
//!   whatever its names and issuer: the pin a LAN broker with a self-signed certificate
//!   advertises over mDNS (TXT `fp`). The handshake signatures are still verified against that
//!   certificate's key, so a peer that copied the certificate without its key is refused.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::error::{Error, Result};

/// rustls's client configuration, as [`TlsTrust::client_config`] makes it (re-exported so that
/// a caller holding one, such as the bench's own client, needs no rustls of its own).
pub use rustls::ClientConfig;

/// Whom a `wss://` connection trusts. The default is [`TlsTrust::System`].
#[derive(Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsTrust {
    /// The public certificate authorities (webpki-roots), with the host name checked.
    #[default]
    System,
    /// These certificates as the only roots, the chain and host name checked strictly. A
    /// self-signed leaf may be given as its own root.
    Ca(Vec<CertificateDer<'static>>),
    /// Exactly the leaf certificate whose SHA-256 of DER is this (a pin): its names, issuer and
    /// dates are not looked at.
    Fingerprint([u8; 32]),
}

impl fmt::Debug for TlsTrust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System => f.write_str("System"),
            Self::Ca(certs) => write!(f, "Ca({} certificates)", certs.len()),
            Self::Fingerprint(fp) => write!(f, "Fingerprint(sha256:{})", format_fingerprint(fp)),
        }
    }
}

impl TlsTrust {
    /// Trusts the certificates of a PEM file (one or more `CERTIFICATE` blocks) as roots.
    ///
    /// # Errors
    /// [`Error::CaFile`] when the file cannot be read or holds no certificate.
    pub fn ca_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bad = |reason: String| Error::CaFile {
            path: path.to_path_buf(),
            reason,
        };
        // Read first: a missing file says so, rather than "no certificate".
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(bad("no CERTIFICATE block in it".into()));
        }
        Ok(Self::Ca(certs))
    }

    /// Pins the certificate with this fingerprint; see [`parse_fingerprint`] for the forms.
    ///
    /// # Errors
    /// [`Error::BadFingerprint`] when the text is not one.
    pub fn fingerprint(text: &str) -> Result<Self> {
        parse_fingerprint(text).map(Self::Fingerprint)
    }

    /// Whether this is the default, [`TlsTrust::System`]: the caller chose no trust of its
    /// own, so a pin learnt from discovery may take its place.
    pub fn is_system(&self) -> bool {
        matches!(self, Self::System)
    }

    /// The rustls client configuration that trusts as this says, on the ring provider.
    ///
    /// # Errors
    /// [`Error::BadCa`] when a CA certificate cannot be used as a root.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>> {
        let provider = ring_provider();
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::BadCa(format!("no TLS version in common: {e}")))?;
        let config = match self {
            Self::System => {
                let mut roots = rustls::RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Self::Ca(certs) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in certs {
                    roots
                        .add(cert.clone())
                        .map_err(|e| Error::BadCa(e.to_string()))?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Self::Fingerprint(expected) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCert::new(*expected, &provider)))
                .with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

/// The ring crypto provider. rustls 0.23.48 deprecated it for having no post-quantum key
/// exchange; the workspace chose ring all the same (it builds with a C compiler alone, where
/// aws-lc-rs wants cmake), and classical X25519 is what a LAN broker offers anyway.
#[allow(deprecated)]
fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a SHA-256 fingerprint: 64 hex digits, either case, with or without a `sha256:`
/// prefix and colons between bytes (`sha256:ab:cd:...`, as `openssl x509 -fingerprint` shows).
///
/// # Errors
/// [`Error::BadFingerprint`] when the text is not one.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32]> {
    let bad = |reason: &str| Error::BadFingerprint {
        text: text.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = text.trim();
    let hex = trimmed
        .strip_prefix("sha256:")
        .or_else(|| trimmed.strip_prefix("SHA256:"))
        .or_else(|| trimmed.strip_prefix("sha256="))
        .or_else(|| trimmed.strip_prefix("SHA256="))
        .unwrap_or(trimmed);
    let digits: Vec<u8> = hex.bytes().filter(|b| *b != b':').collect();
    if digits.len() != 64 {
        return Err(bad("expected 64 hex digits (a SHA-256)"));
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let digit = |d: u8| (d as char).to_digit(16).ok_or_else(|| bad("not hex"));
        *byte =
            u8::try_from((digit(pair[0])? << 4) | digit(pair[1])?).map_err(|_| bad("not hex"))?;
    }
    Ok(out)
}

/// A fingerprint as 64 lowercase hex digits (no prefix), as the broker prints and advertises it.
pub fn format_fingerprint(fp: &[u8; 32]) -> String {
    fp.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a certificate's DER: its fingerprint.
pub fn fingerprint_of(der: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// What the pinning verifier reports when the broker shows another certificate; it travels
/// inside rustls's error and is turned into [`Error::FingerprintMismatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("certificate sha256:{} is not the pinned sha256:{}", format_fingerprint(.found), format_fingerprint(.expected))]
pub(super) struct Mismatch {
    /// The pin.
    pub(super) expected: [u8; 32],
    /// What the broker showed.
    pub(super) found: [u8; 32],
}

impl Mismatch {
    /// The mismatch inside a failed handshake's error, if that is why it failed.
    pub(super) fn of(error: &std::io::Error) -> Option<Mismatch> {
        let rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(other))) =
            error.get_ref()?.downcast_ref::<rustls::Error>()?
        else {
            return None;
        };
        other.downcast_ref::<Mismatch>().copied()
    }
}

/// Accepts exactly the leaf certificate with the pinned fingerprint; checks the handshake
/// signatures with the provider's algorithms.
#[derive(Debug)]
struct PinnedCert {
    expected: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedCert {
    fn new(expected: [u8; 32], provider: &CryptoProvider) -> Self {
        Self {
            expected,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for PinnedCert {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found = fingerprint_of(end_entity);
        if found == self.expected {
            return Ok(ServerCertVerified::assertion());
        }
        let mismatch = Mismatch {
            expected: self.expected,
            found,
        };
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(mismatch)),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_read_in_every_usual_form() {
        let fp: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        let hex = format_fingerprint(&fp);
        assert_eq!(hex.len(), 64);
        let colons = fp
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        for text in [
            hex.clone(),
            hex.to_uppercase(),
            format!("sha256:{hex}"),
            format!("SHA256:{colons}"),
            format!("  {colons}\n"),
            format!("sha256={colons}"),
        ] {
            assert_eq!(parse_fingerprint(&text).ok(), Some(fp), "{text}");
        }
    }

    #[test]
    fn what_is_not_a_fingerprint_is_refused() {
        for bad in [
            "",
            "sha256:",
            "abcd",
            &"0".repeat(63),
            &"0".repeat(66),
            &"g".repeat(64),
            &"+1".repeat(32),
            &"é".repeat(32),
            "md5:00112233445566778899aabbccddeeff",
        ] {
            assert!(
                matches!(parse_fingerprint(bad), Err(Error::BadFingerprint { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_fingerprint_is_the_sha256_of_the_der() {
        // SHA-256 of the empty string.
        assert_eq!(
            format_fingerprint(&fingerprint_of(b"")),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = std::env::temp_dir().join(format!("bb-ca-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let missing = TlsTrust::ca_file(dir.join("missing.pem")).unwrap_err();
        assert!(matches!(missing, Error::CaFile { .. }), "{missing}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let err = TlsTrust::ca_file(&empty).unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn every_trust_makes_a_config() {
        for trust in [
            TlsTrust::System,
            TlsTrust::Fingerprint([1; 32]),
            TlsTrust::Ca(Vec::new()),
        ] {
            assert!(trust.client_config().is_ok(), "{trust:?}");
        }
        assert!(TlsTrust::default().is_system());
        assert!(!TlsTrust::Fingerprint([0; 32]).is_system());
        assert!(format!("{:?}", TlsTrust::Fingerprint([0xab; 32])).contains("abab"));
    }
}
