//! The access log end to end: a real gateway in front of the stand-in, real clients (HTTP,
//! SSE, WebSocket), the lines read back from the log's writer. One line per finished
//! request, stream or tunnel, written when it ends; the client and the request id as the
//! trusted-proxy rule allows; no secret in any line; the request id in the gateway's own
//! answers; a stalled output drops lines, never requests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use futures_util::{SinkExt, StreamExt};
use kestra_edge_gateway::GatewayConfig;
use kestra_edge_standin::{Echo, Standin, StandinConfig};
use kestra_edge_telemetry::{AccessLog, AccessLogFormat};
use kestra_edge_tests::{client, closed_port, RunningGateway};
use serde_json::Value;
use std::{
    io::Write,
    net::SocketAddr,
    sync::{Arc, Condvar, Mutex},
    time::Duration,
};

/// The log's output, read back by the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    fn lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Waits (every 5 ms, at most 5 s) for a line that `matches`.
    async fn line(&self, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| matches(l)) {
                return line;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("no such line in:\n{}", self.text());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// A gateway writing its access log to `log`.
async fn logged(config: GatewayConfig, log: AccessLog) -> RunningGateway {
    RunningGateway::start_with_log(config, Some(log)).await
}

async fn standin() -> Standin {
    Standin::start(StandinConfig::default()).await.unwrap()
}

fn config_for(standin: &Standin) -> GatewayConfig {
    let mut config = GatewayConfig::for_upstream(standin.url());
    config.prefix.context_path = Some("/kestra".to_owned());
    config
}

fn json_log(captured: &Captured) -> AccessLog {
    AccessLog::to_writer(AccessLogFormat::Json, captured.clone(), 1 << 20)
}

#[tokio::test]
async fn http_sse_and_websocket_lines_are_written_when_they_end() {
    let standin = standin().await;
    let captured = Captured::default();
    let gateway = logged(config_for(&standin), json_log(&captured)).await;
    let http = client();

    // A POST with a body, secrets in its headers and its query.
    let response = http
        .post(gateway.url("/kestra/api/v1/echo?access_token=secret-query"))
        .header("authorization", "Bearer secret-bearer")
        .header("cookie", "SESSION=secret-cookie")
        .header("proxy-authorization", "Basic secret-proxy")
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let echoed: Echo = response.json().await.unwrap();
    assert_eq!(echoed.body_length, 1000);
    let post = gateway_line(&captured, "POST").await;
    assert_eq!(post["target"], "/kestra/api/v1/echo");
    assert_eq!(post["kind"], "http");
    assert_eq!(post["status"], 200);
    assert_eq!(post["bytes_in"], 1000);
    assert!(post["bytes_out"].as_u64().unwrap() > 100, "{post}");
    assert_eq!(post["client"], "127.0.0.1");
    assert_eq!(post["upstream"], standin.url());
    assert_eq!(post["end"], "done");

    // An event stream: its line comes at its end, with its whole duration.
    let stream = http
        .get(gateway.url("/kestra/api/v1/executions/e1/follow?events=3&interval_ms=40"))
        .send()
        .await
        .unwrap();
    let body = stream.bytes().await.unwrap();
    assert!(body.ends_with(b"\n\n"));
    let sse = captured.line(|l| l["kind"] == "sse").await;
    assert_eq!(sse["status"], 200);
    assert_eq!(sse["bytes_out"], body.len() as u64);
    assert!(
        sse["duration_ms"].as_f64().unwrap() >= 4.0 * 40.0 - 1.0,
        "{sse}"
    );
    assert_eq!(sse["end"], "done");

    // A WebSocket: no line while the tunnel is open, one with its bytes once it closes.
    let ws_url = format!("ws://{}/kestra/api/v1/ws/echo", gateway.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    socket
        .send(tokio_tungstenite::tungstenite::Message::text(
            "hello tunnel",
        ))
        .await
        .unwrap();
    let echoed = socket.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "hello tunnel");
    // A request after the echo: once its line is out, any line of the tunnel would be too.
    let marker = http.get(gateway.url("/kestra/ping")).send().await.unwrap();
    assert_eq!(marker.status(), 200);
    captured.line(|l| l["target"] == "/kestra/ping").await;
    assert!(
        !captured.lines().iter().any(|l| l["kind"] == "websocket"),
        "a line before the tunnel ended:\n{}",
        captured.text()
    );
    socket.close(None).await.unwrap();
    while socket.next().await.is_some() {}
    // The tunnel ends when both directions have: the client's side closes with the socket.
    drop(socket);
    let ws = captured.line(|l| l["kind"] == "websocket").await;
    assert_eq!(ws["status"], 101);
    assert_eq!(ws["method"], "GET");
    assert_eq!(ws["target"], "/kestra/api/v1/ws/echo");
    // The masked frame "hello tunnel" (18 bytes) and a close frame went up; its echo down.
    assert!(ws["bytes_in"].as_u64().unwrap() >= 18, "{ws}");
    assert!(ws["bytes_out"].as_u64().unwrap() >= 14, "{ws}");
    assert_eq!(ws["end"], "finished");

    gateway.shutdown().await.unwrap();
    let text = captured.text();
    assert!(!text.contains("secret"), "a secret in the log:\n{text}");
    assert_eq!(text.lines().count(), 4, "{text}");
}

async fn gateway_line(captured: &Captured, method: &str) -> Value {
    captured.line(|l| l["method"] == method).await
}

#[tokio::test]
async fn client_and_request_id_are_taken_from_a_trusted_proxy_only() {
    let standin = standin().await;
    for trusted in [true, false] {
        let captured = Captured::default();
        let mut config = config_for(&standin);
        config.telemetry.request_id = true;
        if trusted {
            config.forwarded.trusted_proxies = vec!["127.0.0.1".to_owned()];
        }
        let gateway = logged(config, json_log(&captured)).await;
        let response = client()
            .get(gateway.url("/kestra/api/v1/echo"))
            .header("x-forwarded-for", "203.0.113.9")
            .header("x-request-id", "from-the-proxy")
            .send()
            .await
            .unwrap();
        let returned = response.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let echoed: Echo = response.json().await.unwrap();
        let sent = echoed
            .headers
            .iter()
            .find(|(name, _)| name == "x-request-id")
            .map(|(_, value)| value.clone())
            .unwrap();
        assert_eq!(sent, returned, "Kestra and the client see one id");
        let line = gateway_line(&captured, "GET").await;
        assert_eq!(line["request_id"], returned.as_str());
        if trusted {
            assert_eq!(returned, "from-the-proxy");
            assert_eq!(line["client"], "203.0.113.9");
        } else {
            assert_ne!(returned, "from-the-proxy");
            assert_eq!(returned.len(), 32, "{returned}");
            assert_eq!(line["client"], "127.0.0.1");
        }
        gateway.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn the_gateways_own_answers_carry_the_request_id() {
    let standin = standin().await;
    let captured = Captured::default();
    let mut config = config_for(&standin);
    config.telemetry.request_id = true;
    let gateway = logged(config, json_log(&captured)).await;
    // 404 outside the context path: no upstream asked.
    let response = client()
        .get(gateway.url("/elsewhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.text().await.unwrap();
    assert!(body.ends_with(&format!("request id: {id}\n")), "{body:?}");
    let line = captured.line(|l| l["target"] == "/elsewhere").await;
    assert_eq!(line["upstream"], Value::Null);
    assert_eq!(line["request_id"], id.as_str());
    assert_eq!(line["bytes_out"], body.len() as u64);
    gateway.shutdown().await.unwrap();

    // 502 from a dead upstream: the upstream that failed is named.
    let dead = format!("http://{}", closed_port().await);
    let captured = Captured::default();
    let mut config = GatewayConfig::for_upstream(dead.clone());
    config.telemetry.request_id = true;
    let gateway = logged(config, json_log(&captured)).await;
    let response = client()
        .get(gateway.url("/api/v1/flows"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body = response.text().await.unwrap();
    assert!(body.contains(&format!("request id: {id}")), "{body:?}");
    let line = captured.line(|l| l["status"] == 502).await;
    assert_eq!(line["upstream"], dead.as_str());
    gateway.shutdown().await.unwrap();
}

/// A writer that blocks until the test opens it.
struct Stalled(Arc<(Mutex<bool>, Condvar)>);

impl Write for Stalled {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (open, changed) = &*self.0;
        let mut open = open.lock().unwrap();
        while !*open {
            open = changed.wait(open).unwrap();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_stalled_output_drops_lines_not_requests() {
    let standin = standin().await;
    let gate = Arc::new((Mutex::new(false), Condvar::new()));
    let log = AccessLog::to_writer(AccessLogFormat::Text, Stalled(gate.clone()), 4096);
    let mut config = config_for(&standin);
    config.telemetry.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    let gateway = logged(config, log).await;
    let http = client();
    for _ in 0..200 {
        let response = http.get(gateway.url("/kestra/ping")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let dropped = gateway.access_log.as_ref().unwrap().dropped();
    assert!(dropped >= 100, "dropped {dropped}");
    // The operator sees it on the admin listener.
    let metrics = client()
        .get(format!("http://{}/metrics", gateway.admin.unwrap()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let scraped: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("kestra_edge_access_log_dropped_total "))
        .unwrap_or_else(|| panic!("no dropped-lines counter:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(scraped >= dropped, "{scraped} < {dropped}");
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    gateway.shutdown().await.unwrap();
}
