//! Certificate and key pairs: read from PEM files, or generated for localhost.

use rustls::{crypto::CryptoProvider, sign::CertifiedKey};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::{
    fmt::Write as _,
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

/// A certificate pair that cannot be used; each message names the file at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The certificate file holds no PEM certificate.
    #[error("{path}: no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks)")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The certificate file is not valid PEM.
    #[error("{path}: invalid PEM certificate chain: {reason}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The key file holds no private key in a form rustls reads.
    #[error("{path}: no private key found (expected PEM PKCS#8, PKCS#1 or SEC1): {reason}")]
    NoKey {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// The key could not be used, or does not belong to the certificate.
    #[error("{key} does not fit the certificate in {cert}: {reason}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// A self-signed certificate could not be generated.
    #[error("cannot generate a self-signed certificate: {0}")]
    SelfSigned(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The certificate's directory cannot be watched for changes.
    #[error("cannot watch {path} for certificate changes: {reason}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// What the watcher said.
        reason: String,
    },
}

/// The crypto provider of every kestra-edge TLS connection: ring (see the [crate docs](crate)).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The contents of a certificate file and a key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PemPair {
    pub(crate) cert: Vec<u8>,
    pub(crate) key: Vec<u8>,
}

impl PemPair {
    /// Reads both files.
    pub(crate) fn read(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        Ok(Self {
            cert: read(cert)?,
            key: read(key)?,
        })
    }

    /// Parses the chain and the key and checks that they belong together; `cert` and `key`
    /// name the files in errors.
    pub(crate) fn certified(&self, cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
        let chain = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| TlsError::BadCertificate {
                path: cert.to_owned(),
                reason: err.to_string(),
            })?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate {
                path: cert.to_owned(),
            });
        }
        // PKCS#8, PKCS#1 (RSA) and SEC1 (EC) keys alike: the first key block in the file.
        let private = PrivateKeyDer::from_pem_slice(&self.key).map_err(|err| TlsError::NoKey {
            path: key.to_owned(),
            reason: err.to_string(),
        })?;
        CertifiedKey::from_der(chain, private, &provider()).map_err(|err| TlsError::Mismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
            reason: err.to_string(),
        })
    }
}

/// Reads and checks a PEM certificate chain (leaf first) and its private key.
pub fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    PemPair::read(cert, key)?.certified(cert, key)
}

/// A certificate generated at start-up (see [`self_signed`]).
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// The certificate and its key, ready to serve.
    pub certified: Arc<CertifiedKey>,
    /// The certificate, PEM-encoded (for clients that should trust it).
    pub cert_pem: String,
    /// The SHA-256 fingerprint of the certificate's DER, as `AB:CD:…` (what browsers show).
    pub fingerprint: String,
}

/// Generates a self-signed certificate (ECDSA P-256) for `names` (DNS names or IP addresses),
/// for demos and tests: browsers warn about it, and nothing should trust it beyond that.
pub fn self_signed(names: &[&str]) -> Result<SelfSigned, TlsError> {
    let names: Vec<String> = names.iter().map(|&n| n.to_owned()).collect();
    let generated = rcgen::generate_simple_self_signed(names)
        .map_err(|err| TlsError::SelfSigned(err.to_string()))?;
    let der = generated.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    let fingerprint = fingerprint(&der);
    let certified = CertifiedKey::from_der(vec![der], key, &provider())?;
    Ok(SelfSigned {
        certified: Arc::new(certified),
        cert_pem: generated.cert.pem(),
        fingerprint,
    })
}

/// The SHA-256 fingerprint of a DER certificate, as `AB:CD:…`.
pub fn fingerprint(der: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(der.as_ref());
    let mut text = String::with_capacity(digest.len() * 3);
    for (i, byte) in digest.iter().enumerate() {
        if i > 0 {
            text.push(':');
        }
        let _ = write!(text, "{byte:02X}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("kestra-edge-tls-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn generated(name: &str) -> (String, String) {
        let pair = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        (pair.cert.pem(), pair.signing_key.serialize_pem())
    }

    #[test]
    fn a_matching_pair_loads_and_every_fault_names_its_file() {
        let dir = temp_dir("pairs");
        let (cert_a, key_a) = generated("a.example");
        let (_, key_b) = generated("b.example");
        let cert = write(&dir, "a.crt", &cert_a);
        let key = write(&dir, "a.key", &key_a);
        let other_key = write(&dir, "b.key", &key_b);
        let empty = write(&dir, "empty.pem", "");
        let garbage = write(&dir, "garbage.pem", "-----BEGIN CERTIFICATE-----\n!!!\n");

        let loaded = load_pair(&cert, &key).unwrap();
        assert_eq!(loaded.cert.len(), 1);

        let err = load_pair(&cert, &other_key).unwrap_err();
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
        assert!(err.to_string().contains("b.key"), "{err}");
        let err = load_pair(&empty, &key).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        assert!(err.to_string().contains("empty.pem"), "{err}");
        let err = load_pair(&garbage, &key).unwrap_err();
        assert!(err.to_string().contains("garbage.pem"), "{err}");
        let err = load_pair(&cert, &empty).unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err}");
        let err = load_pair(&dir.join("missing.crt"), &key).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
        assert!(err.to_string().contains("missing.crt"), "{err}");
        // The key file given as the certificate: no certificate in it.
        let err = load_pair(&key, &key).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rsa_pkcs1_and_ec_sec1_keys_load() {
        // Made with `openssl genrsa -traditional` and `openssl ecparam -genkey`.
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        for (cert, key, marker) in [
            ("rsa.crt", "rsa-pkcs1.key", "BEGIN RSA PRIVATE KEY"),
            ("ec.crt", "ec-sec1.key", "BEGIN EC PRIVATE KEY"),
        ] {
            let (cert, key) = (data.join(cert), data.join(key));
            assert!(std::fs::read_to_string(&key).unwrap().contains(marker));
            load_pair(&cert, &key).unwrap();
        }
        let err = load_pair(&data.join("rsa.crt"), &data.join("ec-sec1.key")).unwrap_err();
        assert!(matches!(err, TlsError::Mismatch { .. }), "{err}");
    }

    #[test]
    fn self_signed_certificates_serve_localhost_and_show_their_fingerprint() {
        let generated = self_signed(&["localhost", "127.0.0.1"]).unwrap();
        assert_eq!(generated.fingerprint.len(), 32 * 3 - 1);
        let der = CertificateDer::from_pem_slice(generated.cert_pem.as_bytes()).unwrap();
        assert_eq!(fingerprint(&der), generated.fingerprint);
        assert_eq!(generated.certified.cert[0], der);
    }
}
