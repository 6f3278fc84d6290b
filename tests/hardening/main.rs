//! Hostile input against the gateway over raw TCP: request framing and smuggling, limits
//! (413, 414, 431), slow clients (the header timeout), and upstream faults. The upstream is
//! a real HTTP server that records every request it receives, so each test can prove that
//! nothing extra reached it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use bytes::Bytes;
use kestra_edge_gateway::GatewayConfig;
use kestra_edge_tests::{
    client, eventually, raw_exchange, raw_status, raw_statuses, RawUpstream, Recorded,
    RecordingUpstream, RunningGateway,
};
use std::time::{Duration, Instant};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const SECOND: Duration = Duration::from_secs(1);

/// A recording upstream behind a gateway serving `/kestra` (kept).
async fn recorded(
    configure: impl FnOnce(&mut GatewayConfig),
) -> (RecordingUpstream, RunningGateway) {
    let upstream = RecordingUpstream::start().await;
    let mut config = GatewayConfig::for_upstream(upstream.url());
    config.prefix.context_path = Some("/kestra".to_owned());
    configure(&mut config);
    let gateway = RunningGateway::start(config).await;
    (upstream, gateway)
}

/// Writes `request`, reads until the gateway closes (or `limit`); whether it closed.
async fn exchange(gateway: &RunningGateway, request: &[u8], limit: Duration) -> (Vec<u8>, bool) {
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    // The gateway may close before reading everything: a failed write is part of the answer.
    let _ = stream.write_all(request).await;
    let mut response = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (response, closed)
}

struct Case {
    name: &'static str,
    request: Vec<u8>,
    /// The statuses the one answer may have (none at all is also accepted, with a close).
    answers: &'static [u16],
    /// The most requests the upstream may receive.
    max_upstream: usize,
}

/// A request sent after a case's bytes on the same connection, where the gateway may keep
/// the connection after its answer: it must be the only one to reach the upstream.
const AFTER: &str = "GET /kestra/after HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

fn case(name: &'static str, request: &str, answers: &'static [u16], max_upstream: usize) -> Case {
    Case {
        name,
        request: request.as_bytes().to_vec(),
        answers,
        max_upstream,
    }
}

const SMUGGLED: &str = "GET /kestra/smuggled HTTP/1.1\r\nHost: t\r\n\r\n";

fn framing_cases() -> Vec<Case> {
    let with_smuggled = |head: &str, body: &str| format!("{head}\r\n\r\n{body}{SMUGGLED}");
    // Answered early, without reading the body; the body holds a full request, and a real
    // one follows it. The body is drained (or the connection closed), never parsed.
    let early = format!(
        "POST /outside HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{SMUGGLED}{AFTER}",
        SMUGGLED.len()
    );
    let early_chunked = format!(
        "POST /outside HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n{AFTER}",
        SMUGGLED.len()
    );
    vec![
        // RFC 9112 §6.3: Transfer-Encoding wins, Content-Length is dropped, and the
        // connection is closed after the answer, so the bytes after the chunked body are
        // never read as a request.
        case(
            "Content-Length then Transfer-Encoding",
            &with_smuggled(
                "POST /kestra/a HTTP/1.1\r\nHost: t\r\nContent-Length: 48\r\nTransfer-Encoding: chunked",
                "0\r\n\r\n",
            ),
            &[200],
            1,
        ),
        case(
            "Transfer-Encoding then Content-Length",
            &with_smuggled(
                "POST /kestra/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 48",
                "0\r\n\r\n",
            ),
            &[200],
            1,
        ),
        case(
            "Transfer-Encoding: chunked, identity",
            &with_smuggled(
                "POST /kestra/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, identity\r\nContent-Length: 5",
                "0\r\n\r\n",
            ),
            &[400],
            0,
        ),
        case(
            "two Transfer-Encoding lines, identity last",
            &with_smuggled(
                "POST /kestra/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity",
                "0\r\n\r\n",
            ),
            &[400],
            0,
        ),
        case(
            "Transfer-Encoding without chunked",
            &with_smuggled(
                "POST /kestra/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\nContent-Length: 5",
                "0\r\n\r\n",
            ),
            &[400, 501],
            0,
        ),
        case(
            "Transfer-Encoding: xchunked",
            &with_smuggled(
                "POST /kestra/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked",
                "0\r\n\r\n",
            ),
            &[400, 501],
            0,
        ),
        case(
            "two different Content-Length lines",
            &with_smuggled(
                "POST /kestra/a HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 48",
                "0\r\n\r\n",
            ),
            &[400],
            0,
        ),
        case(
            "Content-Length list with different values",
            &with_smuggled(
                "POST /kestra/a HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 48",
                "0\r\n\r\n",
            ),
            &[400],
            0,
        ),
        case(
            "signed Content-Length",
            &with_smuggled(
                "POST /kestra/a HTTP/1.1\r\nHost: t\r\nContent-Length: +5",
                "0\r\n\r\n",
            ),
            &[400],
            0,
        ),
        case(
            "negative Content-Length",
            &with_smuggled(
                "POST /kestra/a HTTP/1.1\r\nHost: t\r\nContent-Length: -1",
                "0\r\n\r\n",
            ),
            &[400],
            0,
        ),
        case(
            "Content-Length past u64",
            &with_smuggled(
                "POST /kestra/a HTTP/1.1\r\nHost: t\r\nContent-Length: 18446744073709551616",
                "0\r\n\r\n",
            ),
            &[400],
            0,
        ),
        case(
            "Transfer-Encoding on HTTP/1.0",
            &with_smuggled(
                "POST /kestra/a HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked",
                "0\r\n\r\n",
            ),
            &[400],
            0,
        ),
        // The head is valid, so the request starts upstream; its body then fails, so the
        // upstream request is aborted and never completes (checked below).
        case(
            "chunk size past u64",
            &with_smuggled(
                "POST /kestra/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked",
                "fffffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
            ),
            &[400],
            1,
        ),
        case(
            "chunk size with junk",
            &with_smuggled(
                "POST /kestra/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked",
                "3x\r\nabc\r\n0\r\n\r\n",
            ),
            &[400],
            1,
        ),
        case(
            "obs-fold",
            &with_smuggled(
                "GET /kestra/a HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b",
                "",
            ),
            &[400],
            0,
        ),
        case(
            "NUL in a value",
            &with_smuggled("GET /kestra/a HTTP/1.1\r\nHost: t\r\nX-Nul: a\0b", ""),
            &[400],
            0,
        ),
        case(
            "empty header name",
            &with_smuggled("GET /kestra/a HTTP/1.1\r\nHost: t\r\n: empty", ""),
            &[400],
            0,
        ),
        case(
            "white space before the colon",
            &with_smuggled(
                "POST /kestra/a HTTP/1.1\r\nHost: t\r\nContent-Length : 5",
                "0\r\n\r\n",
            ),
            &[400],
            0,
        ),
        case(
            "bare CR in the request line",
            &with_smuggled("GET /kestra/a\rb HTTP/1.1\r\nHost: t", ""),
            &[400],
            0,
        ),
        case(
            "early 404 with a request in its Content-Length body",
            &early,
            &[404],
            1,
        ),
        case(
            "early 404 with a request in its chunked body",
            &early_chunked,
            &[404],
            1,
        ),
    ]
}

#[tokio::test]
async fn framing_and_smuggling_attempts_get_one_answer_and_never_an_extra_request() {
    for case in framing_cases() {
        let (upstream, gateway) = recorded(|_| {}).await;
        let (response, closed) = exchange(&gateway, &case.request, 2 * SECOND).await;
        let statuses = raw_statuses(&response);
        let name = case.name;
        let shown = String::from_utf8_lossy(&response);
        assert!(closed, "{name}: the connection stayed open: {shown}");
        let log = upstream.log();
        let follow_up = case.request.ends_with(AFTER.as_bytes());
        if follow_up {
            // One answer to the case, then either a close or the real request's 200.
            assert!(matches!(statuses.len(), 1 | 2), "{name}: {shown}");
            if statuses.len() == 2 {
                assert_eq!(statuses[1], 200, "{name}: {shown}");
                let targets: Vec<_> = log.iter().map(|r| r.target.as_str()).collect();
                assert_eq!(targets, ["/kestra/after"], "{name}");
            }
        } else {
            assert!(statuses.len() <= 1, "{name}: more than one answer: {shown}");
        }
        if let Some(status) = statuses.first() {
            assert!(case.answers.contains(status), "{name}: answered {shown}");
        }
        assert!(
            log.iter().all(|r| !r.target.contains("smuggled")),
            "{name}: smuggled request reached the upstream: {log:?}"
        );
        assert!(
            log.len() <= case.max_upstream,
            "{name}: {} upstream requests: {log:?}",
            log.len()
        );
        if case.answers == [400] {
            assert!(
                log.iter().all(|r| !r.completed),
                "{name}: a refused request completed upstream: {log:?}"
            );
        }
        drop(gateway);
    }
}

#[tokio::test]
async fn pipelined_requests_are_each_forwarded_once() {
    // The control for the smuggling table: the recorder does see a second request on one
    // connection when it is a real one.
    let (upstream, gateway) = recorded(|_| {}).await;
    let request = "POST /kestra/one HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello\
                   GET /kestra/two HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
    let (response, closed) = exchange(&gateway, request.as_bytes(), 2 * SECOND).await;
    assert!(closed);
    assert_eq!(raw_statuses(&response), [200, 200]);
    let log = upstream.log();
    let targets: Vec<_> = log.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["/kestra/one", "/kestra/two"]);
    assert_eq!(log[0].body_len, 5);
    assert!(log.iter().all(|r| r.completed));
}

#[tokio::test]
async fn a_declared_body_over_max_body_is_413_before_anything_reaches_the_upstream() {
    let (upstream, gateway) = recorded(|c| c.upstream.max_body = 1024).await;
    // At the limit: forwarded whole.
    let at_limit = client()
        .post(gateway.url("/kestra/api/v1/files"))
        .body(vec![b'a'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(at_limit.status(), 200);
    let accepted = upstream.connections.accepted();
    // One byte over, and a declared 20 GiB whose body never comes: both answered at once.
    for length in [1025u64, 20 << 30] {
        let head = format!(
            "POST /kestra/api/v1/files HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n"
        );
        let started = Instant::now();
        let (response, closed) = exchange(&gateway, head.as_bytes(), 5 * SECOND).await;
        assert_eq!(
            raw_status(&response),
            413,
            "{}",
            String::from_utf8_lossy(&response)
        );
        assert!(String::from_utf8_lossy(&response).ends_with("request body too large\n"));
        assert!(closed, "the connection must not wait for the body");
        assert!(started.elapsed() < 2 * SECOND);
    }
    assert_eq!(upstream.connections.accepted(), accepted);
    let log = upstream.log();
    assert_eq!(log.len(), 1);
    assert_eq!((log[0].body_len, log[0].completed), (1024, true));
}

/// A chunked body of `chunks` × 64 KiB.
fn streamed(chunks: usize) -> reqwest::Body {
    let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    reqwest::Body::wrap_stream(stream)
}

#[tokio::test]
async fn a_streamed_body_over_max_body_is_cut_and_never_completes_upstream() {
    let limit = 256 * 1024;
    let (upstream, gateway) = recorded(|c| c.upstream.max_body = limit).await;

    // Exactly the limit, chunked: forwarded whole.
    let response = client()
        .post(gateway.url("/kestra/api/v1/files"))
        .body(streamed(4))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // 16 MiB chunked: cut after 256 KiB.
    let result = client()
        .post(gateway.url("/kestra/api/v1/files"))
        .body(streamed(256))
        .send()
        .await;
    match result {
        Ok(response) => assert_eq!(response.status(), 413),
        // The gateway may close while the client is still sending.
        Err(err) => assert!(err.is_request() || err.is_body(), "{err:?}"),
    }
    assert!(
        eventually(5 * SECOND, || upstream.log().len() == 2
            && !upstream.log()[1].completed
            && upstream.connections.open() <= 1)
        .await,
        "{:?}",
        upstream.log()
    );
    let log = upstream.log();
    assert_eq!((log[0].body_len, log[0].completed), (limit, true));
    let cut = &log[1];
    assert!(!cut.completed, "the upstream request completed: {cut:?}");
    assert!(cut.body_len <= limit, "{cut:?}");
    assert!(eventually(5 * SECOND, || gateway.connections.open() == 0).await);
}

#[tokio::test]
async fn a_body_that_stalls_past_the_body_timeout_is_408_and_never_completes_upstream() {
    let timeout = Duration::from_millis(300);
    let (upstream, gateway) = recorded(|c| c.upstream.body_timeout = timeout).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    // 3 bytes of a declared 10, a second 3 bytes within the timeout, then nothing.
    stream
        .write_all(
            b"POST /kestra/api/v1/files HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc",
        )
        .await
        .unwrap();
    tokio::time::sleep(timeout / 2).await;
    stream.write_all(b"def").await.unwrap();
    let started = Instant::now();
    let mut response = Vec::new();
    let read = tokio::time::timeout(5 * SECOND, stream.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "not closed within 5 s");
    assert_eq!(
        raw_status(&response),
        408,
        "{}",
        String::from_utf8_lossy(&response)
    );
    // Counted from the last byte, not from the start.
    assert!(started.elapsed() >= timeout - Duration::from_millis(50));
    assert!(eventually(5 * SECOND, || upstream.log().len() == 1).await);
    let log = upstream.log();
    assert!(
        eventually(5 * SECOND, || upstream.connections.open() == 0).await,
        "the upstream request was not aborted: {log:?}"
    );
    let log = upstream.log();
    assert_eq!((log[0].body_len, log[0].completed), (6, false));
}

#[tokio::test]
async fn too_many_or_too_large_header_fields_are_431() {
    let (upstream, gateway) = recorded(|c| c.listener.max_headers = 20).await;
    let with_fields = |n: usize, value_len: usize| {
        let mut head = String::from("GET /kestra/a HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
        for i in 0..n {
            head.push_str(&format!("X-Field-{i}: {}\r\n", "v".repeat(value_len)));
        }
        head.push_str("\r\n");
        head
    };
    // Host and Connection plus 18 fields is the limit: forwarded.
    let (response, _) = exchange(&gateway, with_fields(18, 8).as_bytes(), 5 * SECOND).await;
    assert_eq!(raw_status(&response), 200);
    let (response, closed) = exchange(&gateway, with_fields(19, 8).as_bytes(), 5 * SECOND).await;
    assert_eq!(raw_status(&response), 431);
    assert!(closed);
    // 64 KiB of head is the default limit; 70 KiB in one field is over it.
    let (response, closed) =
        exchange(&gateway, with_fields(1, 70 * 1024).as_bytes(), 5 * SECOND).await;
    assert_eq!(raw_status(&response), 431);
    assert!(closed);
    assert_eq!(upstream.log().len(), 1);
}

#[tokio::test]
async fn a_head_just_under_max_header_bytes_passes() {
    let (upstream, gateway) = recorded(|_| {}).await;
    let head = format!(
        "GET /kestra/a HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
        "v".repeat(60 * 1024)
    );
    let (response, _) = exchange(&gateway, head.as_bytes(), 5 * SECOND).await;
    assert_eq!(raw_status(&response), 200);
    assert_eq!(upstream.log().len(), 1);
}

#[tokio::test]
async fn an_over_long_request_target_is_414() {
    let (upstream, gateway) = recorded(|c| c.upstream.max_uri = 4096).await;
    let target = |len: usize| format!("/kestra/{}", "a".repeat(len - "/kestra/".len()));
    let request = |target: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").into_bytes()
    };
    let (response, _) = exchange(&gateway, &request(&target(4096)), 5 * SECOND).await;
    assert_eq!(raw_status(&response), 200);
    let (response, _) = exchange(&gateway, &request(&target(4097)), 5 * SECOND).await;
    assert_eq!(raw_status(&response), 414);
    assert!(String::from_utf8_lossy(&response).ends_with("request target too long\n"));
    // Over the head limit itself: refused by the HTTP/1 parser.
    let (response, _) = exchange(&gateway, &request(&target(100 * 1024)), 5 * SECOND).await;
    assert!(
        matches!(raw_status(&response), 414 | 431),
        "{}",
        String::from_utf8_lossy(&response[..60.min(response.len())])
    );
    assert_eq!(upstream.log().len(), 1);
}

#[tokio::test]
async fn http2_header_fields_over_the_limit_are_431() {
    use http_body_util::Empty;
    let (upstream, gateway) = recorded(|_| {}).await;
    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = |value: String| {
        http::Request::get(format!("http://{}/kestra/a", gateway.addr))
            .header("x-big", value)
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let ok = sender
        .send_request(request("v".repeat(1024)))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let refused = sender.send_request(request("v".repeat(70 * 1024))).await;
    match refused {
        Ok(response) => assert_eq!(response.status(), 431),
        Err(err) => panic!("expected a 431 answer, got {err:?}"),
    }
    assert_eq!(upstream.log().len(), 1);
}

/// How long until the gateway closes a connection that sent `prefix` and then (with
/// `drip`) one more byte of a request head every 50 ms.
async fn time_to_close(gateway: &RunningGateway, prefix: &[u8], drip: bool) -> Duration {
    let started = Instant::now();
    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(prefix).await.unwrap();
    let dripping = tokio::spawn(async move {
        if drip {
            for byte in b"X-Slow-Header-That-Never-Ends: ".iter().cycle() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if writer.write_all(&[*byte]).await.is_err() {
                    break;
                }
            }
        } else {
            std::future::pending::<()>().await;
        }
    });
    let mut buf = Vec::new();
    let read = tokio::time::timeout(5 * SECOND, reader.read_to_end(&mut buf)).await;
    dripping.abort();
    assert!(read.is_ok(), "not closed within 5 s");
    // A close, perhaps after a 408 or an HTTP/2 GOAWAY: never an answer from upstream.
    assert!(
        !String::from_utf8_lossy(&buf).contains("200 OK"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    started.elapsed()
}

#[tokio::test]
async fn slow_clients_are_disconnected_at_the_header_timeout() {
    let timeout = Duration::from_millis(300);
    let (upstream, gateway) = recorded(|c| c.listener.header_timeout = timeout).await;
    let cases: [(&str, &[u8], bool); 4] = [
        ("silent", b"", false),
        ("half an HTTP/2 preface", b"PRI * HTTP/2.0\r\n", false),
        (
            "a head dripping a byte every 50 ms",
            b"GET /kestra/a HTTP/1.1\r\nHost: t\r\n",
            true,
        ),
        (
            "the HTTP/2 preface, then nothing",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            false,
        ),
    ];
    for (name, prefix, drip) in cases {
        let took = time_to_close(&gateway, prefix, drip).await;
        assert!(
            took >= timeout - Duration::from_millis(50) && took < 3 * SECOND,
            "{name}: closed after {took:?}"
        );
    }
    // An idle keep-alive connection after a full exchange is closed too.
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    stream
        .write_all(b"GET /kestra/a HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert_eq!(raw_status(&buf[..n]), 200);
    let idle = Instant::now();
    let rest = tokio::time::timeout(5 * SECOND, stream.read(&mut buf)).await;
    assert!(matches!(rest, Ok(Ok(0)) | Ok(Err(_))), "{rest:?}");
    assert!(idle.elapsed() >= timeout - Duration::from_millis(50));

    assert_eq!(upstream.log().len(), 1);
    assert!(eventually(5 * SECOND, || gateway.connections.open() == 0).await);
}

#[tokio::test]
async fn a_client_within_the_header_timeout_is_served() {
    // The counterpart of the slow-client test: slow, but within the limit.
    let (upstream, gateway) = recorded(|c| c.listener.header_timeout = 2 * SECOND).await;
    let mut stream = TcpStream::connect(gateway.addr).await.unwrap();
    for part in [
        &b"GET /kestra/a HT"[..],
        b"TP/1.1\r\nHost: t\r\n",
        b"Connection: close\r\n\r\n",
    ] {
        stream.write_all(part).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    assert_eq!(raw_status(&response), 200);
    assert_eq!(upstream.log().len(), 1);
}

/// The gateway's answer when the upstream writes `answer` to the first request.
async fn answer_from_upstream(answer: &'static [u8]) -> Vec<u8> {
    let upstream = RawUpstream::answering(answer).await;
    let gateway = RunningGateway::start(GatewayConfig::for_upstream(upstream.url())).await;
    raw_exchange(
        gateway.addr,
        b"GET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        5 * SECOND,
    )
    .await
}

#[tokio::test]
async fn malformed_upstream_responses_are_502() {
    let malformed: [&[u8]; 7] = [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 2000 Huge\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nX-Nul: a\0b\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ];
    for answer in malformed {
        let response = answer_from_upstream(answer).await;
        let shown = String::from_utf8_lossy(answer);
        if answer.starts_with(b"HTTP/1.1 200 OK\r\nTransfer-Encoding") {
            // The head was valid and already sent: the body must end in a failed transfer,
            // never a complete chunked body.
            // (or, when the bad chunk comes before anything was written, a bare close).
            let text = String::from_utf8_lossy(&response);
            if !text.is_empty() {
                assert!(text.starts_with("HTTP/1.1 200"), "{shown}: {text}");
                assert!(
                    !text.ends_with("0\r\n\r\n"),
                    "{shown}: looked complete: {text}"
                );
            }
        } else {
            assert_eq!(raw_status(&response), 502, "{shown}");
        }
    }
}

#[tokio::test]
async fn a_pooled_connection_the_upstream_closed_is_replaced_without_errors_or_repeats() {
    // Each upstream connection answers one request as keep-alive and then closes: the
    // gateway's pooled connection goes stale as the next request arrives. Requests that
    // were never written are retried on a new connection; none is sent twice.
    // The upstream runs on its own thread, so that its timing does not depend on the test's
    // runtime: it closes each connection 0–390 µs after answering, so that across the run the
    // close lands before, during and after the gateway picks the connection for the next
    // request.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = requests.clone();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                match stream.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => break,
                }
            }
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            let until = Instant::now() + Duration::from_micros((n as u64 * 37) % 400);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            drop(stream);
        }
    });
    let mut config = GatewayConfig::for_upstream(url);
    config.listener.workers = std::num::NonZeroUsize::MIN;
    let gateway = RunningGateway::start(config).await;
    let pooled = reqwest::Client::builder().build().unwrap();
    let total = 300;
    let mut failed = Vec::new();
    for i in 0..total {
        let response = pooled
            .get(gateway.url(&format!("/r/{i}")))
            .send()
            .await
            .unwrap();
        if response.status() != 200 {
            failed.push((i, response.status()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {total} failed: {failed:?}",
        failed.len()
    );
    assert_eq!(requests.load(std::sync::atomic::Ordering::SeqCst), total);
}

#[tokio::test]
async fn recorded_log_shape() {
    // The recorder itself: a body that arrives whole is marked completed.
    let upstream = RecordingUpstream::start().await;
    let response = client()
        .put(format!("{}/x?y=1", upstream.url()))
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(response.text().await.unwrap(), "ok");
    assert_eq!(
        upstream.log(),
        [Recorded {
            method: "PUT".to_owned(),
            target: "/x?y=1".to_owned(),
            body_len: 3,
            completed: true,
        }]
    );
}
