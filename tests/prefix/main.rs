//! The context-path layer end to end: the gateway's stack with a context path in keep and
//! strip mode, in front of the stand-in, with real clients and raw sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use kestra_edge_gateway::PrefixModeArg;
use kestra_edge_standin::{Echo, StandinConfig};
use kestra_edge_tests::{client, raw_body, raw_exchange, raw_status, Stack};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(5);

/// Kestra with `micronaut.server.context-path: /kestra`, the gateway keeping the prefix.
async fn keep() -> Stack {
    Stack::start_with(|c| {
        c.prefix.context_path = Some("/kestra".to_owned());
        c.prefix.mode = PrefixModeArg::Keep;
    })
    .await
}

/// A backend served at `/`, the gateway stripping `/kestra`.
async fn strip() -> Stack {
    let standin = StandinConfig {
        context_path: "/".to_owned(),
        ..StandinConfig::default()
    };
    Stack::start_standin_with(standin, |c| {
        c.prefix.context_path = Some("/kestra".to_owned());
        c.prefix.mode = PrefixModeArg::Strip;
    })
    .await
}

async fn raw_get(stack: &Stack, target: &str, host: &str) -> Vec<u8> {
    raw_exchange(
        stack.gateway.addr,
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        LIMIT,
    )
    .await
}

fn header<'a>(response: &'a [u8], name: &str) -> Vec<&'a str> {
    let text = std::str::from_utf8(response).unwrap_or_default();
    let head = text.split("\r\n\r\n").next().unwrap();
    head.lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
        .collect()
}

#[tokio::test]
async fn keep_mode_forwards_the_prefix_space_unchanged() {
    let stack = keep().await;
    let response = raw_get(&stack, "/kestra", "kestra.example.com").await;
    assert_eq!(raw_status(&response), 302);
    assert_eq!(header(&response, "location"), ["/kestra/ui/"]);

    let response = raw_get(&stack, "/kestra/api/v1/echo/a%2Fb?q=%2F&x=1;y", "k").await;
    assert_eq!(raw_status(&response), 200);
    let echo: Echo = serde_json::from_slice(raw_body(&response)).unwrap();
    assert_eq!(echo.uri, "/kestra/api/v1/echo/a%2Fb?q=%2F&x=1;y");
    assert!(echo.header_values("x-forwarded-prefix").is_empty());

    // A real browser-like client follows Kestra's redirect to the UI.
    let response = client().get(stack.url("/kestra/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.url().path(), "/kestra/ui/");
}

#[tokio::test]
async fn outside_the_prefix_is_404_and_never_forwarded() {
    let stack = keep().await;
    for target in [
        "/",
        "/ui/",
        "/kestraX/ping",
        "/kestra.x",
        "/KESTRA/ping",
        "/api/v1/echo/x",
    ] {
        let response = raw_get(&stack, target, "k").await;
        assert_eq!(raw_status(&response), 404, "{target}");
        assert_eq!(raw_body(&response), b"not found\n");
    }
    assert_eq!(
        stack.standin.stats().accepted_connections(),
        0,
        "a request outside the prefix reached the upstream"
    );
}

#[tokio::test]
async fn dot_segments_and_encoded_separators_are_400_and_never_forwarded() {
    for stack in [keep().await, strip().await] {
        for target in [
            "/kestra/../x",
            "/kestra/%2e%2e/x",
            "/kestra/.%2e/x",
            "/kestra/x%2F..%2Fy",
            "/kestra/..;x/y",
            "/kestra/a/%2e/b",
            "/kestra/a%00b",
            "/kestra/a%5Cb",
        ] {
            let response = raw_get(&stack, target, "k").await;
            assert_eq!(raw_status(&response), 400, "{target}");
            assert_eq!(raw_body(&response), b"invalid path\n");
        }
        assert_eq!(stack.standin.stats().accepted_connections(), 0);
    }
}

#[tokio::test]
async fn strip_mode_removes_the_prefix_and_says_so() {
    let stack = strip().await;
    for (target, forwarded) in [
        (
            "/kestra/api/v1/echo/a%2Fb?q=%2F",
            "/api/v1/echo/a%2Fb?q=%2F",
        ),
        ("/kestra/api/v1/echo/x", "/api/v1/echo/x"),
    ] {
        let response = raw_get(&stack, target, "kestra.example.com").await;
        assert_eq!(raw_status(&response), 200, "{target}");
        let echo: Echo = serde_json::from_slice(raw_body(&response)).unwrap();
        assert_eq!(echo.uri, forwarded);
        assert_eq!(echo.header_values("x-forwarded-prefix"), ["/kestra"]);
        assert_eq!(echo.header_values("host"), ["kestra.example.com"]);
    }
}

#[tokio::test]
async fn strip_mode_maps_redirects_and_cookies_back_under_the_prefix() {
    let stack = strip().await;
    // The backend's own `/` → `/ui/` redirect.
    let response = raw_get(&stack, "/kestra", "kestra.example.com").await;
    assert_eq!(raw_status(&response), 302);
    assert_eq!(header(&response, "location"), ["/kestra/ui/"]);

    let upstream = stack.standin.addr();
    let cases = [
        ("/ui/flows?page=2", "/kestra/ui/flows?page=2"),
        // An absolute URL to the upstream never leaks its internal address.
        (&*format!("http://{upstream}/ui/"), "/kestra/ui/"),
        // An absolute URL to the public host keeps its origin.
        (
            "https://kestra.example.com/ui/",
            "https://kestra.example.com/kestra/ui/",
        ),
        ("https://other.example/ui/", "https://other.example/ui/"),
        ("ui/relative", "ui/relative"),
    ]
    .map(|(to, expected)| (to.to_owned(), expected));
    for (to, expected) in cases {
        let target = format!("/kestra/api/v1/redirect?to={}", urlencode(&to));
        let response = raw_get(&stack, &target, "kestra.example.com").await;
        assert_eq!(raw_status(&response), 302, "{to}");
        assert_eq!(header(&response, "location"), [expected], "{to}");
        assert_eq!(header(&response, "content-location"), [expected], "{to}");
        assert_eq!(
            header(&response, "refresh"),
            [format!("0; url={expected}").as_str()],
            "{to}"
        );
        assert_eq!(
            header(&response, "set-cookie"),
            [
                "SESSION=standin; Path=/kestra; HttpOnly",
                "prefs=1; Path=/kestra/api"
            ]
        );
    }

    // A real client follows the mapped redirect into the prefixed UI.
    let response = client().get(stack.url("/kestra/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.url().path(), "/kestra/ui/");
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
