//! The access log: one line per finished request, tunnel or egress connection, handed to a
//! writer thread so that a slow stdout never holds a request up.

use std::{
    cell::RefCell,
    fmt,
    io::{self, Write},
    net::IpAddr,
    str::FromStr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
    },
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

/// Bytes of lines waiting for the writer thread before new lines are dropped (and counted):
/// 16 MiB, about 60 000 lines, a second of stdout stalling at 60 000 requests per second.
pub const DEFAULT_BUFFERED_BYTES: usize = 16 << 20;

/// How long the writer thread lets lines gather before it writes them: at most this many
/// writes per second (100), however many requests.
const LINGER: Duration = Duration::from_millis(10);

/// How lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// `key=value` pairs (logfmt), one request per line.
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for AccessLogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("{other:?}: expected text or json")),
        }
    }
}

/// Writes access-log lines without blocking: a line is appended to a shared buffer (one
/// uncontended lock, no allocation once the buffer has grown), and a writer thread takes the
/// whole buffer at most every 10 ms and writes it in one go. When the output is slower than
/// the traffic (a stalled log collector) and the buffer holds its limit, a new line is
/// dropped and counted in [`dropped`](Self::dropped); requests never wait for the output.
/// Clones share the buffer; when the last one goes, what is buffered is written and the
/// thread stops.
///
/// Why not `tracing-appender`'s non-blocking writer: it queues each line as a message of its
/// own and wakes its thread for it. Measured in the harness's telemetry group, that and the
/// request ids took a small GET from 17.0 to 28.2 µs of CPU.
///
/// Lines never hold a header value: no `Authorization`, `Cookie`, `Set-Cookie` or
/// `Proxy-Authorization`, and only the path of the target, never its query string (which
/// can carry tokens).
#[derive(Clone)]
pub struct AccessLog {
    inner: Arc<Handle>,
}

/// What the handles share; its drop (the last handle's) stops the writer thread.
struct Handle {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What the handles and the writer thread share.
struct Shared {
    format: AccessLogFormat,
    limit: usize,
    batch: Mutex<Batch>,
    /// Wakes the writer thread when lines arrive while it waits, or at the close.
    arrived: Condvar,
    dropped: AtomicU64,
}

#[derive(Default)]
struct Batch {
    lines: Vec<u8>,
    /// The writer thread waits for lines (so a new line must wake it).
    idle: bool,
    /// The last handle is gone: write what is left and stop.
    closed: bool,
}

fn lock(batch: &Mutex<Batch>) -> MutexGuard<'_, Batch> {
    // A panic while holding the lock leaves bytes, never a broken invariant.
    batch.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.inner.shared.format)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl AccessLog {
    /// Lines to the process's standard output.
    pub fn stdout(format: AccessLogFormat) -> Self {
        Self::to_writer(format, io::stdout(), DEFAULT_BUFFERED_BYTES)
    }

    /// Lines to `writer`, with at most `buffered_bytes` of them waiting.
    ///
    /// # Panics
    ///
    /// When the operating system refuses a new thread (at start-up).
    pub fn to_writer<W: Write + Send + 'static>(
        format: AccessLogFormat,
        writer: W,
        buffered_bytes: usize,
    ) -> Self {
        let shared = Arc::new(Shared {
            format,
            limit: buffered_bytes,
            batch: Mutex::new(Batch::default()),
            arrived: Condvar::new(),
            dropped: AtomicU64::new(0),
        });
        let writing = shared.clone();
        #[allow(clippy::expect_used)]
        let thread = std::thread::Builder::new()
            .name("kestra-edge-access-log".to_owned())
            .spawn(move || writing.run(writer))
            .expect("the access log's writer thread starts");
        Self {
            inner: Arc::new(Handle {
                shared,
                thread: Some(thread),
            }),
        }
    }

    /// The format of the lines.
    pub fn format(&self) -> AccessLogFormat {
        self.inner.shared.format
    }

    /// Lines dropped because the output did not keep up.
    pub fn dropped(&self) -> u64 {
        self.inner.shared.dropped.load(Ordering::Relaxed)
    }

    /// Buffers the line of `entry`, stamped with the time now; dropped and counted when the
    /// buffer is full.
    pub fn write(&self, entry: &Entry<'_>) {
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                return;
            };
            line.clear();
            match self.inner.shared.format {
                AccessLogFormat::Text => entry.text(SystemTime::now(), &mut line),
                AccessLogFormat::Json => entry.json(SystemTime::now(), &mut line),
            }
            self.inner.shared.push(&line);
            if line.capacity() > 4096 {
                *line = Vec::with_capacity(512);
            }
        });
    }
}

impl Shared {
    fn push(&self, line: &[u8]) {
        let mut batch = lock(&self.batch);
        if batch.lines.len() + line.len() > self.limit {
            drop(batch);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        batch.lines.extend_from_slice(line);
        if batch.idle {
            batch.idle = false;
            drop(batch);
            self.arrived.notify_one();
        }
    }

    /// The writer thread: waits for lines, lets more gather for [`LINGER`], writes them all
    /// at once, until the close.
    fn run<W: Write>(&self, writer: W) {
        let mut writer = writer;
        let mut spare = Vec::new();
        loop {
            let mut batch = lock(&self.batch);
            while batch.lines.is_empty() && !batch.closed {
                batch.idle = true;
                batch = self
                    .arrived
                    .wait(batch)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            let closed = batch.closed;
            if !closed {
                // Lines keep arriving without waking us while we linger.
                drop(batch);
                std::thread::sleep(LINGER);
                batch = lock(&self.batch);
            }
            std::mem::swap(&mut batch.lines, &mut spare);
            let closed = batch.closed;
            drop(batch);
            if !spare.is_empty() {
                if let Err(err) = writer.write_all(&spare).and_then(|()| writer.flush()) {
                    // Nowhere to report it but stderr, where the diagnostics go.
                    tracing::warn!(error = %err, "access log: write failed");
                }
            }
            // Keep the buffer's memory unless a burst grew it beyond the usual.
            if spare.capacity() > 1 << 20 {
                spare = Vec::new();
            } else {
                spare.clear();
            }
            if closed && lock(&self.batch).lines.is_empty() {
                return;
            }
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        lock(&self.shared.batch).closed = true;
        self.shared.arrived.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

thread_local! {
    /// Each thread formats its lines here: a line costs no allocation.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

/// What one line says.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// `http`, `sse` (an event stream), `websocket` (an upgrade tunnel), `connect` (an egress
    /// tunnel) or `forward` (an egress absolute-form request).
    pub kind: &'static str,
    /// The client: after trusted-proxy resolution when a trusted proxy reported it, else the
    /// peer.
    pub client: Option<IpAddr>,
    /// The request method.
    pub method: &'a str,
    /// The path without its query, or an egress destination's `host:port`.
    pub target: &'a str,
    /// The status code sent.
    pub status: u16,
    /// Bytes of the request body (of a tunnel: from the client).
    pub bytes_in: u64,
    /// Bytes of the response body (of a tunnel: to the client).
    pub bytes_out: u64,
    /// From the request's arrival to the end of its response body (or tunnel).
    pub duration: Duration,
    /// The upstream (the URL as configured, a replica's `ip:port`, an egress destination's
    /// address), when one was asked.
    pub upstream: Option<&'a str>,
    /// The request's `X-Request-Id`, when there is one.
    pub request_id: Option<&'a str>,
    /// How it ended: `done`; `aborted` (the client went away first); `error` (the upstream's
    /// body failed); for a tunnel, `finished`, `error`, `idle`, `lifetime` or `shutdown`.
    pub end: &'static str,
}

impl Entry<'_> {
    fn text(&self, now: SystemTime, out: &mut Vec<u8>) {
        let _ = write!(
            out,
            "time={} kind={} client=",
            humantime::format_rfc3339_millis(now),
            self.kind
        );
        match self.client {
            Some(client) => {
                let _ = write!(out, "{client}");
            }
            None => out.push(b'-'),
        }
        out.extend_from_slice(b" method=");
        logfmt(out, self.method);
        out.extend_from_slice(b" target=");
        logfmt(out, self.target);
        let _ = write!(
            out,
            " status={} bytes_in={} bytes_out={} duration_ms={:.3} upstream=",
            self.status,
            self.bytes_in,
            self.bytes_out,
            self.duration.as_secs_f64() * 1000.0
        );
        logfmt(out, self.upstream.unwrap_or("-"));
        out.extend_from_slice(b" request_id=");
        logfmt(out, self.request_id.unwrap_or("-"));
        let _ = writeln!(out, " end={}", self.end);
    }

    fn json(&self, now: SystemTime, out: &mut Vec<u8>) {
        let _ = write!(
            out,
            "{{\"time\":\"{}\",\"kind\":\"{}\",\"client\":",
            humantime::format_rfc3339_millis(now),
            self.kind
        );
        match self.client {
            Some(client) => {
                let _ = write!(out, "\"{client}\"");
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"method\":");
        json_string(out, self.method);
        out.extend_from_slice(b",\"target\":");
        json_string(out, self.target);
        let _ = write!(
            out,
            ",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{:.3},\"upstream\":",
            self.status,
            self.bytes_in,
            self.bytes_out,
            self.duration.as_secs_f64() * 1000.0
        );
        json_option(out, self.upstream);
        out.extend_from_slice(b",\"request_id\":");
        json_option(out, self.request_id);
        let _ = writeln!(out, ",\"end\":\"{}\"}}", self.end);
    }
}

/// A logfmt value: bare when it has no space, quote, `=`, backslash or control byte, else
/// quoted with those escaped (non-ASCII passes through as UTF-8).
fn logfmt(out: &mut Vec<u8>, value: &str) {
    let bare = !value.is_empty()
        && value
            .bytes()
            .all(|b| b > b' ' && b != b'"' && b != b'=' && b != b'\\' && b != 0x7f);
    if bare {
        out.extend_from_slice(value.as_bytes());
        return;
    }
    json_string(out, value);
}

fn json_option(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(value) => json_string(out, value),
        None => out.extend_from_slice(b"null"),
    }
}

/// `value` as a JSON string (RFC 8259 §7), by serde_json.
fn json_string(out: &mut Vec<u8>, value: &str) {
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn entry() -> Entry<'static> {
        Entry {
            kind: "http",
            client: Some("10.0.0.7".parse().unwrap()),
            method: "GET",
            target: "/kestra/api/v1/flows",
            status: 200,
            bytes_in: 0,
            bytes_out: 1234,
            duration: Duration::from_micros(1500),
            upstream: Some("http://127.0.0.1:8080"),
            request_id: None,
            end: "done",
        }
    }

    #[test]
    fn text_lines_are_logfmt() {
        let mut out = Vec::new();
        entry().text(SystemTime::UNIX_EPOCH, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "time=1970-01-01T00:00:00.000Z kind=http client=10.0.0.7 method=GET \
             target=/kestra/api/v1/flows status=200 bytes_in=0 bytes_out=1234 \
             duration_ms=1.500 upstream=http://127.0.0.1:8080 request_id=- end=done\n"
        );
        let mut odd = entry();
        odd.target = "/a\"b c=d\\";
        odd.client = None;
        let mut out = Vec::new();
        odd.text(SystemTime::UNIX_EPOCH, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(
            line.contains(r#"client=- method=GET target="/a\"b c=d\\" status"#),
            "{line}"
        );
    }

    #[test]
    fn json_lines_parse_as_json() {
        let mut odd = entry();
        odd.target = "/a\"b\u{1}";
        odd.request_id = Some("abc");
        let mut out = Vec::new();
        odd.json(SystemTime::UNIX_EPOCH, &mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["target"], "/a\"b\u{1}");
        assert_eq!(value["status"], 200);
        assert_eq!(value["client"], "10.0.0.7");
        assert_eq!(value["request_id"], "abc");
        assert_eq!(value["duration_ms"], 1.5);
        assert_eq!(value["end"], "done");
        assert_eq!(value["time"], "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn lines_reach_the_writer_when_the_log_is_dropped() {
        let captured = Captured::default();
        let log = AccessLog::to_writer(AccessLogFormat::Json, captured.clone(), 1 << 20);
        log.write(&entry());
        log.write(&entry());
        drop(log);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    /// A writer that blocks until the test lets it go.
    struct Stalled(Arc<(Mutex<bool>, std::sync::Condvar)>);

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let (open, changed) = &*self.0;
            let mut open = open.lock().unwrap();
            while !*open {
                open = changed.wait(open).unwrap();
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_output_drops_and_counts_lines_instead_of_blocking() {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        // The writer thread takes the first lines and blocks in its write; 2 KiB (about 10
        // lines) wait after them, and everything after is dropped at once.
        let log = AccessLog::to_writer(AccessLogFormat::Text, Stalled(gate.clone()), 2048);
        let started = std::time::Instant::now();
        for _ in 0..1000 {
            log.write(&entry());
        }
        // 1000 writes against a writer that never returns: they must not wait for it.
        assert!(started.elapsed() < Duration::from_secs(5));
        let dropped = log.dropped();
        assert!((900..1000).contains(&dropped), "dropped {dropped}");
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
        drop(log);
    }
}
