//! HTTPS upstreams end to end: the facade's stack on a real socket in front of a real
//! rustls + hyper upstream whose certificates come from a private CA generated per run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use kestra_edge::{server::Server, KestraEdge};
use kestra_edge_tests::{client, sha256_hex};
use rcgen::{date_time_ymd, BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::{
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot},
};

/// A private CA: its PEM written to a temp file (removed on drop) and its signing key.
struct Ca {
    file: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        let file = std::env::temp_dir().join(format!(
            "kestra-edge-upstream-tls-{}-{}.pem",
            std::process::id(),
            name.replace(' ', "-")
        ));
        std::fs::write(&file, pem).unwrap();
        Self {
            file,
            issuer: Issuer::new(params, key),
        }
    }

    fn path(&self) -> &Path {
        &self.file
    }

    /// A leaf certificate for `names`, expired (2000–2001) when `expired`.
    fn leaf(&self, names: &[&str], expired: bool) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        if expired {
            params.not_before = date_time_ymd(2000, 1, 1);
            params.not_after = date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        }
    }
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

struct Leaf {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

/// What the upstream saw of one TLS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Handshake {
    sni: Option<String>,
    alpn: Option<Vec<u8>>,
}

/// A real HTTPS upstream on 127.0.0.1:0: a GET is answered `<path> host=<Host>`, a POST
/// `<length> <sha256>` of its body, whose chunks are also sent to `chunks` as they arrive.
struct TlsUpstream {
    port: u16,
    handshakes: Arc<Mutex<Vec<Handshake>>>,
    chunks: mpsc::UnboundedReceiver<Bytes>,
}

impl TlsUpstream {
    async fn start(leaf: Leaf) -> Self {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.cert], leaf.key)
        .unwrap();
        // h2 first: the server would pick it if the proxy offered it.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let (chunk_tx, chunks) = mpsc::unbounded_channel();
        let seen = handshakes.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                let chunk_tx = chunk_tx.clone();
                tokio::spawn(async move {
                    // A rejected certificate fails the handshake here too.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let connection = tls.get_ref().1;
                    seen.lock().unwrap().push(Handshake {
                        sni: connection.server_name().map(str::to_owned),
                        alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
                    });
                    let service = service_fn(move |req| answer(req, chunk_tx.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            port,
            handshakes,
            chunks,
        }
    }

    fn url(&self) -> String {
        format!("https://localhost:{}", self.port)
    }

    fn handshakes(&self) -> Vec<Handshake> {
        self.handshakes.lock().unwrap().clone()
    }
}

async fn answer(
    req: Request<Incoming>,
    chunks: mpsc::UnboundedSender<Bytes>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != http::Method::POST {
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-");
        let text = format!("{} host={host}", req.uri().path());
        return Ok(Response::new(Full::new(Bytes::from(text))));
    }
    let mut body = req.into_body();
    let mut received = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Ok(Response::new(Full::new(Bytes::from_static(b"body failed"))));
        };
        if let Ok(data) = frame.into_data() {
            received.extend_from_slice(&data);
            let _ = chunks.send(data);
        }
    }
    let text = format!("{} {}", received.len(), sha256_hex(&received));
    Ok(Response::new(Full::new(Bytes::from(text))))
}

/// The facade's stack served by `kestra_edge::server::Server` on 127.0.0.1:0.
struct Gateway {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Gateway {
    async fn start(upstream: String, ca: Option<&Path>) -> Self {
        let mut builder = KestraEdge::builder(upstream);
        if let Some(ca) = ca {
            builder = builder.upstream_ca(ca);
        }
        let edge = builder
            .build::<kestra_edge::server::IncomingBody>()
            .unwrap();
        let server = Server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.serve(edge, async {
            let _ = stopped.await;
        }));
        Self { addr, _stop: stop }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn get(gateway: &Gateway, path: &str) -> (StatusCode, String) {
    let response = client().get(gateway.url(path)).send().await.unwrap();
    let status = response.status();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn a_trusted_upstream_is_served_with_sni_and_http11_alpn() {
    let ca = Ca::new("trusted CA");
    let upstream = TlsUpstream::start(ca.leaf(&["localhost", "127.0.0.1"], false)).await;
    let gateway = Gateway::start(upstream.url(), Some(ca.path())).await;

    let (status, body) = get(&gateway, "/api/v1/flows?q=1").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The client's Host goes upstream (preserve_host), the upstream's name in SNI.
    assert_eq!(body, format!("/api/v1/flows host={}", gateway.addr));
    let handshakes = upstream.handshakes();
    assert!(!handshakes.is_empty());
    for handshake in handshakes {
        assert_eq!(
            handshake,
            Handshake {
                sni: Some("localhost".to_owned()),
                alpn: Some(b"http/1.1".to_vec()),
            }
        );
    }
}

#[tokio::test]
async fn an_upstream_of_an_unknown_ca_is_502() {
    let ca = Ca::new("unknown CA");
    let other = Ca::new("other CA");
    let upstream = TlsUpstream::start(ca.leaf(&["localhost"], false)).await;
    // The system roots only, then the system roots and another private CA.
    for trusted in [None, Some(other.path())] {
        let gateway = Gateway::start(upstream.url(), trusted).await;
        let (status, body) = get(&gateway, "/api/v1/flows").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{trusted:?}");
        assert_eq!(body, "upstream TLS failed\n");
    }
    assert!(upstream.handshakes().is_empty());
}

#[tokio::test]
async fn an_upstream_certificate_for_another_name_or_expired_is_502() {
    let ca = Ca::new("rejected CA");
    // (names in the certificate, expired)
    for (names, expired) in [
        (&["kestra.internal"][..], false),
        (&["localhost"][..], true),
    ] {
        let upstream = TlsUpstream::start(ca.leaf(names, expired)).await;
        let gateway = Gateway::start(upstream.url(), Some(ca.path())).await;
        let (status, body) = get(&gateway, "/api/v1/flows").await;
        assert_eq!(
            status,
            StatusCode::BAD_GATEWAY,
            "{names:?} expired: {expired}"
        );
        assert_eq!(body, "upstream TLS failed\n");
        assert!(upstream.handshakes().is_empty());
    }
}

#[tokio::test]
async fn a_post_body_streams_through_to_an_https_upstream() {
    let ca = Ca::new("streaming CA");
    let mut upstream = TlsUpstream::start(ca.leaf(&["localhost"], false)).await;
    let gateway = Gateway::start(upstream.url(), Some(ca.path())).await;

    let first = Bytes::from(vec![b'a'; 64 * 1024]);
    let second = Bytes::from(vec![b'b'; 256 * 1024]);
    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let request = client()
        .post(gateway.url("/api/v1/executions/upload"))
        .body(reqwest::Body::wrap_stream(chunks_of(body_rx)))
        .send();
    let response = tokio::spawn(request);

    // The upstream receives the first chunk before the client has sent the rest.
    body_tx.send(Ok(first.clone())).await.unwrap();
    // Bounded, so that a proxy buffering the whole body fails here instead of hanging.
    let mut received = 0;
    while received < first.len() {
        let chunk = tokio::time::timeout(Duration::from_secs(10), upstream.chunks.recv()).await;
        received += chunk.expect("the first chunk arrives alone").unwrap().len();
    }
    assert_eq!(received, first.len());
    body_tx.send(Ok(second.clone())).await.unwrap();
    drop(body_tx);

    let response = response.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let whole = [first, second].concat();
    assert_eq!(
        response.text().await.unwrap(),
        format!("{} {}", whole.len(), sha256_hex(&whole))
    );
}

/// A stream of the chunks sent on `rx`.
fn chunks_of(
    rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

/// The binary's configuration: `--upstream https://…` with `--upstream-ca`, through the
/// gateway's own `Gateway`.
#[tokio::test]
async fn the_gateway_wires_upstream_ca_and_fails_closed_without_it() {
    let ca = Ca::new("gateway CA");
    let upstream = TlsUpstream::start(ca.leaf(&["localhost"], false)).await;
    for (trusted, expected) in [(true, StatusCode::OK), (false, StatusCode::BAD_GATEWAY)] {
        let mut config = kestra_edge_gateway::GatewayConfig::for_upstream(upstream.url());
        if trusted {
            config.upstream.ca = vec![ca.path().to_owned()];
        }
        let gateway = kestra_edge_tests::RunningGateway::start(config).await;
        let response = client()
            .get(gateway.url("/api/v1/flows"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "trusted: {trusted}");
    }
}
