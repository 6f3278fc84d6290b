//! The `kestra-edge` binary's egress forward proxy as users run it: a real process, real
//! sockets, `--egress-*` flags, alone and beside the reverse proxy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::{net::SocketAddr, path::PathBuf, process::Stdio, time::Duration};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
    sync::mpsc,
};

const LIMIT: Duration = Duration::from_secs(10);
/// `kestra:s3cret` in base64.
const GOOD: &str = "Basic a2VzdHJhOnMzY3JldA==";

struct Running {
    child: Child,
    egress: SocketAddr,
    /// The reverse proxy's address, when it runs.
    gateway: Option<SocketAddr>,
    stderr: mpsc::UnboundedReceiver<String>,
}

/// The value of `field=` on a log line.
fn field(line: &str, name: &str) -> Option<SocketAddr> {
    let rest = line.split(&format!("{name}=")).nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// Starts the binary and reads its log until the egress proxy (and, unless `alone`, the
/// reverse proxy) is ready.
async fn spawn(args: &[&str], alone: bool) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_kestra-edge"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (tx, mut stderr) = mpsc::unbounded_channel();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (egress, gateway) = tokio::time::timeout(LIMIT, async {
        let (mut egress, mut gateway) = (None, None);
        while let Some(line) = stderr.recv().await {
            if line.contains("egress forward proxy ready") {
                assert!(!line.contains("s3cret"), "{line}");
                egress = field(&line, "listen");
            }
            if line.contains("kestra-edge ready") {
                gateway = field(&line, "listen");
            }
            if let Some(egress) = egress {
                if alone || gateway.is_some() {
                    return (egress, gateway);
                }
            }
        }
        panic!("kestra-edge exited before it was ready");
    })
    .await
    .expect("kestra-edge ready in time");
    Running {
        child,
        egress,
        gateway,
        stderr,
    }
}

async fn connect(proxy: SocketAddr, target: &str, auth: Option<&str>) -> (u16, TcpStream) {
    let auth = auth.map_or(String::new(), |a| format!("Proxy-Authorization: {a}\r\n"));
    request(
        proxy,
        &format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{auth}\r\n"),
    )
    .await
}

async fn request(proxy: SocketAddr, head: &str) -> (u16, TcpStream) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(LIMIT, stream.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "closed before a response head");
        got.push(byte[0]);
    }
    let status = std::str::from_utf8(&got[9..12]).unwrap().parse().unwrap();
    (status, stream)
}

/// A TCP destination that echoes.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

fn sigterm(child: &Child) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

fn users_file(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kestra-edge-egress-bin-{name}-{}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("users");
    std::fs::write(&file, "kestra:s3cret\n").unwrap();
    file
}

#[tokio::test]
async fn egress_listen_without_upstream_runs_the_forward_proxy_alone() {
    let destination = echo_server().await;
    let users = users_file("alone");
    let mut running = spawn(
        &[
            "--egress-listen",
            "127.0.0.1:0",
            "--egress-credentials-file",
            users.to_str().unwrap(),
            "--egress-allow",
            "127.0.0.1",
            "--egress-allow-private",
        ],
        true,
    )
    .await;
    assert_eq!(running.gateway, None);
    let target = destination.to_string();
    let (status, _) = connect(running.egress, &target, None).await;
    assert_eq!(status, 407);
    let (status, mut tunnel) = connect(running.egress, &target, Some(GOOD)).await;
    assert_eq!(status, 200);
    tunnel.write_all(b"through the binary").await.unwrap();
    let mut echoed = [0u8; 18];
    tunnel.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"through the binary");
    drop(tunnel);

    sigterm(&running.child);
    let code = tokio::time::timeout(LIMIT, running.child.wait())
        .await
        .expect("exits in time")
        .unwrap()
        .code();
    assert_eq!(code, Some(0));
    let mut log = Vec::new();
    // Everything the process wrote: the reader ends at its EOF.
    while let Some(line) = tokio::time::timeout(LIMIT, running.stderr.recv())
        .await
        .expect("stderr closes after exit")
    {
        log.push(line);
    }
    assert!(
        log.iter().all(|line| !line.contains("s3cret")),
        "a password was logged"
    );
    assert!(
        log.iter()
            .any(|line| line.contains("serving the egress forward proxy alone")),
        "{log:?}"
    );
    assert!(
        log.iter().all(|line| !line.contains("kestra-edge ready")),
        "the reverse proxy started: {log:?}"
    );
    std::fs::remove_dir_all(users.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn egress_runs_beside_the_reverse_proxy_and_guards_private_addresses() {
    // --demo names the upstream: both listeners run in one process.
    let open = spawn(
        &[
            "--demo",
            "--listen",
            "127.0.0.1:0",
            "--egress-listen",
            "127.0.0.1:0",
            "--egress-allow",
            "127.0.0.1",
            "--egress-allow-private",
            "--tunnel-idle-timeout",
            "5s",
        ],
        false,
    )
    .await;
    let gateway = open.gateway.unwrap();
    let (status, mut stream) = request(
        open.egress,
        &format!("GET http://{gateway}/kestra/ping HTTP/1.1\r\nHost: {gateway}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(
        status, 200,
        "absolute-form GET through the egress proxy to the gateway"
    );
    let mut body = Vec::new();
    let _ = tokio::time::timeout(LIMIT, stream.read_to_end(&mut body)).await;

    // Without --egress-allow-private the same loopback destination is refused.
    let guarded = spawn(
        &[
            "--demo",
            "--listen",
            "127.0.0.1:0",
            "--egress-listen",
            "127.0.0.1:0",
            "--egress-allow",
            "127.0.0.1",
        ],
        false,
    )
    .await;
    let gateway = guarded.gateway.unwrap();
    let (status, _) = connect(guarded.egress, &gateway.to_string(), None).await;
    assert_eq!(status, 403);
    let (status, _) = connect(guarded.egress, "api.kestra.io:443", None).await;
    assert_eq!(status, 403, "not in the allow-list");
}

#[tokio::test]
async fn a_bad_egress_setting_exits_2() {
    for args in [
        &["--egress-listen", "127.0.0.1:0", "--egress-allow", "a b"][..],
        &[
            "--egress-listen",
            "127.0.0.1:0",
            "--egress-credentials-file",
            "/nonexistent/kestra-edge/users",
        ][..],
        &[
            "--egress-listen",
            "127.0.0.1:0",
            "--egress-max-tunnels",
            "0",
        ][..],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_kestra-edge"))
            .args(args)
            .output()
            .await
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
    }
}
