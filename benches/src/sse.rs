//! Server-Sent Events: the delay each event takes to arrive, and the memory an open stream
//! costs the proxy.

use crate::{load::new_histogram, targets::Target};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::{net::TcpStream, sync::Notify};

/// The longest the streams may take to open, beyond their stagger.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// What one SSE run measured.
#[derive(Debug)]
pub(crate) struct SseRun {
    /// Streams that received their first event.
    pub(crate) opened: usize,
    /// Delay from the stand-in's `sent_at_us` stamp to arrival, µs, over every event but
    /// each stream's first (sent as the stream opens, it carries the connect's cost).
    pub(crate) delays: Histogram<u64>,
    /// The proxy's RSS growth while every stream was open, KiB (`None` without a proxy).
    pub(crate) rss_growth_kib: Option<i64>,
}

/// Holds `streams` follow streams of one event every `interval` for `duration`; when
/// `proxy` is given, samples its RSS before the streams open and once all are open.
pub(crate) async fn run(
    addr: SocketAddr,
    streams: usize,
    interval: Duration,
    duration: Duration,
    proxy: Option<&Target>,
) -> SseRun {
    let events = (duration.as_millis() / interval.as_millis().max(1)).max(1) as u64;
    let interval_ms = interval.as_millis();
    let before = proxy.map(Target::rss_kib);
    let opened = Arc::new(AtomicUsize::new(0));
    let all_open = Arc::new(Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    for stream in 0..streams {
        let path = format!(
            "/kestra/api/v1/main/executions/bench-{stream}/follow?events={events}&interval_ms={interval_ms}"
        );
        let (opened, all_open) = (opened.clone(), all_open.clone());
        // Streams open spread over one interval, so their events are spread evenly in time
        // instead of arriving in bursts of `streams`.
        let stagger = interval.mul_f64(stream as f64 / streams as f64);
        let limit = stagger + duration + OPEN_TIMEOUT;
        tasks.spawn(async move {
            tokio::time::sleep(stagger).await;
            let on_first_event = move || {
                if opened.fetch_add(1, Ordering::AcqRel) + 1 == streams {
                    all_open.notify_one();
                }
            };
            tokio::time::timeout(limit, follow(addr, path, on_first_event))
                .await
                .unwrap_or_else(|_| new_histogram())
        });
    }
    let mut rss_growth_kib = None;
    if let (Some(proxy), Some(before)) = (proxy, before) {
        let open = tokio::time::timeout(interval + OPEN_TIMEOUT, all_open.notified()).await;
        if open.is_ok() {
            // Let the buffers of the first events settle before reading.
            tokio::time::sleep(interval.min(Duration::from_millis(500))).await;
            rss_growth_kib = Some(proxy.rss_kib() as i64 - before as i64);
        }
    }
    let mut delays = new_histogram();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(h) = joined {
            let _ = delays.add(&h);
        }
    }
    SseRun {
        opened: opened.load(Ordering::Acquire),
        delays,
        rss_growth_kib,
    }
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// One follow stream read to its end; each event's delay recorded.
async fn follow(addr: SocketAddr, path: String, on_first_event: impl FnOnce()) -> Histogram<u64> {
    let mut histogram = new_histogram();
    let Ok(stream) = TcpStream::connect(addr).await else {
        return histogram;
    };
    let _ = stream.set_nodelay(true);
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return histogram;
    };
    tokio::spawn(conn);
    let Ok(request) = http::Request::get(path)
        .header(http::header::HOST, "bench.local")
        .body(Empty::<Bytes>::new())
    else {
        return histogram;
    };
    let Ok(response) = sender.send_request(request).await else {
        return histogram;
    };
    let mut body = response.into_body();
    let mut on_first_event = Some(on_first_event);
    const STAMP: &[u8] = b"\"sent_at_us\":";
    while let Some(Ok(frame)) = body.frame().await {
        let now = unix_micros();
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let mut rest = &data[..];
        while let Some(at) = find(rest, STAMP) {
            rest = &rest[at + STAMP.len()..];
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            let sent = std::str::from_utf8(&rest[..digits])
                .ok()
                .and_then(|d| d.parse::<u64>().ok());
            if let Some(sent) = sent {
                match on_first_event.take() {
                    Some(notify) => notify(),
                    None => {
                        let _ = histogram.record(now.saturating_sub(sent).max(1));
                    }
                }
            }
        }
    }
    histogram
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
