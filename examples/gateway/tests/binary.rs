//! The `kestra-edge` binary as users run it: a real process, real signals, real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use futures_util::{SinkExt, StreamExt};
use kestra_edge_standin::{Standin, StandinConfig};
use std::{net::SocketAddr, process::Stdio, time::Duration};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    sync::mpsc,
};

const LIMIT: Duration = Duration::from_secs(10);

struct Running {
    child: Child,
    addr: SocketAddr,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: mpsc::UnboundedReceiver<String>,
}

fn lines(reader: impl AsyncRead + Unpin + Send + 'static) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Starts the binary and waits for its `kestra-edge ready listen=…` log line.
async fn spawn(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut command = Command::new(env!("CARGO_BIN_EXE_kestra-edge"));
    command
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let stdout = lines(child.stdout.take().unwrap());
    let mut stderr = lines(child.stderr.take().unwrap());
    let addr = tokio::time::timeout(LIMIT, async {
        while let Some(line) = stderr.recv().await {
            if let Some(rest) = line.split("kestra-edge ready listen=").nth(1) {
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
        panic!("kestra-edge exited before it was ready");
    })
    .await
    .expect("kestra-edge ready in time");
    Running {
        child,
        addr,
        stdout,
        stderr,
    }
}

fn sigterm(child: &Child) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn exit_code(child: &mut Child) -> Option<i32> {
    tokio::time::timeout(LIMIT, child.wait())
        .await
        .expect("exits in time")
        .unwrap()
        .code()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn demo_fronts_the_standin_and_streams_events() {
    let mut running = spawn(&["--demo", "--listen", "127.0.0.1:0"], &[]).await;
    let base = format!("http://{}", running.addr);

    let ping = client()
        .get(format!("{base}/kestra/ping"))
        .send()
        .await
        .unwrap();
    assert_eq!(ping.status(), 200);
    assert_eq!(ping.text().await.unwrap(), "pong");

    let follow = client()
        .get(format!(
            "{base}/kestra/api/v1/main/executions/demo-1/follow?events=2&interval_ms=50"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(follow.status(), 200);
    let text = follow.text().await.unwrap();
    let ids: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    assert_eq!(ids, ["start", "progress", "progress", "end"]);

    // The banner names the gateway's URL and a follow stream to try.
    let mut banner = String::new();
    while let Ok(line) = running.stdout.try_recv() {
        banner.push_str(&line);
        banner.push('\n');
    }
    assert!(banner.contains(&format!("curl -N {base}/kestra/api/v1/main/executions/")));

    sigterm(&running.child);
    assert_eq!(exit_code(&mut running.child).await, Some(0));
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let upstream = standin.url();
    let mut running = spawn(
        &["--listen", "127.0.0.1:0", "--shutdown-grace", "5s"],
        &[("KESTRA_EDGE_UPSTREAM", upstream.as_str())],
    )
    .await;
    let base = format!("http://{}", running.addr);

    let slow = tokio::spawn(
        client()
            .get(format!("{base}/kestra/api/v1/slow?head_ms=700"))
            .send(),
    );
    // Once the request has reached the stand-in, it is in flight.
    tokio::time::timeout(LIMIT, async {
        while standin.stats().accepted_connections() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    sigterm(&running.child);

    // New connections are refused at once (the listener is closed).
    let refused = tokio::time::timeout(LIMIT, async {
        loop {
            if tokio::net::TcpStream::connect(running.addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(refused.is_ok(), "still accepting after SIGTERM");

    let response = slow.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "first\nlast\n");
    assert_eq!(exit_code(&mut running.child).await, Some(0));
}

#[tokio::test]
async fn streams_still_open_at_the_grace_deadline_are_closed() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let mut running = spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &standin.url(),
            "--shutdown-grace",
            "300ms",
        ],
        &[],
    )
    .await;
    // A follow stream that never ends by itself.
    let response = client()
        .get(format!(
            "http://{}/kestra/api/v1/main/executions/e/follow?events=0&interval_ms=50",
            running.addr
        ))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    assert!(body.next().await.unwrap().is_ok());
    assert_eq!(standin.stats().open_streams(), 1);

    let started = std::time::Instant::now();
    sigterm(&running.child);
    assert_eq!(exit_code(&mut running.child).await, Some(0));
    assert!(started.elapsed() < Duration::from_secs(5));
    // The client's stream ends with the process, and the upstream stream is released.
    while let Some(Ok(_)) = body.next().await {}
    let released = tokio::time::timeout(LIMIT, async {
        while standin.stats().open_streams() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(released.is_ok());
    drop(running.stderr);
}

#[tokio::test]
async fn flags_beat_environment_which_beats_the_config_file() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let dir = std::env::temp_dir().join(format!("kestra-edge-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("kestra-edge.toml");
    // The file points at a dead upstream and a fixed port; env and flags must override.
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:1\"\nupstream = \"http://127.0.0.1:9\"\nread_timeout = \"2m\"\nhost_header = \"upstream\"\n",
    )
    .unwrap();
    let upstream = standin.url();
    let mut running = spawn(
        &[
            "--config",
            file.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
        &[
            ("KESTRA_EDGE_UPSTREAM", upstream.as_str()),
            ("KESTRA_EDGE_LISTEN", "127.0.0.1:2"),
        ],
    )
    .await;
    assert_ne!(running.addr.port(), 1);
    assert_ne!(running.addr.port(), 2);
    let echo: serde_json::Value = client()
        .get(format!("http://{}/kestra/api/v1/echo/x", running.addr))
        .header("host", "kestra.example")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // host_header = "upstream" came from the file: the upstream sees its own authority.
    let host = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "host")
        .unwrap()[1]
        .clone();
    assert_eq!(host, standin.addr().to_string());
    sigterm(&running.child);
    assert_eq!(exit_code(&mut running.child).await, Some(0));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn invalid_configuration_exits_with_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_kestra-edge"))
        .args(["--upstream", "https://kestra.internal:8443/api"])
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("must be http://host[:port]"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_kestra-edge"))
        .args(["--read-timeout", "soon"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[tokio::test]
async fn tunnels_still_open_at_the_grace_deadline_are_closed() {
    use tokio_tungstenite::tungstenite::Message;
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let mut running = spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &standin.url(),
            "--shutdown-grace",
            "300ms",
        ],
        &[],
    )
    .await;
    let url = format!("ws://{}/kestra/api/v1/ws/echo", running.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket.send(Message::text("before")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("before")
    );

    let started = std::time::Instant::now();
    sigterm(&running.child);
    // The tunnel lives through the grace period, then the process closes it and exits 0.
    socket.send(Message::text("during grace")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("during grace")
    );
    assert_eq!(exit_code(&mut running.child).await, Some(0));
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(5));
    let after = tokio::time::timeout(LIMIT, socket.next()).await.unwrap();
    assert!(
        !matches!(after, Some(Ok(Message::Text(_)))),
        "the tunnel outlived the process: {after:?}"
    );
    let released = tokio::time::timeout(LIMIT, async {
        while standin.stats().open_websockets() != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(released.is_ok(), "the upstream WebSocket was not released");
}

/// A rustls client that trusts exactly the certificate whose SHA-256 is `fingerprint` (the
/// one `--tls-self-signed` prints), as a user pinning it would.
mod pinned {
    use rustls::{
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        pki_types::{CertificateDer, ServerName, UnixTime},
        DigitallySignedStruct, SignatureScheme,
    };
    use sha2::{Digest, Sha256};
    use std::sync::Arc;

    #[derive(Debug)]
    pub(super) struct Pinned {
        fingerprint: String,
        provider: Arc<rustls::crypto::CryptoProvider>,
    }

    pub(super) fn client(fingerprint: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(Pinned {
            fingerprint: fingerprint.to_owned(),
            provider: provider.clone(),
        });
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    impl ServerCertVerifier for Pinned {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _intermediates: &[CertificateDer<'_>],
            _server_name: &ServerName<'_>,
            _ocsp: &[u8],
            _now: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            let digest = Sha256::digest(end_entity.as_ref());
            let text: Vec<String> = digest.iter().map(|b| format!("{b:02X}")).collect();
            if text.join(":") == self.fingerprint {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::General("fingerprint mismatch".into()))
            }
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &self.provider.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.provider
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}

/// Opens a TLS connection and returns the leaf certificate's DER and an HTTP/2 sender.
async fn h2_over_tls(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> (
    Vec<u8>,
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    (leaf, send)
}

fn get(path: &str) -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::get(format!("https://localhost{path}"))
        .body(http_body_util::Empty::new())
        .unwrap()
}

#[tokio::test]
async fn demo_with_a_self_signed_certificate_serves_https_and_http2() {
    use http_body_util::BodyExt;
    let mut running = spawn(
        &["--demo", "--tls-self-signed", "--listen", "127.0.0.1:0"],
        &[],
    )
    .await;
    let banner = tokio::time::timeout(LIMIT, async {
        let mut banner = String::new();
        while let Some(line) = running.stdout.recv().await {
            banner.push_str(&line);
            banner.push('\n');
            if line.contains("Ctrl-C") {
                break;
            }
        }
        banner
    })
    .await
    .unwrap();
    let fingerprint = banner
        .lines()
        .find_map(|l| l.split("SHA-256 ").nth(1))
        .expect("the banner shows the fingerprint")
        .trim()
        .to_owned();
    assert_eq!(fingerprint.len(), 95, "{fingerprint}");
    let port = running.addr.port();
    assert!(
        banner.contains(&format!(
            "curl -k --http2 -N https://localhost:{port}/kestra/api/v1/"
        )),
        "{banner}"
    );

    // A client pinning the printed fingerprint gets HTTP/2 and the demo's stream.
    let (_, mut send) = h2_over_tls(running.addr, pinned::client(&fingerprint, &[b"h2"])).await;
    let response = send.send_request(get("/kestra/ping")).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"pong");
    let follow = "/kestra/api/v1/main/executions/demo-1/follow?events=2&interval_ms=50";
    let response = send.send_request(get(follow)).await.unwrap();
    let text = response.into_body().collect().await.unwrap().to_bytes();
    let ids: Vec<&str> = std::str::from_utf8(&text)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .collect();
    assert_eq!(ids, ["start", "progress", "progress", "end"]);

    // A wrong pin is refused: the check can fail.
    let wrong = fingerprint.replace(
        &fingerprint[..2],
        if &fingerprint[..2] == "00" {
            "01"
        } else {
            "00"
        },
    );
    let tcp = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    let refused = tokio_rustls::TlsConnector::from(pinned::client(&wrong, &[b"h2"]))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await;
    assert!(refused.is_err());

    sigterm(&running.child);
    assert_eq!(exit_code(&mut running.child).await, Some(0));
}

/// A private CA and `n` localhost certificates it signed: (CA DER, [(cert PEM, key PEM, DER)]).
fn pki(
    n: usize,
) -> (
    rustls::pki_types::CertificateDer<'static>,
    Vec<(String, String, Vec<u8>)>,
) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let leaves = (0..n)
        .map(|_| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            (cert.pem(), key.serialize_pem(), cert.der().to_vec())
        })
        .collect();
    (ca.der().clone(), leaves)
}

fn trusting(
    ca: &rustls::pki_types::CertificateDer<'static>,
) -> std::sync::Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    std::sync::Arc::new(config)
}

fn sighup(child: &Child) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_certificate_and_open_streams_run_to_their_end() {
    use http_body_util::BodyExt;
    let (ca, leaves) = pki(2);
    // The files the gateway is given are symlinks into a directory it does not watch, so
    // only SIGHUP can make it see a change there.
    let base = std::env::temp_dir().join(format!("kestra-edge-sighup-{}", std::process::id()));
    let (given, real) = (base.join("given"), base.join("real"));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&given).unwrap();
    std::fs::create_dir_all(&real).unwrap();
    std::fs::write(real.join("cert.pem"), &leaves[0].0).unwrap();
    std::fs::write(real.join("key.pem"), &leaves[0].1).unwrap();
    std::os::unix::fs::symlink(real.join("cert.pem"), given.join("tls.crt")).unwrap();
    std::os::unix::fs::symlink(real.join("key.pem"), given.join("tls.key")).unwrap();
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let (cert, key) = (given.join("tls.crt"), given.join("tls.key"));
    // Certificate and key through the environment, the rest as flags.
    let mut running = spawn(
        &[
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &standin.url(),
            "--workers",
            "1",
        ],
        &[
            ("KESTRA_EDGE_TLS_CERT", cert.to_str().unwrap()),
            ("KESTRA_EDGE_TLS_KEY", key.to_str().unwrap()),
        ],
    )
    .await;
    let client = trusting(&ca);
    let (leaf, mut send) = h2_over_tls(running.addr, client.clone()).await;
    assert_eq!(leaf, leaves[0].2);
    let follow = "/kestra/api/v1/main/executions/e/follow?events=8&interval_ms=150";
    let mut stream = send.send_request(get(follow)).await.unwrap().into_body();
    assert!(stream.frame().await.unwrap().is_ok());

    std::fs::write(real.join("key.pem"), &leaves[1].1).unwrap();
    std::fs::write(real.join("cert.pem"), &leaves[1].0).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        h2_over_tls(running.addr, client.clone()).await.0,
        leaves[0].2
    );
    sighup(&running.child);
    let deadline = tokio::time::Instant::now() + LIMIT;
    while h2_over_tls(running.addr, client.clone()).await.0 != leaves[1].2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reloaded = tokio::time::timeout(LIMIT, async {
        while let Some(line) = running.stderr.recv().await {
            if line.contains("TLS certificate reloaded") && line.contains("SIGHUP") {
                return;
            }
        }
    })
    .await;
    assert!(reloaded.is_ok(), "no reload log line naming SIGHUP");

    // A broken key on the next SIGHUP is refused with an error line; the pair stays.
    std::fs::write(
        real.join("key.pem"),
        "-----BEGIN PRIVATE KEY-----\ngarbage\n",
    )
    .unwrap();
    sighup(&running.child);
    let refused = tokio::time::timeout(LIMIT, async {
        while let Some(line) = running.stderr.recv().await {
            if line.contains("refused the new TLS certificate") {
                return line;
            }
        }
        String::new()
    })
    .await
    .unwrap();
    assert!(
        refused.contains("key.pem") || refused.contains("tls.key"),
        "{refused}"
    );
    assert_eq!(
        h2_over_tls(running.addr, client.clone()).await.0,
        leaves[1].2
    );

    // The stream opened before both reloads reaches its end.
    let rest = tokio::time::timeout(LIMIT, stream.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&rest).contains("id: end"));

    sigterm(&running.child);
    assert_eq!(exit_code(&mut running.child).await, Some(0));
    std::fs::remove_dir_all(base).unwrap();
}

#[tokio::test]
async fn a_broken_certificate_at_start_up_exits_non_zero_naming_the_file() {
    let (_, leaves) = pki(2);
    let dir = std::env::temp_dir().join(format!("kestra-edge-badstart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("good.crt"), &leaves[0].0).unwrap();
    std::fs::write(dir.join("mismatched.key"), &leaves[1].1).unwrap();
    let cert = dir.join("good.crt");
    let key = dir.join("mismatched.key");
    let mut command = Command::new(env!("CARGO_BIN_EXE_kestra-edge"));
    command
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(LIMIT, command.output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("mismatched.key"), "{stderr}");
    std::fs::remove_dir_all(dir).unwrap();
}

/// A minimal auth service: allows the cookie `session=good` (200 with
/// `X-Auth-Request-User: alice`), else 401; one request per connection.
async fn auth_standin() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let answer: &[u8] = if head.contains("session=good") {
                    b"HTTP/1.1 200 OK\r\nX-Auth-Request-User: alice\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                } else {
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer\r\nContent-Length: 3\r\nConnection: close\r\n\r\nno\n"
                };
                let _ = stream.write_all(answer).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn forward_auth_flags_protect_kestra_and_inject_its_credentials() {
    let auth = auth_standin().await;
    let dir = std::env::temp_dir().join(format!("kestra-edge-bin-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let credentials = dir.join("kestra-credentials");
    std::fs::write(&credentials, "admin@kestra.io:Kestra123\n").unwrap();
    let auth_url = format!("http://{auth}/oauth2/auth");
    let mut running = spawn(
        &[
            "--demo",
            "--listen",
            "127.0.0.1:0",
            "--forward-auth",
            &auth_url,
            "--auth-response-header",
            "X-Auth-Request-User",
        ],
        &[
            ("KESTRA_EDGE_FORWARD_AUTH_TIMEOUT", "2s"),
            (
                "KESTRA_EDGE_KESTRA_CREDENTIALS_FILE",
                credentials.to_str().unwrap(),
            ),
        ],
    )
    .await;
    let base = format!("http://{}", running.addr);

    let allowed = client()
        .get(format!("{base}/kestra/api/v1/echo/sso"))
        .header("cookie", "session=good")
        .header("x-auth-request-user", "mallory")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    assert_eq!(
        allowed.headers()["set-cookie"],
        "kestraBasicAuthenticated=true; Path=/; SameSite=Strict"
    );
    let echo: serde_json::Value = allowed.json().await.unwrap();
    let headers: Vec<(String, String)> = serde_json::from_value(echo["headers"].clone()).unwrap();
    let value = |name: &str| -> Vec<String> {
        headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    };
    // base64("admin@kestra.io:Kestra123")
    let token = "YWRtaW5Aa2VzdHJhLmlvOktlc3RyYTEyMw==";
    assert_eq!(value("authorization"), [format!("Basic {token}")]);
    assert_eq!(
        value("cookie"),
        [format!("session=good; BASIC_AUTH={token}")]
    );
    assert_eq!(value("x-auth-request-user"), ["alice"]);

    let denied = client()
        .get(format!("{base}/kestra/api/v1/echo/sso"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);
    assert_eq!(denied.headers()["www-authenticate"], "Bearer");

    // Kestra's machine endpoints are bypassed by default, under the context path.
    let ping = client()
        .get(format!("{base}/kestra/ping"))
        .send()
        .await
        .unwrap();
    assert_eq!(ping.status(), 200);

    // SIGHUP reads the credentials file again (as its watch does on a change).
    sighup(&running.child);
    let reloaded = tokio::time::timeout(LIMIT, async {
        while let Some(line) = running.stderr.recv().await {
            if line.contains("Kestra credentials reloaded") && line.contains("SIGHUP") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(reloaded, "no reload logged after SIGHUP");

    sigterm(&running.child);
    assert_eq!(exit_code(&mut running.child).await, Some(0));
    std::fs::remove_dir_all(dir).unwrap();
}

/// Waits for the `admin listener` log line and returns its address.
async fn admin_addr(running: &mut Running) -> SocketAddr {
    tokio::time::timeout(LIMIT, async {
        while let Some(line) = running.stderr.recv().await {
            if line.contains("admin listener") {
                let rest = line.split("listen=").nth(1).unwrap();
                return rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        }
        panic!("kestra-edge exited before it logged its admin listener");
    })
    .await
    .expect("the admin listener is logged")
}

#[tokio::test]
async fn admin_listen_serves_metrics_and_readyz_turns_503_on_sigterm() {
    let mut running = spawn(
        &[
            "--demo",
            "--listen",
            "127.0.0.1:0",
            "--shutdown-grace",
            "5s",
        ],
        &[("KESTRA_EDGE_ADMIN_LISTEN", "127.0.0.1:0")],
    )
    .await;
    let admin = admin_addr(&mut running).await;
    let base = format!("http://{}", running.addr);
    let ping = client().get(format!("{base}/kestra/ping")).send().await;
    assert_eq!(ping.unwrap().status(), 200);
    let metrics = client()
        .get(format!("http://{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        metrics.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("kestra_edge_http_requests_total{method=\"GET\",status=\"200\"} 1"),
        "{text}"
    );
    let readyz = || async {
        let response = client()
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    assert_eq!(readyz().await, (200, "ready\n".to_owned()));

    // A stream keeps the drain going; /readyz says so from the signal on.
    let response = client()
        .get(format!(
            "{base}/kestra/api/v1/main/executions/e/follow?events=0&interval_ms=50"
        ))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    assert!(body.next().await.unwrap().is_ok());
    sigterm(&running.child);
    let drained = tokio::time::timeout(LIMIT, async {
        loop {
            if readyz().await == (503, "draining\n".to_owned()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(drained.is_ok(), "/readyz did not turn 503 after SIGTERM");
    drop(body);
    assert_eq!(exit_code(&mut running.child).await, Some(0));
}
