//! A small Kestra-like webserver for kestra-edge's tests, benchmarks and demo.
//!
//! It answers the paths a proxy in front of Kestra must carry, under a context path
//! (default `/kestra`, like Kestra run with `micronaut.server.context-path: /kestra`):
//!
//! | route | answer |
//! |---|---|
//! | `{ctx}/` | `302` to `{ctx}/ui/`, the target Kestra's `RedirectController` sends (Kestra answers `307`) |
//! | `{ctx}/ui/…` | a small HTML page |
//! | `{ctx}/ping` | `pong` |
//! | `{ctx}/api/v1/configs` | JSON like Kestra's `MiscController.Configuration`: `url` is [`StandinConfig::kestra_url`] (absent when unset), plus `version`, `edition`, `uuid`, `preview`… |
//! | `{ctx}/api/v1/echo/…` (any method) | JSON: method, version, raw path and query, headers, body length and SHA-256, trailers |
//! | `{ctx}/api/v1/[{tenant}/]executions/{id}/follow`, `…/follow-dependencies`, `{ctx}/api/v1/[{tenant}/]logs/{id}/follow` | Server-Sent Events, `id: start`, `progress`…, `end`; each `data:` holds `sent_at_us`; query `events=N` (0: never end), `interval_ms=M`, `pad=B` bytes of padding per event |
//! | `{ctx}/api/v1/ws/echo` | WebSocket echo |
//! | `{ctx}/api/v1/slow?head_ms=H&body_ms=B` | waits `H` ms before the head, sends `first\n`, waits `B` ms, sends `last\n` |
//! | `{ctx}/api/v1/upload` (POST, PUT) | JSON: length and SHA-256 of the streamed body |
//! | `{ctx}/api/v1/download?bytes=N` | `N` bytes of [`download_pattern`], streamed |
//! | `{ctx}/api/v1/trailers` | a chunked body followed by a `x-checksum` trailer |
//! | `{ctx}/api/v1/redirect?to=URL` | `302` with `Location`, `Content-Location` and `Refresh` set to `URL`, and two cookies with `Path={ctx}/` and `Path={ctx}/api` |
//!
//! Replicas, for balancing tests: with [`StandinConfig::replica`] every answer carries
//! `x-replica: NAME`; with [`StandinConfig::management`] a second listener answers
//! `/health/readiness` (like Kestra's management port 8081) with 200 or, once a test calls
//! [`StandinControl::set_ready`]`(false)`, 503; [`StandinControl::set_delay`] slows every
//! answer of the main port; [`IsolatedStandin`] runs on a runtime of its own that
//! [`IsolatedStandin::kill`] drops at once, closing its listeners and connections
//! mid-answer, like a killed process.
//!
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let standin = kestra_edge_standin::Standin::start(Default::default()).await?;
//! println!("Kestra stand-in at {}", standin.url());
//! # Ok(())
//! # }
//! ```

use axum::{
    body::Body,
    extract::{ws::WebSocketUpgrade, OriginalUri, Query, Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::{any, get, post},
    Json, Router,
};
use bytes::Bytes;
use futures_util::stream;
use http_body::Frame;
use http_body_util::BodyExt;
use kestra_edge_server::{Connections, Server};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::{
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, OnceLock, RwLock,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::{sync::oneshot, task::JoinHandle};

/// How a [`Standin`] behaves.
#[derive(Debug, Clone)]
pub struct StandinConfig {
    /// The context path (`/kestra`), or `/` for none.
    pub context_path: String,
    /// Default gap between two SSE events.
    pub event_interval: Duration,
    /// Default number of `progress` events between `start` and `end`.
    pub events: u64,
    /// Where to listen (default `127.0.0.1:0`).
    pub listen: SocketAddr,
    /// The name sent as `x-replica` on every answer (default none).
    pub replica: Option<String>,
    /// Where the management listener (`/health/readiness`, `/health/liveness`) listens
    /// (default: none).
    pub management: Option<SocketAddr>,
    /// Kestra's `kestra.url`, answered as `url` by `{ctx}/api/v1/configs` (default: none,
    /// and then the key is absent, as Kestra's `serialization-inclusion: non_null` leaves it).
    /// [`StandinControl::set_kestra_url`] changes it on a running stand-in.
    pub kestra_url: Option<String>,
}

impl Default for StandinConfig {
    fn default() -> Self {
        Self {
            context_path: "/kestra".to_owned(),
            event_interval: Duration::from_millis(500),
            events: 10,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            replica: None,
            management: None,
            kestra_url: None,
        }
    }
}

/// Switches a running stand-in's readiness, speed and `kestra.url`, for tests.
#[derive(Debug, Clone, Default)]
pub struct StandinControl {
    not_ready: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    kestra_url: Arc<RwLock<Option<String>>>,
}

impl StandinControl {
    fn for_config(config: &StandinConfig) -> Self {
        Self {
            kestra_url: Arc::new(RwLock::new(config.kestra_url.clone())),
            ..Self::default()
        }
    }

    /// What `{ctx}/api/v1/configs` answers as `url` from now on (`None`: no `url` key),
    /// e.g. the gateway's address once it is bound.
    pub fn set_kestra_url(&self, url: Option<String>) {
        // A poisoned lock still holds a usable Option; take it back.
        let mut current = self.kestra_url.write().unwrap_or_else(|e| e.into_inner());
        *current = url;
    }

    fn kestra_url(&self) -> Option<String> {
        self.kestra_url
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether `/health/readiness` answers 200 (`true`, the start) or 503.
    pub fn set_ready(&self, ready: bool) {
        self.not_ready.store(!ready, Ordering::Release);
    }

    /// Delays every answer of the main port by `delay` (zero: none, the start).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::Release);
    }
}

/// The management port's routes: Kestra's health endpoints.
fn management_router(control: StandinControl) -> Router {
    Router::new()
        .route(
            "/health/readiness",
            get(move || {
                let control = control.clone();
                async move {
                    if control.not_ready.load(Ordering::Acquire) {
                        (StatusCode::SERVICE_UNAVAILABLE, "{\"status\":\"DOWN\"}")
                    } else {
                        (StatusCode::OK, "{\"status\":\"UP\"}")
                    }
                }
            }),
        )
        .route("/health/liveness", get(|| async { "{\"status\":\"UP\"}" }))
}

/// Names the replica on every answer and applies the configured delay.
async fn replica_layer(
    State((name, control)): State<(Option<HeaderValue>, StandinControl)>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let delay = control.delay_ms.load(Ordering::Acquire);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut response = next.run(req).await;
    if let Some(name) = name {
        response.headers_mut().insert("x-replica", name);
    }
    response
}

/// Live counts of a stand-in, for tests that check what reached the upstream.
#[derive(Debug, Clone, Default)]
pub struct StandinStats {
    open_streams: Arc<AtomicUsize>,
    open_websockets: Arc<AtomicUsize>,
    connections: Connections,
}

impl StandinStats {
    /// SSE streams currently open.
    pub fn open_streams(&self) -> usize {
        self.open_streams.load(Ordering::Acquire)
    }

    /// WebSocket sessions currently open (upgraded sockets leave the connection count).
    pub fn open_websockets(&self) -> usize {
        self.open_websockets.load(Ordering::Acquire)
    }

    /// TCP connections currently open, not counting upgraded ones.
    pub fn open_connections(&self) -> usize {
        self.connections.open()
    }

    /// TCP connections accepted since start.
    pub fn accepted_connections(&self) -> u64 {
        self.connections.accepted()
    }
}

/// A running stand-in; it stops when dropped.
#[derive(Debug)]
pub struct Standin {
    addr: SocketAddr,
    management_addr: Option<SocketAddr>,
    context_path: String,
    stats: StandinStats,
    control: StandinControl,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<io::Result<()>>,
}

impl Standin {
    /// Binds `config.listen` and serves in the background.
    pub async fn start(config: StandinConfig) -> io::Result<Self> {
        let server = Server::bind(config.listen)
            .await?
            .shutdown_grace(Duration::ZERO);
        let addr = server.local_addr()?;
        let stats = StandinStats {
            open_streams: Arc::default(),
            open_websockets: Arc::default(),
            connections: server.connections(),
        };
        let context_path = config.context_path.clone();
        let control = StandinControl::for_config(&config);
        let (stop, stopped) = oneshot::channel::<()>();
        let mut management_addr = None;
        let stopped = match config.management {
            Some(listen) => {
                let management = Server::bind(listen).await?.shutdown_grace(Duration::ZERO);
                management_addr = Some(management.local_addr()?);
                let (stop_management, management_stopped) = oneshot::channel::<()>();
                tokio::spawn(management.serve(management_router(control.clone()), async {
                    let _ = management_stopped.await;
                }));
                Box::pin(async move {
                    let _ = stopped.await;
                    let _ = stop_management.send(());
                })
                    as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
            }
            None => Box::pin(async move {
                let _ = stopped.await;
            }),
        };
        let name = config
            .replica
            .as_deref()
            .and_then(|n| HeaderValue::from_str(n).ok());
        let app = app(config, stats.clone(), control.clone()).layer(
            axum::middleware::from_fn_with_state((name, control.clone()), replica_layer),
        );
        let task = tokio::spawn(server.serve(app, stopped));
        Ok(Self {
            addr,
            management_addr,
            context_path,
            stats,
            control,
            stop: Some(stop),
            task,
        })
    }

    /// The management listener's address, when [`StandinConfig::management`] is set.
    pub fn management_addr(&self) -> Option<SocketAddr> {
        self.management_addr
    }

    /// The switches of readiness and speed.
    pub fn control(&self) -> &StandinControl {
        &self.control
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://127.0.0.1:port`, to give a proxy as upstream.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its context path.
    pub fn context_path(&self) -> &str {
        &self.context_path
    }

    /// Its live counts.
    pub fn stats(&self) -> &StandinStats {
        &self.stats
    }

    /// Serves until the process ends.
    pub async fn wait(mut self) -> io::Result<()> {
        let stop = self.stop.take();
        let result = (&mut self.task).await.unwrap_or(Ok(()));
        drop(stop);
        result
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The stand-in's routes, for serving it some other way.
pub fn router(config: StandinConfig, stats: StandinStats) -> Router {
    let control = StandinControl::for_config(&config);
    app(config, stats, control)
}

fn app(config: StandinConfig, stats: StandinStats, control: StandinControl) -> Router {
    let ctx = match config.context_path.trim_end_matches('/') {
        "" => String::new(),
        ctx => ctx.to_owned(),
    };
    let ui = format!("{ctx}/ui/");
    let follow = || get(follow);
    let api = Router::new()
        .route("/echo", any(echo))
        .route("/echo/{*rest}", any(echo))
        .route("/executions/{id}/follow", follow())
        .route("/executions/{id}/follow-dependencies", follow())
        .route("/logs/{id}/follow", follow())
        .route("/{tenant}/executions/{id}/follow", follow())
        .route("/{tenant}/executions/{id}/follow-dependencies", follow())
        .route("/{tenant}/logs/{id}/follow", follow())
        .route("/ws/echo", get(ws_echo))
        .route("/slow", get(slow))
        .route("/upload", post(upload).put(upload))
        .route("/download", get(download))
        .route("/trailers", get(trailers))
        .route("/redirect", get(redirect))
        .route("/configs", get(configs));
    let app = Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route("/ui/", get(ui_page))
        .route("/ui/{*rest}", get(ui_page))
        .nest("/api/v1", api)
        .with_state(Arc::new(AppState {
            config,
            stats,
            control,
        }));
    let redirect = get(move || async move { (StatusCode::FOUND, [(header::LOCATION, ui)]) });
    if ctx.is_empty() {
        app.route("/", redirect)
    } else {
        Router::new()
            .route(&ctx, redirect.clone())
            .route(&format!("{ctx}/"), redirect)
            .nest(&ctx, app)
    }
}

#[derive(Debug)]
struct AppState {
    config: StandinConfig,
    stats: StandinStats,
    control: StandinControl,
}

/// Kestra's `GET /api/v1/configs` (`MiscController.getConfiguration`): `url` is `kestra.url`,
/// left out when unset; the other keys are a realistic subset.
async fn configs(State(state): State<Arc<AppState>>) -> Response {
    let mut body = serde_json::json!({
        "uuid": "00000000-0000-0000-0000-5a4d1e000000",
        "version": "0.0.0-standin",
        "edition": "OSS",
        "commitId": "standin",
        "chartDefaultDuration": "P30D",
        "isCustomDashboardsEnabled": false,
        "isAnonymousUsageEnabled": false,
        "isUiAnonymousUsageEnabled": false,
        "preview": { "initial": 100, "max": 5000 },
        "systemNamespace": "system",
        "hiddenLabelsPrefixes": [],
        "isAiEnabled": false,
        "isBasicAuthInitialized": true,
    });
    if let (Some(url), Some(map)) = (state.control.kestra_url(), body.as_object_mut()) {
        map.insert("url".to_owned(), serde_json::Value::String(url));
    }
    Json(body).into_response()
}

async fn ui_page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<!doctype html><title>Kestra stand-in</title><h1>Kestra stand-in</h1>\n",
    )
}

/// What the echo route received.
#[derive(Debug, Serialize, Deserialize)]
pub struct Echo {
    /// Request method.
    pub method: String,
    /// HTTP version as hyper saw it (`HTTP/1.1`).
    pub version: String,
    /// Raw path and query, byte for byte.
    pub uri: String,
    /// Every header line, in order.
    pub headers: Vec<(String, String)>,
    /// Body length in bytes.
    pub body_length: u64,
    /// Hex SHA-256 of the body.
    pub body_sha256: String,
    /// Every trailer line.
    pub trailers: Vec<(String, String)>,
}

impl Echo {
    /// All values of header `name` (lower case), in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

fn pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

async fn echo(OriginalUri(uri): OriginalUri, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let (body_length, body_sha256, trailers) = match hash_body(body).await {
        Ok(hashed) => hashed,
        Err(status) => return status.into_response(),
    };
    Json(Echo {
        method: parts.method.to_string(),
        version: format!("{:?}", parts.version),
        uri: uri
            .path_and_query()
            .map_or_else(String::new, |pq| pq.as_str().to_owned()),
        headers: pairs(&parts.headers),
        body_length,
        body_sha256,
        trailers: trailers.as_ref().map(pairs).unwrap_or_default(),
    })
    .into_response()
}

/// Length, hex SHA-256 and trailers of a body, read frame by frame.
async fn hash_body(mut body: Body) -> Result<(u64, String, Option<HeaderMap>), StatusCode> {
    let mut hasher = Sha256::new();
    let mut length = 0u64;
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| StatusCode::BAD_REQUEST)?;
        match frame.into_data() {
            Ok(data) => {
                length += data.len() as u64;
                hasher.update(&data);
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok((length, hex(&hasher.finalize()), trailers))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Serialize)]
struct Uploaded {
    length: u64,
    sha256: String,
}

async fn upload(body: Body) -> Response {
    match hash_body(body).await {
        Ok((length, sha256, _)) => Json(Uploaded { length, sha256 }).into_response(),
        Err(status) => status.into_response(),
    }
}

#[derive(Debug, Deserialize)]
struct FollowQuery {
    events: Option<u64>,
    interval_ms: Option<u64>,
    /// Bytes of padding in each event's data, for load and memory tests.
    pad: Option<usize>,
}

/// Counts an open SSE stream for as long as the stream lives.
struct StreamGuard(Arc<AtomicUsize>);

impl StreamGuard {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count.clone())
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn unix_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// One SSE event the way Kestra frames it: the kind in `id:`, JSON in `data:`.
fn sse_event(kind: &str, seq: u64, pad: usize) -> Bytes {
    Bytes::from(format!(
        "id: {kind}\nevent: execution\ndata: {{\"seq\":{seq},\"state\":\"{kind}\",\"pad\":\"{}\",\"sent_at_us\":{}}}\n\n",
        "x".repeat(pad),
        unix_micros()
    ))
}

async fn follow(State(state): State<Arc<AppState>>, Query(query): Query<FollowQuery>) -> Response {
    let events = query.events.unwrap_or(state.config.events);
    let pad = query.pad.unwrap_or(0).min(1 << 20);
    let interval = query
        .interval_ms
        .map_or(state.config.event_interval, Duration::from_millis);
    let guard = StreamGuard::new(&state.stats.open_streams);
    // seq 0 is `start`; 1..=events are `progress`; events+1 is `end` (never, when events is 0).
    let body = stream::unfold((0u64, guard), move |(seq, guard)| async move {
        let end = events.checked_add(1).filter(|_| events > 0);
        if end.is_some_and(|end| seq > end) {
            return None;
        }
        if seq > 0 {
            // `interval_ms=0` pushes as fast as the reader takes it.
            if interval.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(interval).await;
            }
        }
        let kind = match seq {
            0 => "start",
            s if Some(s) == end => "end",
            _ => "progress",
        };
        Some((
            Ok::<_, Infallible>(sse_event(kind, seq, pad)),
            (seq + 1, guard),
        ))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

async fn ws_echo(State(state): State<Arc<AppState>>, ws: WebSocketUpgrade) -> Response {
    use axum::extract::ws::Message;
    let count = state.stats.open_websockets.clone();
    ws.max_message_size(64 << 20)
        .on_upgrade(|mut socket| async move {
            let _open = StreamGuard::new(&count);
            while let Some(Ok(message)) = socket.recv().await {
                let reply = match message {
                    Message::Text(_) | Message::Binary(_) => message,
                    // tungstenite queues the close reply (same code) and pings' pongs
                    // itself; reading on flushes them and then ends the loop.
                    Message::Close(_) | Message::Ping(_) | Message::Pong(_) => continue,
                };
                if socket.send(reply).await.is_err() {
                    break;
                }
            }
        })
}

#[derive(Debug, Deserialize)]
struct RedirectQuery {
    to: String,
}

async fn redirect(
    State(state): State<Arc<AppState>>,
    Query(query): Query<RedirectQuery>,
) -> Response {
    let ctx = state.config.context_path.trim_end_matches('/');
    let Ok(to) = HeaderValue::from_str(&query.to) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let refresh = HeaderValue::from_str(&format!("0; url={}", query.to));
    let session = HeaderValue::from_str(&format!("SESSION=standin; Path={ctx}/; HttpOnly"));
    let prefs = HeaderValue::from_str(&format!("prefs=1; Path={ctx}/api"));
    let mut response = StatusCode::FOUND.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, to.clone());
    headers.insert(header::CONTENT_LOCATION, to);
    for (name, value) in [
        (header::REFRESH, refresh),
        (header::SET_COOKIE, session),
        (header::SET_COOKIE, prefs),
    ] {
        if let Ok(value) = value {
            headers.append(name, value);
        }
    }
    response
}

#[derive(Debug, Deserialize)]
struct SlowQuery {
    head_ms: Option<u64>,
    body_ms: Option<u64>,
}

async fn slow(Query(query): Query<SlowQuery>) -> Response {
    tokio::time::sleep(Duration::from_millis(query.head_ms.unwrap_or(0))).await;
    let body_delay = Duration::from_millis(query.body_ms.unwrap_or(0));
    let parts = stream::unfold(0u8, move |step| async move {
        match step {
            0 => Some((Ok::<_, Infallible>(Bytes::from_static(b"first\n")), 1)),
            1 => {
                tokio::time::sleep(body_delay).await;
                Some((Ok(Bytes::from_static(b"last\n")), 2))
            }
            _ => None,
        }
    });
    Body::from_stream(parts).into_response()
}

/// Byte `i` of every download is `i % 251`; one chunk holds 256 periods.
const PATTERN_PERIOD: usize = 251;
const CHUNK: usize = PATTERN_PERIOD * 256;

fn pattern_chunk() -> Bytes {
    static CHUNK_BYTES: OnceLock<Bytes> = OnceLock::new();
    CHUNK_BYTES
        .get_or_init(|| download_pattern(CHUNK).collect::<Vec<u8>>().into())
        .clone()
}

/// The bytes the download route sends for `len` bytes: byte `i` is `i % 251`.
pub fn download_pattern(len: usize) -> impl Iterator<Item = u8> {
    (0..len).map(|i| (i % PATTERN_PERIOD) as u8)
}

#[derive(Debug, Deserialize)]
struct DownloadQuery {
    bytes: u64,
}

async fn download(Query(query): Query<DownloadQuery>) -> Response {
    let total = query.bytes;
    let chunks = stream::unfold(0u64, move |sent| async move {
        let left = total - sent;
        if left == 0 {
            return None;
        }
        let n = left.min(CHUNK as u64);
        let chunk = pattern_chunk().slice(..n as usize);
        Some((Ok::<_, Infallible>(chunk), sent + n))
    });
    let mut response = Body::from_stream(chunks).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

async fn trailers(method: Method) -> Response {
    let body = b"chunk one\nchunk two\n";
    let checksum = hex(&Sha256::digest(body));
    let frames = stream::iter([
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(&body[..10]))),
        Ok(Frame::data(Bytes::from_static(&body[10..]))),
        Ok(Frame::trailers({
            let mut trailers = HeaderMap::new();
            if let Ok(value) = HeaderValue::from_str(&checksum) {
                trailers.insert("x-checksum", value);
            }
            trailers
        })),
    ]);
    let mut response = Body::new(http_body_util::StreamBody::new(frames)).into_response();
    response
        .headers_mut()
        .insert(header::TRAILER, HeaderValue::from_static("x-checksum"));
    if method == Method::HEAD {
        *response.body_mut() = Body::empty();
    }
    response
}

/// A stand-in on a runtime of its own, so that [`kill`](Self::kill) can stop it the way a
/// `SIGKILL` stops a process: every listener and connection closed at once, mid-answer,
/// with no graceful shutdown.
#[derive(Debug)]
pub struct IsolatedStandin {
    addr: SocketAddr,
    management_addr: Option<SocketAddr>,
    stats: StandinStats,
    control: StandinControl,
    runtime: Option<tokio::runtime::Runtime>,
}

impl IsolatedStandin {
    /// Starts a stand-in on a new one-thread runtime (callable from inside another runtime).
    pub async fn start(config: StandinConfig) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let (started, started_rx) = oneshot::channel();
        runtime.spawn(async move {
            match Standin::start(config).await {
                Ok(standin) => {
                    let _ = started.send(Ok((
                        standin.addr(),
                        standin.management_addr(),
                        standin.stats().clone(),
                        standin.control().clone(),
                    )));
                    // Served until the runtime goes.
                    let _ = standin.wait().await;
                }
                Err(err) => {
                    let _ = started.send(Err(err));
                }
            }
        });
        let started = match started_rx.await {
            Ok(started) => started,
            Err(_) => Err(io::Error::other("stand-in runtime stopped")),
        };
        match started {
            Ok((addr, management_addr, stats, control)) => Ok(Self {
                addr,
                management_addr,
                stats,
                control,
                runtime: Some(runtime),
            }),
            Err(err) => {
                runtime.shutdown_background();
                Err(err)
            }
        }
    }

    /// The main listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The management listener's address.
    pub fn management_addr(&self) -> Option<SocketAddr> {
        self.management_addr
    }

    /// Its live counts.
    pub fn stats(&self) -> &StandinStats {
        &self.stats
    }

    /// The switches of readiness and speed.
    pub fn control(&self) -> &StandinControl {
        &self.control
    }

    /// Drops the runtime at once: every task, listener and connection goes.
    pub fn kill(mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for IsolatedStandin {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
