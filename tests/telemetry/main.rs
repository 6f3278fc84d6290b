//! The admin listener end to end: `/metrics` scraped over a real socket while real clients
//! use the gateway in front of the stand-in (requests, an SSE stream opening and closing, a
//! WebSocket tunnel, a limit rejection, a replica's health flipping through the stand-in's
//! management port), and `/readyz` flipping on drain and when no upstream is healthy.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use futures_util::{SinkExt, StreamExt};
use kestra_edge_gateway::{Gateway, GatewayConfig};
use kestra_edge_standin::{Standin, StandinConfig};
use kestra_edge_tests::{client, closed_port, raw_exchange, raw_status};
use std::{net::SocketAddr, time::Duration};
use tokio::{sync::oneshot, task::JoinHandle};

const LOOPBACK: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// A gateway with `--admin-listen` on a free port, serving in the background.
struct Admined {
    addr: SocketAddr,
    admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Admined {
    async fn start(mut config: GatewayConfig) -> Self {
        config.telemetry.admin_listen = Some(LOOPBACK);
        let gateway = Gateway::bind(config).await.unwrap();
        let addr = gateway.local_addr().unwrap();
        let admin = gateway.admin_addr().expect("the admin listener is bound");
        assert_ne!(admin, addr);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.serve(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            admin,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    async fn admin_get(&self, path: &str) -> (u16, String) {
        let response = client()
            .get(format!("http://{}{path}", self.admin))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    async fn metrics(&self) -> String {
        let (status, text) = self.admin_get("/metrics").await;
        assert_eq!(status, 200);
        text
    }

    /// The value of the sample `series` (name and labels exactly as rendered).
    async fn sample(&self, series: &str) -> Option<f64> {
        sample(&self.metrics().await, series)
    }

    /// Scrapes until `series` has `value` (every 10 ms, for at most 5 s).
    async fn until(&self, series: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let text = self.metrics().await;
            if sample(&text, series) == Some(value) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{series} never became {value}:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Asks `/readyz` until it answers `status` (every 10 ms, for at most 5 s).
    async fn ready_until(&self, status: u16) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (got, body) = self.admin_get("/readyz").await;
            if got == status {
                return body;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("/readyz stayed {got} ({body}), expected {status}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// The stand-in with a management port, and a gateway that probes it every 30 ms.
async fn checked_stack() -> (Standin, Admined) {
    let standin = Standin::start(StandinConfig {
        management: Some(LOOPBACK),
        ..StandinConfig::default()
    })
    .await
    .unwrap();
    let mut config = GatewayConfig::for_upstream(standin.url());
    config.prefix.context_path = Some("/kestra".to_owned());
    config.balance.health_path = Some("/health/readiness".to_owned());
    config.balance.health_port = Some(standin.management_addr().unwrap().port());
    config.balance.health_interval = Duration::from_millis(30);
    config.balance.health_timeout = Duration::from_millis(300);
    config.upstream.max_uri = 1024;
    let gateway = Admined::start(config).await;
    (standin, gateway)
}

#[tokio::test]
async fn every_metric_moves() {
    let (standin, gateway) = checked_stack().await;
    let replica = format!("kestra_edge_upstream_up{{upstream=\"{}\"}}", standin.addr());
    assert_eq!(gateway.sample(&replica).await, Some(1.0));
    assert_eq!(
        gateway.admin_get("/readyz").await,
        (200, "ready\n".to_owned())
    );
    assert_eq!(gateway.admin_get("/livez").await, (200, "ok\n".to_owned()));

    // Plain requests: counted by method and status, timed, and as upstream answers.
    let http = client();
    for _ in 0..3 {
        let response = http.get(gateway.url("/kestra/ping")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let response = http
        .post(gateway.url("/kestra/api/v1/echo/x"))
        .body("a body")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = gateway.metrics().await;
    assert_eq!(
        sample(
            &text,
            "kestra_edge_http_requests_total{method=\"GET\",status=\"200\"}"
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &text,
            "kestra_edge_http_requests_total{method=\"POST\",status=\"200\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "kestra_edge_http_request_duration_seconds_count{method=\"GET\"}"
        ),
        Some(3.0)
    );
    assert!(
        text.contains(
            "kestra_edge_http_request_duration_seconds_bucket{method=\"GET\",le=\"+Inf\"} 3"
        ),
        "{text}"
    );
    // Counted on the replica that answered (the balancer knows which).
    let upstream = standin.addr();
    let answers = format!(
        "kestra_edge_upstream_requests_total{{upstream=\"{upstream}\",outcome=\"response\"}}"
    );
    assert_eq!(sample(&text, &answers), Some(4.0));
    for process in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_cpu_seconds_total",
    ] {
        assert!(
            sample(&text, process).is_some_and(|v| v > 0.0),
            "{process}:\n{text}"
        );
    }

    // A limit rejection: a request target over --max-uri.
    let long = format!("/kestra/ping?{}", "a".repeat(2048));
    let response = http.get(gateway.url(&long)).send().await.unwrap();
    assert_eq!(response.status(), 414);
    let text = gateway.metrics().await;
    assert_eq!(
        sample(
            &text,
            "kestra_edge_limit_rejections_total{reason=\"uri_too_long\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            "kestra_edge_http_requests_total{method=\"GET\",status=\"414\"}"
        ),
        Some(1.0)
    );
    // The proxy refused it before sending, but the balancer cannot tell that answer from
    // the replica's: it counts as a response of the replica it was routed to.
    assert_eq!(sample(&text, &answers), Some(5.0));

    // A head over --max-header-bytes: hyper answers 431 in the accept loop, where no layer
    // sees it; the server's count does.
    let huge = format!(
        "GET /kestra/ping HTTP/1.1\r\nHost: k\r\nX-Big: {}\r\n\r\n",
        "b".repeat(70 << 10)
    );
    let answer = raw_exchange(gateway.addr, huge.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(raw_status(&answer), 431);
    // Counted when the connection's task ends, just after the client saw it close.
    gateway
        .until(
            "kestra_edge_limit_rejections_total{reason=\"head_too_large\"}",
            1.0,
        )
        .await;

    // An SSE stream: open from its head until its body ends.
    let mut stream = http
        .get(gateway.url("/kestra/api/v1/main/executions/e1/follow?events=0&interval_ms=20"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let first = stream.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    let text = gateway.metrics().await;
    assert_eq!(sample(&text, "kestra_edge_sse_streams_open"), Some(1.0));
    assert_eq!(sample(&text, "kestra_edge_sse_streams_total"), Some(1.0));
    drop(stream);
    gateway.until("kestra_edge_sse_streams_open", 0.0).await;
    assert_eq!(
        gateway.sample("kestra_edge_sse_streams_total").await,
        Some(1.0)
    );
    // One that runs to its `end`.
    let ended = http
        .get(gateway.url("/kestra/api/v1/main/executions/e2/follow?events=2&interval_ms=1"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        ended.contains("id: end") || ended.contains("id:end"),
        "{ended}"
    );
    gateway.until("kestra_edge_sse_streams_open", 0.0).await;
    assert_eq!(
        gateway.sample("kestra_edge_sse_streams_total").await,
        Some(2.0)
    );

    // A WebSocket tunnel: the stack's own count, read when scraped.
    let ws_url = format!("ws://{}/kestra/api/v1/ws/echo", gateway.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_url).await.unwrap();
    socket
        .send(tokio_tungstenite::tungstenite::Message::text("hi"))
        .await
        .unwrap();
    let echoed = socket.next().await.unwrap().unwrap();
    assert_eq!(echoed.into_text().unwrap().as_str(), "hi");
    assert_eq!(gateway.sample("kestra_edge_tunnels_open").await, Some(1.0));
    assert_eq!(
        gateway
            .sample("kestra_edge_http_requests_total{method=\"GET\",status=\"101\"}")
            .await,
        Some(1.0)
    );
    socket.close(None).await.unwrap();
    // The closing handshake, then the client's side of the connection: both directions end.
    while let Some(Ok(_)) = socket.next().await {}
    drop(socket);
    gateway.until("kestra_edge_tunnels_open", 0.0).await;

    // The replica's readiness (Kestra's management port) flips upstream_up and /readyz.
    standin.control().set_ready(false);
    gateway.until(&replica, 0.0).await;
    assert_eq!(gateway.ready_until(503).await, "no healthy upstream\n");
    let response = http.get(gateway.url("/kestra/ping")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        gateway
            .sample("kestra_edge_limit_rejections_total{reason=\"no_healthy_upstream\"}")
            .await,
        Some(1.0)
    );
    standin.control().set_ready(true);
    gateway.until(&replica, 1.0).await;
    assert_eq!(gateway.ready_until(200).await, "ready\n");
}

#[tokio::test]
async fn readyz_answers_503_from_the_start_of_the_drain() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let mut config = GatewayConfig::for_upstream(standin.url());
    config.listener.shutdown_grace = Duration::from_secs(10);
    let mut gateway = Admined::start(config).await;
    assert_eq!(
        gateway.admin_get("/readyz").await,
        (200, "ready\n".to_owned())
    );
    // An open stream keeps the drain going while /readyz is asked.
    let mut stream = client()
        .get(gateway.url("/kestra/api/v1/main/executions/e1/follow?events=0&interval_ms=20"))
        .send()
        .await
        .unwrap();
    stream.chunk().await.unwrap().unwrap();
    let _ = gateway.stop.take().unwrap().send(());
    assert_eq!(gateway.ready_until(503).await, "draining\n");
    assert_eq!(gateway.admin_get("/livez").await, (200, "ok\n".to_owned()));
    assert!(!gateway.task.is_finished());
    drop(stream);
    gateway.task.await.unwrap().unwrap();
    // The admin listener closes with the gateway.
    assert!(tokio::net::TcpStream::connect(gateway.admin).await.is_err());
}

#[tokio::test]
async fn one_upstream_is_down_after_a_failed_exchange_and_up_after_an_answer() {
    let closed = closed_port().await;
    let gateway = Admined::start(GatewayConfig::for_upstream(format!("http://{closed}"))).await;
    let up = format!("kestra_edge_upstream_up{{upstream=\"http://{closed}\"}}");
    // Nothing is known yet: up, and ready.
    assert_eq!(gateway.sample(&up).await, Some(1.0));
    assert_eq!(gateway.admin_get("/readyz").await.0, 200);
    let response = client().get(gateway.url("/ping")).send().await.unwrap();
    assert_eq!(response.status(), 502);
    let text = gateway.metrics().await;
    assert_eq!(sample(&text, &up), Some(0.0));
    let refused = format!("kestra_edge_upstream_requests_total{{upstream=\"http://{closed}\",outcome=\"connect_error\"}}");
    assert_eq!(sample(&text, &refused), Some(1.0));
    assert_eq!(
        gateway.admin_get("/readyz").await,
        (503, "no healthy upstream\n".to_owned())
    );
}

#[tokio::test]
async fn the_admin_paths_are_never_served_on_the_main_listener() {
    let standin = Standin::start(StandinConfig {
        context_path: "/".to_owned(),
        ..StandinConfig::default()
    })
    .await
    .unwrap();
    let gateway = Admined::start(GatewayConfig::for_upstream(standin.url())).await;
    for path in ["/metrics", "/livez", "/readyz"] {
        let response = client().get(gateway.url(path)).send().await.unwrap();
        let body = response.text().await.unwrap();
        assert!(!body.contains("kestra_edge_"), "{path}: {body}");
        assert_ne!(body, "ok\n", "{path}");
        assert_ne!(body, "ready\n", "{path}");
    }
    // They went to the upstream like any other request.
    assert_eq!(
        gateway
            .sample("kestra_edge_http_requests_total{method=\"GET\",status=\"404\"}")
            .await,
        Some(3.0)
    );
    let (status, _) = gateway.admin_get("/kestra/ping").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn without_admin_listen_nothing_is_bound() {
    let gateway = Gateway::bind(GatewayConfig::for_upstream("http://127.0.0.1:9"))
        .await
        .unwrap();
    assert_eq!(gateway.admin_addr(), None);
}

/// Opens a follow stream that never ends, as an `EventSource` would (`Accept:
/// text/event-stream`), from the client `forwarded_for` (sent as `X-Forwarded-For`).
async fn follow(gateway: &Admined, forwarded_for: &str) -> reqwest::Response {
    client()
        .get(gateway.url("/kestra/api/v1/main/executions/e/follow?events=0&interval_ms=20"))
        .header("accept", "text/event-stream")
        .header("x-forwarded-for", forwarded_for)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn streams_over_the_per_client_cap_get_429_and_a_closed_stream_frees_its_slot() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let mut config = GatewayConfig::for_upstream(standin.url());
    config.streams.sse_max_streams_per_client = 2;
    // The loopback peer is a trusted proxy: the client is who it names.
    config.forwarded.trusted_proxies = vec!["127.0.0.1".to_owned()];
    let gateway = Admined::start(config).await;
    let a = "192.0.2.1";
    let mut first = follow(&gateway, a).await;
    let mut second = follow(&gateway, a).await;
    assert_eq!(first.status(), 200);
    assert_eq!(second.status(), 200);
    first.chunk().await.unwrap().unwrap();
    second.chunk().await.unwrap().unwrap();
    let refused = follow(&gateway, a).await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert_eq!(
        refused.text().await.unwrap(),
        "too many event streams from this client\n"
    );
    // Refused before Kestra: it has the two streams only.
    assert_eq!(standin.stats().open_streams(), 2);
    // Another client behind the same proxy has its own slots.
    let other = follow(&gateway, "192.0.2.2").await;
    assert_eq!(other.status(), 200);
    let text = gateway.metrics().await;
    assert_eq!(
        sample(
            &text,
            "kestra_edge_limit_rejections_total{reason=\"sse_streams_per_client\"}"
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, "kestra_edge_sse_streams_open"), Some(3.0));

    // The client closes one stream: its slot is free as soon as the gateway sees it go.
    drop(first);
    gateway.until("kestra_edge_sse_streams_open", 2.0).await;
    let again = follow(&gateway, a).await;
    assert_eq!(again.status(), 200);
    drop((second, other, again));
}

#[tokio::test]
async fn streams_over_the_total_cap_get_503() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let mut config = GatewayConfig::for_upstream(standin.url());
    config.streams.sse_max_streams = Some(1);
    let gateway = Admined::start(config).await;
    let mut first = follow(&gateway, "192.0.2.1").await;
    assert_eq!(first.status(), 200);
    first.chunk().await.unwrap().unwrap();
    // Untrusted peer: X-Forwarded-For is ignored, and the total cap holds for anyone.
    let refused = follow(&gateway, "192.0.2.9").await;
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "5");
    assert_eq!(
        gateway
            .sample("kestra_edge_limit_rejections_total{reason=\"sse_streams\"}")
            .await,
        Some(1.0)
    );
    // Not mistaken for the balancer's 503.
    assert_eq!(
        gateway
            .sample("kestra_edge_limit_rejections_total{reason=\"no_healthy_upstream\"}")
            .await,
        Some(0.0)
    );
    drop(first);
    gateway.until("kestra_edge_sse_streams_open", 0.0).await;
    let again = follow(&gateway, "192.0.2.9").await;
    assert_eq!(again.status(), 200);
}

#[tokio::test]
async fn request_ids_are_generated_kept_from_a_trusted_proxy_and_replaced_from_others() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let mut config = GatewayConfig::for_upstream(standin.url());
    config.forwarded.trusted_proxies = vec!["127.0.0.2".to_owned()];
    config.telemetry.request_id = true;
    let gateway = Admined::start(config).await;
    // The upstream echoes what it got; the answer carries the id back.
    let echo = |id: Option<&'static str>, from: [u8; 4]| {
        let url = gateway.url("/kestra/api/v1/echo/x");
        async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .local_address(std::net::IpAddr::from(from))
                .build()
                .unwrap();
            let mut request = client.get(url);
            if let Some(id) = id {
                request = request.header("x-request-id", id);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 200);
            let returned = response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned();
            let echo: serde_json::Value = response.json().await.unwrap();
            let sent: Vec<String> = echo["headers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|pair| {
                    pair[0]
                        .as_str()
                        .unwrap()
                        .eq_ignore_ascii_case("x-request-id")
                })
                .map(|pair| pair[1].as_str().unwrap().to_owned())
                .collect();
            (returned, sent)
        }
    };
    // None given: one is generated, sent upstream once and returned.
    let (returned, sent) = echo(None, [127, 0, 0, 1]).await;
    assert_eq!(returned.len(), 32, "{returned}");
    assert_eq!(sent, std::slice::from_ref(&returned));
    let (other, _) = echo(None, [127, 0, 0, 1]).await;
    assert_ne!(other, returned);
    // From an untrusted peer, the client's own is replaced.
    let (returned, sent) = echo(Some("forged-by-client"), [127, 0, 0, 1]).await;
    assert_ne!(returned, "forged-by-client");
    assert_eq!(sent, [returned]);
    // From the trusted proxy, kept.
    let (returned, sent) = echo(Some("from-the-proxy-1"), [127, 0, 0, 2]).await;
    assert_eq!(returned, "from-the-proxy-1");
    assert_eq!(sent, ["from-the-proxy-1"]);
    // The gateway's own answers carry one too.
    let response = client()
        .get(gateway.url("/outside-the-context-path"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["x-request-id"].len(), 32);
}
