//! The reverse proxy end to end: the gateway's stack on a real socket in front of the
//! stand-in or a scripted upstream, driven by real HTTP clients and raw TCP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use bytes::Bytes;
use futures_util::StreamExt;
use kestra_edge_gateway::{GatewayConfig, HostHeader};
use kestra_edge_standin::Echo;
use kestra_edge_tests::{
    client, closed_port, eventually, raw_body, raw_echo, raw_exchange, raw_status, read_head,
    sha256_hex, RawUpstream, RunningGateway, Stack,
};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SECOND: Duration = Duration::from_secs(1);

async fn echo_raw(stack: &Stack, request: &str) -> Echo {
    raw_echo(stack.gateway.addr, request).await
}

/// What a raw client receives through the gateway from an upstream that writes `answer`
/// and then drops the connection.
async fn through_dying_upstream(answer: &'static [u8]) -> ((RawUpstream, RunningGateway), Vec<u8>) {
    let upstream = RawUpstream::answering(answer).await;
    let gateway = RunningGateway::start(GatewayConfig::for_upstream(upstream.url())).await;
    let response = raw_exchange(
        gateway.addr,
        b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        5 * SECOND,
    )
    .await;
    ((upstream, gateway), response)
}

#[tokio::test]
async fn every_method_reaches_the_upstream() {
    let stack = Stack::start().await;
    let client = client();
    for method in [
        "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND",
    ] {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = client
            .request(method.clone(), stack.url("/kestra/api/v1/echo/m"))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{method}");
        let echo: Echo = response.json().await.unwrap();
        assert_eq!(echo.method, method.as_str());
        assert_eq!(echo.body_length, 7);
    }
    let head = client
        .head(stack.url("/kestra/api/v1/echo/m"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert!(head.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn upload_of_100_mb_streams_through_intact() {
    let stack = Stack::start().await;
    const CHUNK: usize = 1 << 20;
    const CHUNKS: usize = 100;
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 7 % 256) as u8).collect();
    let mut expected = Sha256::new();
    for _ in 0..CHUNKS {
        expected.update(&chunk);
    }
    let chunk = Bytes::from(chunk);
    let body = futures_util::stream::iter(
        (0..CHUNKS).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let response = client()
        .post(stack.url("/kestra/api/v1/upload"))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let uploaded: serde_json::Value = response.json().await.unwrap();
    assert_eq!(uploaded["length"], (CHUNK * CHUNKS) as u64);
    assert_eq!(
        uploaded["sha256"],
        kestra_edge_standin::hex(&expected.finalize())
    );
}

#[tokio::test]
async fn download_of_100_mb_streams_through_intact() {
    let stack = Stack::start().await;
    const LEN: usize = 100 << 20;
    let response = client()
        .get(stack.url(&format!("/kestra/api/v1/download?bytes={LEN}")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.content_length(), Some(LEN as u64));
    let mut hasher = Sha256::new();
    let mut received = 0;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        received += chunk.len();
        hasher.update(&chunk);
    }
    assert_eq!(received, LEN);
    let mut expected = Sha256::new();
    expected.update(kestra_edge_standin::download_pattern(LEN).collect::<Vec<u8>>());
    assert_eq!(hasher.finalize(), expected.finalize());
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_removed() {
    let stack = Stack::start().await;
    // Each case: extra request lines, headers that must not arrive, headers that must.
    type Case<'a> = (&'a str, &'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: &[Case<'_>] = &[
        (
            "Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n",
            &["connection", "keep-alive", "proxy-connection"],
            &[],
        ),
        // The client's copy goes; the gateway's own (the peer) cannot be removed.
        (
            "Connection: X-Forwarded-For, X-Real-IP\r\nX-Forwarded-For: 203.0.113.7\r\n",
            &["connection"],
            &[("x-forwarded-for", "127.0.0.1"), ("x-real-ip", "127.0.0.1")],
        ),
        (
            "Connection: x-a\r\nConnection: X-B, ,x-c\r\nX-A: 1\r\nX-B: 2\r\nX-C: 3\r\nX-D: 4\r\n",
            &["x-a", "x-b", "x-c"],
            &[("x-d", "4")],
        ),
        (
            "TE: trailers, deflate\r\nProxy-Authorization: Basic Zm9vOmJhcg==\r\nUpgrade: h2c\r\n",
            &["proxy-authorization", "upgrade"],
            &[("te", "trailers")],
        ),
        ("TE: gzip\r\n", &["te"], &[]),
        (
            "Proxy-Authenticate: Basic\r\nTrailer: x-sum\r\n",
            &["proxy-authenticate"],
            &[("trailer", "x-sum")],
        ),
    ];
    for (lines, absent, present) in cases {
        let echo = echo_raw(
            &stack,
            &format!(
                "GET /kestra/api/v1/echo/h HTTP/1.1\r\nHost: kestra.test\r\n{lines}Connection: close\r\n\r\n"
            ),
        )
        .await;
        for name in *absent {
            assert!(
                echo.header_values(name).is_empty(),
                "{name} arrived for {lines:?}: {:?}",
                echo.headers
            );
        }
        for (name, value) in *present {
            assert_eq!(
                echo.header_values(name),
                [*value],
                "for {lines:?}: {:?}",
                echo.headers
            );
        }
    }

    // A chunked request body arrives de-chunked, without Transfer-Encoding from the client.
    let echo = echo_raw(
        &stack,
        "POST /kestra/api/v1/echo/c HTTP/1.1\r\nHost: kestra.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(echo.body_length, 5);
    assert_eq!(echo.body_sha256, sha256_hex(b"hello"));
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_removed() {
    let upstream = RawUpstream::answering(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: x-private, close\r\nX-Private: secret\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nX-Kept: 1\r\n\r\nok",
    )
    .await;
    let gateway = RunningGateway::start(GatewayConfig::for_upstream(upstream.url())).await;
    let response = client().get(gateway.url("/any")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers();
    for name in ["x-private", "keep-alive", "proxy-authenticate"] {
        assert!(headers.get(name).is_none(), "{name}: {headers:?}");
    }
    assert_eq!(headers["x-kept"], "1");
    assert_eq!(response.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn path_and_query_pass_byte_for_byte() {
    let stack = Stack::start().await;
    for target in [
        "/kestra/api/v1/echo/a%2Fb",
        "/kestra/api/v1/echo/x?a=1&a=2;b=3",
        "/kestra/api/v1/echo/%41%zz/%2e%2E/?q=%2F&q=%20+x&&=",
        "/kestra/api/v1/echo/flows/io.kestra/hello%20world?page=1&size=25&sort=id:asc",
        "/kestra/api/v1/echo//double//slash/",
        "/kestra/api/v1/echo/semi;matrix=1/b?",
    ] {
        let echo = echo_raw(
            &stack,
            &format!("GET {target} HTTP/1.1\r\nHost: kestra.test\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(echo.uri, target);
    }
}

#[tokio::test]
async fn host_is_kept_or_replaced() {
    let stack = Stack::start().await;
    let echo = echo_raw(
        &stack,
        "GET /kestra/api/v1/echo/host HTTP/1.1\r\nHost: kestra.example.com:8443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(echo.header_values("host"), ["kestra.example.com:8443"]);

    // An absolute-form target's authority wins over Host (RFC 9112 §3.2.2).
    let echo = echo_raw(
        &stack,
        "GET http://public.example/kestra/api/v1/echo/abs?x=1 HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(echo.header_values("host"), ["public.example"]);
    assert_eq!(echo.uri, "/kestra/api/v1/echo/abs?x=1");

    // HTTP/2 (prior knowledge): :authority becomes Host; the upstream gets HTTP/1.1.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap();
    let response = h2
        .get(stack.url("/kestra/api/v1/echo/h2"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let echo: Echo = response.json().await.unwrap();
    assert_eq!(
        echo.header_values("host"),
        [stack.gateway.addr.to_string().as_str()]
    );
    assert_eq!(echo.version, "HTTP/1.1");

    let upstream_host = Stack::start_with(|c| c.upstream.host_header = HostHeader::Upstream).await;
    let echo = echo_raw(
        &upstream_host,
        "GET /kestra/api/v1/echo/host HTTP/1.1\r\nHost: kestra.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        echo.header_values("host"),
        [upstream_host.standin.addr().to_string().as_str()]
    );
}

#[tokio::test]
async fn refused_upstream_is_502_without_internal_addresses() {
    let dead = closed_port().await;
    let gateway =
        RunningGateway::start(GatewayConfig::for_upstream(format!("http://{dead}"))).await;
    let response = client()
        .get(gateway.url("/kestra/ping"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    let body = response.text().await.unwrap();
    assert_eq!(body, "upstream unavailable\n");
    assert!(!body.contains("127.0.0.1") && !body.contains(&dead.port().to_string()));
}

#[tokio::test]
async fn a_pooled_connection_gone_silent_is_504_after_the_read_timeout() {
    // Answers the first request on a connection, then reads the next one and never answers:
    // the response deadline must hold on a connection taken from the pool, with a timer the
    // thread lends again after the first request, moved to the second one's deadline.
    let upstream = RawUpstream::start(|mut stream| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await;
        if read_head(&mut stream).await {
            std::future::pending::<()>().await;
        }
    })
    .await;
    let mut config = GatewayConfig::for_upstream(upstream.url());
    config.upstream.read_timeout = Duration::from_millis(300);
    // One worker, one pool: every request may take the pooled connection.
    config.listener.workers = std::num::NonZeroUsize::MIN;
    let gateway = RunningGateway::start(config).await;
    let client = client();
    let get = || async {
        let response = tokio::time::timeout(
            5 * SECOND,
            client.get(gateway.url("/kestra/api/v1/flows")).send(),
        )
        .await
        .expect("answered within 5 s")
        .unwrap();
        (response.status(), response.text().await.unwrap())
    };
    assert_eq!(get().await, (reqwest::StatusCode::OK, "ok".to_owned()));
    // Half the timeout later: the deadline is the new request's, not the first one's.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    assert_eq!(
        get().await,
        (
            reqwest::StatusCode::GATEWAY_TIMEOUT,
            "upstream response timed out\n".to_owned()
        )
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        upstream.requests(),
        1,
        "the second request went on the pooled connection"
    );
    // The silent connection is not pooled again: the next request gets a new one.
    assert_eq!(get().await, (reqwest::StatusCode::OK, "ok".to_owned()));
    assert_eq!(upstream.requests(), 2);
}

#[tokio::test]
async fn idle_upstream_connections_past_the_limit_are_closed() {
    // Four requests at once take four upstream connections (each first answer waits for
    // all four to arrive); with `--upstream-max-idle 2`, two stay pooled and two close.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(4));
    let closed = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (waiting, counted) = (barrier.clone(), closed.clone());
    let upstream = RawUpstream::start(move |mut stream| {
        let (barrier, closed) = (waiting.clone(), counted.clone());
        async move {
            barrier.wait().await;
            loop {
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if stream.write_all(answer).await.is_err() || !read_head(&mut stream).await {
                    break;
                }
            }
            closed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    })
    .await;
    let mut config = GatewayConfig::for_upstream(upstream.url());
    config.upstream.max_idle = 2;
    // One worker, one pool.
    config.listener.workers = std::num::NonZeroUsize::MIN;
    let gateway = RunningGateway::start(config).await;
    let client = client();
    let get = || async {
        let response = client
            .get(gateway.url("/kestra/api/v1/flows"))
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    };
    let ok = (reqwest::StatusCode::OK, "ok".to_owned());
    let answers = tokio::time::timeout(
        5 * SECOND,
        futures_util::future::join_all((0..4).map(|_| get())),
    )
    .await
    .expect("answered within 5 s");
    assert!(answers.iter().all(|a| *a == ok), "{answers:?}");
    assert_eq!(upstream.requests(), 4, "four upstream connections");
    let count = || closed.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        eventually(5 * SECOND, || count() == 2).await,
        "{} upstream connections closed, not the two past the limit",
        count()
    );
    // The two kept are reused: no new upstream connection.
    assert_eq!(get().await, ok);
    assert_eq!(get().await, ok);
    assert_eq!(upstream.requests(), 4);
    assert_eq!(count(), 2);
}

#[tokio::test]
async fn silent_upstream_is_504_after_the_read_timeout() {
    // Accepts and reads the request, then never answers.
    let upstream = RawUpstream::start(|stream| async move {
        let _hold = stream;
        std::future::pending::<()>().await;
    })
    .await;
    let mut config = GatewayConfig::for_upstream(upstream.url());
    config.upstream.read_timeout = Duration::from_millis(300);
    let gateway = RunningGateway::start(config).await;
    let started = Instant::now();
    let response = client()
        .get(gateway.url("/kestra/api/v1/executions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < 5 * SECOND);
    assert_eq!(
        response.text().await.unwrap(),
        "upstream response timed out\n"
    );
    assert_eq!(
        upstream.requests(),
        1,
        "a request that reached the upstream is never retried"
    );
}

#[tokio::test]
async fn read_timeout_counts_from_the_last_request_byte() {
    // The upload takes ~1 s, more than three read timeouts: it must not be answered 504,
    // because the upstream cannot answer before the body is complete.
    let stack = Stack::start_with(|c| c.upstream.read_timeout = Duration::from_millis(300)).await;
    let body = futures_util::stream::unfold(0u32, |sent| async move {
        if sent == 10 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        Some((
            Ok::<_, std::io::Error>(Bytes::from_static(b"0123456789")),
            sent + 1,
        ))
    });
    let started = Instant::now();
    let response = client()
        .post(stack.url("/kestra/api/v1/upload"))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(response.status(), 200);
    let uploaded: serde_json::Value = response.json().await.unwrap();
    assert_eq!(uploaded["length"], 100);
}

#[tokio::test]
async fn upstream_that_closes_without_answering_is_502_and_not_retried() {
    let upstream = RawUpstream::start(|stream| async move { drop(stream) }).await;
    let gateway = RunningGateway::start(GatewayConfig::for_upstream(upstream.url())).await;
    let response = client()
        .post(gateway.url("/kestra/api/v1/executions/trigger"))
        .body("run it once")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 502);
    assert_eq!(
        response.text().await.unwrap(),
        "upstream connection failed\n"
    );
    assert_eq!(upstream.requests(), 1);
}

#[tokio::test]
async fn upstream_silent_mid_body_aborts_the_client_transfer() {
    let stack = Stack::start_with(|c| c.upstream.read_timeout = Duration::from_millis(300)).await;
    let response = client()
        .get(stack.url("/kestra/api/v1/slow?body_ms=3000"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    let result = response.bytes().await;
    assert!(result.is_err(), "a cut body must not look complete");
    assert!(started.elapsed() < 3 * SECOND);
}

#[tokio::test]
async fn a_client_that_stalls_longer_than_the_read_timeout_still_gets_everything() {
    // The read timeout limits upstream silence; a reader that pauses is backpressure.
    let stack = Stack::start_with(|c| c.upstream.read_timeout = Duration::from_millis(200)).await;
    const LEN: usize = 64 << 20;
    let mut stream = tokio::net::TcpStream::connect(stack.gateway.addr)
        .await
        .unwrap();
    stream
        .write_all(
            format!(
                "GET /kestra/api/v1/download?bytes={LEN} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut received = stream.read(&mut buf).await.unwrap();
    // The pause is the scenario itself: five read timeouts with nobody reading.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    loop {
        match stream.read(&mut buf).await.unwrap() {
            0 => break,
            n => received += n,
        }
    }
    // Head plus the whole body: a cut transfer would stop short of LEN.
    assert!(received > LEN, "only {received} bytes arrived");
}

#[tokio::test]
async fn upstream_dying_mid_body_aborts_the_client_transfer() {
    // Raw client: the transfer must end without the promised 1000 bytes.
    let (_gateway, response) =
        through_dying_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly part").await;
    assert_eq!(raw_status(&response), 200);
    let head = String::from_utf8_lossy(&response).to_lowercase();
    assert!(head.contains("content-length: 1000\r\n"), "{head}");
    assert_eq!(raw_body(&response), b"only part");
}

#[tokio::test]
async fn chunked_upstream_dying_mid_body_never_looks_complete() {
    let ((_upstream, gateway), response) = through_dying_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await;
    assert_eq!(raw_status(&response), 200);
    let body = raw_body(&response);
    assert!(body.starts_with(b"5\r\nhello\r\n"), "{body:?}");
    assert!(
        !body.ends_with(b"0\r\n\r\n"),
        "the last-chunk marker must not be sent for a cut body: {body:?}"
    );
    // The same through a real client: an error, not a short success.
    let response = client().get(gateway.url("/x")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err());
}

#[tokio::test]
async fn client_abort_mid_download_closes_the_upstream_connection() {
    let stack = Stack::start().await;
    let mut stream = tokio::net::TcpStream::connect(stack.gateway.addr)
        .await
        .unwrap();
    stream
        .write_all(b"GET /kestra/api/v1/download?bytes=1073741824 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 256 << 10];
    let mut read = 0;
    while read < (1 << 20) {
        read += stream.read(&mut buf).await.unwrap();
    }
    assert_eq!(stack.standin.stats().open_connections(), 1);
    drop(stream);
    assert!(
        eventually(5 * SECOND, || stack.standin.stats().open_connections() == 0).await,
        "upstream connection still open"
    );
    assert!(eventually(5 * SECOND, || stack.gateway.connections.open() == 0).await);
}

#[tokio::test]
async fn trailers_pass_both_ways() {
    use http_body_util::BodyExt;
    let stack = Stack::start().await;
    let stream = tokio::net::TcpStream::connect(stack.gateway.addr)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);

    // Request trailers reach the upstream.
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc123".parse().unwrap());
    let frames = futures_util::stream::iter([
        Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from_static(b"data"))),
        Ok(http_body::Frame::trailers(trailers)),
    ]);
    let request = http::Request::post("/kestra/api/v1/echo/trailers")
        .header("host", "kestra.test")
        .header("trailer", "x-checksum")
        .body(http_body_util::StreamBody::new(frames))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let echo: Echo =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(echo.body_length, 4);
    assert_eq!(
        echo.trailers,
        [("x-checksum".to_owned(), "abc123".to_owned())]
    );

    // Response trailers reach the client.
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(
        tokio::net::TcpStream::connect(stack.gateway.addr)
            .await
            .unwrap(),
    ))
    .await
    .unwrap();
    tokio::spawn(conn);
    let request = http::Request::get("/kestra/api/v1/trailers")
        .header("host", "kestra.test")
        .header("te", "trailers")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    let body = collected.to_bytes();
    assert_eq!(trailers["x-checksum"], sha256_hex(&body));
}

fn unix_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

#[tokio::test]
async fn sse_events_arrive_one_at_a_time() {
    let stack = Stack::start().await;
    const INTERVAL_MS: u128 = 200;
    let response = client()
        .get(stack.url(&format!(
            "/kestra/api/v1/main/executions/e1/follow?events=4&interval_ms={INTERVAL_MS}"
        )))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.bytes_stream();
    let mut pending = Vec::new();
    // (id, sent_at_us, received_at_us)
    let mut events: Vec<(String, u128, u128)> = Vec::new();
    while let Some(chunk) = stream.next().await {
        pending.extend_from_slice(&chunk.unwrap());
        let now = unix_micros();
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let text = String::from_utf8(event).unwrap();
            let id = text.lines().find_map(|l| l.strip_prefix("id: ")).unwrap();
            let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            let data: serde_json::Value = serde_json::from_str(data).unwrap();
            let sent = data["sent_at_us"].as_u64().unwrap() as u128;
            events.push((id.to_owned(), sent, now));
        }
    }
    let ids: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        ids,
        ["start", "progress", "progress", "progress", "progress", "end"]
    );
    for (id, sent, received) in &events {
        let delay_ms = received.saturating_sub(*sent) / 1000;
        // Each event is delivered as it is sent, not held back for the next one.
        assert!(
            delay_ms < INTERVAL_MS / 2,
            "{id} arrived {delay_ms} ms after it was sent"
        );
    }
}

/// Header maps and extensions are lent per thread and reused (`kestra_edge_headers::recycle`):
/// on one keep-alive connection, a field of one request or response never shows up in the
/// next, in either direction.
#[tokio::test]
async fn no_field_of_one_exchange_reaches_the_next() {
    let stack = Stack::start().await;
    let keep_alive = reqwest::Client::builder().no_proxy().build().unwrap();
    for n in 0..12 {
        let mut request = keep_alive.get(stack.gateway.url("/kestra/api/v1/echo/r"));
        if n % 2 == 0 {
            request = request.header("x-even", n.to_string());
        }
        let echo: Echo = request.send().await.unwrap().json().await.unwrap();
        let expected: Vec<String> = (n % 2 == 0).then(|| n.to_string()).into_iter().collect();
        assert_eq!(echo.header_values("x-even"), expected, "request {n}");
        assert_eq!(
            echo.header_values("x-forwarded-for"),
            ["127.0.0.1"],
            "request {n}"
        );
    }

    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = answered.clone();
    let upstream = RawUpstream::start(move |mut stream| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            let even = if n % 2 == 0 {
                format!("X-Even: {n}\r\n")
            } else {
                String::new()
            };
            let answer =
                format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{even}X-N: {n}\r\n\r\nok");
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    })
    .await;
    let gateway = RunningGateway::start(GatewayConfig::for_upstream(upstream.url())).await;
    for n in 0..12 {
        let response = keep_alive.get(gateway.url("/any")).send().await.unwrap();
        let headers = response.headers().clone();
        assert_eq!(response.text().await.unwrap(), "ok");
        let values = |name| {
            headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(values("x-n"), [n.to_string()], "response {n}");
        let expected: Vec<String> = (n % 2 == 0).then(|| n.to_string()).into_iter().collect();
        assert_eq!(values("x-even"), expected, "response {n}");
    }
}
