//! TLS to an `https://` upstream: the trust roots, the rustls client configuration, and the
//! deadline on connecting.

use crate::{error::BoxError, service::BuildError};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{pem::PemObject, CertificateDer};
use std::{
    future::Future,
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tower::Service;

/// The client configuration for an `https://` upstream, built once per proxy.
///
/// Trust is the operating system's store plus every certificate of `ca_files`. The system
/// store rather than a compiled-in Mozilla list (webpki-roots): operators update it without
/// rebuilding kestra-edge, and corporate or cluster CAs are installed there.
///
/// ALPN offers `http/1.1` only: Kestra speaks HTTP/1.1, and the pooled client sends HTTP/1.1
/// (RFC 7301 §3.1, RFC 9113 §3.2: without `h2` in ALPN the server cannot pick HTTP/2).
pub(crate) fn client_config(ca_files: &[PathBuf]) -> Result<Arc<ClientConfig>, BuildError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for err in &native.errors {
        tracing::warn!(error = %err, "cannot load a system trust root");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system trust roots loaded");
    for path in ca_files {
        add_ca_file(&mut roots, path)?;
    }
    if roots.is_empty() {
        return Err(BuildError::NoTrustedRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| BuildError::TlsConfig(Box::new(err)))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Adds every certificate of the PEM file at `path` to `roots`.
fn add_ca_file(roots: &mut RootCertStore, path: &Path) -> Result<(), BuildError> {
    let unusable = |source: BoxError| BuildError::UpstreamCa {
        path: path.to_path_buf(),
        source,
    };
    let mut found = 0_usize;
    for cert in CertificateDer::pem_file_iter(path).map_err(|err| unusable(Box::new(err)))? {
        let cert = cert.map_err(|err| unusable(Box::new(err)))?;
        roots.add(cert).map_err(|err| unusable(Box::new(err)))?;
        found += 1;
    }
    if found == 0 {
        return Err(BuildError::UpstreamCaEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// A connector whose whole connect (TCP and TLS handshake) must finish within a deadline.
///
/// The `HttpConnector`'s own timeout covers TCP only; without this, an upstream that accepts
/// and never completes the handshake would hold the request until `read_timeout`.
#[derive(Debug, Clone)]
pub(crate) struct ConnectDeadline<C> {
    inner: C,
    timeout: Duration,
}

impl<C> ConnectDeadline<C> {
    pub(crate) fn new(inner: C, timeout: Duration) -> Self {
        Self { inner, timeout }
    }
}

impl<C, U> Service<U> for ConnectDeadline<C>
where
    C: Service<U>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: U) -> Self::Future {
        let connecting = tokio::time::timeout(self.timeout, self.inner.call(dst));
        Box::pin(async move {
            match connecting.await {
                Ok(connected) => connected.map_err(Into::into),
                // TimedOut: classified as a connect timeout (504) like a slow TCP connect.
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "upstream connect timed out",
                )
                .into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::BuildError;
    use crate::{
        body::RequestBody, ProxyError, ReverseProxy, ReverseProxyBuilder, UpstreamTlsReason,
    };
    use http::{Request, StatusCode};
    use http_body_util::Empty;
    use rcgen::{
        date_time_ymd, BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair,
    };
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::{
        path::{Path, PathBuf},
        sync::Arc,
        time::Duration,
    };
    use tokio::net::TcpListener;
    use tower::ServiceExt;

    type TestBody = Empty<bytes::Bytes>;

    /// A file in the temp directory, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &[u8]) -> Self {
            let path = std::env::temp_dir()
                .join(format!("kestra-edge-proxy-{}-{name}", std::process::id()));
            std::fs::write(&path, contents).unwrap();
            Self(path)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A private CA: its PEM and its signing key.
    fn ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        (pem, Issuer::new(params, key))
    }

    /// A leaf certificate for `names` signed by `issuer`, expired when `expired`.
    fn leaf(
        names: &[&str],
        issuer: &Issuer<'_, KeyPair>,
        expired: bool,
    ) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        if expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, issuer).unwrap();
        let key = PrivatePkcs8KeyDer::from(key.serialize_der()).into();
        (cert.der().clone(), key)
    }

    /// A TLS server on 127.0.0.1:0 presenting `cert` (it only handshakes); returns its port.
    async fn tls_server(cert: CertificateDer<'static>, key: PrivateKeyDer<'static>) -> u16 {
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                // The client refuses the certificate; the handshake fails on this side too.
                let _ = acceptor.accept(stream).await;
            }
        });
        port
    }

    /// What the pooled client's failure to `https://localhost:{port}` is classified as.
    async fn failure(proxy: &ReverseProxy<TestBody>, port: u16) -> ProxyError {
        let request = Request::get(format!("https://localhost:{port}/"))
            .body(RequestBody::empty())
            .unwrap();
        let err = proxy.client.request(request).await.unwrap_err();
        ProxyError::from_client(err)
    }

    #[test]
    fn https_upstreams_are_accepted() {
        let (pem, _) = ca("accepted CA");
        let ca_file = TempFile::new("accepted-ca.pem", pem.as_bytes());
        for upstream in [
            "https://kestra:8443",
            "https://kestra",
            "https://127.0.0.1:8443/",
            "https://[::1]:8443",
        ] {
            let proxy = ReverseProxyBuilder::new(upstream)
                .upstream_ca(ca_file.path())
                .build::<TestBody>();
            assert!(proxy.is_ok(), "{upstream}: {proxy:?}");
        }
        for upstream in ["https://kestra:8443/kestra", "https://u:p@kestra:8443"] {
            let proxy = ReverseProxyBuilder::new(upstream)
                .upstream_ca(ca_file.path())
                .build::<TestBody>();
            assert!(
                matches!(proxy, Err(BuildError::UnsupportedUpstream(_))),
                "{upstream}: {proxy:?}"
            );
        }
    }

    #[test]
    fn a_missing_ca_file_is_refused_by_name() {
        let path = std::env::temp_dir().join("kestra-edge-proxy-no-such-ca.pem");
        let err = ReverseProxyBuilder::new("https://kestra:8443")
            .upstream_ca(&path)
            .build::<TestBody>()
            .unwrap_err();
        assert!(
            matches!(&err, BuildError::UpstreamCa { path: p, .. } if *p == path),
            "{err:?}"
        );
        assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_by_name() {
        let key = KeyPair::generate().unwrap().serialize_pem();
        let cases = [
            ("empty.pem", String::new()),
            ("text.pem", "not PEM at all\n".to_owned()),
            ("key-only.pem", key),
        ];
        for (name, contents) in cases {
            let file = TempFile::new(name, contents.as_bytes());
            let err = ReverseProxyBuilder::new("https://kestra:8443")
                .upstream_ca(file.path())
                .build::<TestBody>()
                .unwrap_err();
            assert!(
                matches!(&err, BuildError::UpstreamCaEmpty { path } if path == file.path()),
                "{name}: {err:?}"
            );
            assert!(
                err.to_string().contains(&*file.path().to_string_lossy()),
                "{err}"
            );
        }
    }

    #[test]
    fn a_corrupt_ca_file_is_refused_by_name() {
        let file = TempFile::new(
            "corrupt.pem",
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let err = ReverseProxyBuilder::new("https://kestra:8443")
            .upstream_ca(file.path())
            .build::<TestBody>()
            .unwrap_err();
        assert!(
            matches!(&err, BuildError::UpstreamCa { path, .. } if path == file.path()),
            "{err:?}"
        );
    }

    #[test]
    fn an_http_upstream_never_reads_ca_files() {
        let proxy = ReverseProxyBuilder::new("http://127.0.0.1:8080")
            .upstream_ca("/nonexistent/ca.pem")
            .build::<TestBody>();
        assert!(proxy.is_ok(), "{proxy:?}");
    }

    #[tokio::test]
    async fn rejected_certificates_are_classified_and_answered_502() {
        let (pem, issuer) = ca("trusted CA");
        let (_, stranger) = ca("unknown CA");
        let ca_file = TempFile::new("classified-ca.pem", pem.as_bytes());
        let cases = [
            (
                leaf(&["localhost"], &stranger, false),
                UpstreamTlsReason::UnknownIssuer,
                "upstream certificate rejected: unknown issuer",
            ),
            (
                leaf(&["kestra.internal"], &issuer, false),
                UpstreamTlsReason::NotValidForName,
                "upstream certificate rejected: not valid for name localhost",
            ),
            (
                leaf(&["localhost"], &issuer, true),
                UpstreamTlsReason::Expired,
                "upstream certificate rejected: expired",
            ),
        ];
        for ((cert, key), reason, text) in cases {
            let port = tls_server(cert, key).await;
            let proxy = ReverseProxyBuilder::new(format!("https://localhost:{port}"))
                .upstream_ca(ca_file.path())
                .build::<TestBody>()
                .unwrap();
            let err = failure(&proxy, port).await;
            let tls = err.upstream_tls().expect("a TLS failure");
            assert_eq!(tls.reason(), reason, "{tls}");
            assert_eq!(tls.to_string(), text);
            assert!(err.is_connect());
            assert_eq!(err.to_string(), "upstream TLS failed");

            let response = proxy
                .oneshot(Request::get("/x").body(TestBody::new()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::BAD_GATEWAY, "{text}");
        }
    }

    #[tokio::test]
    async fn a_trusted_certificate_is_not_a_tls_failure() {
        // The control case: the same server set-up with a good certificate gets past TLS
        // (the server then closes without HTTP, which is not a TLS failure).
        let (pem, issuer) = ca("control CA");
        let ca_file = TempFile::new("control-ca.pem", pem.as_bytes());
        let (cert, key) = leaf(&["localhost"], &issuer, false);
        let port = tls_server(cert, key).await;
        let proxy = ReverseProxyBuilder::new(format!("https://localhost:{port}"))
            .upstream_ca(ca_file.path())
            .build::<TestBody>()
            .unwrap();
        let err = failure(&proxy, port).await;
        assert!(err.upstream_tls().is_none(), "{err:?}");
    }

    #[tokio::test]
    async fn a_silent_tls_upstream_is_a_connect_timeout() {
        let (pem, _) = ca("silent CA");
        let ca_file = TempFile::new("silent-ca.pem", pem.as_bytes());
        // Accepts TCP and never answers the ClientHello.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let proxy = ReverseProxyBuilder::new(format!("https://localhost:{port}"))
            .upstream_ca(ca_file.path())
            .connect_timeout(Duration::from_millis(200))
            .build::<TestBody>()
            .unwrap();
        let err = failure(&proxy, port).await;
        assert!(matches!(err, ProxyError::ConnectTimeout), "{err:?}");
        let response = proxy
            .oneshot(Request::get("/x").body(TestBody::new()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    }
}
