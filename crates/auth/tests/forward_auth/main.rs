//! Forward authentication end to end over real sockets on loopback: a client, the real
//! kestra-edge stack (`KestraEdge` with the layer, served by kestra-edge's `Server`), the
//! Kestra stand-in as upstream, and an auth service stand-in written here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod stand_in;

use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, StatusCode};
use kestra_edge::{server::Server, ForwardAuthLayer, KestraEdge, PrefixMode};
use kestra_edge_auth::ForwardAuthBuilder;
use kestra_edge_standin::{Echo, Standin, StandinConfig};
use stand_in::{encode, AuthStandin};
use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::oneshot,
};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

const SECRET_USER: &str = "admin@kestra.io";
const SECRET_PASSWORD: &str = "Kestra-S3cret-pw";
/// base64("admin@kestra.io:Kestra-S3cret-pw")
const SECRET_TOKEN: &str = "YWRtaW5Aa2VzdHJhLmlvOktlc3RyYS1TM2NyZXQtcHc=";

struct Gateway {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Gateway {
    /// The kestra-edge stack in front of `upstream` (context path `/kestra`, keep mode),
    /// with `auth`.
    async fn start(upstream: &Standin, auth: ForwardAuthLayer) -> Self {
        let edge = KestraEdge::builder(upstream.url())
            .context_path("/kestra", PrefixMode::Keep)
            .forward_auth(auth)
            .build::<kestra_edge::server::IncomingBody>()
            .unwrap();
        let server = Server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.serve(edge, async {
            let _ = stopped.await;
        }));
        Self { addr, _stop: stop }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn upstream() -> Standin {
    Standin::start(StandinConfig {
        event_interval: Duration::from_millis(10),
        ..StandinConfig::default()
    })
    .await
    .unwrap()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The auth layer asking `auth`, with the identity headers and Kestra's machine endpoints.
fn layer(auth: &AuthStandin) -> ForwardAuthBuilder {
    ForwardAuthLayer::builder()
        .url(auth.url())
        .auth_response_header("X-Auth-Request-User")
        .auth_response_header("X-Auth-Request-Email")
        .bypass("/kestra/ping")
        .bypass("/kestra/api/v1/executions/webhook/")
        .bypass("/kestra/api/v1/{tenant}/executions/webhook/")
        .bypass("/kestra/api/v1/echo/public")
}

async fn echo(response: reqwest::Response) -> Echo {
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// Sends `request` as raw bytes; the whole answer (the request asks `Connection: close`).
async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8(answer).unwrap()
}

fn raw_body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").unwrap().1
}

/// A credentials file of its own.
fn credentials_file(name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kestra-edge-auth-{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("kestra-credentials");
    std::fs::write(&file, content).unwrap();
    file
}

/// No header of `headers` carries Kestra's credentials, in any form.
fn assert_no_secret(headers: &HeaderMap) {
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        for secret in [SECRET_TOKEN, SECRET_PASSWORD, "BASIC_AUTH"] {
            assert!(
                !value.contains(secret),
                "response header {name}: {value} carries {secret}"
            );
        }
    }
}

#[tokio::test]
async fn allowed_by_session_cookie_or_bearer_token_with_forwarded_headers() {
    let auth = AuthStandin::start().await;
    let kestra = upstream().await;
    let gateway = Gateway::start(&kestra, layer(&auth).build().unwrap()).await;
    let http = client();

    let response = http
        .get(gateway.url("/kestra/api/v1/echo/flows?page=1"))
        .header("cookie", "session=good; theme=dark")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    // The 2xx's session refresh reaches the browser.
    let cookies: Vec<_> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(cookies, ["session=good; Path=/; Max-Age=3600; HttpOnly"]);
    let seen = echo(response).await;
    assert_eq!(seen.header_values("x-auth-request-user"), ["alice"]);
    assert_eq!(
        seen.header_values("x-auth-request-email"),
        ["alice@example.com"]
    );
    assert!(seen.header_values("x-not-copied").is_empty());

    let response = http
        .post(gateway.url("/kestra/api/v1/echo/bearer"))
        .header("authorization", "Bearer good-token")
        .body("hello")
        .send()
        .await
        .unwrap();
    let seen = echo(response).await;
    assert_eq!(seen.header_values("x-auth-request-user"), ["alice"]);
    // Without Kestra's credentials configured, the client's Authorization goes on.
    assert_eq!(seen.header_values("authorization"), ["Bearer good-token"]);

    let asked = auth.seen();
    assert_eq!(asked.len(), 2);
    let first = &asked[0];
    assert_eq!(first.method, http::Method::GET);
    assert_eq!(first.uri, "/oauth2/auth");
    assert_eq!(first.body_len, 0);
    assert_eq!(first.header("cookie"), Some("session=good; theme=dark"));
    assert_eq!(first.header("accept"), Some("application/json"));
    assert_eq!(first.header("x-forwarded-method"), Some("GET"));
    assert_eq!(first.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        first.header("x-forwarded-host"),
        Some(gateway.addr.to_string().as_str())
    );
    assert_eq!(
        first.header("x-forwarded-uri"),
        Some("/kestra/api/v1/echo/flows?page=1")
    );
    assert_eq!(first.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(first.header("host"), Some(auth.addr.to_string().as_str()));
    let second = &asked[1];
    assert_eq!(second.header("authorization"), Some("Bearer good-token"));
    assert_eq!(second.header("x-forwarded-method"), Some("POST"));
    assert_eq!(second.header("cookie"), None);
}

#[tokio::test]
async fn denied_answers_are_relayed_and_kestra_is_never_contacted() {
    let auth = AuthStandin::start().await;
    let kestra = upstream().await;
    let gateway = Gateway::start(&kestra, layer(&auth).build().unwrap()).await;
    let http = client();

    // A browser is sent to the login page, with the URL it asked for.
    let response = http
        .get(gateway.url("/kestra/ui/flows?filter=a%2Fb"))
        .header("accept", "text/html,application/xhtml+xml")
        .header("cookie", "session=expired")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let original = format!("http://{}/kestra/ui/flows?filter=a%2Fb", gateway.addr);
    assert_eq!(
        response.headers()["location"],
        format!("https://login.example.com/start?rd={}", encode(&original)).as_str()
    );
    assert_eq!(
        response.headers()["set-cookie"],
        "oauth_csrf=abc; Path=/; HttpOnly"
    );
    assert_eq!(response.headers()["content-type"], "text/html");
    assert_eq!(
        response.text().await.unwrap(),
        "<a href=\"/login\">sign in</a>"
    );

    // An API call gets 401 with the challenge.
    let response = http
        .get(gateway.url("/kestra/api/v1/echo/x"))
        .header("authorization", "Bearer wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"kestra\""
    );
    assert_eq!(response.text().await.unwrap(), "no session\n");

    // A POST with a body is refused too, its body never forwarded.
    let response = http
        .post(gateway.url("/kestra/api/v1/upload"))
        .body(vec![7u8; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    assert_eq!(auth.count(), 3);
    assert_eq!(
        kestra.stats().accepted_connections(),
        0,
        "Kestra was contacted"
    );
}

#[tokio::test]
async fn forged_identity_headers_are_dropped() {
    let auth = AuthStandin::start().await;
    let kestra = upstream().await;
    let gateway = Gateway::start(&kestra, layer(&auth).build().unwrap()).await;
    let http = client();

    let response = http
        .get(gateway.url("/kestra/api/v1/echo/forged"))
        .header("cookie", "session=good")
        .header("x-auth-request-user", "mallory")
        .header("X-Auth-Request-Email", "mallory@evil.example")
        .send()
        .await
        .unwrap();
    let seen = echo(response).await;
    assert_eq!(seen.header_values("x-auth-request-user"), ["alice"]);
    assert_eq!(
        seen.header_values("x-auth-request-email"),
        ["alice@example.com"]
    );

    // A bypassed path never carries a client's identity either.
    let response = http
        .get(gateway.url("/kestra/api/v1/echo/public/x"))
        .header("x-auth-request-user", "mallory")
        .send()
        .await
        .unwrap();
    let seen = echo(response).await;
    assert!(seen.header_values("x-auth-request-user").is_empty());
    // Forged X-Forwarded-* never reach the auth service: the forwarded layer ran first.
    let _ = http
        .get(gateway.url("/kestra/api/v1/echo/y"))
        .header("cookie", "session=good")
        .header("x-forwarded-for", "203.0.113.66")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-uri", "/kestra/api/v1/echo/public")
        .header("x-forwarded-method", "OPTIONS")
        .send()
        .await
        .unwrap();
    let last = auth.seen().pop().unwrap();
    assert_eq!(last.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        last.header("x-forwarded-host"),
        Some(gateway.addr.to_string().as_str())
    );
    assert_eq!(
        last.header("x-forwarded-uri"),
        Some("/kestra/api/v1/echo/y")
    );
    assert_eq!(last.header("x-forwarded-method"), Some("GET"));
}

#[tokio::test]
async fn forwarded_uri_is_byte_exact() {
    let auth = AuthStandin::start().await;
    let kestra = upstream().await;
    let gateway = Gateway::start(&kestra, layer(&auth).build().unwrap()).await;

    let target =
        "/kestra/api/v1/echo/ns%2Fflow/a%2fb/%7Euser?q=a%2Fb&empty=&plus=a+b&pct=%25&x=%2F";
    let answer = raw(
        gateway.addr,
        &format!(
            "GET {target} HTTP/1.1\r\nHost: kestra.example.com\r\nCookie: session=good\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = auth.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-forwarded-uri"), Some(target));
    assert_eq!(
        seen[0].header("x-forwarded-host"),
        Some("kestra.example.com")
    );
    // Kestra gets it unchanged too.
    let echoed: Echo = serde_json::from_str(
        raw_body(&answer)
            .trim_start_matches(|c: char| c != '{')
            .trim_end_matches(|c: char| c != '}'),
    )
    .unwrap();
    assert_eq!(echoed.uri, target);
}

#[tokio::test]
async fn auth_request_is_bodiless_and_the_post_body_reaches_kestra_intact() {
    let auth = AuthStandin::start().await;
    let kestra = upstream().await;
    let gateway = Gateway::start(&kestra, layer(&auth).build().unwrap()).await;
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let expected = {
        use sha2::Digest;
        kestra_edge_standin::hex(&sha2::Sha256::digest(&body))
    };
    // Streamed in chunks, no Content-Length.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        body.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let response = client()
        .post(gateway.url("/kestra/api/v1/upload"))
        .header("cookie", "session=good")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let upload: serde_json::Value = response.json().await.unwrap();
    assert_eq!(upload["length"], 3_000_000);
    assert_eq!(upload["sha256"], expected.as_str());

    let seen = auth.seen();
    assert_eq!(seen.len(), 1);
    let check = &seen[0];
    assert_eq!(check.method, http::Method::GET);
    assert_eq!(check.body_len, 0);
    assert_eq!(check.header("content-length"), None);
    assert_eq!(check.header("transfer-encoding"), None);
    assert_eq!(check.header("x-forwarded-method"), Some("POST"));
}

#[tokio::test]
async fn auth_service_down_gives_503_and_kestra_is_never_contacted() {
    // A port nothing listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let kestra = upstream().await;
    let auth = ForwardAuthLayer::builder()
        .url(format!("http://{closed}/oauth2/auth"))
        .build()
        .unwrap();
    let gateway = Gateway::start(&kestra, auth).await;
    let response = client()
        .get(gateway.url("/kestra/api/v1/echo/x"))
        .header("cookie", "session=good")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(kestra.stats().accepted_connections(), 0);
}

#[tokio::test]
async fn auth_service_slower_than_the_timeout_gives_503() {
    let auth = AuthStandin::start().await;
    auth.hang();
    let kestra = upstream().await;
    let layer = layer(&auth)
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let gateway = Gateway::start(&kestra, layer).await;
    let started = Instant::now();
    let response = client()
        .get(gateway.url("/kestra/api/v1/echo/x"))
        .header("cookie", "session=good")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    assert_eq!(auth.count(), 1);
    assert_eq!(kestra.stats().accepted_connections(), 0);
}

#[tokio::test]
async fn bypass_paths_skip_the_auth_service() {
    let auth = AuthStandin::start().await;
    let kestra = upstream().await;
    let gateway = Gateway::start(&kestra, layer(&auth).build().unwrap()).await;
    let http = client();

    let response = http.get(gateway.url("/kestra/ping")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "pong");
    // Webhooks, with and without a tenant: the stand-in has no such route, so Kestra's own
    // 404 shows that they were forwarded without asking.
    for path in [
        "/kestra/api/v1/executions/webhook/company.team/flow/key",
        "/kestra/api/v1/main/executions/webhook/company.team/flow/key",
        "/kestra//api/v1/executions/webhook/ns/flow/key",
        "/kestra/api/v1/executions/%77ebhook/ns/flow/key",
    ] {
        let response = http
            .post(gateway.url(path))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(auth.count(), 0);

    // Near misses are checked (and denied: no session).
    for path in [
        "/kestra/pingx",
        "/kestra/api/v1/executions/webhookx/ns/flow/key",
        "/kestra/api/v1/main/executions/ns/flow/key",
        "/kestra/api/v1/echo/publicity",
    ] {
        let response = http.get(gateway.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    assert_eq!(auth.count(), 4);
    // A dot segment never reaches a bypass (the prefix layer answers 400 first).
    let answer = raw(
        gateway.addr,
        "GET /kestra/api/v1/executions/webhook/%2e%2e/%2e%2e/flows HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
}

#[tokio::test]
async fn allow_decisions_are_cached_and_hits_counted_denials_never() {
    let auth = AuthStandin::start().await;
    let kestra = upstream().await;
    let layer = layer(&auth)
        .cache(Some(Duration::from_secs(60)))
        .build()
        .unwrap();
    let gateway = Gateway::start(&kestra, layer.clone()).await;
    let http = client();

    for _ in 0..5 {
        let response = http
            .get(gateway.url("/kestra/api/v1/echo/cached"))
            .header("cookie", "session=good")
            .send()
            .await
            .unwrap();
        let seen = echo(response).await;
        // Cached allows carry the identity too.
        assert_eq!(seen.header_values("x-auth-request-user"), ["alice"]);
    }
    assert_eq!(auth.count(), 1);
    assert_eq!(layer.cache_hits(), 4);

    // Another credential is another entry.
    let response = http
        .get(gateway.url("/kestra/api/v1/echo/cached"))
        .header("authorization", "Bearer good-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(auth.count(), 2);

    // Denials are asked every time.
    for _ in 0..3 {
        let response = http
            .get(gateway.url("/kestra/api/v1/echo/cached"))
            .header("cookie", "session=bad")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(auth.count(), 5);
    assert_eq!(layer.cache_hits(), 4);
}

#[tokio::test]
async fn sse_streams_are_checked_once_at_the_start() {
    let auth = AuthStandin::start().await;
    let kestra = upstream().await;
    let gateway = Gateway::start(&kestra, layer(&auth).build().unwrap()).await;
    let http = client();

    let response = http
        .get(gateway.url("/kestra/api/v1/main/executions/abc/follow?events=5&interval_ms=20"))
        .header("cookie", "session=good")
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = tokio::time::timeout(Duration::from_secs(10), response.text())
        .await
        .unwrap()
        .unwrap();
    assert!(text.starts_with("id: start"), "{text}");
    assert_eq!(text.matches("id: progress").count(), 5, "{text}");
    assert!(text.contains("id: end"), "{text}");
    assert_eq!(auth.count(), 1);

    let response = http
        .get(gateway.url("/kestra/api/v1/main/executions/abc/follow"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(kestra.stats().open_streams(), 0);
    assert_eq!(auth.count(), 2);
}

#[tokio::test]
async fn websocket_upgrades_are_checked_once_at_the_start() {
    let auth = AuthStandin::start().await;
    let kestra = upstream().await;
    let gateway = Gateway::start(&kestra, layer(&auth).build().unwrap()).await;
    let url = format!("ws://{}/kestra/api/v1/ws/echo", gateway.addr);

    let mut request = url.as_str().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("cookie", "session=good".parse().unwrap());
    let (mut socket, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..3 {
        socket
            .send(Message::text(format!("hello {i}")))
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(answer.into_text().unwrap().as_str(), format!("hello {i}"));
    }
    socket.close(None).await.unwrap();
    let seen = auth.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("x-forwarded-method"), Some("GET"));
    assert_eq!(
        seen[0].header("x-forwarded-uri"),
        Some("/kestra/api/v1/ws/echo")
    );

    let refused = tokio_tungstenite::connect_async(url.as_str()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        }
        other => panic!("expected 401, got {other:?}"),
    }
    assert_eq!(auth.count(), 2);
}

#[tokio::test]
async fn kestra_credentials_are_injected_and_never_reach_the_client() {
    let auth = AuthStandin::start().await;
    let kestra = upstream().await;
    let file = credentials_file("inject", &format!("{SECRET_USER}:{SECRET_PASSWORD}\n"));
    let layer = layer(&auth).kestra_credentials_file(&file).build().unwrap();
    let gateway = Gateway::start(&kestra, layer).await;
    let http = client();

    // A browser: its own Authorization and stale BASIC_AUTH cookie are replaced.
    let response = http
        .get(gateway.url("/kestra/api/v1/echo/browser"))
        .header(
            "cookie",
            "session=good; BASIC_AUTH=c3RhbGU6c3RhbGU=; theme=dark",
        )
        .header("authorization", "Basic c3RhbGU6c3RhbGU=")
        .send()
        .await
        .unwrap();
    assert_no_secret(response.headers());
    let flags: Vec<_> = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter(|v| v.to_str().unwrap().starts_with("kestraBasicAuthenticated="))
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        flags,
        ["kestraBasicAuthenticated=true; Path=/; SameSite=Strict"]
    );
    let seen = echo(response).await;
    let basic = format!("Basic {SECRET_TOKEN}");
    assert_eq!(seen.header_values("authorization"), [basic.as_str()]);
    assert_eq!(
        seen.header_values("cookie"),
        [format!("session=good; theme=dark; BASIC_AUTH={SECRET_TOKEN}").as_str()]
    );
    // The auth service saw the client's own credentials, never Kestra's.
    let asked = auth.seen().pop().unwrap();
    assert_eq!(
        asked.header("authorization"),
        Some("Basic c3RhbGU6c3RhbGU=")
    );

    // A browser that has the flag already is not sent it again.
    let response = http
        .get(gateway.url("/kestra/api/v1/echo/again"))
        .header("cookie", "session=good; kestraBasicAuthenticated=true")
        .send()
        .await
        .unwrap();
    assert_no_secret(response.headers());
    assert!(response
        .headers()
        .get_all("set-cookie")
        .iter()
        .all(|v| !v.to_str().unwrap().starts_with("kestraBasicAuthenticated")));
    let _ = echo(response).await;

    // An API client (bearer token, no cookies): the header only, so Kestra's CSRF filter
    // does not ask its POSTs for a token.
    let response = http
        .post(gateway.url("/kestra/api/v1/echo/api"))
        .header("authorization", "Bearer good-token")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_no_secret(response.headers());
    let seen = echo(response).await;
    assert_eq!(seen.header_values("authorization"), [basic.as_str()]);
    assert!(seen.header_values("cookie").is_empty());

    // Denials, 503s, SSE and bypassed answers carry no secret either; a bypassed request
    // is forwarded without Kestra's credentials.
    let response = http
        .get(gateway.url("/kestra/api/v1/echo/denied"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_no_secret(response.headers());
    let response = http
        .get(gateway.url("/kestra/api/v1/echo/public"))
        .header("authorization", "Bearer webhook-caller")
        .send()
        .await
        .unwrap();
    assert_no_secret(response.headers());
    let seen = echo(response).await;
    assert_eq!(
        seen.header_values("authorization"),
        ["Bearer webhook-caller"]
    );
    let response = http
        .get(gateway.url("/kestra/api/v1/executions/e1/follow?events=1&interval_ms=5"))
        .header("cookie", "session=good")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_no_secret(response.headers());
    let _ = response.text().await.unwrap();
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn kestra_credentials_file_is_read_again_when_it_changes() {
    let auth = AuthStandin::start().await;
    let kestra = upstream().await;
    let file = credentials_file("reload", "first@kestra.io:FirstPassw0rd\n");
    let layer = layer(&auth).kestra_credentials_file(&file).build().unwrap();
    let gateway = Gateway::start(&kestra, layer.clone()).await;
    let http = client();
    let authorization = || async {
        let response = http
            .get(gateway.url("/kestra/api/v1/echo/reload"))
            .header("authorization", "Bearer good-token")
            .send()
            .await
            .unwrap();
        echo(response).await.header_values("authorization")[0].to_owned()
    };
    // base64("first@kestra.io:FirstPassw0rd")
    assert_eq!(
        authorization().await,
        "Basic Zmlyc3RAa2VzdHJhLmlvOkZpcnN0UGFzc3cwcmQ="
    );

    // An atomic replace, as Kubernetes and editors do; the watch picks it up.
    let next = file.with_extension("next");
    std::fs::write(&next, "second@kestra.io:SecondPassw0rd\n").unwrap();
    std::fs::rename(&next, &file).unwrap();
    let expected = "Basic c2Vjb25kQGtlc3RyYS5pbzpTZWNvbmRQYXNzdzByZA==";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if authorization().await == expected {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new credentials were never used"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A broken file is refused; the last good credentials stay.
    std::fs::write(&file, "no colon here\n").unwrap();
    assert!(layer.kestra_credentials().unwrap().reload().is_err());
    assert_eq!(authorization().await, expected);
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn http2_cookie_fields_are_joined_for_the_auth_service_and_kestra() {
    use http_body_util::{BodyExt, Empty};
    let auth = AuthStandin::start().await;
    let kestra = upstream().await;
    let file = credentials_file("h2", &format!("{SECRET_USER}:{SECRET_PASSWORD}\n"));
    let layer = layer(&auth).kestra_credentials_file(&file).build().unwrap();
    let gateway = Gateway::start(&kestra, layer).await;

    // h2c with prior knowledge; HTTP/2 clients send each cookie as a field of its own.
    let stream = TcpStream::connect(gateway.addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(gateway.url("/kestra/api/v1/echo/h2?x=%2F"))
        .header("cookie", "session=good")
        .header("cookie", "theme=dark")
        .header("cookie", "BASIC_AUTH=c3RhbGU6c3RhbGU=")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_no_secret(response.headers());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen: Echo = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        seen.header_values("cookie"),
        [format!("session=good; theme=dark; BASIC_AUTH={SECRET_TOKEN}").as_str()]
    );
    let asked = auth.seen();
    assert_eq!(asked.len(), 1);
    assert_eq!(
        asked[0].header("cookie"),
        Some("session=good; theme=dark; BASIC_AUTH=c3RhbGU6c3RhbGU=")
    );
    assert_eq!(
        asked[0].header("x-forwarded-uri"),
        Some("/kestra/api/v1/echo/h2?x=%2F")
    );
    assert_eq!(
        asked[0].header("x-forwarded-host"),
        Some(gateway.addr.to_string().as_str())
    );
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn kestra_credentials_alone_need_no_auth_service() {
    let kestra = upstream().await;
    let file = credentials_file("alone", &format!("{SECRET_USER}:{SECRET_PASSWORD}\n"));
    let layer = ForwardAuthLayer::builder()
        .auth_response_header("Remote-User")
        .kestra_credentials_file(&file)
        .build()
        .unwrap();
    assert!(layer.is_enabled());
    let gateway = Gateway::start(&kestra, layer).await;
    let response = client()
        .get(gateway.url("/kestra/api/v1/echo/alone"))
        .header("cookie", "BASIC_AUTH=c3RhbGU6c3RhbGU=")
        .header("remote-user", "mallory")
        .send()
        .await
        .unwrap();
    assert_no_secret(response.headers());
    assert_eq!(
        response.headers()["set-cookie"],
        "kestraBasicAuthenticated=true; Path=/; SameSite=Strict"
    );
    let seen = echo(response).await;
    assert_eq!(
        seen.header_values("authorization"),
        [format!("Basic {SECRET_TOKEN}").as_str()]
    );
    assert_eq!(
        seen.header_values("cookie"),
        [format!("BASIC_AUTH={SECRET_TOKEN}").as_str()]
    );
    assert!(seen.header_values("remote-user").is_empty());
    std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
}

#[tokio::test]
async fn an_https_auth_service_is_verified_and_fails_closed_when_untrusted() {
    let generated = kestra_edge::tls::self_signed(&["127.0.0.1"]).unwrap();
    let auth = AuthStandin::start_tls(generated.certified.clone()).await;
    assert!(auth.url().starts_with("https://"));
    let kestra = upstream().await;
    let ca = credentials_file("auth-ca", &generated.cert_pem);

    // Trusted through the CA file: checked over TLS.
    let trusting = layer(&auth).auth_ca(&ca).build().unwrap();
    let gateway = Gateway::start(&kestra, trusting).await;
    let response = client()
        .get(gateway.url("/kestra/api/v1/echo/tls"))
        .header("cookie", "session=good")
        .send()
        .await
        .unwrap();
    let seen = echo(response).await;
    assert_eq!(seen.header_values("x-auth-request-user"), ["alice"]);
    let response = client()
        .get(gateway.url("/kestra/api/v1/echo/tls"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(auth.count(), 2);

    // Not trusted (the system's roots only): the handshake fails, 503, Kestra never asked.
    let kestra = upstream().await;
    let gateway = Gateway::start(&kestra, layer(&auth).build().unwrap()).await;
    let response = client()
        .get(gateway.url("/kestra/api/v1/echo/tls"))
        .header("cookie", "session=good")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(kestra.stats().accepted_connections(), 0);
    assert_eq!(auth.count(), 2);

    // A CA file without a certificate is refused when the layer is built.
    let empty = credentials_file("auth-ca-empty", "not a certificate\n");
    let err = layer(&auth).auth_ca(&empty).build().unwrap_err();
    assert!(err.to_string().contains("auth-ca-empty"), "{err}");
    for file in [ca, empty] {
        std::fs::remove_dir_all(file.parent().unwrap()).unwrap();
    }
}
