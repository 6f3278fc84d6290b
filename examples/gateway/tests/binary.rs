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
