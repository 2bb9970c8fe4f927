//! TLS on the broker's port: a certificate and key from PEM files, or one the broker makes
//! itself (rcgen) on first start and keeps in its data directory. Its SHA-256 fingerprint is
//! what clients pin when they find the broker over mDNS (TXT `fp`).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file cannot be read or holds nothing usable.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The certificate and key do not make a TLS configuration (a key that is not the
    /// certificate's, an unsupported algorithm).
    #[error("the certificate and key cannot serve TLS: {0}")]
    Config(#[from] rustls::Error),
    /// The self-signed certificate cannot be made.
    #[error("cannot make a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The self-signed certificate cannot be kept in the data directory.
    #[error("cannot write {}: {error}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why (in the message, not also a source: reports of the chain say it once).
        error: std::io::Error,
    },
}

/// The broker's certificate, ready to serve.
#[derive(Clone)]
pub struct TlsIdentity {
    acceptor: TlsAcceptor,
    fingerprint: [u8; 32],
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("fingerprint", &self.fingerprint_hex())
            .finish_non_exhaustive()
    }
}

impl TlsIdentity {
    /// A certificate chain and its private key, from PEM files.
    ///
    /// # Errors
    /// [`TlsError`]: a file unreadable or without a certificate or key, or a key that does
    /// not go with the certificate.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let pem = |path: &Path, what: String| TlsError::Pem {
            path: path.to_path_buf(),
            what,
        };
        let certs = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem(cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem(cert, e.to_string()))?;
        if certs.is_empty() {
            return Err(pem(cert, "no CERTIFICATE block in it".into()));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem(key, e.to_string()))?;
        Self::new(certs, key)
    }

    /// The certificate kept in `dir/tls/` (`cert.pem`, `key.pem`), made there on the first
    /// call; with no directory, a new one each time. Its names: `localhost`, the host name,
    /// loopback and this machine's addresses now, for clients that verify against it as a CA
    /// (`--ca`); clients that pin its fingerprint do not look at names.
    ///
    /// # Errors
    /// [`TlsError`]: the kept files are unreadable, or new ones cannot be made or written.
    pub fn self_signed(dir: Option<&Path>, host_name: &str) -> Result<Self, TlsError> {
        let Some(dir) = dir else {
            let (cert, key) = generate(host_name)?;
            return Self::from_pem(&cert, &key);
        };
        let tls_dir = dir.join("tls");
        let (cert_path, key_path) = (tls_dir.join("cert.pem"), tls_dir.join("key.pem"));
        if cert_path.exists() && key_path.exists() {
            return Self::from_pem_files(&cert_path, &key_path);
        }
        let (cert, key) = generate(host_name)?;
        let write_err = |path: &Path| {
            let path = path.to_path_buf();
            move |error| TlsError::Write { path, error }
        };
        std::fs::create_dir_all(&tls_dir).map_err(write_err(&tls_dir))?;
        write_private(&key_path, key.as_bytes()).map_err(write_err(&key_path))?;
        std::fs::write(&cert_path, cert.as_bytes()).map_err(write_err(&cert_path))?;
        tracing::info!(cert = %cert_path.display(), "made a self-signed certificate");
        Self::from_pem(&cert, &key)
    }

    fn from_pem(cert: &str, key: &str) -> Result<Self, TlsError> {
        let pem = |what: String| TlsError::Pem {
            path: PathBuf::from("(generated)"),
            what,
        };
        let cert =
            CertificateDer::from_pem_slice(cert.as_bytes()).map_err(|e| pem(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| pem(e.to_string()))?;
        Self::new(vec![cert], key)
    }

    fn new(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let fingerprint = fingerprint(&certs[0]);
        let provider = Arc::new(provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        // WebSocket upgrades and the pages are HTTP/1.1.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            fingerprint,
        })
    }

    /// What accepts TLS connections with this certificate.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// The SHA-256 of the leaf certificate (DER), as 64 lowercase hex digits: what the TXT
    /// record's `fp` and `openssl x509 -fingerprint -sha256` show.
    pub fn fingerprint_hex(&self) -> String {
        self.fingerprint
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The crypto provider: *ring*, which builds with the C compiler alone (aws-lc-rs wants more
/// tooling and a much longer build). rustls 0.23.48 deprecates it for lacking post-quantum key
/// exchange; classical X25519/P-256 is what this broker's LAN clients get.
#[allow(deprecated)]
fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The SHA-256 of a certificate's DER.
fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A new self-signed certificate and key, as PEM.
fn generate(host_name: &str) -> Result<(String, String), TlsError> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if !host_name.is_empty() {
        names.push(host_name.to_string());
        names.push(format!("{host_name}.local"));
    }
    if let Ok(addrs) = if_addrs::get_if_addrs() {
        names.extend(
            addrs
                .into_iter()
                .filter(|i| !i.is_loopback())
                .map(|i| i.ip().to_string()),
        );
    }
    names.sort();
    names.dedup();
    let certified = rcgen::generate_simple_self_signed(names)?;
    Ok((certified.cert.pem(), certified.key_pair.serialize_pem()))
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_kept_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = TlsIdentity::self_signed(Some(dir.path()), "host").unwrap();
        let again = TlsIdentity::self_signed(Some(dir.path()), "host").unwrap();
        assert_eq!(first.fingerprint_hex(), again.fingerprint_hex());
        assert_eq!(first.fingerprint_hex().len(), 64);
        let fresh = TlsIdentity::self_signed(None, "host").unwrap();
        assert_ne!(fresh.fingerprint_hex(), first.fingerprint_hex());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("tls/key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the key is private");
    }

    #[test]
    fn pem_files_that_hold_nothing_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let err = TlsIdentity::from_pem_files(&empty, &empty).unwrap_err();
        assert!(err.to_string().contains("empty.pem"), "{err}");
        let missing = dir.path().join("missing.pem");
        assert!(TlsIdentity::from_pem_files(&missing, &missing).is_err());
    }
}
