//! TLS termination end to end: the gateway with `--tls-cert`/`--tls-key` (certificates made
//! at test time) in front of the Kestra stand-in, with real rustls clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use kestra_edge_gateway::GatewayConfig;
use kestra_edge_standin::{Standin, StandinConfig};
use kestra_edge_tests::{eventually, raw_exchange, raw_status, RunningGateway};
use rustls::{
    pki_types::{CertificateDer, ServerName},
    ClientConfig, ProtocolVersion, RootCertStore,
};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{client::TlsStream, TlsConnector};
use tokio_tungstenite::tungstenite::Message;

const LIMIT: Duration = Duration::from_secs(10);
const FOLLOW: &str = "/kestra/api/v1/main/executions/e1/follow";

/// A private CA and two localhost certificates it signed.
struct Pki {
    ca: CertificateDer<'static>,
    leaves: Vec<Leaf>,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kestra-edge test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key).unwrap();
        let leaves = (0..2)
            .map(|_| {
                let key = rcgen::KeyPair::generate().unwrap();
                let params = rcgen::CertificateParams::new(vec![
                    "localhost".to_owned(),
                    "127.0.0.1".to_owned(),
                ])
                .unwrap();
                let cert = params.signed_by(&key, &ca).unwrap();
                Leaf {
                    cert_pem: cert.pem(),
                    key_pem: key.serialize_pem(),
                    der: cert.der().clone(),
                }
            })
            .collect();
        Self {
            ca: ca.der().clone(),
            leaves,
        }
    }
}

/// A fresh directory under the system's temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kestra-edge-tls-{name}-{}-{:?}",
        std::process::id(),
        Instant::now()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `text` to `path` atomically (a temp file renamed over it), as deploy tools do.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct TlsGateway {
    gateway: RunningGateway,
    _standin: Standin,
    pki: Pki,
    dir: PathBuf,
}

impl TlsGateway {
    async fn start(configure: impl FnOnce(&mut GatewayConfig)) -> Self {
        let pki = Pki::new();
        let dir = temp_dir("gw");
        std::fs::write(dir.join("tls.crt"), &pki.leaves[0].cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &pki.leaves[0].key_pem).unwrap();
        let standin = Standin::start(StandinConfig::default()).await.unwrap();
        let mut config = GatewayConfig::for_upstream(standin.url());
        config.prefix.context_path = Some("/kestra".to_owned());
        config.listener.workers = std::num::NonZeroUsize::new(1).unwrap();
        config.tls.cert_file = Some(dir.join("tls.crt"));
        config.tls.key_file = Some(dir.join("tls.key"));
        configure(&mut config);
        let gateway = RunningGateway::start(config).await;
        Self {
            gateway,
            _standin: standin,
            pki,
            dir,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.gateway.addr
    }

    fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        client_config(&self.pki.ca, alpn, None)
    }

    async fn connect(&self, alpn: &[&[u8]]) -> TlsStream<TcpStream> {
        connect(self.addr(), self.client(alpn)).await
    }

    /// The leaf certificate a new handshake gets.
    async fn served_cert(&self) -> CertificateDer<'static> {
        let stream = self.connect(&[b"http/1.1"]).await;
        stream.get_ref().1.peer_certificates().unwrap()[0].clone()
    }
}

impl Drop for TlsGateway {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn client_config(
    ca: &CertificateDer<'static>,
    alpn: &[&[u8]],
    version: Option<&'static rustls::SupportedProtocolVersion>,
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider);
    let builder = match version {
        Some(version) => builder.with_protocol_versions(&[version]).unwrap(),
        None => builder.with_safe_default_protocol_versions().unwrap(),
    };
    let mut config = builder.with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn connect(addr: SocketAddr, config: Arc<ClientConfig>) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(LIMIT, TlsConnector::from(config).connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake")
}

/// One GET over `stream` with HTTP/2 when `h2`, else HTTP/1.1: status, version, body.
async fn get(stream: TlsStream<TcpStream>, h2: bool, path: &str) -> (StatusCode, Version, Bytes) {
    let io = TokioIo::new(stream);
    let request = Request::get(format!("https://localhost{path}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        send.send_request(request).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let mut request = request;
        *request.uri_mut() = path.parse().unwrap();
        request
            .headers_mut()
            .insert("host", "localhost".parse().unwrap());
        send.send_request(request).await.unwrap()
    };
    let (status, version) = (response.status(), response.version());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, version, body)
}

fn echo_header<'a>(echo: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|pair| pair[0] == name)
        .map(|pair| pair[1].as_str().unwrap())
}

#[tokio::test]
async fn alpn_picks_http2_or_http1_and_kestra_is_told_https() {
    let gw = TlsGateway::start(|_| {}).await;
    let cases: &[(&[&[u8]], bool, Version)] = &[
        (&[b"h2", b"http/1.1"], true, Version::HTTP_2),
        (&[b"http/1.1"], false, Version::HTTP_11),
        (&[], false, Version::HTTP_11),
    ];
    for &(alpn, h2, version) in cases {
        let stream = gw.connect(alpn).await;
        let negotiated = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        assert_eq!(negotiated.as_deref(), alpn.first().copied(), "{alpn:?}");
        let (status, got, body) = get(stream, h2, "/kestra/api/v1/echo/x?a=1").await;
        assert_eq!((status, got), (StatusCode::OK, version), "{alpn:?}");
        let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo_header(&echo, "x-forwarded-proto"), Some("https"));
        assert_eq!(echo_header(&echo, "x-forwarded-protocol"), Some("https"));
        assert_eq!(echo_header(&echo, "x-forwarded-port"), Some("443"));
        assert_eq!(echo_header(&echo, "x-forwarded-host"), Some("localhost"));
        assert_eq!(
            echo_header(&echo, "forwarded"),
            Some("for=127.0.0.1;proto=https;host=localhost")
        );
        // Kestra always gets HTTP/1.1.
        assert_eq!(echo["version"], "HTTP/1.1");
    }
}

#[tokio::test]
async fn tls_12_and_13_are_served_and_older_versions_are_not_offered() {
    let gw = TlsGateway::start(|_| {}).await;
    for (version, expected) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        let config = client_config(&gw.pki.ca, &[b"h2"], Some(version));
        let stream = connect(gw.addr(), config).await;
        assert_eq!(stream.get_ref().1.protocol_version(), Some(expected));
        let (status, _, body) = get(stream, true, "/kestra/ping").await;
        assert_eq!((status, &body[..]), (StatusCode::OK, &b"pong"[..]));
    }
    // A TLS 1.0 ClientHello record: the server answers with a protocol_version alert or
    // closes, never with a ServerHello.
    let mut tcp = TcpStream::connect(gw.addr()).await.unwrap();
    tcp.write_all(&tls10_client_hello()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(LIMIT, tcp.read_to_end(&mut answer)).await;
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "expected an alert or a close, got {answer:?}"
    );
}

/// A minimal TLS 1.0 ClientHello (RFC 2246 §7.4.1.2) offering one cipher suite.
fn tls10_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x01]; // client_version TLS 1.0
    body.extend_from_slice(&[0x11; 32]); // random
    body.push(0); // session id
    body.extend_from_slice(&[0x00, 0x02, 0x00, 0x2f]); // TLS_RSA_WITH_AES_128_CBC_SHA
    body.extend_from_slice(&[0x01, 0x00]); // null compression
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16::try_from(handshake.len()).unwrap().to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// Reads SSE bytes from an HTTP/2 response until `events` `id:` lines arrived.
async fn read_events(body: &mut hyper::body::Incoming, events: usize) -> Vec<String> {
    let mut text = String::new();
    let mut ids = Vec::new();
    while ids.len() < events {
        let frame = tokio::time::timeout(LIMIT, body.frame())
            .await
            .expect("an event in time")
            .expect("the stream is open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            if let Some(id) = block.lines().find_map(|l| l.strip_prefix("id: ")) {
                ids.push(id.to_owned());
            }
        }
    }
    ids
}

#[tokio::test]
async fn a_stream_opened_before_a_reload_runs_to_its_end_and_new_handshakes_get_the_new_pair() {
    let gw = TlsGateway::start(|_| {}).await;
    assert_eq!(gw.served_cert().await, gw.pki.leaves[0].der);

    // An SSE stream over HTTP/2 on the old certificate.
    let io = TokioIo::new(gw.connect(&[b"h2"]).await);
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = Request::get(format!(
        "https://localhost{FOLLOW}?events=6&interval_ms=150"
    ))
    .body(Empty::<Bytes>::new())
    .unwrap();
    let response = send.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    assert_eq!(read_events(&mut body, 1).await, ["start"]);

    // Deploy the second pair the way tools do: write aside, rename over.
    replace(&gw.dir.join("tls.key"), &gw.pki.leaves[1].key_pem);
    replace(&gw.dir.join("tls.crt"), &gw.pki.leaves[1].cert_pem);
    let new = gw.pki.leaves[1].der.clone();
    let mut served = gw.served_cert().await;
    let deadline = Instant::now() + LIMIT;
    while served != new && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        served = gw.served_cert().await;
    }
    assert_eq!(served, new, "new handshakes get the new certificate");

    // The stream from before the reload carries on to its end.
    let rest = read_events(&mut body, 7).await;
    assert_eq!(rest.last().map(String::as_str), Some("end"), "{rest:?}");
    assert_eq!(rest.len(), 7);
}

#[tokio::test]
async fn a_broken_or_mismatched_new_pair_is_refused_and_the_last_good_one_kept() {
    let gw = TlsGateway::start(|_| {}).await;
    let old = gw.pki.leaves[0].der.clone();
    // A key that does not belong to the certificate.
    replace(&gw.dir.join("tls.key"), &gw.pki.leaves[1].key_pem);
    // Garbage as the certificate.
    tokio::time::sleep(Duration::from_millis(300)).await;
    replace(
        &gw.dir.join("tls.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64!\n",
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        assert_eq!(gw.served_cert().await, old);
        let stream = gw.connect(&[b"h2"]).await;
        let (status, _, _) = get(stream, true, "/kestra/ping").await;
        assert_eq!(status, StatusCode::OK);
    }
    // Once the pair is whole again, it is taken.
    replace(&gw.dir.join("tls.crt"), &gw.pki.leaves[1].cert_pem);
    let new = gw.pki.leaves[1].der.clone();
    let deadline = Instant::now() + LIMIT;
    while gw.served_cert().await != new {
        assert!(Instant::now() < deadline, "the fixed pair was not taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(unix)]
#[tokio::test]
async fn a_kubernetes_secret_symlink_swap_is_seen() {
    // A mounted Secret: tls.crt -> ..data/tls.crt, ..data -> ..2026_a (a timestamped dir);
    // an update writes ..2026_b and renames a new ..data symlink over the old one.
    let pki = Pki::new();
    let dir = temp_dir("k8s");
    let write_version = |name: &str, leaf: &Leaf| {
        let version = dir.join(name);
        std::fs::create_dir(&version).unwrap();
        std::fs::write(version.join("tls.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(version.join("tls.key"), &leaf.key_pem).unwrap();
    };
    write_version("..2026_a", &pki.leaves[0]);
    std::os::unix::fs::symlink("..2026_a", dir.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tls.crt", dir.join("tls.crt")).unwrap();
    std::os::unix::fs::symlink("..data/tls.key", dir.join("tls.key")).unwrap();
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let mut config = GatewayConfig::for_upstream(standin.url());
    config.listener.workers = std::num::NonZeroUsize::new(1).unwrap();
    config.tls.cert_file = Some(dir.join("tls.crt"));
    config.tls.key_file = Some(dir.join("tls.key"));
    let gateway = RunningGateway::start(config).await;
    let client = client_config(&pki.ca, &[b"h2"], None);
    let served = || async {
        let stream = connect(gateway.addr, client.clone()).await;
        stream.get_ref().1.peer_certificates().unwrap()[0].clone()
    };
    assert_eq!(served().await, pki.leaves[0].der);

    write_version("..2026_b", &pki.leaves[1]);
    std::os::unix::fs::symlink("..2026_b", dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    let deadline = Instant::now() + LIMIT;
    while served().await != pki.leaves[1].der {
        assert!(
            Instant::now() < deadline,
            "the swapped Secret was not taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(gateway);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_client_that_stalls_before_or_during_the_handshake_is_cut() {
    let gw = TlsGateway::start(|c| c.listener.header_timeout = Duration::from_millis(300)).await;
    let hello = tls10_client_hello();
    for (what, sent) in [("silent", &[][..]), ("half a ClientHello", &hello[..20])] {
        let mut tcp = TcpStream::connect(gw.addr()).await.unwrap();
        tcp.write_all(sent).await.unwrap();
        let started = Instant::now();
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "{what}: not closed within 5 s");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250),
            "{what}: closed after {took:?}"
        );
    }
    // A client within the timeout is served.
    let stream = gw.connect(&[b"http/1.1"]).await;
    assert_eq!(get(stream, false, "/kestra/ping").await.0, StatusCode::OK);
}

#[tokio::test]
async fn plain_http_on_the_tls_port_gets_400_and_a_close() {
    let gw = TlsGateway::start(|_| {}).await;
    let started = Instant::now();
    let answer = raw_exchange(
        gw.addr(),
        b"GET /kestra/ping HTTP/1.1\r\nHost: localhost\r\n\r\n",
        LIMIT,
    )
    .await;
    assert_eq!(
        raw_status(&answer),
        400,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(String::from_utf8_lossy(&answer).contains("https://"));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_redirect_listener_sends_every_request_to_https() {
    let redirect: SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let gw = TlsGateway::start(|c| c.tls.redirect_http = Some(redirect)).await;
    let port = gw.addr().port();
    let cases = [
        (
            "GET /kestra/ui/flows?q=a%2Fb&x=1 HTTP/1.1\r\nHost: kestra.example.com:8080\r\nConnection: close\r\n\r\n",
            308,
            Some(format!("https://kestra.example.com:{port}/kestra/ui/flows?q=a%2Fb&x=1")),
        ),
        (
            "POST /kestra/api/v1/executions/webhook/ns/f/k HTTP/1.1\r\nHost: [::1]\r\ncontent-length: 0\r\nConnection: close\r\n\r\n",
            308,
            Some(format!("https://[::1]:{port}/kestra/api/v1/executions/webhook/ns/f/k")),
        ),
        ("GET / HTTP/1.1\r\nHost: bad host\r\nConnection: close\r\n\r\n", 400, None),
    ];
    for (request, status, location) in cases {
        let answer = raw_exchange(redirect, request.as_bytes(), LIMIT).await;
        let text = String::from_utf8_lossy(&answer);
        assert_eq!(raw_status(&answer), status, "{text}");
        let got = text
            .lines()
            .find_map(|l| l.strip_prefix("location: "))
            .map(str::to_owned);
        assert_eq!(got, location, "{text}");
    }
}

#[tokio::test]
async fn websockets_pass_over_tls() {
    let gw = TlsGateway::start(|_| {}).await;
    let stream = gw.connect(&[b"http/1.1"]).await;
    let (mut socket, response) =
        tokio_tungstenite::client_async("wss://localhost/kestra/api/v1/ws/echo", stream)
            .await
            .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..20 {
        let text = format!("message {i}");
        socket.send(Message::text(text.clone())).await.unwrap();
        let echoed = tokio::time::timeout(LIMIT, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), text);
    }
    assert_eq!(gw.gateway.tunnels.open(), 1);
    socket.close(None).await.unwrap();
    // The close handshake completes, then the connection ends, and with it the tunnel.
    while let Ok(Some(Ok(_))) = tokio::time::timeout(LIMIT, socket.next()).await {}
    drop(socket);
    assert!(eventually(LIMIT, || gw.gateway.tunnels.open() == 0).await);
}

#[tokio::test]
async fn a_broken_pair_at_start_up_is_an_error_naming_the_file() {
    let dir = temp_dir("broken");
    let pki = Pki::new();
    std::fs::write(dir.join("tls.crt"), &pki.leaves[0].cert_pem).unwrap();
    std::fs::write(dir.join("other.key"), &pki.leaves[1].key_pem).unwrap();
    std::fs::write(dir.join("empty.crt"), "").unwrap();
    let cases = [
        ("tls.crt", "other.key", "other.key"),
        ("empty.crt", "other.key", "empty.crt"),
        ("missing.crt", "other.key", "missing.crt"),
    ];
    for (cert, key, named) in cases {
        let mut config = GatewayConfig::for_upstream("http://127.0.0.1:9");
        config.tls.cert_file = Some(dir.join(cert));
        config.tls.key_file = Some(dir.join(key));
        let err = kestra_edge_gateway::Gateway::bind(config)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(named), "{cert}/{key}: {err}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
