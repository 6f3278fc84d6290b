//! The TLS group's certificate and client: one ECDSA P-256 certificate for localhost,
//! generated at run start and written as PEM files that kestra-edge and nginx both serve, and
//! a rustls client (ring) that trusts it and never resumes a session.

use crate::targets::BoxError;
use rustls::{
    client::Resumption,
    crypto::ring::default_provider,
    pki_types::{CertificateDer, ServerName},
    ClientConfig, RootCertStore,
};
use std::{path::PathBuf, sync::Arc};
use tokio::net::TcpStream;
use tokio_rustls::{client::TlsStream, TlsConnector};

/// The name the certificate is issued for and the client asks for (SNI).
const SERVER_NAME: &str = "localhost";

/// The certificate and key as PEM files in a directory of their own, removed when dropped.
#[derive(Debug)]
pub(crate) struct CertFiles {
    dir: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    der: CertificateDer<'static>,
}

impl CertFiles {
    /// Generates the certificate (ECDSA P-256, for `localhost` and `127.0.0.1`) and writes it.
    pub(crate) fn generate() -> Result<Self, BoxError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let params =
            rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned(), "127.0.0.1".to_owned()])?;
        let cert = params.self_signed(&key)?;
        let dir =
            std::env::temp_dir().join(format!("kestra-edge-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let files = Self {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
            der: cert.der().clone(),
        };
        std::fs::write(&files.cert, cert.pem())?;
        std::fs::write(&files.key, key.serialize_pem())?;
        Ok(files)
    }

    /// A client that trusts this certificate and offers ALPN `http/1.1` only.
    pub(crate) fn http1_client(&self) -> Result<TlsClient, BoxError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der.clone())?;
        let mut config = ClientConfig::builder_with_provider(Arc::new(default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Every connection pays a full handshake: no tickets, no session IDs kept.
        config.resumption = Resumption::disabled();
        Ok(TlsClient {
            connector: TlsConnector::from(Arc::new(config)),
            name: ServerName::try_from(SERVER_NAME)?,
        })
    }
}

impl Drop for CertFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Opens TLS sessions to the bench's certificate.
#[derive(Clone)]
pub(crate) struct TlsClient {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").finish_non_exhaustive()
    }
}

impl TlsClient {
    /// The TLS handshake on a connected socket.
    pub(crate) async fn connect(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        self.connector.connect(self.name.clone(), tcp).await
    }
}
