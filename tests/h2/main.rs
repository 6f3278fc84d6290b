//! HTTP/2 end to end: the gateway holds up over HTTP/2 as it does over HTTP/1. SSE arrives
//! event by event, idle connections are closed but quiet streams are not, one connection
//! carries many streams up to the advertised cap, and the HTTP/2 attacks (rapid reset,
//! CONTINUATION flood, oversized header lists) end the attacker, not the service.
//!
//! Clients speak h2c with prior knowledge on the plain listener (the server sniffs the
//! preface), or HTTP/2 over TLS negotiated with ALPN; the h2 crate is the well-behaved
//! client, raw frames on a socket the misbehaving one. Every byte the server sends an h2
//! client passes through a [`Tap`] that records its frames, so tests can see GOAWAY and
//! SETTINGS themselves, not only what the client library makes of them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use bytes::{Bytes, BytesMut};
use futures_util::future::join_all;
use h2::{client::SendRequest, Reason, RecvStream};
use http::{Request, Response, StatusCode};
use kestra_edge_gateway::{Gateway, GatewayConfig};
use kestra_edge_standin::{Echo, Standin, StandinConfig};
use kestra_edge_tests::eventually;
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::TcpStream,
    sync::oneshot,
    task::JoinHandle,
    time::{timeout, Instant},
};
use tokio_rustls::TlsConnector;

/// The longest any single step may take.
const LIMIT: Duration = Duration::from_secs(5);
const FOLLOW: &str = "/kestra/api/v1/main/executions/e1/follow";
const IDLE: Duration = Duration::from_millis(400);

/// RFC 9113 §3.4: the client connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// RFC 9113 §6: frame types.
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
/// RFC 9113 §6.2: frame flags.
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
/// RFC 9113 §6.5.2: SETTINGS_MAX_CONCURRENT_STREAMS.
const MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// How a client reaches the gateway.
#[derive(Debug, Clone, Copy)]
enum Wire {
    /// Prior-knowledge HTTP/2 on the plain listener.
    H2c,
    /// HTTP/2 over TLS, chosen with ALPN.
    Tls,
}

/// The stand-in and a gateway in front of it (with a self-signed certificate over TLS); the
/// gateway shuts down when dropped.
struct Edge {
    standin: Standin,
    addr: SocketAddr,
    connections: kestra_edge::server::Connections,
    tls: Option<TlsConnector>,
    stop: Option<oneshot::Sender<()>>,
}

impl Edge {
    async fn start(wire: Wire, configure: impl FnOnce(&mut GatewayConfig)) -> Self {
        let standin = Standin::start(StandinConfig::default()).await.unwrap();
        let mut config = GatewayConfig::for_upstream(standin.url());
        config.tls.self_signed = matches!(wire, Wire::Tls);
        configure(&mut config);
        let gateway = Gateway::bind(config).await.expect("gateway binds");
        let addr = gateway.local_addr().unwrap();
        let connections = gateway.connections();
        let tls = gateway.self_signed().map(|cert| trusting(&cert.cert_pem));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(gateway.serve(async {
            let _ = stopped.await;
        }));
        Self {
            standin,
            addr,
            connections,
            tls,
            stop: Some(stop),
        }
    }

    /// A new HTTP/2 connection made with the h2 crate.
    async fn connect(&self) -> Client {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let frames = Arc::new(Mutex::new(FrameReader::default()));
        match &self.tls {
            None => {
                Client::handshake(
                    Tap::new(tcp, frames.clone()),
                    format!("http://{}", self.addr),
                    frames,
                )
                .await
            }
            Some(connector) => {
                let name = ServerName::try_from("localhost").unwrap();
                let tls = timeout(LIMIT, connector.connect(name, tcp))
                    .await
                    .expect("TLS handshake in time")
                    .expect("TLS handshake");
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
                Client::handshake(
                    Tap::new(tls, frames.clone()),
                    format!("https://localhost:{}", self.addr.port()),
                    frames,
                )
                .await
            }
        }
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A TLS client that trusts only `cert_pem` and offers only h2.
fn trusting(cert_pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// One h2-crate connection to the gateway.
struct Client {
    send: SendRequest<Bytes>,
    /// The connection's user PINGs.
    ping: Option<h2::PingPong>,
    /// Drives the connection; its output is how the connection ended.
    conn: JoinHandle<Result<(), h2::Error>>,
    /// Every frame the server sent, as the bytes arrived.
    frames: Arc<Mutex<FrameReader>>,
    /// `scheme://authority` of request URIs.
    base: String,
}

impl Client {
    async fn handshake<T>(io: T, base: String, frames: Arc<Mutex<FrameReader>>) -> Self
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, mut conn) = timeout(LIMIT, h2::client::handshake(io))
            .await
            .expect("h2 handshake in time")
            .expect("h2 handshake");
        Self {
            send,
            ping: conn.ping_pong(),
            conn: tokio::spawn(conn),
            frames,
            base,
        }
    }

    fn get(&self, path: &str) -> Request<()> {
        Request::get(format!("{}{path}", self.base))
            .body(())
            .unwrap()
    }

    /// Sends a bodiless request and waits for the response head.
    async fn request(&self, request: Request<()>) -> Result<Response<RecvStream>, h2::Error> {
        let mut send = self.send.clone().ready().await?;
        let (response, _) = send.send_request(request, true)?;
        response.await
    }

    /// A GET of `path`, its status and whole body.
    async fn fetch(&self, path: &str) -> Result<(StatusCode, Bytes), h2::Error> {
        let response = self.request(self.get(path)).await?;
        let status = response.status();
        Ok((status, read_body(response.into_body()).await?))
    }

    /// The error code of the first GOAWAY the server sent.
    fn goaway(&self) -> Option<Reason> {
        self.frames.lock().unwrap().goaway()
    }

    /// Waits at most `limit` for the connection to end; how it ended.
    async fn ended(&mut self, limit: Duration) -> Option<Result<(), h2::Error>> {
        timeout(limit, &mut self.conn)
            .await
            .ok()
            .map(|joined| joined.unwrap())
    }
}

async fn read_body(mut body: RecvStream) -> Result<Bytes, h2::Error> {
    let mut all = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        all.extend_from_slice(&chunk);
    }
    Ok(all.freeze())
}

/// One HTTP/2 frame as it came off the wire (DATA payloads are not kept).
#[derive(Debug, Clone)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    /// RFC 9113 §6.4, §6.8: the error code of a RST_STREAM or GOAWAY.
    fn error_code(&self) -> Option<Reason> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let code = self.payload.get(at..at + 4)?;
        Some(Reason::from(u32::from_be_bytes(code.try_into().unwrap())))
    }

    /// RFC 9113 §6.5.1: the value of setting `id` in a SETTINGS frame.
    fn setting(&self, id: u16) -> Option<u32> {
        if self.kind != SETTINGS || self.flags & ACK != 0 {
            return None;
        }
        self.payload.chunks_exact(6).find_map(|entry| {
            (u16::from_be_bytes([entry[0], entry[1]]) == id)
                .then(|| u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]))
        })
    }
}

/// Splits a byte stream into frames (RFC 9113 §4.1: 24-bit length, type, flags, 31-bit
/// stream id, payload).
#[derive(Debug, Default)]
struct FrameReader {
    pending: Vec<u8>,
    frames: Vec<Frame>,
}

impl FrameReader {
    fn feed(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= 9 {
            let p = &self.pending;
            let len = u32::from_be_bytes([0, p[0], p[1], p[2]]) as usize;
            if p.len() < 9 + len {
                return;
            }
            let kind = p[3];
            self.frames.push(Frame {
                kind,
                flags: p[4],
                stream: u32::from_be_bytes([p[5], p[6], p[7], p[8]]) & 0x7fff_ffff,
                payload: if kind == DATA {
                    Vec::new()
                } else {
                    p[9..9 + len].to_vec()
                },
            });
            self.pending.drain(..9 + len);
        }
    }

    fn goaway(&self) -> Option<Reason> {
        self.frames
            .iter()
            .find(|f| f.kind == GOAWAY)
            .and_then(Frame::error_code)
    }
}

/// A transport that records every frame read through it.
///
/// Once a write fails (the server closed) it discards what is written after, so that the
/// client goes on reading what the server sent before closing: a client busy writing
/// would otherwise stop at the broken pipe, with the GOAWAY unread in its socket.
struct Tap<T> {
    inner: T,
    frames: Arc<Mutex<FrameReader>>,
    write_failed: bool,
}

impl<T> Tap<T> {
    fn new(inner: T, frames: Arc<Mutex<FrameReader>>) -> Self {
        Self {
            inner,
            frames,
            write_failed: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tap<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            self.frames.lock().unwrap().feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tap<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.write_failed {
            return Poll::Ready(Ok(buf.len()));
        }
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Err(_)) => {
                self.write_failed = true;
                Poll::Ready(Ok(buf.len()))
            }
            polled => polled,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_failed {
            return Poll::Ready(Ok(()));
        }
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(Err(_)) => {
                self.write_failed = true;
                Poll::Ready(Ok(()))
            }
            polled => polled,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.write_failed {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// RFC 9113 §4.1: one frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    assert!(len < 1 << 24);
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// RFC 7541 §5.2: a string literal without Huffman coding.
fn hpack_string(out: &mut Vec<u8>, value: &[u8]) {
    // §5.1: a 7-bit prefix integer.
    let mut len = value.len();
    if len < 127 {
        out.push(u8::try_from(len).unwrap());
    } else {
        out.push(127);
        len -= 127;
        while len >= 128 {
            out.push(u8::try_from(len % 128).unwrap() | 0x80);
            len /= 128;
        }
        out.push(u8::try_from(len).unwrap());
    }
    out.extend_from_slice(value);
}

/// RFC 7541: the header block of `GET http://{authority}{path}`, from the static table
/// (§A: 2 `:method GET`, 6 `:scheme http`, 4 `:path`, 1 `:authority`), literals never
/// indexed into the dynamic table (§6.2.2).
fn hpack_get(authority: &str, path: &str) -> Vec<u8> {
    let mut out = vec![0x82, 0x86, 0x04];
    hpack_string(&mut out, path.as_bytes());
    out.push(0x01);
    hpack_string(&mut out, authority.as_bytes());
    out
}

/// A raw h2c connection: preface and empty SETTINGS sent.
async fn raw_h2c(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    stream.write_all(&hello).await.unwrap();
    stream
}

/// Reads frames from `stream` into `reader` until `found` matches one; that frame.
async fn read_until(
    stream: &mut (impl AsyncRead + Unpin),
    reader: &mut FrameReader,
    mut found: impl FnMut(&Frame) -> bool,
) -> Frame {
    let mut seen = 0;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if let Some(frame) = reader.frames[seen..].iter().find(|f| found(f)) {
            return frame.clone();
        }
        seen = reader.frames.len();
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the frame; got {:?}", reader.frames);
        reader.feed(&buf[..n]);
    }
}

fn unix_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

/// The events of an SSE response body, each with its arrival time.
struct Events {
    body: RecvStream,
    pending: String,
    /// When the last chunk arrived (µs since the epoch): every complete block still
    /// pending ended in it, because blocks are taken before the next chunk is read.
    arrived: u128,
}

impl Events {
    fn new(body: RecvStream) -> Self {
        Self {
            body,
            pending: String::new(),
            arrived: 0,
        }
    }

    /// The next block (up to its blank line) and when it arrived; `None` at the end.
    async fn next(&mut self) -> Result<Option<(String, u128)>, h2::Error> {
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                return Ok(Some((block.trim_end().to_owned(), self.arrived)));
            }
            let Some(chunk) = self.body.data().await else {
                return Ok(None);
            };
            let chunk = chunk?;
            self.arrived = unix_micros();
            let _ = self.body.flow_control().release_capacity(chunk.len());
            self.pending.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// The next block within `limit`, which must come.
    async fn expect(&mut self, limit: Duration) -> (String, u128) {
        timeout(limit, self.next())
            .await
            .expect("an event in time")
            .expect("the stream holds")
            .expect("the stream goes on")
    }
}

fn event_id(block: &str) -> &str {
    block
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap_or("")
}

fn sent_at(block: &str) -> u128 {
    let data = block
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap();
    let data: serde_json::Value = serde_json::from_str(data).unwrap();
    data["sent_at_us"].as_u64().unwrap().into()
}

async fn sse_arrives_event_by_event(wire: Wire) {
    let edge = Edge::start(wire, |_| {}).await;
    let client = edge.connect().await;
    let response = timeout(
        LIMIT,
        client.request(client.get(&format!("{FOLLOW}?interval_ms=100&events=5"))),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut events = Events::new(response.into_body());
    let mut blocks = Vec::new();
    timeout(LIMIT, async {
        while let Some(block) = events.next().await.unwrap() {
            blocks.push(block);
        }
    })
    .await
    .expect("the stream ends in time");
    let ids: Vec<&str> = blocks.iter().map(|(b, _)| event_id(b)).collect();
    assert_eq!(
        ids,
        ["start", "progress", "progress", "progress", "progress", "progress", "end"]
    );
    for (block, arrived) in &blocks {
        let delay_ms = arrived.saturating_sub(sent_at(block)) / 1000;
        assert!(
            delay_ms < 100,
            "{wire:?}: an event arrived {delay_ms} ms after it was sent"
        );
    }
    // Not all at the end: the arrivals span the stream's 600 ms.
    let spread_ms = (blocks[6].1 - blocks[0].1) / 1000;
    assert!(
        spread_ms >= 500,
        "{wire:?}: all events within {spread_ms} ms"
    );
}

#[tokio::test]
async fn sse_over_h2c_arrives_event_by_event() {
    sse_arrives_event_by_event(Wire::H2c).await;
}

#[tokio::test]
async fn sse_over_tls_h2_arrives_event_by_event() {
    sse_arrives_event_by_event(Wire::Tls).await;
}

async fn an_idle_connection_gets_goaway(wire: Wire) {
    let edge = Edge::start(wire, |c| c.listener.h2_idle_timeout = IDLE).await;
    let mut client = edge.connect().await;
    let (status, body) = timeout(LIMIT, client.fetch("/kestra/ping"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"pong"[..]));
    let idle_since = Instant::now();
    let ended = client
        .ended(Duration::from_secs(1))
        .await
        .unwrap_or_else(|| panic!("{wire:?}: still open 1 s after its last request"));
    let after = idle_since.elapsed();
    // Closed by the idle limit (1 to 1¼ idle periods), not by anything sooner.
    assert!(after >= IDLE - IDLE / 4, "{wire:?}: closed after {after:?}");
    assert_eq!(client.goaway(), Some(Reason::NO_ERROR), "{wire:?}");
    // No HTTP/2 error; the socket may race the client's own teardown (its GOAWAY reply,
    // TLS close_notify) against the server's close.
    assert!(
        ended.as_ref().map_or_else(h2::Error::is_io, |()| true),
        "{wire:?}: {ended:?}"
    );
    assert!(client.send.clone().ready().await.is_err(), "{wire:?}");
    let connections = edge.connections.clone();
    assert!(eventually(LIMIT, || connections.open() == 0).await);
}

#[tokio::test]
async fn an_idle_h2c_connection_gets_goaway() {
    an_idle_connection_gets_goaway(Wire::H2c).await;
}

#[tokio::test]
async fn an_idle_tls_h2_connection_gets_goaway() {
    an_idle_connection_gets_goaway(Wire::Tls).await;
}

/// RFC 9113 §6.8: a graceful close is GOAWAY with the last stream id 2^31-1, a round trip
/// (PING), then GOAWAY with the last stream processed; seen on the wire with a raw client
/// (the h2 crate closes its side as soon as the first GOAWAY arrives on an idle connection).
#[tokio::test]
async fn an_idle_connection_closes_in_two_goaway_steps() {
    let edge = Edge::start(Wire::H2c, |c| c.listener.h2_idle_timeout = IDLE).await;
    let mut raw = raw_h2c(edge.addr).await;
    let mut reader = FrameReader::default();
    let settings = |f: &Frame| f.kind == SETTINGS && f.flags & ACK == 0;
    timeout(LIMIT, read_until(&mut raw, &mut reader, settings))
        .await
        .unwrap();
    let mut out = frame(SETTINGS, ACK, 0, &[]);
    let ping = hpack_get(&edge.addr.to_string(), "/kestra/ping");
    out.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &ping));
    raw.write_all(&out).await.unwrap();
    let ended = |f: &Frame| f.kind == DATA && f.stream == 1 && f.flags & END_STREAM != 0;
    timeout(LIMIT, read_until(&mut raw, &mut reader, ended))
        .await
        .unwrap();
    let idle_since = Instant::now();
    let ping = timeout(
        Duration::from_secs(1),
        read_until(&mut raw, &mut reader, |f| f.kind == PING),
    )
    .await
    .expect("GOAWAY and PING within 1 s of idleness");
    assert!(
        idle_since.elapsed() >= IDLE - IDLE / 4,
        "{:?}",
        idle_since.elapsed()
    );
    let goaways: Vec<&Frame> = reader.frames.iter().filter(|f| f.kind == GOAWAY).collect();
    assert_eq!(goaways.len(), 1, "{:?}", reader.frames);
    assert_eq!(
        goaways[0].payload[..8],
        [0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]
    );
    raw.write_all(&frame(PING, ACK, 0, &ping.payload))
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    timeout(LIMIT, async {
        while let Ok(n @ 1..) = raw.read(&mut buf).await {
            reader.feed(&buf[..n]);
        }
    })
    .await
    .expect("closed after the second GOAWAY");
    let goaways: Vec<&Frame> = reader.frames.iter().filter(|f| f.kind == GOAWAY).collect();
    assert_eq!(goaways.len(), 2, "{:?}", reader.frames);
    // Last stream 1, NO_ERROR.
    assert_eq!(goaways[1].payload[..8], [0, 0, 0, 1, 0, 0, 0, 0]);
}

async fn a_quiet_sse_stream_keeps_its_connection(wire: Wire) {
    let edge = Edge::start(wire, |c| {
        c.listener.h2_idle_timeout = IDLE;
        c.streams.sse_heartbeat = Duration::ZERO;
    })
    .await;
    let mut client = edge.connect().await;
    // Kestra sends nothing for 1.2 s between events: three idle periods of silence.
    let response = timeout(
        LIMIT,
        client.request(client.get(&format!("{FOLLOW}?interval_ms=1200&events=1"))),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(response.status(), 200);
    let mut events = Events::new(response.into_body());
    let (start, _) = events.expect(LIMIT).await;
    assert_eq!(event_id(&start), "start");
    let quiet_since = Instant::now();
    let (next, _) = events.expect(Duration::from_secs(2)).await;
    assert_eq!(event_id(&next), "progress");
    assert!(
        quiet_since.elapsed() >= 2 * IDLE,
        "{:?}",
        quiet_since.elapsed()
    );
    assert_eq!(client.goaway(), None, "{wire:?}");
    assert!(!client.conn.is_finished(), "{wire:?}");
    // Once the stream has ended, the connection is idle again and is closed.
    let (end, _) = events.expect(Duration::from_secs(2)).await;
    assert_eq!(event_id(&end), "end");
    assert!(timeout(LIMIT, events.next())
        .await
        .unwrap()
        .unwrap()
        .is_none());
    assert!(
        client.ended(Duration::from_secs(1)).await.is_some(),
        "{wire:?}"
    );
    assert_eq!(client.goaway(), Some(Reason::NO_ERROR), "{wire:?}");
}

#[tokio::test]
async fn a_quiet_sse_stream_keeps_its_h2c_connection() {
    a_quiet_sse_stream_keeps_its_connection(Wire::H2c).await;
}

#[tokio::test]
async fn a_quiet_sse_stream_keeps_its_tls_h2_connection() {
    a_quiet_sse_stream_keeps_its_connection(Wire::Tls).await;
}

#[tokio::test]
async fn twenty_sse_streams_share_one_connection() {
    let edge = Edge::start(Wire::H2c, |_| {}).await;
    let client = edge.connect().await;
    let streams = (0..20).map(|i| {
        let client = &client;
        async move {
            let path =
                format!("/kestra/api/v1/main/executions/e{i}/follow?events=0&interval_ms=100");
            let response = client.request(client.get(&path)).await.unwrap();
            assert_eq!(response.status(), 200);
            let mut events = Events::new(response.into_body());
            let mut ids = Vec::new();
            for _ in 0..3 {
                ids.push(event_id(&events.expect(LIMIT).await.0).to_owned());
            }
            (ids, events)
        }
    });
    let streams = timeout(LIMIT, join_all(streams))
        .await
        .expect("20 streams in time");
    for (ids, _) in &streams {
        assert_eq!(ids, &["start", "progress", "progress"]);
    }
    // All twenty are open at once, on one connection.
    assert_eq!(edge.standin.stats().open_streams(), 20);
    assert_eq!(edge.connections.accepted(), 1);
    assert_eq!(edge.connections.open(), 1);
}

#[tokio::test]
async fn the_stream_cap_is_advertised_and_enforced() {
    let edge = Edge::start(Wire::H2c, |c| c.listener.h2_max_streams = 4).await;
    // Advertised: after one exchange the client has the server's SETTINGS.
    let client = edge.connect().await;
    let (status, _) = timeout(LIMIT, client.fetch("/kestra/ping"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(client.send.current_max_send_streams(), 4);
    let advertised = client
        .frames
        .lock()
        .unwrap()
        .frames
        .iter()
        .find_map(|f| f.setting(MAX_CONCURRENT_STREAMS));
    assert_eq!(advertised, Some(4));

    // Enforced: a raw client opens five never-ending streams; the fifth is refused.
    let mut raw = raw_h2c(edge.addr).await;
    let mut reader = FrameReader::default();
    timeout(
        LIMIT,
        read_until(&mut raw, &mut reader, |f| {
            f.kind == SETTINGS && f.flags & ACK == 0
        }),
    )
    .await
    .unwrap();
    let mut opens = frame(SETTINGS, ACK, 0, &[]);
    let authority = edge.addr.to_string();
    for stream in [1, 3, 5, 7, 9] {
        let path =
            format!("/kestra/api/v1/main/executions/e{stream}/follow?events=0&interval_ms=60000");
        opens.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            stream,
            &hpack_get(&authority, &path),
        ));
    }
    raw.write_all(&opens).await.unwrap();
    let refused = timeout(
        LIMIT,
        read_until(&mut raw, &mut reader, |f| f.kind == RST_STREAM),
    )
    .await
    .expect("a RST_STREAM in time");
    assert_eq!(
        (refused.stream, refused.error_code()),
        (9, Some(Reason::REFUSED_STREAM))
    );
    // The first four are answered.
    for stream in [1, 3, 5, 7] {
        timeout(
            LIMIT,
            read_until(&mut raw, &mut reader, |f| {
                f.kind == HEADERS && f.stream == stream
            }),
        )
        .await
        .unwrap_or_else(|_| panic!("no response on stream {stream}"));
    }
    assert_eq!(reader.goaway(), None);

    // A default gateway advertises 128.
    let default = Edge::start(Wire::H2c, |_| {}).await;
    let client = default.connect().await;
    timeout(LIMIT, client.fetch("/kestra/ping"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(client.send.current_max_send_streams(), 128);
}

/// RFC 9113 §7: CANCEL.
const CANCEL: u32 = 0x8;

/// What one attacking connection achieved.
#[derive(Debug)]
struct Attack {
    /// Streams opened and at once reset, as written (the server may have read fewer).
    written: usize,
    /// The server's GOAWAY: its error code and last stream id.
    goaway: Option<(Reason, u32)>,
}

/// CVE-2023-44487 the way attack tools send it: HEADERS then RST_STREAM(CANCEL), stream
/// after stream, 100 pairs per write, until the server closes the connection or `stop`.
async fn rapid_reset(addr: SocketAddr, stop: &AtomicBool) -> Attack {
    const BATCH: u32 = 100;
    const MAX: u32 = 10_000;
    let mut raw = raw_h2c(addr).await;
    let mut reader = FrameReader::default();
    let settings = |f: &Frame| f.kind == SETTINGS && f.flags & ACK == 0;
    timeout(LIMIT, read_until(&mut raw, &mut reader, settings))
        .await
        .unwrap();
    raw.write_all(&frame(SETTINGS, ACK, 0, &[])).await.unwrap();
    let (mut read, mut write) = raw.into_split();
    let block = hpack_get(&addr.to_string(), "/kestra/ping");
    let reading = tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        while let Ok(n @ 1..) = read.read(&mut buf).await {
            reader.feed(&buf[..n]);
        }
        reader
    });
    let mut written = 0;
    while written < MAX && !stop.load(Ordering::Relaxed) {
        let mut batch = Vec::new();
        for stream in (written..written + BATCH).map(|n| 2 * n + 1) {
            batch.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
            batch.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
        }
        if write.write_all(&batch).await.is_err() {
            break;
        }
        written += BATCH;
    }
    drop(write);
    let reader = match timeout(Duration::from_secs(1), reading).await {
        Ok(reader) => reader.unwrap(),
        Err(_) => FrameReader::default(),
    };
    let goaway = reader.frames.iter().find(|f| f.kind == GOAWAY).map(|f| {
        let last = u32::from_be_bytes(f.payload[..4].try_into().unwrap());
        (f.error_code().unwrap(), last)
    });
    Attack {
        written: written as usize,
        goaway,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_goaway_while_others_are_served() {
    /// Streams after which the server must have ended an attacking connection (hyper's
    /// default: GOAWAY once more than 20 reset streams wait to be accepted).
    const BOUND: u32 = 100;
    let edge = Arc::new(Edge::start(Wire::H2c, |_| {}).await);
    let stop = Arc::new(AtomicBool::new(false));
    // Attacks connection after connection until the well-behaved client is done.
    let attacker = tokio::spawn({
        let (addr, stop) = (edge.addr, stop.clone());
        async move {
            let mut attacks = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                attacks.push(rapid_reset(addr, &stop).await);
            }
            attacks
        }
    });
    let client = edge.connect().await;
    let started = Instant::now();
    for i in 0..50 {
        let answer = timeout(Duration::from_secs(2), client.fetch("/kestra/ping"))
            .await
            .unwrap_or_else(|_| panic!("GET {i} not answered in 2 s during the attack"))
            .unwrap_or_else(|err| panic!("GET {i} failed during the attack: {err}"));
        assert_eq!(answer.0, 200);
    }
    let served_in = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let attacks = timeout(LIMIT, attacker).await.unwrap().unwrap();
    let attacks: Vec<&Attack> = attacks.iter().filter(|a| a.written > 0).collect();
    let written: usize = attacks.iter().map(|a| a.written).sum();
    let read: Vec<u32> = attacks
        .iter()
        .filter_map(|a| a.goaway.map(|(_, last)| last.div_ceil(2)))
        .collect();
    eprintln!(
        "50 GETs in {served_in:?} during {} attacking connections ({written} streams \
         written), streams read before GOAWAY: {read:?}",
        attacks.len()
    );
    assert!(attacks.len() >= 2, "the attack hardly ran: {attacks:?}");
    for attack in &attacks {
        let (reason, last) = attack
            .goaway
            .unwrap_or_else(|| panic!("no GOAWAY: {attack:?}"));
        assert_eq!(reason, Reason::ENHANCE_YOUR_CALM, "{attack:?}");
        assert!(last.div_ceil(2) <= BOUND, "{attack:?}");
    }
    // The gateway still serves new connections.
    let after = edge.connect().await;
    let answer = timeout(LIMIT, after.fetch("/kestra/ping")).await.unwrap();
    assert_eq!(answer.unwrap().0, 200);
}

/// The same attack one round trip at a time (a PING between each stream's HEADERS and its
/// RST_STREAM): the server has taken every stream before its reset arrives, so hyper's
/// limit, which counts only streams reset while still waiting to be accepted, never sees
/// it. An attacking connection must still be ended within a bounded number of streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_one_round_trip_apart_is_bounded_too() {
    const ATTEMPTS: usize = 5_000;
    const BOUND: usize = 1_000;
    let edge = Edge::start(Wire::H2c, |_| {}).await;
    let mut client = edge.connect().await;
    let mut ping = client.ping.take().unwrap();
    let started = Instant::now();
    let mut reset = 0;
    while reset < ATTEMPTS && started.elapsed() < Duration::from_secs(3) {
        let Ok(mut send) = client.send.clone().ready().await else {
            break;
        };
        let Ok((_response, mut stream)) = send.send_request(client.get("/kestra/ping"), true)
        else {
            break;
        };
        // HEADERS written, then a round trip: the server has read them.
        if send.ready().await.is_err() || ping.ping(h2::Ping::opaque()).await.is_err() {
            break;
        }
        stream.send_reset(Reason::CANCEL);
        reset += 1;
    }
    let took = started.elapsed();
    let ended = client.ended(Duration::from_secs(1)).await;
    let upstream = edge.standin.stats().accepted_connections();
    // hyper's limit does not see these resets (each stream was handed to the service); the
    // server's own count of abandoned requests does: GOAWAY (through hyper's graceful
    // shutdown, so NO_ERROR) and the connection cut within a second.
    assert!(
        reset <= BOUND && client.goaway().is_some() && ended.is_some(),
        "{reset} streams opened and reset on one connection in {took:?}; GOAWAY: {:?}; \
         connection ended: {ended:?}; the stand-in accepted {upstream} connections",
        client.goaway()
    );
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off() {
    /// The most the flood may write (it stops earlier when the server closes).
    const CAP: usize = 64 << 20;
    let edge = Edge::start(Wire::H2c, |c| c.listener.max_header_bytes = 16 * 1024).await;
    let raw = raw_h2c(edge.addr).await;
    let (mut read, mut write) = raw.into_split();
    // A request whose header block never ends: each CONTINUATION frame holds one
    // 16-byte literal header field (RFC 7541 §6.2.2: new name, never indexed).
    let mut field = vec![0x10];
    hpack_string(&mut field, b"x-flood");
    hpack_string(&mut field, b"123456");
    assert_eq!(field.len(), 16);
    let opening = frame(HEADERS, END_STREAM, 1, &[0x82, 0x86, 0x84]);
    let continuation = frame(CONTINUATION, 0, 1, &field);
    let batch: Vec<u8> = continuation.repeat(64);
    let flood = tokio::spawn(async move {
        let started = Instant::now();
        let mut written = 0;
        let result = async {
            write.write_all(&opening).await?;
            written += opening.len();
            while written < CAP {
                write.write_all(&batch).await?;
                written += batch.len();
            }
            Ok::<_, io::Error>(())
        };
        let result = timeout(LIMIT, result).await;
        (written, started.elapsed(), result)
    });
    // Meanwhile another client is served.
    let other = edge.connect().await;
    assert_eq!(
        timeout(LIMIT, other.fetch("/kestra/ping"))
            .await
            .unwrap()
            .unwrap()
            .0,
        200
    );

    let mut reader = FrameReader::default();
    let closed = timeout(Duration::from_secs(2), async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => reader.feed(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "still open after 2 s: {:?}", reader.frames);
    let (written, took, result) = flood.await.unwrap();
    eprintln!("flood: {written} bytes written in {took:?} before {result:?}");
    let result = result.expect("the flood's writes fail, not time out");
    assert!(result.is_err(), "all {written} bytes were taken");
    // What was written before the close shows is mostly in the kernel's socket buffers
    // (Linux defaults: up to 4 MiB to send, 6 MiB to receive); the server itself gave up
    // after a handful of frames, with GOAWAY before stream 1 ever started.
    assert!(
        written < 16 << 20,
        "{written} bytes taken before the connection closed"
    );
    let goaway = reader.frames.iter().find(|f| f.kind == GOAWAY).cloned();
    let goaway = goaway.unwrap_or_else(|| panic!("no GOAWAY: {:?}", reader.frames));
    assert_eq!(
        goaway.error_code(),
        Some(Reason::ENHANCE_YOUR_CALM),
        "{goaway:?}"
    );
    assert_eq!(
        goaway.payload[..4],
        [0, 0, 0, 0],
        "last stream id: {goaway:?}"
    );
    // Nothing of the flood reached the stack: no response on stream 1.
    assert!(
        !reader.frames.iter().any(|f| f.kind == HEADERS),
        "{:?}",
        reader.frames
    );
    // And the gateway still serves, on the other connection and on new ones.
    assert_eq!(
        timeout(LIMIT, other.fetch("/kestra/ping"))
            .await
            .unwrap()
            .unwrap()
            .0,
        200
    );
    let after = edge.connect().await;
    assert_eq!(
        timeout(LIMIT, after.fetch("/kestra/ping"))
            .await
            .unwrap()
            .unwrap()
            .0,
        200
    );
}

#[tokio::test]
async fn an_oversized_header_list_gets_431() {
    let edge = Edge::start(Wire::H2c, |c| c.listener.max_header_bytes = 16 * 1024).await;
    let client = edge.connect().await;
    let with_filler = |len: usize| {
        let mut request = client.get("/kestra/api/v1/echo/filler");
        request
            .headers_mut()
            .insert("x-filler", "a".repeat(len).parse().unwrap());
        request
    };
    // Under the limit: passed upstream whole.
    let response = timeout(LIMIT, client.request(with_filler(8 * 1024)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    let echo: Echo =
        serde_json::from_slice(&read_body(response.into_body()).await.unwrap()).unwrap();
    assert_eq!(echo.header_values("x-filler"), ["a".repeat(8 * 1024)]);
    // Over it: 431, and the stream only is refused.
    let response = timeout(LIMIT, client.request(with_filler(20 * 1024)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    let (status, _) = timeout(LIMIT, client.fetch("/kestra/ping"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(client.goaway(), None);
    assert_eq!(edge.connections.accepted(), 1);
}

/// The SSE guard works per stream over HTTP/2: a quiet stream gets heartbeats and ends at its
/// lifetime with a `retry:` hint, while its connection lives on and serves other requests.
#[tokio::test]
async fn heartbeats_and_lifetime_apply_per_stream_over_h2() {
    let edge = Edge::start(Wire::Tls, |c| {
        c.streams.sse_heartbeat = Duration::from_millis(150);
        c.streams.sse_max_lifetime = Some(Duration::from_millis(900));
    })
    .await;
    let client = edge.connect().await;
    let quiet = "/kestra/api/v1/main/executions/q/follow?events=0&interval_ms=5000";
    let response = client.request(client.get(quiet)).await.unwrap();
    assert_eq!(response.status(), 200);
    let started = Instant::now();
    let mut events = Events::new(response.into_body());
    assert_eq!(event_id(&events.expect(LIMIT).await.0), "start");
    let heartbeat = events.expect(LIMIT).await.0;
    assert!(heartbeat.starts_with(':'), "{heartbeat:?}");
    // Further blocks until the end: the last one before the end carries `retry:`.
    let mut blocks = vec![heartbeat];
    while let Some((block, _)) = timeout(LIMIT, events.next()).await.unwrap().unwrap() {
        blocks.push(block);
    }
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_millis(800) && lived < Duration::from_secs(4),
        "{lived:?}"
    );
    assert!(blocks.iter().any(|b| b.contains("retry:")), "{blocks:?}");
    assert!(
        blocks
            .iter()
            .all(|b| b.starts_with(':') || b.starts_with("retry:")),
        "{blocks:?}"
    );
    // The connection was not touched.
    let (status, body) = timeout(LIMIT, client.fetch("/kestra/ping"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"pong"[..]));
    assert_eq!(client.goaway(), None);
    assert_eq!(edge.connections.accepted(), 1);
}
