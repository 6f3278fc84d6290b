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
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tokio::{net::TcpStream, sync::Notify};

/// The longest the streams may take to open, beyond their stagger.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Streams opened per second at most. Opened faster, they overflow a one-thread proxy's
/// accept queue, and the retransmitted SYNs (1 s, 3 s later) keep some from ever being open
/// together with the others.
const OPEN_RATE: f64 = 2000.0;

/// How long after the last stream closed the proxy's memory is read again, the same for
/// every proxy: long enough for an allocator that gives freed pages back on a timer (the
/// `kestra-edge` binary's jemalloc purges them over about a second, `dirty_decay_ms:1000`)
/// to have done so.
const CLOSE_SETTLE: Duration = Duration::from_secs(3);

/// What one SSE run measured.
#[derive(Debug)]
pub(crate) struct SseRun {
    /// Streams that received their first event.
    pub(crate) opened: usize,
    /// Delay from the stand-in's `sent_at_us` stamp to arrival, µs, over every event but
    /// each stream's first (sent as the stream opens, it carries the connect's cost).
    pub(crate) delays: Histogram<u64>,
    /// The proxy's memory around the run (`None` without a proxy).
    pub(crate) memory: Option<SseMemory>,
    /// CPU time (user + system) the proxy's processes spent per event delivered while every
    /// stream was open: from the memory sample to the end of the first stream that was open,
    /// so that neither the streams' opening nor their closing is counted (`None` without a
    /// proxy, or when fewer events than half the streams arrived in that time).
    pub(crate) cpu_us_per_event: Option<f64>,
}

/// The proxy's RSS before the streams opened, while they were open, and after they closed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SseMemory {
    pub(crate) before_kib: u64,
    pub(crate) open_kib: u64,
    /// Streams open when `open_kib` was read: all of them, unless some never opened.
    pub(crate) open_streams: usize,
    /// [`CLOSE_SETTLE`] after the last stream closed.
    pub(crate) closed_kib: u64,
}

impl SseMemory {
    /// RSS growth per open stream, KiB.
    pub(crate) fn kib_per_open_stream(&self) -> f64 {
        (self.open_kib as f64 - self.before_kib as f64) / self.open_streams.max(1) as f64
    }

    /// RSS still held after the streams closed, per stream that was open, KiB.
    pub(crate) fn kib_per_closed_stream(&self) -> f64 {
        (self.closed_kib as f64 - self.before_kib as f64) / self.open_streams.max(1) as f64
    }
}

/// Holds `streams` follow streams of one event every `interval`, opened spread over one
/// interval (or longer, at [`OPEN_RATE`]), all open together for `duration`; when `proxy` is
/// given, samples its RSS before the streams open, once all are open (or, if some never
/// open, halfway through) and [`CLOSE_SETTLE`] after all closed.
pub(crate) async fn run(
    addr: SocketAddr,
    streams: usize,
    interval: Duration,
    duration: Duration,
    proxy: Option<&Target>,
) -> SseRun {
    // Whole intervals, so that the streams' events stay evenly spread over each interval.
    let intervals = (streams as f64 / OPEN_RATE / interval.as_secs_f64().max(1e-3)).ceil();
    let window = interval * (intervals as u32).max(1);
    let interval_ms = interval.as_millis().max(1);
    // The stand-in sends `start`, `events` progress events and `end`, an interval apart. The
    // streams opened first live longest, so that all overlap for `duration`.
    let events = ((duration + window - interval).as_millis() / interval_ms).max(1) as u64;
    let life = interval * (events as u32 + 1);
    let before = proxy.map(Target::rss_kib);
    let opened = Arc::new(AtomicUsize::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let all_open = Arc::new(Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    for stream in 0..streams {
        let path = format!(
            "/kestra/api/v1/main/executions/bench-{stream}/follow?events={events}&interval_ms={interval_ms}"
        );
        let (opened, all_open, delivered) = (opened.clone(), all_open.clone(), delivered.clone());
        // Streams open spread over the window, so their events are spread
        // evenly in time instead of arriving in bursts of `streams`.
        let stagger = window.mul_f64(stream as f64 / streams as f64);
        let limit = stagger + life + OPEN_TIMEOUT;
        tasks.spawn(async move {
            tokio::time::sleep(stagger).await;
            let on_first_event = move || {
                if opened.fetch_add(1, Ordering::AcqRel) + 1 == streams {
                    all_open.notify_one();
                }
            };
            tokio::time::timeout(limit, follow(addr, path, on_first_event, &delivered))
                .await
                .unwrap_or_else(|_| new_histogram())
        });
    }
    let mut open_sample = None;
    if let (Some(proxy), Some(_)) = (proxy, before) {
        // All streams overlap for `duration` after the window: halfway, those that opened
        // still are open.
        let wait = window + OPEN_TIMEOUT.min(duration / 2);
        let _ = tokio::time::timeout(wait, all_open.notified()).await;
        // Let the buffers of the first events settle before reading.
        tokio::time::sleep(interval.min(Duration::from_millis(500))).await;
        open_sample = Some((proxy.rss_kib(), opened.load(Ordering::Acquire)));
    }
    // The proxy's CPU time and the events delivered when every stream was open; taken once
    // the first stream that was open ends.
    let mut steady = open_sample
        .and(proxy)
        .map(|proxy| (proxy, proxy.cpu_time(), delivered.load(Ordering::Acquire)));
    let mut cpu_us_per_event = None;
    let mut delays = new_histogram();
    while let Some(joined) = tasks.join_next().await {
        // A stream that never opened ends at once with no event: it does not end the
        // steady state.
        let ended_open = matches!(&joined, Ok(h) if !h.is_empty());
        if let Some((proxy, cpu, events)) = steady.take_if(|_| ended_open) {
            let events = delivered.load(Ordering::Acquire).saturating_sub(events);
            let cpu = proxy.cpu_time().saturating_sub(cpu);
            // At least an event for every other stream, so that a clock tick (10 ms) is a
            // small part of the figure.
            cpu_us_per_event =
                (events >= streams as u64 / 2).then(|| cpu.as_secs_f64() * 1e6 / events as f64);
        }
        if let Ok(h) = joined {
            let _ = delays.add(&h);
        }
    }
    let memory = match (proxy, before, open_sample) {
        (Some(proxy), Some(before_kib), Some((open_kib, open_streams))) => {
            tokio::time::sleep(CLOSE_SETTLE).await;
            Some(SseMemory {
                before_kib,
                open_kib,
                open_streams,
                closed_kib: proxy.rss_kib(),
            })
        }
        _ => None,
    };
    SseRun {
        opened: opened.load(Ordering::Acquire),
        delays,
        memory,
        cpu_us_per_event,
    }
}

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// One follow stream read to its end; each event's delay recorded, and counted in
/// `delivered`.
async fn follow(
    addr: SocketAddr,
    path: String,
    on_first_event: impl FnOnce(),
    delivered: &AtomicU64,
) -> Histogram<u64> {
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
                delivered.fetch_add(1, Ordering::Relaxed);
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
