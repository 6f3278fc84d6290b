//! The forwarded-headers layer end to end: the gateway's stack in front of the stand-in's
//! echo, driven over raw sockets from 127.0.0.1 and ::1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use kestra_edge_gateway::{GatewayConfig, PrefixModeArg};
use kestra_edge_standin::{Echo, Standin, StandinConfig};
use kestra_edge_tests::{raw_body, raw_echo, raw_exchange, raw_status, RunningGateway, Stack};
use std::{net::SocketAddr, time::Duration};

const LIMIT: Duration = Duration::from_secs(5);

async fn echo(addr: SocketAddr, head_lines: &str) -> Echo {
    raw_echo(
        addr,
        &format!("GET /kestra/api/v1/echo/f HTTP/1.1\r\n{head_lines}Connection: close\r\n\r\n"),
    )
    .await
}

fn one<'a>(echo: &'a Echo, name: &str) -> &'a str {
    let values = echo.header_values(name);
    assert_eq!(values.len(), 1, "{name}: {values:?}");
    values[0]
}

const SPOOF: &str = "Host: kestra.example.com\r\n\
    X-Forwarded-For: 6.6.6.6\r\n\
    X-Real-IP: 6.6.6.6\r\n\
    Forwarded: for=6.6.6.6;proto=https;host=evil.example\r\n\
    X-Forwarded-Proto: https\r\n\
    X-Forwarded-Protocol: https\r\n\
    X-Forwarded-Host: evil.example\r\n\
    X-Forwarded-Port: 443\r\n\
    X-Forwarded-Prefix: /evil\r\n\
    X_Forwarded_For: 6.6.6.6\r\n";

#[tokio::test]
async fn an_untrusted_client_cannot_choose_its_address() {
    let stack = Stack::start().await;
    let echo = echo(stack.gateway.addr, SPOOF).await;
    assert_eq!(one(&echo, "x-real-ip"), "127.0.0.1");
    assert_eq!(one(&echo, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(one(&echo, "x-forwarded-proto"), "http");
    assert_eq!(one(&echo, "x-forwarded-protocol"), "http");
    assert_eq!(one(&echo, "x-forwarded-host"), "kestra.example.com");
    // The port the client addressed (none in Host: 80), never the gateway's listening port.
    assert_eq!(one(&echo, "x-forwarded-port"), "80");
    assert_eq!(
        one(&echo, "forwarded"),
        "for=127.0.0.1;proto=http;host=kestra.example.com"
    );
    assert!(echo.header_values("x-forwarded-prefix").is_empty());
    assert!(echo.headers.iter().all(|(n, _)| !n.contains('_')));
}

#[tokio::test]
async fn behind_a_port_mapping_kestra_is_told_the_port_the_client_used() {
    // Docker's `-p 8080:<gateway port>`: the browser addressed 8080.
    let stack = Stack::start().await;
    let echo = echo(stack.gateway.addr, "Host: kestra.example.com:8080\r\n").await;
    assert_ne!(stack.gateway.addr.port(), 8080);
    assert_eq!(one(&echo, "x-forwarded-host"), "kestra.example.com:8080");
    assert_eq!(one(&echo, "x-forwarded-port"), "8080");
    assert_eq!(
        one(&echo, "forwarded"),
        "for=127.0.0.1;proto=http;host=\"kestra.example.com:8080\""
    );
}

#[tokio::test]
async fn a_trusted_proxy_reports_the_client() {
    let stack =
        Stack::start_with(|c| c.forwarded.trusted_proxies = vec!["127.0.0.0/8".to_owned()]).await;
    let echo = echo(
        stack.gateway.addr,
        "Host: internal:8000\r\n\
         X-Forwarded-For: 6.6.6.6, 203.0.113.7\r\n\
         X-Forwarded-For: 127.0.0.2\r\n\
         X-Forwarded-Proto: https\r\n\
         X-Forwarded-Host: kestra.example.com\r\n",
    )
    .await;
    assert_eq!(one(&echo, "x-real-ip"), "203.0.113.7");
    assert_eq!(
        one(&echo, "x-forwarded-for"),
        "203.0.113.7, 127.0.0.2, 127.0.0.1"
    );
    assert_eq!(one(&echo, "x-forwarded-proto"), "https");
    assert_eq!(one(&echo, "x-forwarded-host"), "kestra.example.com");
    assert_eq!(one(&echo, "x-forwarded-port"), "443");
    assert_eq!(
        one(&echo, "forwarded"),
        "for=203.0.113.7;proto=https;host=kestra.example.com, for=127.0.0.2, for=127.0.0.1"
    );
    // The Host the upstream sees is still the one the hop sent (nginx's `Host $http_host`).
    assert_eq!(one(&echo, "host"), "internal:8000");
}

#[tokio::test]
async fn an_ipv6_client_is_bracketed_and_quoted_in_forwarded() {
    let standin = Standin::start(StandinConfig::default()).await.unwrap();
    let mut config = GatewayConfig::for_upstream(standin.url());
    config.listener.listen = "[::1]:0".parse().unwrap();
    let gateway = RunningGateway::start(config).await;
    let echo = echo(gateway.addr, "Host: [::1]\r\n").await;
    assert_eq!(one(&echo, "x-real-ip"), "::1");
    assert_eq!(one(&echo, "x-forwarded-for"), "::1");
    assert_eq!(
        one(&echo, "forwarded"),
        "for=\"[::1]\";proto=http;host=\"[::1]\""
    );
}

#[tokio::test]
async fn host_must_be_present_single_and_valid() {
    let stack = Stack::start().await;
    for head in [
        "GET /kestra/ping HTTP/1.1\r\nConnection: close\r\n\r\n",
        "GET /kestra/ping HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n",
        "GET /kestra/ping HTTP/1.1\r\nHost: user@evil\r\nConnection: close\r\n\r\n",
    ] {
        let response = raw_exchange(stack.gateway.addr, head.as_bytes(), LIMIT).await;
        let status = raw_status(&response);
        assert_eq!(status, 400, "{head:?}");
    }
    assert_eq!(stack.standin.stats().accepted_connections(), 0);

    // HTTP/1.0 may omit Host.
    let response = raw_exchange(
        stack.gateway.addr,
        b"GET /kestra/ping HTTP/1.0\r\n\r\n",
        LIMIT,
    )
    .await;
    assert_eq!(raw_status(&response), 200);
}

#[tokio::test]
async fn strip_mode_sends_the_gateways_own_prefix() {
    let standin = StandinConfig {
        context_path: "/".to_owned(),
        ..StandinConfig::default()
    };
    let stack = Stack::start_standin_with(standin, |c| {
        c.prefix.context_path = Some("/kestra".to_owned());
        c.prefix.mode = PrefixModeArg::Strip;
    })
    .await;
    let response = raw_exchange(
        stack.gateway.addr,
        b"GET /kestra/api/v1/echo/p HTTP/1.1\r\nHost: h\r\nX-Forwarded-Prefix: /evil\r\nConnection: X-Forwarded-Prefix, close\r\n\r\n",
        LIMIT,
    )
    .await;
    let echo: Echo = serde_json::from_slice(raw_body(&response)).unwrap();
    assert_eq!(one(&echo, "x-forwarded-prefix"), "/kestra");
}
