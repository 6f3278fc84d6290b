//! Upgrade passthrough end to end: real WebSocket clients (tokio-tungstenite) through the
//! gateway's stack to the stand-in's WebSocket echo, scripted upstreams for the failure
//! cases, and an HTTP/2 extended CONNECT client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use futures_util::{SinkExt, StreamExt};
use kestra_edge_gateway::GatewayConfig;
use kestra_edge_tests::{
    eventually, raw_body, raw_echo, raw_exchange, raw_status, RawUpstream, RunningGateway, Stack,
};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::{
    connect_async,
    tungstenite::{
        protocol::{frame::coding::CloseCode, CloseFrame, Role},
        Message,
    },
    WebSocketStream,
};

const LIMIT: Duration = Duration::from_secs(10);
const ECHO: &str = "/kestra/api/v1/ws/echo";

async fn ws(
    stack: &Stack,
) -> WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("ws://{}{ECHO}", stack.gateway.addr);
    let (socket, response) = connect_async(url).await.unwrap();
    assert_eq!(response.status(), 101);
    socket
}

#[tokio::test]
async fn websocket_messages_pass_both_ways() {
    let stack = Stack::start().await;
    let mut socket = ws(&stack).await;
    socket.send(Message::text("hello kestra")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("hello kestra")
    );
    socket
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    socket
        .send(Message::Ping(b"ping".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::Pong(b"ping".to_vec().into())
    );
    // A 10 MiB message, byte for byte.
    let big: Vec<u8> = (0..10 << 20).map(|i| (i % 253) as u8).collect();
    socket.send(Message::binary(big.clone())).await.unwrap();
    match socket.next().await.unwrap().unwrap() {
        Message::Binary(data) => assert!(data[..] == big[..], "10 MiB message changed"),
        other => panic!("{other:?}"),
    }
    // Close codes travel end to end.
    socket
        .close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    match socket.next().await.unwrap().unwrap() {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode::Away);
            assert_eq!(frame.reason, "bye");
        }
        other => panic!("{other:?}"),
    }
    let stats = stack.standin.stats().clone();
    assert!(eventually(LIMIT, || stats.open_websockets() == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_tunnels() {
    let stack = Stack::start().await;
    let mut sockets = Vec::new();
    for _ in 0..1000 {
        sockets.push(ws(&stack).await);
    }
    assert!(eventually(LIMIT, || stack.standin.stats().open_websockets() == 1000).await);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut socket) in sockets.into_iter().enumerate() {
        tasks.spawn(async move {
            let text = format!("tunnel {i}");
            socket.send(Message::text(text.clone())).await.unwrap();
            assert_eq!(socket.next().await.unwrap().unwrap(), Message::text(text));
            socket.close(None).await.unwrap();
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let stats = stack.standin.stats().clone();
    assert!(eventually(LIMIT, || stats.open_websockets() == 0).await);
}

// `close` too, so that each answer ends the exchange instead of a read timeout.
const UPGRADE: &str = "GET /kestra/api/v1/ws/echo HTTP/1.1\r\nHost: k\r\nConnection: Upgrade, close\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";

#[tokio::test]
async fn an_upstream_refusal_is_relayed_without_a_tunnel() {
    let upstream = RawUpstream::answering(
        b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\nConnection: close\r\n\r\nno ws\n",
    )
    .await;
    let gateway = RunningGateway::start(GatewayConfig::for_upstream(upstream.url())).await;
    let response = raw_exchange(gateway.addr, UPGRADE.as_bytes(), LIMIT).await;
    assert_eq!(raw_status(&response), 403);
    assert_eq!(raw_body(&response), b"no ws\n");
}

#[tokio::test]
async fn a_forged_accept_is_502_and_nothing_is_tunnelled() {
    for answer in [
        &b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: Zm9yZ2Vk\r\n\r\nleaked"[..],
        &b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\nleaked"[..],
    ] {
        let upstream = RawUpstream::start(move |mut stream| async move {
            let _ = stream.write_all(answer).await;
            std::future::pending::<()>().await;
        })
        .await;
        let gateway = RunningGateway::start(GatewayConfig::for_upstream(upstream.url())).await;
        let response = raw_exchange(gateway.addr, UPGRADE.as_bytes(), LIMIT).await;
        assert_eq!(raw_status(&response), 502, "{}", String::from_utf8_lossy(&response));
        assert!(!String::from_utf8_lossy(&response).contains("leaked"));
    }
}

#[tokio::test]
async fn h2c_and_unknown_upgrades_never_reach_the_upstream() {
    let stack = Stack::start().await;
    for offer in [
        "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
        "Connection: Upgrade\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
        "Connection: upgrade\r\nUpgrade: foo/2\r\n",
    ] {
        let echo = raw_echo(
            stack.gateway.addr,
            &format!("GET /kestra/api/v1/echo/u HTTP/1.1\r\nHost: k\r\n{offer}Connection: close\r\n\r\n"),
        )
        .await;
        for name in ["upgrade", "http2-settings"] {
            assert!(echo.header_values(name).is_empty(), "{name} reached the upstream: {offer:?}");
        }
        assert!(
            echo.header_values("connection").is_empty(),
            "{:?}",
            echo.headers
        );
    }
}

#[tokio::test]
async fn malformed_websocket_upgrades_are_400() {
    let stack = Stack::start().await;
    for request in [
        UPGRADE.replace("GET", "POST"),
        UPGRADE.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""),
        UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"),
        UPGRADE.replace("Version: 13", "Version: 8"),
    ] {
        let response = raw_exchange(stack.gateway.addr, request.as_bytes(), LIMIT).await;
        assert_eq!(raw_status(&response), 400, "{request:?}");
    }
    assert_eq!(stack.standin.stats().accepted_connections(), 0);
}

#[tokio::test]
async fn a_silent_tunnel_is_closed_at_the_idle_timeout() {
    let stack =
        Stack::start_with(|c| c.streams.tunnel_idle_timeout = Some(Duration::from_millis(300)))
            .await;
    let mut socket = ws(&stack).await;
    assert!(eventually(LIMIT, || stack.standin.stats().open_websockets() == 1).await);
    assert!(eventually(LIMIT, || stack.gateway.tunnels.open() == 1).await);
    let started = std::time::Instant::now();
    // Silent: the next thing the client sees is the end of the connection.
    let next = tokio::time::timeout(LIMIT, socket.next()).await.unwrap();
    assert!(
        !matches!(next, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{next:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let stats = stack.standin.stats().clone();
    assert!(eventually(LIMIT, || stats.open_websockets() == 0).await);
    assert!(eventually(LIMIT, || stack.gateway.tunnels.open() == 0).await);
}

#[tokio::test]
async fn a_client_that_vanishes_frees_the_upstream_socket() {
    let stack = Stack::start().await;
    let socket = ws(&stack).await;
    assert!(eventually(LIMIT, || stack.standin.stats().open_websockets() == 1).await);
    // No close frame: the TCP connection just goes.
    drop(socket);
    let stats = stack.standin.stats().clone();
    assert!(eventually(LIMIT, || stats.open_websockets() == 0).await);
}

#[tokio::test]
async fn http2_extended_connect_reaches_the_websocket_echo() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let stack = Stack::start().await;
    let stream = tokio::net::TcpStream::connect(stack.gateway.addr)
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let uri = format!("http://{}{ECHO}", stack.gateway.addr);
    // The server's SETTINGS (with ENABLE_CONNECT_PROTOCOL) must have arrived before an
    // extended CONNECT may be sent; until then the client refuses it locally.
    let mut response = None;
    for _ in 0..100 {
        sender.ready().await.unwrap();
        let mut request = http::Request::connect(uri.as_str())
            .header("sec-websocket-version", "13")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        request
            .extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        if let Ok(r) = sender.send_request(request).await {
            response = Some(r);
            break;
        }
        tokio::task::yield_now().await;
    }
    let mut response = response.expect("extended CONNECT accepted");
    assert_eq!(response.status(), 200);
    let upgraded = hyper::upgrade::on(&mut response).await.unwrap();
    let mut socket =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    socket.send(Message::text("over h2")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("over h2")
    );
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn a_fin_is_passed_on_and_the_other_direction_drains() {
    use tokio::io::AsyncReadExt;
    // After the handshake, the upstream echoes until the client's FIN, then sends a goodbye
    // and closes: the goodbye must still reach the half-closed client.
    let upstream = RawUpstream::start(|mut stream| async move {
        let _ = stream
            .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
            .await;
        let mut received = Vec::new();
        let _ = stream.read_to_end(&mut received).await;
        let _ = stream.write_all(&received).await;
        let _ = stream.write_all(b" and goodbye").await;
    })
    .await;
    let gateway = RunningGateway::start(GatewayConfig::for_upstream(upstream.url())).await;
    let mut client = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    let upgrade = UPGRADE.replace("Upgrade, close", "Upgrade");
    client.write_all(upgrade.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    client.write_all(b"raw bytes, no reframing").await.unwrap();
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, client.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rest, b"raw bytes, no reframing and goodbye");
    assert!(eventually(LIMIT, || gateway.tunnels.open() == 0).await);
}
