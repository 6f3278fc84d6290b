//! HTTP/1.1 load: keep-alive clients, one connection per request (churn), and large uploads,
//! over plain TCP or TLS.

use crate::tls::TlsClient;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tokio::net::TcpStream;

/// The longest one request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How each client connection sends its requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Requests back to back on one keep-alive connection.
    KeepAlive,
    /// A new TCP connection for every request (`Connection: close`).
    Churn,
    /// POSTs of `bytes` each, back to back on one keep-alive connection.
    Upload { bytes: u64 },
}

/// One HTTP workload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Workload {
    pub(crate) name: &'static str,
    pub(crate) path: &'static str,
    pub(crate) connections: usize,
    pub(crate) kind: Kind,
}

/// What one workload measured on one target.
#[derive(Debug)]
pub(crate) struct Load {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    /// Body bytes moved: the response bodies, or the uploads.
    pub(crate) bytes: u64,
    pub(crate) elapsed: Duration,
    /// Latency of each successful request, µs.
    pub(crate) latency: Histogram<u64>,
}

pub(crate) fn new_histogram() -> Histogram<u64> {
    // 1 µs to 10 min with 3 significant digits: bounds that are always valid.
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| unreachable!())
}

/// The longest a run of a fixed number of requests may take.
const REQUESTS_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `workload` against `addr` until `duration` has passed, over TLS with `tls`.
pub(crate) async fn run(
    addr: SocketAddr,
    workload: Workload,
    duration: Duration,
    tls: Option<&TlsClient>,
) -> Load {
    let until = Until {
        deadline: Instant::now() + duration,
        budget: None,
    };
    run_until(addr, workload, until, tls).await
}

/// Runs `workload` against `addr` (plain TCP) until its clients have sent `requests`, or
/// [`REQUESTS_TIMEOUT`] has passed.
pub(crate) async fn run_requests(addr: SocketAddr, workload: Workload, requests: u64) -> Load {
    let until = Until {
        deadline: Instant::now() + REQUESTS_TIMEOUT,
        budget: Some(Arc::new(AtomicU64::new(requests))),
    };
    run_until(addr, workload, until, None).await
}

/// When the clients of one run stop.
#[derive(Debug, Clone)]
struct Until {
    deadline: Instant,
    /// The requests still to send, shared by the clients; without it, as many as the time
    /// allows.
    budget: Option<Arc<AtomicU64>>,
}

impl Until {
    /// Whether the run goes on.
    fn open(&self) -> bool {
        Instant::now() < self.deadline
            && self
                .budget
                .as_ref()
                .is_none_or(|left| left.load(Ordering::Relaxed) > 0)
    }

    /// Whether the run goes on, taking one request from the budget if so.
    fn take(&self) -> bool {
        Instant::now() < self.deadline
            && self.budget.as_ref().is_none_or(|left| {
                left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
            })
    }
}

async fn run_until(
    addr: SocketAddr,
    workload: Workload,
    until: Until,
    tls: Option<&TlsClient>,
) -> Load {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workload.connections {
        tasks.spawn(client(addr, workload, until.clone(), tls.cloned()));
    }
    let mut total = Load {
        requests: 0,
        errors: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
        latency: new_histogram(),
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(load) => {
                total.requests += load.requests;
                total.errors += load.errors;
                total.bytes += load.bytes;
                let _ = total.latency.add(&load.latency);
            }
            Err(_) => total.errors += 1,
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// One client: connects, sends requests `until` the run ends, reconnects after an error.
async fn client(
    addr: SocketAddr,
    workload: Workload,
    until: Until,
    tls: Option<TlsClient>,
) -> Load {
    let mut load = Load {
        requests: 0,
        errors: 0,
        bytes: 0,
        elapsed: Duration::ZERO,
        latency: new_histogram(),
    };
    'connect: while until.open() {
        let start = Instant::now();
        let connected = tokio::time::timeout(REQUEST_TIMEOUT, connect(addr, tls.as_ref())).await;
        let Ok(Some(mut sender)) = connected else {
            load.errors += 1;
            // A refused connect returns at once: do not spin on it.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while until.take() {
            // Churn counts the connect in each request's latency.
            let start = if workload.kind == Kind::Churn {
                start
            } else {
                Instant::now()
            };
            let exchange = async {
                let response = sender.send_request(request(workload)).await.ok()?;
                let ok = response.status().is_success();
                // nginx closes a keep-alive connection after `keepalive_requests` (1000):
                // that is a reconnect, not an error.
                let closing = response
                    .headers()
                    .get(http::header::CONNECTION)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                let mut body = response.into_body();
                let mut received = 0u64;
                while let Some(frame) = body.frame().await {
                    if let Some(data) = frame.ok()?.data_ref() {
                        received += data.len() as u64;
                    }
                }
                ok.then_some((received, closing))
            };
            match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
                Ok(Some((received, closing))) => {
                    load.requests += 1;
                    load.bytes += match workload.kind {
                        Kind::Upload { bytes } => bytes,
                        Kind::KeepAlive | Kind::Churn => received,
                    };
                    let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                    let _ = load.latency.record(micros.max(1));
                    if closing || workload.kind == Kind::Churn {
                        continue 'connect;
                    }
                }
                _ => {
                    load.errors += 1;
                    continue 'connect;
                }
            }
        }
    }
    load
}

/// Connects (and with `tls`, completes the TLS handshake), then drives the HTTP/1.1
/// connection on a task of its own.
async fn connect(addr: SocketAddr, tls: Option<&TlsClient>) -> Option<SendRequest<Upload>> {
    let stream = TcpStream::connect(addr).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let sender = match tls {
        None => {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .ok()?;
            tokio::spawn(conn);
            sender
        }
        Some(tls) => {
            let stream = tls.connect(stream).await.ok()?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .ok()?;
            tokio::spawn(conn);
            sender
        }
    };
    Some(sender)
}

fn request(workload: Workload) -> http::Request<Upload> {
    let builder = http::Request::builder()
        .uri(workload.path)
        .header(http::header::HOST, "bench.local");
    let (builder, body) = match workload.kind {
        Kind::KeepAlive => (builder, Upload::empty()),
        Kind::Churn => (
            builder.header(http::header::CONNECTION, "close"),
            Upload::empty(),
        ),
        Kind::Upload { bytes } => (
            builder
                .method(http::Method::POST)
                .header(http::header::CONTENT_LENGTH, bytes),
            Upload::new(bytes),
        ),
    };
    builder.body(body).unwrap_or_else(|_| unreachable!())
}

/// A request body of `remaining` bytes, sent as 64 KiB frames of one shared buffer.
#[derive(Debug)]
pub(crate) struct Upload {
    chunk: Bytes,
    remaining: u64,
}

impl Upload {
    fn empty() -> Self {
        Self {
            chunk: Bytes::new(),
            remaining: 0,
        }
    }

    fn new(bytes: u64) -> Self {
        Self {
            chunk: Bytes::from(vec![b'u'; 64 * 1024]),
            remaining: bytes,
        }
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let len = self.remaining.min(self.chunk.len() as u64);
        self.remaining -= len;
        let frame = self.chunk.slice(..len as usize);
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
