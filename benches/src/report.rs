//! The results: rows, markdown tables, the targets of issue 7 and of the TLS rows checked,
//! and JSON.

use crate::{allocs::Allocations, load, sse::SseRun, ws::WsRun};
use serde::Serialize;
use std::time::Duration;

/// One HTTP workload on one target.
#[derive(Debug, Serialize)]
pub(crate) struct HttpRow {
    workload: String,
    connections: usize,
    target: &'static str,
    requests: u64,
    errors: u64,
    requests_per_sec: f64,
    mib_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    /// CPU time the proxy's processes spent per request (none for direct access).
    proxy_cpu_us_per_request: Option<f64>,
    /// The load generator's CPU use, in cores.
    generator_cores: f64,
    /// Heap allocations of the gateway's process per request, from a separate run of its
    /// counting build (kestra-edge's small GETs only).
    allocations: Option<Allocations>,
}

impl HttpRow {
    /// Requests answered per second.
    pub(crate) fn requests_per_sec(&self) -> f64 {
        self.requests_per_sec
    }

    pub(crate) fn new(
        workload: load::Workload,
        target: &'static str,
        load: &load::Load,
        proxy_cpu: Option<Duration>,
        generator_cores: f64,
    ) -> Self {
        let seconds = load.elapsed.as_secs_f64().max(f64::EPSILON);
        Self {
            workload: workload.name.to_owned(),
            connections: workload.connections,
            target,
            requests: load.requests,
            errors: load.errors,
            requests_per_sec: load.requests as f64 / seconds,
            mib_per_sec: load.bytes as f64 / seconds / f64::from(1 << 20),
            p50_us: load.latency.value_at_quantile(0.5),
            p99_us: load.latency.value_at_quantile(0.99),
            p999_us: load.latency.value_at_quantile(0.999),
            // No answered request (nginx's 413s), no cost per request.
            proxy_cpu_us_per_request: proxy_cpu
                .filter(|_| load.requests > 0)
                .map(|cpu| cpu.as_secs_f64() * 1e6 / load.requests as f64),
            generator_cores,
            allocations: None,
        }
    }

    pub(crate) fn summary(&self) -> String {
        format!(
            "{:>12} c={:<3} {:<15} {:>9.0} req/s {:>8.1} MiB/s  p99 {:>7} µs  errors {}",
            self.workload,
            self.connections,
            self.target,
            self.requests_per_sec,
            self.mib_per_sec,
            self.p99_us,
            self.errors
        )
    }
}

/// One SSE workload on one target.
#[derive(Debug, Serialize)]
pub(crate) struct SseRow {
    streams: usize,
    interval_ms: u128,
    target: &'static str,
    opened: usize,
    events: u64,
    p50_us: u64,
    p99_us: u64,
    /// The proxy's RSS growth per open stream, KiB.
    kib_per_stream: Option<f64>,
    /// Streams open when that growth was read (fewer than `streams` if some never opened).
    open_at_rss_read: Option<usize>,
    /// The proxy's RSS after the streams closed minus before they opened, per stream, KiB.
    kib_per_stream_after_close: Option<f64>,
    /// CPU time the proxy spent per event while every stream was open, µs.
    cpu_us_per_event: Option<f64>,
}

impl SseRow {
    pub(crate) fn new(
        streams: usize,
        interval: Duration,
        target: &'static str,
        run: &SseRun,
    ) -> Self {
        Self {
            streams,
            interval_ms: interval.as_millis(),
            target,
            opened: run.opened,
            events: run.delays.len(),
            p50_us: run.delays.value_at_quantile(0.5),
            p99_us: run.delays.value_at_quantile(0.99),
            kib_per_stream: run.memory.map(|m| m.kib_per_open_stream()),
            open_at_rss_read: run.memory.map(|m| m.open_streams),
            kib_per_stream_after_close: run.memory.map(|m| m.kib_per_closed_stream()),
            cpu_us_per_event: run.cpu_us_per_event,
        }
    }

    /// Whether this row is `target`'s with `streams` streams.
    pub(crate) fn is_for(&self, streams: usize, target: &str) -> bool {
        self.streams == streams && self.target == target
    }

    /// Streams open together in the round: when the memory was read, else those opened.
    fn concurrent(&self) -> usize {
        self.open_at_rss_read.unwrap_or(self.opened)
    }

    /// Merges another round of the same row, keeping the round that held the most streams
    /// open together (a round whose streams opened late, or not at all, measured less than
    /// the row says), and of those: for the delays, the lowest p99 (best of each, as with
    /// the HTTP rows' requests per second); for the memory, the highest per stream, so that
    /// a round that happened to read low does not hide one that read high.
    pub(crate) fn keep_best(&mut self, other: &SseRow) {
        let rank = |r: &SseRow| (r.concurrent(), r.opened);
        let (mine, theirs) = (rank(self), rank(other));
        if (theirs, std::cmp::Reverse(other.p99_us)) > (mine, std::cmp::Reverse(self.p99_us)) {
            self.opened = other.opened;
            self.events = other.events;
            self.p50_us = other.p50_us;
            self.p99_us = other.p99_us;
        }
        let memory = |r: &SseRow| (r.concurrent(), r.kib_per_stream.unwrap_or(f64::MIN));
        let (mine, theirs) = (memory(self), memory(other));
        if other.kib_per_stream.is_some() && (self.kib_per_stream.is_none() || theirs > mine) {
            self.open_at_rss_read = other.open_at_rss_read;
            self.kib_per_stream = other.kib_per_stream;
            self.kib_per_stream_after_close = other.kib_per_stream_after_close;
        }
        // CPU per event: the lowest of the rounds, as the HTTP rows keep their best round.
        self.cpu_us_per_event = match (self.cpu_us_per_event, other.cpu_us_per_event) {
            (Some(mine), Some(theirs)) => Some(mine.min(theirs)),
            (mine, theirs) => mine.or(theirs),
        };
    }

    pub(crate) fn summary(&self) -> String {
        format!(
            "  SSE streams={:<5} {:<15} opened {:>5} events {:>7}  p50 {:>6} µs  p99 {:>6} µs  KiB/stream open {} after close {}  CPU/event {} µs",
            self.streams,
            self.target,
            self.opened,
            self.events,
            self.p50_us,
            self.p99_us,
            self.kib_open(),
            tenths(self.kib_per_stream_after_close),
            tenths(self.cpu_us_per_event),
        )
    }

    /// The growth per open stream, with how many were open when fewer than all.
    fn kib_open(&self) -> String {
        match (self.kib_per_stream, self.open_at_rss_read) {
            (Some(k), Some(open)) if open != self.streams => format!("{k:.1} ({open} open)"),
            (k, _) => tenths(k),
        }
    }
}

/// One WebSocket workload on one target.
#[derive(Debug, Serialize)]
pub(crate) struct WsRow {
    connections: usize,
    target: &'static str,
    messages: u64,
    errors: u64,
    messages_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
}

impl WsRow {
    pub(crate) fn new(connections: usize, target: &'static str, run: &WsRun) -> Self {
        Self {
            connections,
            target,
            messages: run.messages,
            errors: run.errors,
            messages_per_sec: run.messages as f64 / run.elapsed.as_secs_f64().max(f64::EPSILON),
            p50_us: run.rtt.value_at_quantile(0.5),
            p99_us: run.rtt.value_at_quantile(0.99),
        }
    }

    pub(crate) fn summary(&self) -> String {
        format!(
            "  WebSocket c={:<3} {:<15} {:>8.0} msg/s  p50 {:>6} µs  p99 {:>6} µs  errors {}",
            self.connections,
            self.target,
            self.messages_per_sec,
            self.p50_us,
            self.p99_us,
            self.errors
        )
    }
}

/// One target of issue 7, checked against this run.
#[derive(Debug, Serialize)]
pub(crate) struct Check {
    what: String,
    measured: String,
    met: bool,
}

/// One proxy of the run: its version and its threads.
#[derive(Debug, Serialize)]
pub(crate) struct Proxy {
    pub(crate) name: &'static str,
    pub(crate) version: String,
    /// The setting that gives it `--proxy-threads` worker threads.
    pub(crate) threads_setting: String,
    /// The most OS threads its processes had after a measurement (tokio's and Go's
    /// helper threads, nginx's master included).
    pub(crate) os_threads: u64,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    duration_secs: f64,
    /// Worker threads given to every proxy (`--proxy-threads`).
    proxy_threads: usize,
    pub(crate) proxies: Vec<Proxy>,
    /// The open-files limit of the harness and the servers it started.
    open_files_limit: u64,
    /// `/proc/loadavg`'s 1, 5 and 15 minute averages when the run started and ended.
    load_average_start: String,
    load_average_end: String,
    pub(crate) http: Vec<HttpRow>,
    /// The TLS group: kestra-edge and nginx over TLS, direct access over plain TCP.
    pub(crate) tls: Vec<HttpRow>,
    pub(crate) sse: Vec<SseRow>,
    pub(crate) ws: Vec<WsRow>,
    /// Why a gateway has no allocations per request, or why they may be off.
    allocation_notes: Vec<String>,
    checks: Vec<Check>,
}

const EDGE: &str = "kestra-edge";
const NGINX: &str = "nginx";
const NGINX_KEEPALIVE: &str = "nginx-keepalive";
pub(crate) const NGINX_TLS: &str = "nginx-tls";
/// The upstream measured over plain TCP, as the TLS rows' reference.
pub(crate) const DIRECT_PLAIN: &str = "direct (plain)";

impl Report {
    pub(crate) fn new(duration: Duration, proxy_threads: usize, open_files_limit: u64) -> Self {
        Self {
            duration_secs: duration.as_secs_f64(),
            proxy_threads,
            proxies: Vec::new(),
            open_files_limit,
            load_average_start: load_average(),
            load_average_end: String::new(),
            http: Vec::new(),
            tls: Vec::new(),
            sse: Vec::new(),
            ws: Vec::new(),
            allocation_notes: Vec::new(),
            checks: Vec::new(),
        }
    }

    /// Lists a proxy in the header (once, however many groups start it).
    pub(crate) fn add_proxy(
        &mut self,
        name: &'static str,
        version: String,
        threads_setting: String,
    ) {
        if !self.proxies.iter().any(|p| p.name == name) {
            self.proxies.push(Proxy {
                name,
                version,
                threads_setting,
                os_threads: 0,
            });
        }
    }

    /// Records that `name`'s processes had `threads` OS threads after a measurement.
    pub(crate) fn saw_threads(&mut self, name: &str, threads: u64) {
        if let Some(proxy) = self.proxies.iter_mut().find(|p| p.name == name) {
            proxy.os_threads = proxy.os_threads.max(threads);
        }
    }

    /// Adds the allocations per request that `target` made on `workload` to its HTTP row.
    pub(crate) fn set_allocations(
        &mut self,
        workload: load::Workload,
        target: &str,
        allocations: Allocations,
    ) {
        let row = self.http.iter_mut().find(|r| {
            r.workload == workload.name
                && r.connections == workload.connections
                && r.target == target
        });
        if let Some(row) = row {
            row.allocations = Some(allocations);
        }
    }

    /// Says, under the HTTP table, why allocations per request are missing or doubtful.
    pub(crate) fn note_allocations(&mut self, note: String) {
        self.allocation_notes.push(note);
    }

    fn http_row(&self, workload: &str, connections: usize, target: &str) -> Option<&HttpRow> {
        find_http(&self.http, workload, connections, target)
    }

    fn sse_row(&self, streams: usize, target: &str) -> Option<&SseRow> {
        self.sse
            .iter()
            .find(|r| r.streams == streams && r.target == target)
    }

    fn ws_row(&self, connections: usize, target: &str) -> Option<&WsRow> {
        self.ws
            .iter()
            .find(|r| r.connections == connections && r.target == target)
    }

    /// Checks the targets that this run has the rows for.
    fn check(&mut self) {
        let mut checks = Vec::new();
        for connections in [1, 32, 256] {
            let row = |t| self.http_row("small GET", connections, t);
            if let (Some(edge), Some(nginx)) = (row(EDGE), row(NGINX_KEEPALIVE)) {
                let ratio = edge.requests_per_sec / nginx.requests_per_sec;
                checks.push(Check {
                    what: format!("small GET c={connections}: req/s ≥ 1.2× nginx-keepalive"),
                    measured: format!("{ratio:.2}×"),
                    met: ratio >= 1.2,
                });
                checks.push(Check {
                    what: format!("small GET c={connections}: p99 ≤ nginx-keepalive's"),
                    measured: format!("{} vs {} µs", edge.p99_us, nginx.p99_us),
                    met: edge.p99_us <= nginx.p99_us,
                });
            }
        }
        for connections in [1, 4] {
            let row = |t| self.http_row("1 MiB GET", connections, t);
            if let (Some(edge), Some(nginx)) = (row(EDGE), row(NGINX)) {
                let ratio = edge.mib_per_sec / nginx.mib_per_sec;
                checks.push(Check {
                    what: format!("1 MiB GET c={connections}: MiB/s ≥ 2× nginx"),
                    measured: format!("{ratio:.2}×"),
                    met: ratio >= 2.0,
                });
            }
        }
        let streams: Vec<usize> = self.sse.iter().map(|r| r.streams).collect();
        for n in dedup(streams) {
            if let (Some(edge), Some(direct)) = (self.sse_row(n, EDGE), self.sse_row(n, "direct")) {
                // Streams that never opened (the open-files limit) are said, not hidden.
                let short = if edge.opened == n {
                    String::new()
                } else {
                    format!(" ({} of {n} opened)", edge.opened)
                };
                let added = edge.p99_us as i64 - direct.p99_us as i64;
                checks.push(Check {
                    what: format!("SSE {n} streams: added delay p99 ≤ 500 µs"),
                    measured: format!("{added} µs{short}"),
                    met: added <= 500 && edge.opened == n,
                });
                if let Some(kib) = edge.kib_per_stream.filter(|_| n >= 100) {
                    checks.push(Check {
                        what: format!("SSE {n} streams: ≤ 12 KiB per open stream"),
                        measured: format!("{kib:.1} KiB{short}"),
                        met: kib <= 12.0,
                    });
                }
                if let Some(kib) = edge.kib_per_stream_after_close.filter(|_| n >= 100) {
                    checks.push(Check {
                        what: format!(
                            "SSE {n} streams: RSS after they close ≤ 4 KiB per stream above where it started"
                        ),
                        measured: format!("{kib:.1} KiB{short}"),
                        met: kib <= 4.0,
                    });
                }
            }
        }
        for connections in [1, 32] {
            let row = |t| self.ws_row(connections, t);
            if let (Some(edge), Some(nginx), Some(direct)) = (row(EDGE), row(NGINX), row("direct"))
            {
                let added = |r: &WsRow| r.p50_us as i64 - direct.p50_us as i64;
                let added99 = |r: &WsRow| r.p99_us as i64 - direct.p99_us as i64;
                checks.push(Check {
                    what: format!(
                        "WebSocket c={connections}: added round trip ≤ nginx's (p50, p99)"
                    ),
                    measured: format!(
                        "p50 +{} vs +{} µs, p99 +{} vs +{} µs",
                        added(edge),
                        added(nginx),
                        added99(edge),
                        added99(nginx)
                    ),
                    met: added(edge) <= added(nginx) && added99(edge) <= added99(nginx),
                });
            }
        }
        // TLS: at least nginx's throughput (or handshakes) with a p99 no higher.
        let mut cases: Vec<(&str, usize)> = Vec::new();
        for row in &self.tls {
            if !cases.contains(&(&row.workload, row.connections)) {
                cases.push((&row.workload, row.connections));
            }
        }
        for (workload, connections) in cases {
            let row = |t| find_http(&self.tls, workload, connections, t);
            if let (Some(edge), Some(nginx)) = (row(EDGE), row(NGINX_TLS)) {
                let ratio = edge.requests_per_sec / nginx.requests_per_sec.max(f64::EPSILON);
                checks.push(Check {
                    what: format!("{workload} c={connections}: req/s ≥ nginx-tls"),
                    measured: format!("{ratio:.2}×"),
                    met: ratio >= 1.0 && edge.requests > 0,
                });
                checks.push(Check {
                    what: format!("{workload} c={connections}: p99 ≤ nginx-tls's"),
                    measured: format!("{} vs {} µs", edge.p99_us, nginx.p99_us),
                    met: edge.p99_us <= nginx.p99_us && edge.requests > 0,
                });
            }
        }
        self.checks = checks;
    }

    /// One markdown table of HTTP rows, with each row's ratio to `direct` and to `base`,
    /// and with `allocations`, the allocations per request.
    fn print_http(rows: &[HttpRow], direct: &str, base: &str, allocations: bool) {
        let (allocs_head, allocs_align) = if allocations {
            (" allocs/req | alloc bytes/req |", "---:|---:|")
        } else {
            ("", "")
        };
        println!("| workload | conns | target | req/s | MiB/s | p50 µs | p99 µs | p99.9 µs | errors | proxy CPU µs/req |{allocs_head} generator cores | vs {direct} | vs {base} |");
        println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|{allocs_align}---:|---:|---:|");
        for row in rows {
            let allocs = if allocations {
                let figure = |f: fn(&Allocations) -> String| {
                    row.allocations.as_ref().map_or_else(|| "-".to_owned(), f)
                };
                format!(
                    " {} | {} |",
                    figure(|a| format!("{:.1}", a.per_request)),
                    figure(|a| format!("{:.0}", a.bytes_per_request)),
                )
            } else {
                String::new()
            };
            let per = |target| {
                find_http(rows, &row.workload, row.connections, target)
                    .map(|b| ratio(row.requests_per_sec, b.requests_per_sec))
                    .unwrap_or_else(|| "-".to_owned())
            };
            println!(
                "| {} | {} | {} | {:.0} | {:.1} | {} | {} | {} | {} | {} |{allocs} {:.2} | {} | {} |",
                row.workload,
                row.connections,
                row.target,
                row.requests_per_sec,
                row.mib_per_sec,
                row.p50_us,
                row.p99_us,
                row.p999_us,
                row.errors,
                row.proxy_cpu_us_per_request
                    .map_or_else(|| "-".to_owned(), |us| format!("{us:.1}")),
                row.generator_cores,
                per(direct),
                per(base),
            );
        }
        println!();
    }

    pub(crate) fn print(&mut self) {
        self.check();
        self.load_average_end = load_average();
        self.print_header();
        if !self.http.is_empty() {
            Self::print_http(&self.http, "direct", NGINX_KEEPALIVE, true);
            for note in &self.allocation_notes {
                println!("{note}");
                println!();
            }
        }
        if !self.tls.is_empty() {
            Self::print_http(&self.tls, DIRECT_PLAIN, NGINX_TLS, false);
        }
        if !self.sse.is_empty() {
            self.print_sse();
        }
        if !self.ws.is_empty() {
            self.print_ws();
        }
        println!("| target | measured | met |");
        println!("|---|---|---|");
        for check in &self.checks {
            println!(
                "| {} | {} | {} |",
                check.what,
                check.measured,
                if check.met { "yes" } else { "**no**" }
            );
        }
    }

    /// The proxies, their versions and threads; the machine's load and open-files limit.
    fn print_header(&self) {
        println!(
            "Every proxy ran with {} worker thread(s) (`--proxy-threads {}`). Load average (1, 5, 15 min) at start: {}; at end: {}. Open-files limit: {}.",
            self.proxy_threads,
            self.proxy_threads,
            self.load_average_start,
            self.load_average_end,
            self.open_files_limit,
        );
        println!();
        println!("| proxy | version | worker threads | OS threads seen (all its processes) |");
        println!("|---|---|---|---:|");
        for proxy in &self.proxies {
            println!(
                "| {} | {} | {} | {} |",
                proxy.name, proxy.version, proxy.threads_setting, proxy.os_threads
            );
        }
        println!();
    }

    fn print_sse(&self) {
        println!("| SSE streams | event every | target | streams opened | events | delay p50 µs | delay p99 µs | added p50 µs | added p99 µs | proxy KiB per open stream | KiB per stream still held after close | proxy CPU µs per event |");
        println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for row in &self.sse {
            let direct = self.sse_row(row.streams, "direct");
            let added = |f: fn(&SseRow) -> u64| {
                direct.map_or_else(
                    || "-".to_owned(),
                    |d| (f(row) as i64 - f(d) as i64).to_string(),
                )
            };
            println!(
                "| {} | {} ms | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                row.streams,
                row.interval_ms,
                row.target,
                row.opened,
                row.events,
                row.p50_us,
                row.p99_us,
                added(|r| r.p50_us),
                added(|r| r.p99_us),
                row.kib_open(),
                tenths(row.kib_per_stream_after_close),
                tenths(row.cpu_us_per_event),
            );
        }
        println!();
    }

    fn print_ws(&self) {
        println!("| WebSocket conns | target | messages/s | errors | RTT p50 µs | RTT p99 µs | added p50 µs | added p99 µs |");
        println!("|---:|---|---:|---:|---:|---:|---:|---:|");
        for row in &self.ws {
            let direct = self.ws_row(row.connections, "direct");
            let added = |f: fn(&WsRow) -> u64| {
                direct.map_or_else(
                    || "-".to_owned(),
                    |d| (f(row) as i64 - f(d) as i64).to_string(),
                )
            };
            println!(
                "| {} | {} | {:.0} | {} | {} | {} | {} | {} |",
                row.connections,
                row.target,
                row.messages_per_sec,
                row.errors,
                row.p50_us,
                row.p99_us,
                added(|r| r.p50_us),
                added(|r| r.p99_us),
            );
        }
        println!();
    }
}

/// The row of `workload` at `connections` for `target`.
fn find_http<'a>(
    rows: &'a [HttpRow],
    workload: &str,
    connections: usize,
    target: &str,
) -> Option<&'a HttpRow> {
    rows.iter()
        .find(|r| r.workload == workload && r.connections == connections && r.target == target)
}

fn ratio(value: f64, base: f64) -> String {
    if base > 0.0 {
        format!("{:.2}×", value / base)
    } else {
        "-".to_owned()
    }
}

/// An optional figure to one decimal, `-` when absent.
fn tenths(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |k| format!("{k:.1}"))
}

/// The first three fields of `/proc/loadavg`.
fn load_average() -> String {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    loadavg
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn dedup(mut values: Vec<usize>) -> Vec<usize> {
    values.sort_unstable();
    values.dedup();
    values
}

#[cfg(test)]
mod tests {
    use super::SseRow;

    fn row(opened: usize, p99_us: u64, kib: f64, after: f64) -> SseRow {
        SseRow {
            streams: 1000,
            interval_ms: 1000,
            target: "kestra-edge",
            opened,
            events: opened as u64 * 4,
            p50_us: p99_us / 10,
            p99_us,
            kib_per_stream: Some(kib),
            open_at_rss_read: Some(opened),
            kib_per_stream_after_close: Some(after),
            cpu_us_per_event: None,
        }
    }

    #[test]
    fn a_row_keeps_the_lowest_delay_and_the_highest_memory_of_its_rounds() {
        let mut kept = row(1000, 2000, 7.5, 1.0);
        kept.keep_best(&row(1000, 900, 7.9, 0.5));
        kept.keep_best(&row(1000, 1500, 7.0, 2.0));
        assert_eq!((kept.p99_us, kept.p50_us, kept.events), (900, 90, 4000));
        // The highest round's memory, with its own figure after close.
        assert_eq!(kept.kib_per_stream, Some(7.9));
        assert_eq!(kept.kib_per_stream_after_close, Some(0.5));
    }

    #[test]
    fn a_row_keeps_the_lowest_cpu_per_event_of_its_rounds() {
        let with_cpu = |us: Option<f64>| SseRow {
            cpu_us_per_event: us,
            ..row(1000, 2000, 7.5, 1.0)
        };
        let mut kept = with_cpu(None);
        kept.keep_best(&with_cpu(Some(30.0)));
        assert_eq!(kept.cpu_us_per_event, Some(30.0));
        kept.keep_best(&with_cpu(Some(24.5)));
        kept.keep_best(&with_cpu(Some(41.0)));
        kept.keep_best(&with_cpu(None));
        assert_eq!(kept.cpu_us_per_event, Some(24.5));
    }

    #[test]
    fn a_round_with_fewer_streams_open_together_gives_neither_delay_nor_memory() {
        let mut kept = row(1000, 2000, 7.5, 1.0);
        let mut late = row(1000, 100, 13.8, 3.0);
        late.open_at_rss_read = Some(440);
        kept.keep_best(&late);
        assert_eq!((kept.opened, kept.p99_us), (1000, 2000));
        assert_eq!(
            (kept.kib_per_stream, kept.open_at_rss_read),
            (Some(7.5), Some(1000))
        );
        late.keep_best(&row(1000, 2000, 7.5, 1.0));
        assert_eq!((late.p99_us, late.kib_per_stream), (2000, Some(7.5)));
        assert_eq!(late.open_at_rss_read, Some(1000));
        // Without memory (the direct rows): the round that opened the most.
        let mut direct = row(1000, 2000, 0.0, 0.0);
        direct.kib_per_stream = None;
        direct.open_at_rss_read = None;
        let mut short = row(990, 100, 0.0, 0.0);
        short.kib_per_stream = None;
        short.open_at_rss_read = None;
        direct.keep_best(&short);
        assert_eq!((direct.opened, direct.p99_us), (1000, 2000));
    }
}
