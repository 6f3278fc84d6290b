//! End-to-end tests of the egress forward proxy over loopback: real sockets, a TLS client
//! that verifies the destination's certificate through a `CONNECT` tunnel, reqwest through
//! the proxy for absolute-form requests, and an injected resolver (names → loopback, and a
//! name that rebinds).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use kestra_edge::{
    egress::{Egress, EgressBuilder, Resolve, Resolving},
    server::Server,
};
use kestra_edge_standin::{Echo, Standin, StandinConfig};
use kestra_edge_tests::closed_port;
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName};
use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

const LIMIT: Duration = Duration::from_secs(10);
/// `kestra:s3cret`, `kestra:wrong`, `ops:n3w-pass` in base64.
const GOOD: &str = "Basic a2VzdHJhOnMzY3JldA==";
const WRONG: &str = "Basic a2VzdHJhOndyb25n";
const NEW_USER: &str = "Basic b3BzOm4zdy1wYXNz";

/// Answers names from a table; each name may answer differently on later calls (the last
/// answer repeats), so a test can make a name rebind. Counts calls per name.
#[derive(Clone, Default)]
struct Names {
    answers: Arc<HashMap<String, Vec<IpAddr>>>,
    calls: Arc<Mutex<HashMap<String, usize>>>,
}

impl Names {
    fn new(table: &[(&str, &[&str])]) -> Self {
        let answers = table
            .iter()
            .map(|(name, ips)| {
                (
                    (*name).to_owned(),
                    ips.iter().map(|ip| ip.parse().unwrap()).collect(),
                )
            })
            .collect();
        Self {
            answers: Arc::new(answers),
            calls: Arc::default(),
        }
    }

    fn calls(&self, name: &str) -> usize {
        self.calls.lock().unwrap().get(name).copied().unwrap_or(0)
    }
}

impl Resolve for Names {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Resolving<'a> {
        let call = {
            let mut calls = self.calls.lock().unwrap();
            let n = calls.entry(host.to_owned()).or_insert(0);
            *n += 1;
            *n - 1
        };
        let answer = self.answers.get(host).map(|ips| {
            let ip = ips[call.min(ips.len() - 1)];
            vec![SocketAddr::new(ip, port)]
        });
        Box::pin(async move { answer.ok_or_else(|| io::Error::other("no such name")) })
    }
}

/// Serves `egress` on `127.0.0.1:0` for the rest of the test.
async fn serve(egress: Egress) -> SocketAddr {
    let server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap()
        .shutdown_grace(Duration::ZERO);
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve(egress, std::future::pending::<()>()));
    addr
}

/// A fresh directory under the system's temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kestra-edge-egress-{name}-{}-{:?}",
        std::process::id(),
        Instant::now()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A credentials file holding `kestra:s3cret`.
fn users(dir: &std::path::Path) -> PathBuf {
    let file = dir.join("users");
    std::fs::write(&file, "# the Kestra webserver\nkestra:s3cret\n").unwrap();
    file
}

/// Sends a raw request head and reads the response head; returns the status, the head and
/// the connection (a tunnel after a `200` to `CONNECT`).
async fn raw(proxy: SocketAddr, head: &str) -> (u16, String, TcpStream) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(LIMIT, stream.read(&mut byte))
            .await
            .expect("response head in time")
            .unwrap();
        assert_eq!(n, 1, "closed before a response head: {got:?}");
        got.push(byte[0]);
    }
    let head = String::from_utf8(got).unwrap();
    let status = head[9..12].parse().unwrap();
    (status, head, stream)
}

async fn connect(proxy: SocketAddr, target: &str, auth: Option<&str>) -> (u16, String, TcpStream) {
    let auth = auth.map_or(String::new(), |a| format!("Proxy-Authorization: {a}\r\n"));
    raw(
        proxy,
        &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n"),
    )
    .await
}

/// A TCP listener that counts connections and echoes bytes back.
struct EchoServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl EchoServer {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                });
            }
        });
        Self { addr, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// An HTTPS stand-in for `api.kestra.test` with its own CA: answers one HTTP/1.1 request
/// per connection with `blueprints` and what it saw first on the socket.
struct HttpsStandin {
    addr: SocketAddr,
    ca: CertificateDer<'static>,
    /// The first byte of each connection (0x16 for a TLS handshake).
    first_bytes: Arc<Mutex<Vec<u8>>>,
}

impl HttpsStandin {
    async fn start() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kestra-edge egress test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(params, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["api.kestra.test".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let first_bytes = Arc::new(Mutex::new(Vec::new()));
        let seen = first_bytes.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut first = [0u8; 1];
                    if tcp.peek(&mut first).await.unwrap_or(0) == 1 {
                        seen.lock().unwrap().push(first[0]);
                    }
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match tls.read(&mut byte).await {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let body = format!("blueprints\n{}", String::from_utf8_lossy(&head));
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Self {
            addr,
            ca: ca.der().clone(),
            first_bytes,
        }
    }

    /// A TLS client that trusts only the stand-in's CA.
    fn client(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

fn builder(names: &Names) -> EgressBuilder {
    Egress::builder()
        .resolver(names.clone())
        .connect_timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn connect_tunnel_reaches_an_https_destination_verified_end_to_end() {
    let https = HttpsStandin::start().await;
    let names = Names::new(&[("api.kestra.test", &["127.0.0.1"])]);
    let dir = temp_dir("tunnel");
    let proxy = serve(
        builder(&names)
            .allow("api.kestra.test")
            .allow_private(true)
            .credentials_file(users(&dir))
            .build()
            .unwrap(),
    )
    .await;
    let target = format!("API.Kestra.test:{}", https.addr.port());
    let (status, head, tcp) = connect(proxy, &target, Some(GOOD)).await;
    assert_eq!(status, 200, "{head}");

    let name = ServerName::try_from("api.kestra.test").unwrap();
    let mut tls = tokio::time::timeout(LIMIT, https.client().connect(name, tcp))
        .await
        .unwrap()
        .expect("the destination's certificate verifies through the tunnel");
    tls.write_all(b"GET /v1/blueprints HTTP/1.1\r\nHost: api.kestra.test\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(LIMIT, tls.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(
        response.contains("blueprints\nGET /v1/blueprints"),
        "{response}"
    );
    // The destination's first byte is the TLS handshake: nothing of the CONNECT (and its
    // Proxy-Authorization) reached it.
    assert_eq!(*https.first_bytes.lock().unwrap(), [0x16]);
    assert_eq!(names.calls("api.kestra.test"), 1);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn absolute_form_requests_are_forwarded_without_proxy_credentials_or_hop_fields() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let port = standin.addr().port();
    let names = Names::new(&[("kestra.test", &["127.0.0.1"])]);
    let dir = temp_dir("forward");
    let proxy = serve(
        builder(&names)
            .allow(format!("kestra.test:{port}"))
            .allow_private(true)
            .credentials_file(users(&dir))
            .build()
            .unwrap(),
    )
    .await;

    // reqwest, a real client: absolute-form with Proxy-Authorization.
    let client = reqwest::Client::builder()
        .proxy(
            reqwest::Proxy::http(format!("http://{proxy}"))
                .unwrap()
                .basic_auth("kestra", "s3cret"),
        )
        .build()
        .unwrap();
    let body = vec![b'x'; 300_000];
    let response = client
        .post(format!(
            "http://kestra.test:{port}/kestra/api/v1/echo/a?b=c"
        ))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: Echo = response.json().await.unwrap();
    assert_eq!(echo.method, "POST");
    assert_eq!(echo.uri, "/kestra/api/v1/echo/a?b=c");
    assert_eq!(echo.body_length, 300_000);
    assert_eq!(echo.body_sha256, kestra_edge_tests::sha256_hex(&body));
    assert!(
        echo.header_values("proxy-authorization").is_empty(),
        "{echo:?}"
    );
    assert_eq!(echo.header_values("host"), [format!("kestra.test:{port}")]);

    // Raw: hop-by-hop fields (and those Connection names) stay on this hop; a client's Host
    // is replaced by the target's authority (RFC 9112 §3.2.2).
    let (status, head, mut stream) = raw(
        proxy,
        &format!(
            "GET http://kestra.test:{port}/kestra/api/v1/echo/x HTTP/1.1\r\nHost: elsewhere\r\n\
             Proxy-Authorization: {GOOD}\r\nProxy-Connection: keep-alive\r\nConnection: x-hop\r\n\
             X-Hop: 1\r\nX-Kept: 2\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .parse()
        .unwrap();
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    let echo: Echo = serde_json::from_slice(&body).unwrap();
    for gone in ["proxy-authorization", "proxy-connection", "x-hop"] {
        assert!(echo.header_values(gone).is_empty(), "{gone}: {echo:?}");
    }
    assert_eq!(echo.header_values("x-kept"), ["2"]);
    assert_eq!(echo.header_values("host"), [format!("kestra.test:{port}")]);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn missing_or_wrong_credentials_get_407_and_no_connection() {
    let destination = EchoServer::start().await;
    let names = Names::new(&[("api.kestra.test", &["127.0.0.1"])]);
    let dir = temp_dir("auth");
    let proxy = serve(
        builder(&names)
            .allow("api.kestra.test")
            .allow_private(true)
            .credentials_file(users(&dir))
            .build()
            .unwrap(),
    )
    .await;
    let target = format!("api.kestra.test:{}", destination.addr.port());
    for auth in [None, Some(WRONG), Some("Basic !!!")] {
        let (status, head, _) = connect(proxy, &target, auth).await;
        assert_eq!(status, 407, "{auth:?}: {head}");
        assert!(
            head.contains("proxy-authenticate: Basic realm=\"kestra-edge\"\r\n"),
            "{head}"
        );
        let (status, _, _) = raw(
            proxy,
            &format!("GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 407);
    }
    assert_eq!(destination.accepted(), 0);
    assert_eq!(names.calls("api.kestra.test"), 0);
    let (status, _, _) = connect(proxy, &target, Some(GOOD)).await;
    assert_eq!(status, 200);
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn a_host_not_allowed_is_403_and_nothing_is_resolved_or_dialled() {
    let destination = EchoServer::start().await;
    let names = Names::new(&[
        ("evil.test", &["127.0.0.1"]),
        ("api.kestra.test", &["127.0.0.1"]),
    ]);
    let proxy = serve(
        builder(&names)
            .allow(format!("api.kestra.test:{}", destination.addr.port() ^ 1))
            .allow("*.kestra.test")
            .allow_private(true)
            .build()
            .unwrap(),
    )
    .await;
    let port = destination.addr.port();
    for target in [
        format!("evil.test:{port}"),
        format!("kestra.test:{port}"),
        format!("127.0.0.1:{port}"),
    ] {
        let (status, head, _) = connect(proxy, &target, None).await;
        assert_eq!(status, 403, "{target}: {head}");
    }
    assert_eq!(names.calls("evil.test"), 0);
    assert_eq!(destination.accepted(), 0);
    // The same port through the *.kestra.test pattern is allowed.
    let (status, _, _) = connect(proxy, &format!("api.kestra.test:{port}"), None).await;
    assert_eq!(status, 200);

    // Nothing allowed by default.
    let proxy = serve(builder(&names).allow_private(true).build().unwrap()).await;
    let (status, _, _) = connect(proxy, &format!("api.kestra.test:{port}"), None).await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn a_private_destination_is_403_unless_allow_private() {
    let destination = EchoServer::start().await;
    let names = Names::new(&[("internal.test", &["127.0.0.1"])]);
    let port = destination.addr.port();
    let build = |private: bool| {
        builder(&names)
            .allow("internal.test")
            .allow("127.0.0.1")
            .allow_private(private)
            .build()
            .unwrap()
    };
    let guarded = serve(build(false)).await;
    for target in [format!("internal.test:{port}"), format!("127.0.0.1:{port}")] {
        let (status, head, _) = connect(guarded, &target, None).await;
        assert_eq!(status, 403, "{target}: {head}");
        let (status, _, _) = raw(
            guarded,
            &format!("GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 403, "{target}");
    }
    assert_eq!(destination.accepted(), 0);

    let open = serve(build(true)).await;
    let (status, _, mut tunnel) = connect(open, &format!("internal.test:{port}"), None).await;
    assert_eq!(status, 200);
    tunnel.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tunnel.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");
    assert_eq!(destination.accepted(), 1);
}

#[tokio::test]
async fn a_name_that_rebinds_is_dialled_at_the_address_that_was_checked() {
    let destination = EchoServer::start().await;
    let port = destination.addr.port();
    // First answer public (TEST-NET-1, nothing listens), every later one loopback: a proxy
    // that resolved again to dial would reach the loopback listener.
    let names = Names::new(&[
        ("rebind.test", &["192.0.2.1", "127.0.0.1"]),
        ("rebind-http.test", &["192.0.2.1", "127.0.0.1"]),
        ("reverse.test", &["127.0.0.1", "192.0.2.1"]),
    ]);
    let proxy = serve(
        builder(&names)
            .allow("rebind.test")
            .allow("rebind-http.test")
            .allow("reverse.test")
            .connect_timeout(Duration::from_millis(300))
            .build()
            .unwrap(),
    )
    .await;
    let (status, head, _) = connect(proxy, &format!("rebind.test:{port}"), None).await;
    assert!(status == 502 || status == 504, "{head}");
    let (status, _, _) = raw(
        proxy,
        &format!("GET http://rebind-http.test:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n"),
    )
    .await;
    assert!(status == 502 || status == 504, "{status}");
    assert_eq!(names.calls("rebind.test"), 1, "resolved again");
    assert_eq!(names.calls("rebind-http.test"), 1, "resolved again");
    // Checked private first: refused, whatever a second resolution would say.
    let (status, _, _) = connect(proxy, &format!("reverse.test:{port}"), None).await;
    assert_eq!(status, 403);
    assert_eq!(names.calls("reverse.test"), 1);
    assert_eq!(destination.accepted(), 0, "the rebound address was dialled");
}

#[tokio::test]
async fn an_idle_tunnel_is_closed_after_the_idle_timeout() {
    let destination = EchoServer::start().await;
    let proxy = serve(
        Egress::builder()
            .allow("127.0.0.1")
            .allow_private(true)
            .idle_timeout(Duration::from_millis(200))
            .build()
            .unwrap(),
    )
    .await;
    let (status, _, mut tunnel) = connect(
        proxy,
        &format!("127.0.0.1:{}", destination.addr.port()),
        None,
    )
    .await;
    assert_eq!(status, 200);
    tunnel.write_all(b"hello").await.unwrap();
    let mut echoed = [0u8; 5];
    tunnel.read_exact(&mut echoed).await.unwrap();
    let quiet_since = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(LIMIT, tunnel.read_to_end(&mut rest)).await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?}");
    assert!(quiet_since.elapsed() >= Duration::from_millis(190));
}

#[tokio::test]
async fn a_dead_or_unknown_destination_is_502() {
    let dead = closed_port().await;
    let names = Names::new(&[("dead.test", &["127.0.0.1"])]);
    let proxy = serve(
        builder(&names)
            .allow("dead.test")
            .allow("nowhere.test")
            .allow("127.0.0.1")
            .allow_private(true)
            .build()
            .unwrap(),
    )
    .await;
    for target in [
        format!("dead.test:{}", dead.port()),
        format!("127.0.0.1:{}", dead.port()),
        "nowhere.test:443".to_owned(),
    ] {
        let (status, head, _) = connect(proxy, &target, None).await;
        assert_eq!(status, 502, "{target}: {head}");
        let (status, _, _) = raw(
            proxy,
            &format!("GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 502, "{target}");
    }
}

#[tokio::test]
async fn a_malformed_request_target_is_400() {
    let proxy = serve(Egress::builder().allow("api.kestra.test").build().unwrap()).await;
    for head in [
        "GET /origin-form HTTP/1.1\r\nHost: api.kestra.test\r\n\r\n",
        "GET https://api.kestra.test/ HTTP/1.1\r\nHost: api.kestra.test\r\n\r\n",
        "GET http://user:pw@api.kestra.test/ HTTP/1.1\r\nHost: api.kestra.test\r\n\r\n",
        "CONNECT api.kestra.test HTTP/1.1\r\nHost: api.kestra.test\r\n\r\n",
    ] {
        let (status, response, _) = raw(proxy, head).await;
        assert_eq!(status, 400, "{head}: {response}");
    }
}

#[tokio::test]
async fn tunnels_beyond_the_cap_get_503() {
    let destination = EchoServer::start().await;
    let proxy = serve(
        Egress::builder()
            .allow("127.0.0.1")
            .allow_private(true)
            .max_tunnels(1)
            .build()
            .unwrap(),
    )
    .await;
    let target = format!("127.0.0.1:{}", destination.addr.port());
    let (status, _, mut first) = connect(proxy, &target, None).await;
    assert_eq!(status, 200);
    let (status, head, _) = connect(proxy, &target, None).await;
    assert_eq!(status, 503, "{head}");
    first.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(LIMIT, first.read_to_end(&mut rest)).await;
    drop(first);
    // The slot is free once the first tunnel has ended on the proxy's side too.
    let mut freed = false;
    for _ in 0..200 {
        let (status, _, _) = connect(proxy, &target, None).await;
        if status == 200 {
            freed = true;
            break;
        }
        assert_eq!(status, 503);
        tokio::task::yield_now().await;
    }
    assert!(freed, "the slot was never freed");
}

#[tokio::test]
async fn the_credentials_file_is_read_again_when_it_changes() {
    let names = Names::default();
    let dir = temp_dir("reload");
    let file = users(&dir);
    let proxy = serve(builder(&names).credentials_file(&file).build().unwrap()).await;
    // Authenticated but not allowed: 403; not authenticated: 407.
    let (status, _, _) = connect(proxy, "api.kestra.test:443", Some(GOOD)).await;
    assert_eq!(status, 403);
    let (status, _, _) = connect(proxy, "api.kestra.test:443", Some(NEW_USER)).await;
    assert_eq!(status, 407);

    // Replaced atomically, as deploy tools and Kubernetes do.
    let tmp = dir.join("users.tmp");
    std::fs::write(&tmp, "ops:n3w-pass\n").unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    // The watcher's reload has nothing to await: poll (bounded) until the new user passes.
    let deadline = Instant::now() + LIMIT;
    loop {
        let (status, _, _) = connect(proxy, "api.kestra.test:443", Some(NEW_USER)).await;
        if status == 403 {
            break;
        }
        assert_eq!(status, 407);
        assert!(Instant::now() < deadline, "the new user was never accepted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _, _) = connect(proxy, "api.kestra.test:443", Some(GOOD)).await;
    assert_eq!(status, 407, "the old user still passes");

    // A broken file is refused and the last good users stay.
    std::fs::write(&tmp, "no colon here\n").unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let (status, _, _) = connect(proxy, "api.kestra.test:443", Some(NEW_USER)).await;
    assert_eq!(status, 403);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A TCP destination that reads a request head and answers `answer` (then stays silent,
/// connection open); counts connections.
async fn scripted_destination(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match stream.read(&mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                if stream.write_all(answer).await.is_err() {
                    return;
                }
                // Silent, but not closed: only the proxy's idle timeout can end this.
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_forwarded_request_whose_destination_is_silent_gets_504_after_the_idle_timeout() {
    let silent = scripted_destination(b"").await;
    let egress = Egress::builder()
        .allow("127.0.0.1")
        .allow_private(true)
        .idle_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let stats = egress.stats().clone();
    let proxy = serve(egress).await;
    let started = Instant::now();
    let target = format!("127.0.0.1:{}", silent.port());
    let (status, head, _) = raw(
        proxy,
        &format!("GET http://{target}/v1/blueprints HTTP/1.1\r\nHost: {target}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 504, "{head}");
    assert!(started.elapsed() >= Duration::from_millis(290));
    assert_eq!(
        stats
            .snapshot()
            .requests(kestra_edge::egress::Outcome::GatewayTimeout),
        1
    );
}

#[tokio::test]
async fn a_forwarded_response_body_that_stalls_is_cut_after_the_idle_timeout() {
    // Ten bytes announced, five sent, then nothing.
    let stalling =
        scripted_destination(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello").await;
    let proxy = serve(
        Egress::builder()
            .allow("127.0.0.1")
            .allow_private(true)
            .idle_timeout(Duration::from_millis(300))
            .build()
            .unwrap(),
    )
    .await;
    let client = reqwest::Client::builder()
        .proxy(reqwest::Proxy::http(format!("http://{proxy}")).unwrap())
        .build()
        .unwrap();
    let response = client
        .get(format!("http://127.0.0.1:{}/v1/plugins", stalling.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    let body = tokio::time::timeout(LIMIT, response.bytes())
        .await
        .expect("the stalled body ends within the limit");
    assert!(body.is_err(), "a cut body looked complete: {body:?}");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

const LOOPBACK: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// Scrapes `/metrics` of an admin listener.
async fn scrape(admin: SocketAddr) -> String {
    let response = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

fn outcome(text: &str, outcome: &str) -> Option<f64> {
    sample(
        text,
        &format!("kestra_edge_egress_requests_total{{outcome=\"{outcome}\"}}"),
    )
}

/// Scrapes until `series` has `value` (every 10 ms, for at most 5 s): a tunnel's end on the
/// proxy's side has nothing the test can await.
async fn scrape_until(admin: SocketAddr, series: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(admin).await;
        if sample(&text, series) == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never became {value}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_gateways_admin_listener_counts_egress_tunnels_and_every_outcome() {
    use kestra_edge_gateway::{EgressListener, Gateway, GatewayConfig};
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let destination = EchoServer::start().await;
    let dead = closed_port().await;
    let dir = temp_dir("metrics");
    let mut config = GatewayConfig::for_upstream(standin.url());
    config.telemetry.admin_listen = Some(LOOPBACK);
    config.egress.listen = Some(LOOPBACK);
    config.egress.allow = vec!["127.0.0.1".to_owned()];
    config.egress.allow_private = true;
    config.egress.max_tunnels = 1;
    config.egress.credentials_file = Some(users(&dir));
    // What the binary does: the forward proxy beside the reverse proxy, reported on the
    // gateway's admin listener.
    let egress = EgressListener::bind(&config).await.unwrap().unwrap();
    let gateway = Gateway::bind(config).await.unwrap();
    egress.report_to(gateway.metrics().expect("--admin-listen gives metrics"));
    assert_eq!(
        egress.admin_addr(),
        None,
        "beside the gateway: one admin listener"
    );
    let proxy = egress.local_addr().unwrap();
    let admin = gateway.admin_addr().unwrap();
    tokio::spawn(egress.serve(std::future::pending()));
    tokio::spawn(gateway.serve(std::future::pending()));

    let text = scrape(admin).await;
    assert_eq!(
        sample(&text, "kestra_edge_egress_tunnels_open"),
        Some(0.0),
        "{text}"
    );
    for name in [
        "tunnel",
        "forwarded",
        "auth_required",
        "forbidden",
        "private",
        "bad_request",
        "bad_gateway",
        "gateway_timeout",
        "too_many_tunnels",
    ] {
        assert_eq!(outcome(&text, name), Some(0.0), "{name}:\n{text}");
    }

    // A tunnel: open (bytes went through it), the cap answered, then closed.
    let echo = format!("127.0.0.1:{}", destination.addr.port());
    let (status, _, mut tunnel) = connect(proxy, &echo, Some(GOOD)).await;
    assert_eq!(status, 200);
    tunnel.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tunnel.read_exact(&mut echoed).await.unwrap();
    let text = scrape(admin).await;
    assert_eq!(
        sample(&text, "kestra_edge_egress_tunnels_open"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(outcome(&text, "tunnel"), Some(1.0));
    let (status, _, _) = connect(proxy, &echo, Some(GOOD)).await;
    assert_eq!(status, 503);
    drop(tunnel);
    scrape_until(admin, "kestra_edge_egress_tunnels_open", 0.0).await;

    // Absolute-form to the stand-in.
    let ping = format!("127.0.0.1:{}", standin.addr().port());
    let (status, head, _) = raw(
        proxy,
        &format!(
            "GET http://{ping}/kestra/ping HTTP/1.1\r\nHost: {ping}\r\nProxy-Authorization: {GOOD}\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    // 407, 403 (not allowed), 400, 502.
    let (status, _, _) = connect(proxy, &echo, None).await;
    assert_eq!(status, 407);
    let (status, _, _) = connect(proxy, &echo, Some(WRONG)).await;
    assert_eq!(status, 407);
    let (status, _, _) = connect(proxy, "evil.test:443", Some(GOOD)).await;
    assert_eq!(status, 403);
    let (status, _, _) = raw(
        proxy,
        &format!("GET /origin-form HTTP/1.1\r\nHost: x\r\nProxy-Authorization: {GOOD}\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = connect(proxy, &format!("127.0.0.1:{}", dead.port()), Some(GOOD)).await;
    assert_eq!(status, 502);

    let text = scrape(admin).await;
    for (name, count) in [
        ("tunnel", 1.0),
        ("too_many_tunnels", 1.0),
        ("forwarded", 1.0),
        ("auth_required", 2.0),
        ("forbidden", 1.0),
        ("bad_request", 1.0),
        ("bad_gateway", 1.0),
        ("private", 0.0),
        ("gateway_timeout", 0.0),
    ] {
        assert_eq!(outcome(&text, name), Some(count), "{name}:\n{text}");
    }
    // The reverse proxy's own series are unchanged by egress traffic.
    assert_eq!(sample(&text, "kestra_edge_tunnels_open"), Some(0.0));
    assert!(
        !text.contains("kestra_edge_http_requests_total{method=\"CONNECT\""),
        "{text}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn the_forward_proxy_alone_serves_its_own_admin_listener() {
    use kestra_edge_gateway::{EgressListener, GatewayConfig};
    let destination = EchoServer::start().await;
    let mut config = GatewayConfig::for_upstream("http://127.0.0.1:9");
    config.egress.alone = true;
    config.telemetry.admin_listen = Some(LOOPBACK);
    config.egress.listen = Some(LOOPBACK);
    config.egress.allow = vec!["127.0.0.1".to_owned()];
    let egress = EgressListener::bind(&config).await.unwrap().unwrap();
    let proxy = egress.local_addr().unwrap();
    let admin = egress
        .admin_addr()
        .expect("alone, --admin-listen is its own");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(egress.serve(async {
        let _ = stopped.await;
    }));

    // Loopback without --egress-allow-private: the SSRF guard's 403.
    let (status, _, _) = connect(
        proxy,
        &format!("127.0.0.1:{}", destination.addr.port()),
        None,
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(destination.accepted(), 0);
    let text = scrape(admin).await;
    assert_eq!(outcome(&text, "private"), Some(1.0), "{text}");
    assert_eq!(outcome(&text, "forbidden"), Some(0.0), "{text}");
    assert_eq!(sample(&text, "kestra_edge_egress_tunnels_open"), Some(0.0));
    assert!(
        !text.contains("kestra_edge_upstream_up"),
        "no upstream:\n{text}"
    );
    let ready = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "no upstream is not an unhealthy one");

    // Stopped: both listeners close.
    stop.send(()).unwrap();
    tokio::time::timeout(LIMIT, served)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(admin).await.is_err());
    assert!(TcpStream::connect(proxy).await.is_err());
}

/// The access log's output, read back by the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// Waits (every 5 ms, at most 5 s) for a line of `kind`.
    async fn line(&self, kind: &str) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let found = self
                .text()
                .lines()
                .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
                .find(|line| line["kind"] == kind);
            if let Some(line) = found {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} line:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[tokio::test]
async fn the_access_log_has_a_line_per_tunnel_when_it_ends_and_per_forwarded_request() {
    use kestra_edge_gateway::{EgressListener, GatewayConfig};
    use kestra_edge_telemetry::{AccessLog, AccessLogFormat};
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let destination = EchoServer::start().await;
    let dir = temp_dir("log");
    let mut config = GatewayConfig::for_upstream("http://127.0.0.1:9");
    config.egress.listen = Some(LOOPBACK);
    config.egress.allow = vec!["127.0.0.1".to_owned()];
    config.egress.allow_private = true;
    config.egress.credentials_file = Some(users(&dir));
    let captured = Captured::default();
    let log = AccessLog::to_writer(AccessLogFormat::Json, captured.clone(), 1 << 20);
    let egress = EgressListener::bind(&config)
        .await
        .unwrap()
        .unwrap()
        .with_access_log(Some(log));
    let proxy = egress.local_addr().unwrap();
    tokio::spawn(egress.serve(std::future::pending()));

    // A tunnel: its line comes when it ends, with its bytes each way.
    let echo = format!("127.0.0.1:{}", destination.addr.port());
    let (status, _, mut tunnel) = connect(proxy, &echo, Some(GOOD)).await;
    assert_eq!(status, 200);
    tunnel.write_all(b"ping-pong!").await.unwrap();
    let mut echoed = [0u8; 10];
    tunnel.read_exact(&mut echoed).await.unwrap();
    // A forwarded request meanwhile: once its line is out, a tunnel line would be too.
    let ping = format!("127.0.0.1:{}", standin.addr().port());
    let (status, head, _) = raw(
        proxy,
        &format!(
            "GET http://{ping}/kestra/ping?token=secret HTTP/1.1\r\nHost: {ping}\r\nProxy-Authorization: {GOOD}\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200, "{head}");
    let forward = captured.line("forward").await;
    assert_eq!(forward["method"], "GET");
    assert_eq!(forward["target"], format!("http://{ping}/kestra/ping"));
    assert_eq!(forward["status"], 200);
    assert_eq!(forward["upstream"], ping);
    assert!(
        !captured.text().contains("\"connect\""),
        "{}",
        captured.text()
    );

    drop(tunnel);
    let line = captured.line("connect").await;
    assert_eq!(line["method"], "CONNECT");
    assert_eq!(line["target"], echo);
    assert_eq!(line["status"], 200);
    assert_eq!(line["upstream"], echo);
    assert_eq!(line["client"], "127.0.0.1");
    assert_eq!(line["bytes_in"], 10);
    assert_eq!(line["bytes_out"], 10);
    assert_eq!(line["end"], "finished");
    // A refusal is a line too, and no credential ever is.
    let (status, _, _) = connect(proxy, &echo, Some(WRONG)).await;
    assert_eq!(status, 407);
    let text = captured.text();
    assert!(
        !text.contains("secret") && !text.contains("a2VzdHJh"),
        "{text}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}
