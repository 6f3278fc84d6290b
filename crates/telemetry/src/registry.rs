//! The numbers: fixed atomic tables written per request, copied into the exporter when
//! scraped.

use http::{HeaderMap, Method, StatusCode};
use kestra_edge_proxy::UpstreamFailure;
use kestra_edge_server::Connections;
use kestra_edge_sse::StreamCapExceeded;
use kestra_edge_upgrade::Tunnels;
use metrics::{Histogram, Key, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
        Arc, OnceLock,
    },
};

pub(crate) const REQUESTS: &str = "kestra_edge_http_requests_total";
pub(crate) const DURATION: &str = "kestra_edge_http_request_duration_seconds";
const SSE_OPEN: &str = "kestra_edge_sse_streams_open";
const SSE_TOTAL: &str = "kestra_edge_sse_streams_total";
const TUNNELS_OPEN: &str = "kestra_edge_tunnels_open";
const UPSTREAM_UP: &str = "kestra_edge_upstream_up";
const UPSTREAM_REQUESTS: &str = "kestra_edge_upstream_requests_total";
const REJECTIONS: &str = "kestra_edge_limit_rejections_total";
const EGRESS_TUNNELS_OPEN: &str = "kestra_edge_egress_tunnels_open";
const EGRESS_REQUESTS: &str = "kestra_edge_egress_requests_total";
const LOG_DROPPED: &str = "kestra_edge_access_log_dropped_total";

/// The `method` label: the nine methods of RFC 9110 §9 and PATCH (RFC 5789), else `other`.
const METHODS: [&str; 10] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "other",
];
/// Status codes `StatusCode` can hold: 100 to 999.
const STATUS_FIRST: u16 = 100;
const STATUSES: usize = 900;
/// The `outcome` label of `kestra_edge_upstream_requests_total`.
const OUTCOMES: [&str; 5] = [
    "response",
    "connect_error",
    "connect_timeout",
    "closed",
    "response_timeout",
];
/// The `reason` label of `kestra_edge_limit_rejections_total`, with the status it is read from
/// (the last two are told by the SSE guard's [`StreamCapExceeded`] extension instead).
const REASONS: [(&str, StatusCode); 8] = [
    ("body_timeout", StatusCode::REQUEST_TIMEOUT),
    ("body_too_large", StatusCode::PAYLOAD_TOO_LARGE),
    ("uri_too_long", StatusCode::URI_TOO_LONG),
    ("too_many_requests", StatusCode::TOO_MANY_REQUESTS),
    (
        "headers_too_large",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    ),
    ("no_healthy_upstream", StatusCode::SERVICE_UNAVAILABLE),
    ("sse_streams_per_client", StatusCode::TOO_MANY_REQUESTS),
    ("sse_streams", StatusCode::SERVICE_UNAVAILABLE),
];
const SSE_PER_CLIENT: usize = 6;
const SSE_CAP_TOTAL: usize = 7;
/// Time to the response head: from a cached asset (sub-millisecond) to Kestra's 600 s read
/// timeout.
const DURATION_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
    600.0,
];

/// Where `kestra_edge_upstream_up` and `kestra_edge_upstream_requests_total` come from.
pub enum UpstreamView {
    /// One upstream without health checks: up after an answer, down after a failed exchange;
    /// exchanges counted by this crate's layer.
    Single {
        /// The `upstream` label: the URL as configured.
        label: String,
    },
    /// Replicas with health checks: each one's verdict and exchange counts (kept by the
    /// balancer, which knows which replica served what), read when scraped.
    Replicas {
        /// Each replica now.
        replicas: ReplicaSource,
    },
    /// No upstream: the egress forward proxy alone. None of the reverse proxy's series
    /// (see [`Metrics::egress`] for the forward proxy's), and `/readyz` follows the drain
    /// only.
    None,
}

/// Reads the replicas when scraped.
pub type ReplicaSource = Box<dyn Fn() -> Vec<ReplicaSample> + Send + Sync>;

/// Reads the egress forward proxy when scraped: its open tunnels, and its requests by
/// outcome (labels from the proxy's own fixed set).
type EgressSource = Box<dyn Fn() -> (u64, Vec<(&'static str, u64)>) + Send + Sync>;

/// One replica as scraped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSample {
    /// The `upstream` label (`ip:port`).
    pub label: String,
    /// Whether its health checks pass.
    pub up: bool,
    /// Its exchanges by outcome: responses, connect errors, connect timeouts, closed,
    /// response timeouts.
    pub outcomes: [u64; 5],
}

impl UpstreamView {
    /// One upstream, `url` as configured.
    pub fn single(url: impl Into<String>) -> Self {
        Self::Single { label: url.into() }
    }

    /// Replicas as `replicas` reports them.
    pub fn replicas(replicas: impl Fn() -> Vec<ReplicaSample> + Send + Sync + 'static) -> Self {
        Self::Replicas {
            replicas: Box::new(replicas),
        }
    }
}

impl fmt::Debug for UpstreamView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Single { label } => f.debug_struct("Single").field("label", label).finish(),
            Self::Replicas { .. } => f.debug_struct("Replicas").finish_non_exhaustive(),
            Self::None => f.write_str("None"),
        }
    }
}

/// The gateway's metrics: cheap to clone (an `Arc`), shared by every worker's layer and the
/// admin service.
#[derive(Clone)]
pub struct Metrics {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    recorder: PrometheusRecorder,
    /// `[method][status - 100]`.
    requests: Box<[AtomicU64]>,
    durations: [Histogram; METHODS.len()],
    pub(crate) sse_open: AtomicI64,
    sse_total: AtomicU64,
    outcomes: [AtomicU64; OUTCOMES.len()],
    rejections: [AtomicU64; REASONS.len()],
    /// One upstream without checks: how its last exchange went.
    single_up: AtomicBool,
    upstreams: UpstreamView,
    tunnels: OnceLock<Tunnels>,
    connections: OnceLock<Connections>,
    egress: OnceLock<EgressSource>,
    access_log: OnceLock<crate::AccessLog>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("upstreams", &self.inner.upstreams)
            .finish_non_exhaustive()
    }
}

static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

impl Metrics {
    /// Empty metrics for a gateway in front of `upstreams`.
    pub fn new(upstreams: UpstreamView) -> Self {
        // The bucket list is a non-empty constant, which the builder never refuses; if it
        // did, the exporter would render a summary instead.
        let recorder = match PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(DURATION.to_owned()), &DURATION_BUCKETS)
        {
            Ok(builder) => builder.build_recorder(),
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        describe(&recorder);
        let durations = METHODS.map(|method| match upstreams {
            UpstreamView::None => Histogram::noop(),
            _ => recorder.register_histogram(
                &Key::from_parts(DURATION, vec![Label::new("method", method)]),
                &METADATA,
            ),
        });
        Self {
            inner: Arc::new(Inner {
                recorder,
                requests: (0..METHODS.len() * STATUSES)
                    .map(|_| AtomicU64::new(0))
                    .collect(),
                durations,
                sse_open: AtomicI64::new(0),
                sse_total: AtomicU64::new(0),
                outcomes: Default::default(),
                rejections: Default::default(),
                single_up: AtomicBool::new(true),
                upstreams,
                tunnels: OnceLock::new(),
                connections: OnceLock::new(),
                egress: OnceLock::new(),
                access_log: OnceLock::new(),
            }),
        }
    }

    /// Reads `kestra_edge_tunnels_open` from `tunnels` (the stack's own count) when scraped.
    /// The first call wins.
    pub fn tunnels(&self, tunnels: Tunnels) -> &Self {
        let _ = self.inner.tunnels.set(tunnels);
        self
    }

    /// Reads the requests the accept loop refused for a head over the limits (hyper's own
    /// 431 and 414, which no layer sees) from `connections` when scraped, as
    /// `kestra_edge_limit_rejections_total{reason="head_too_large"}`. The first call wins.
    pub fn connections(&self, connections: Connections) -> &Self {
        let _ = self.inner.connections.set(connections);
        self
    }

    /// Reads the egress forward proxy when scraped, as `kestra_edge_egress_tunnels_open`
    /// (gauge) and `kestra_edge_egress_requests_total{outcome}` (counter): `source` returns
    /// the open tunnels and each outcome's label and count (the proxy's fixed set, such as
    /// `kestra_edge_egress::EgressSnapshot::outcomes`). Without it, neither is rendered. The
    /// first call wins.
    pub fn egress(
        &self,
        source: impl Fn() -> (u64, Vec<(&'static str, u64)>) + Send + Sync + 'static,
    ) -> &Self {
        let _ = self.inner.egress.set(Box::new(source));
        self
    }

    /// Reads the access log's dropped lines when scraped, as
    /// `kestra_edge_access_log_dropped_total`; without it, that is not rendered. The first
    /// call wins.
    pub fn access_log(&self, log: crate::AccessLog) -> &Self {
        let _ = self.inner.access_log.set(log);
        self
    }

    /// Whether at least one upstream is healthy (see [`UpstreamView`]).
    pub fn any_upstream_up(&self) -> bool {
        match &self.inner.upstreams {
            UpstreamView::Single { .. } => self.inner.single_up.load(Ordering::Relaxed),
            UpstreamView::Replicas { replicas } => replicas().iter().any(|r| r.up),
            UpstreamView::None => true,
        }
    }

    /// Moves the histograms' recent observations into their buckets; call it every few
    /// seconds so that they do not pile up between scrapes.
    pub fn run_upkeep(&self) {
        self.inner.recorder.handle().run_upkeep();
    }

    /// The Prometheus text exposition (version 0.0.4) of every metric.
    pub fn render(&self) -> String {
        let inner = &*self.inner;
        let recorder = &inner.recorder;
        let counter = |name: &'static str, labels: Vec<Label>, value: u64| {
            recorder
                .register_counter(&Key::from_parts(name, labels), &METADATA)
                .absolute(value);
        };
        let gauge = |name: &'static str, labels: Vec<Label>, value: f64| {
            recorder
                .register_gauge(&Key::from_parts(name, labels), &METADATA)
                .set(value);
        };
        // The forward proxy alone has no reverse-proxy series.
        if !matches!(inner.upstreams, UpstreamView::None) {
            for (i, count) in inner.requests.iter().enumerate() {
                let value = count.load(Ordering::Relaxed);
                if value > 0 {
                    let status = STATUS_FIRST + (i % STATUSES) as u16;
                    counter(
                        REQUESTS,
                        vec![
                            Label::new("method", METHODS[i / STATUSES]),
                            Label::new("status", status.to_string()),
                        ],
                        value,
                    );
                }
            }
            gauge(
                SSE_OPEN,
                Vec::new(),
                inner.sse_open.load(Ordering::Relaxed) as f64,
            );
            counter(
                SSE_TOTAL,
                Vec::new(),
                inner.sse_total.load(Ordering::Relaxed),
            );
            let tunnels = inner.tunnels.get().map_or(0, Tunnels::open);
            gauge(TUNNELS_OPEN, Vec::new(), tunnels as f64);
            let requests = |label: &str, outcomes: [u64; 5]| {
                for (outcome, count) in OUTCOMES.iter().zip(outcomes) {
                    counter(
                        UPSTREAM_REQUESTS,
                        vec![
                            Label::new("upstream", label.to_owned()),
                            Label::new("outcome", *outcome),
                        ],
                        count,
                    );
                }
            };
            match &inner.upstreams {
                UpstreamView::Single { label } => {
                    let up = inner.single_up.load(Ordering::Relaxed);
                    gauge(UPSTREAM_UP, up_label(label), f64::from(u8::from(up)));
                    requests(
                        label,
                        inner.outcomes.each_ref().map(|c| c.load(Ordering::Relaxed)),
                    );
                }
                UpstreamView::Replicas { replicas } => {
                    for replica in replicas() {
                        let up = f64::from(u8::from(replica.up));
                        gauge(UPSTREAM_UP, up_label(&replica.label), up);
                        requests(&replica.label, replica.outcomes);
                    }
                }
                UpstreamView::None => {}
            }
            for ((reason, _), count) in REASONS.iter().zip(&inner.rejections) {
                counter(
                    REJECTIONS,
                    vec![Label::new("reason", *reason)],
                    count.load(Ordering::Relaxed),
                );
            }
            if let Some(connections) = inner.connections.get() {
                counter(
                    REJECTIONS,
                    vec![Label::new("reason", "head_too_large")],
                    connections.heads_too_large(),
                );
            }
        }
        if let Some(egress) = inner.egress.get() {
            let (open, outcomes) = egress();
            gauge(EGRESS_TUNNELS_OPEN, Vec::new(), open as f64);
            for (outcome, count) in outcomes {
                counter(EGRESS_REQUESTS, vec![Label::new("outcome", outcome)], count);
            }
        }
        if let Some(log) = inner.access_log.get() {
            counter(LOG_DROPPED, Vec::new(), log.dropped());
        }
        let mut text = recorder.handle().render();
        crate::process::render(&mut text);
        text
    }
}

fn up_label(upstream: &str) -> Vec<Label> {
    vec![Label::new("upstream", upstream.to_owned())]
}

fn describe(recorder: &PrometheusRecorder) {
    for (name, unit, help) in [
        (
            REQUESTS,
            None,
            "HTTP requests answered, by method and status code.",
        ),
        (
            DURATION,
            Some(Unit::Seconds),
            "Time from the request to the response head, by method.",
        ),
        (
            SSE_OPEN,
            None,
            "Server-Sent Event streams whose body has not ended.",
        ),
        (SSE_TOTAL, None, "Server-Sent Event streams opened."),
        (TUNNELS_OPEN, None, "Upgrade tunnels (WebSocket) open."),
        (
            UPSTREAM_UP,
            None,
            "1 when the upstream (replica) is healthy, else 0.",
        ),
        (
            UPSTREAM_REQUESTS,
            None,
            "Requests sent to the upstream, by outcome.",
        ),
        (
            REJECTIONS,
            None,
            "Requests refused by a gateway limit, by reason.",
        ),
        (
            EGRESS_TUNNELS_OPEN,
            None,
            "CONNECT tunnels of the egress forward proxy open.",
        ),
        (
            EGRESS_REQUESTS,
            None,
            "Requests to the egress forward proxy, by outcome.",
        ),
        (
            LOG_DROPPED,
            None,
            "Access-log lines dropped because the output did not keep up.",
        ),
    ] {
        let help = help.into();
        match name {
            DURATION => recorder.describe_histogram(name.into(), unit, help),
            SSE_OPEN | TUNNELS_OPEN | UPSTREAM_UP | EGRESS_TUNNELS_OPEN => {
                recorder.describe_gauge(name.into(), unit, help);
            }
            _ => recorder.describe_counter(name.into(), unit, help),
        }
    }
}

/// The per-request part, kept to indices and relaxed atomic additions.
impl Inner {
    /// Counts a response head: the request counter, its duration, the upstream outcome or
    /// the limit that refused it; returns whether it opens an event stream.
    pub(crate) fn record_head(
        &self,
        method: usize,
        status: StatusCode,
        headers: &HeaderMap,
        extensions: &http::Extensions,
        seconds: f64,
    ) -> bool {
        let failure = extensions.get::<UpstreamFailure>();
        let code = usize::from(status.as_u16() - STATUS_FIRST);
        if let Some(count) = self.requests.get(method * STATUSES + code) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        self.durations[method].record(seconds);
        if let Some(failure) = failure {
            let outcome = match failure {
                UpstreamFailure::Connect => 1,
                UpstreamFailure::ConnectTimeout => 2,
                UpstreamFailure::Closed => 3,
                _ => 4,
            };
            self.outcomes[outcome].fetch_add(1, Ordering::Relaxed);
            self.set_single_up(false);
            return false;
        }
        let reason = match extensions.get::<StreamCapExceeded>() {
            Some(StreamCapExceeded::PerClient) => Some(SSE_PER_CLIENT),
            Some(_) => Some(SSE_CAP_TOTAL),
            None => rejection(status, headers),
        };
        if let Some(reason) = reason {
            self.rejections[reason].fetch_add(1, Ordering::Relaxed);
            return false;
        }
        self.outcomes[0].fetch_add(1, Ordering::Relaxed);
        self.set_single_up(true);
        if kestra_edge_headers::is_event_stream(headers) {
            self.sse_open.fetch_add(1, Ordering::Relaxed);
            self.sse_total.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Written only on a change, so that workers do not fight over the cache line.
    fn set_single_up(&self, up: bool) {
        if self.single_up.load(Ordering::Relaxed) != up {
            self.single_up.store(up, Ordering::Relaxed);
        }
    }
}

/// The index of the method's label.
pub(crate) fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::DELETE => 4,
        Method::CONNECT => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::PATCH => 8,
        _ => 9,
    }
}

/// The limit a response answers for, read from its status: a 503 counts only with
/// `Retry-After`, as the balancer sends it when no replica is healthy.
fn rejection(status: StatusCode, headers: &HeaderMap) -> Option<usize> {
    let reason = REASONS[..SSE_PER_CLIENT]
        .iter()
        .position(|(_, s)| *s == status)?;
    if status == StatusCode::SERVICE_UNAVAILABLE && !headers.contains_key(http::header::RETRY_AFTER)
    {
        return None;
    }
    Some(reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_standard_set_share_one_label() {
        assert_eq!(METHODS[method_index(&Method::GET)], "GET");
        assert_eq!(METHODS[method_index(&Method::PATCH)], "PATCH");
        let custom = Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(METHODS[method_index(&custom)], "other");
    }

    #[test]
    fn every_status_code_has_a_slot() {
        let metrics = Metrics::new(UpstreamView::single("http://u"));
        for code in [100, 200, 599, 999] {
            let status = StatusCode::from_u16(code).unwrap();
            metrics.inner.record_head(
                9,
                status,
                &HeaderMap::new(),
                &http::Extensions::new(),
                0.001,
            );
        }
        let text = metrics.render();
        for code in ["100", "200", "599", "999"] {
            assert!(
                text.contains(&format!(
                    "kestra_edge_http_requests_total{{method=\"other\",status=\"{code}\"}} 1"
                )),
                "{text}"
            );
        }
    }

    #[test]
    fn failures_rejections_and_answers_are_told_apart() {
        let metrics = Metrics::new(UpstreamView::single("http://kestra:8080"));
        let inner = &metrics.inner;
        let none = HeaderMap::new();
        let nothing = http::Extensions::new();
        let mut refused = http::Extensions::new();
        refused.insert(UpstreamFailure::Connect);
        inner.record_head(0, StatusCode::BAD_GATEWAY, &none, &refused, 0.0);
        assert!(!metrics.any_upstream_up());
        inner.record_head(0, StatusCode::PAYLOAD_TOO_LARGE, &none, &nothing, 0.0);
        // Kestra's own 503 without Retry-After is an answer, not a rejection.
        inner.record_head(0, StatusCode::SERVICE_UNAVAILABLE, &none, &nothing, 0.0);
        // A stream refused by the SSE guard's cap is told by its extension.
        let mut capped = http::Extensions::new();
        capped.insert(StreamCapExceeded::PerClient);
        inner.record_head(0, StatusCode::TOO_MANY_REQUESTS, &none, &capped, 0.0);
        assert!(metrics.any_upstream_up());
        let mut sse = HeaderMap::new();
        sse.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        assert!(inner.record_head(0, StatusCode::OK, &sse, &nothing, 0.0));
        let text = metrics.render();
        for line in [
            "kestra_edge_upstream_requests_total{upstream=\"http://kestra:8080\",outcome=\"connect_error\"} 1",
            "kestra_edge_upstream_requests_total{upstream=\"http://kestra:8080\",outcome=\"response\"} 2",
            "kestra_edge_limit_rejections_total{reason=\"body_too_large\"} 1",
            "kestra_edge_limit_rejections_total{reason=\"no_healthy_upstream\"} 0",
            "kestra_edge_limit_rejections_total{reason=\"sse_streams_per_client\"} 1",
            "kestra_edge_limit_rejections_total{reason=\"too_many_requests\"} 0",
            "kestra_edge_sse_streams_open 1",
            "kestra_edge_sse_streams_total 1",
            "kestra_edge_upstream_up{upstream=\"http://kestra:8080\"} 1",
            "kestra_edge_http_request_duration_seconds_count{method=\"GET\"} 5",
            "# TYPE kestra_edge_http_request_duration_seconds histogram",
            "# TYPE process_open_fds gauge",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn the_egress_proxy_is_read_when_scraped_and_only_when_there_is_one() {
        let metrics = Metrics::new(UpstreamView::None);
        assert!(
            metrics.any_upstream_up(),
            "no upstream is never an unhealthy one"
        );
        let text = metrics.render();
        assert!(!text.contains("kestra_edge_egress"), "{text}");
        // Only the process's series: nothing of a reverse proxy that is not there.
        assert!(!text.contains("kestra_edge_"), "{text}");
        assert!(text.contains("process_open_fds"), "{text}");
        let open = Arc::new(AtomicU64::new(2));
        let read = open.clone();
        metrics.egress(move || {
            let open = read.load(Ordering::Relaxed);
            (open, vec![("tunnel", 5), ("private", 0)])
        });
        let text = metrics.render();
        for line in [
            "# TYPE kestra_edge_egress_tunnels_open gauge",
            "kestra_edge_egress_tunnels_open 2",
            "# TYPE kestra_edge_egress_requests_total counter",
            "kestra_edge_egress_requests_total{outcome=\"tunnel\"} 5",
            "kestra_edge_egress_requests_total{outcome=\"private\"} 0",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        open.store(0, Ordering::Relaxed);
        assert!(metrics
            .render()
            .contains("kestra_edge_egress_tunnels_open 0\n"));
    }

    #[test]
    fn replicas_are_read_when_scraped() {
        let metrics = Metrics::new(UpstreamView::replicas(|| {
            vec![
                ReplicaSample {
                    label: "127.0.0.2:8080".to_owned(),
                    up: true,
                    outcomes: [7, 1, 0, 0, 0],
                },
                ReplicaSample {
                    label: "127.0.0.3:8080".to_owned(),
                    up: false,
                    outcomes: [0, 0, 0, 2, 0],
                },
            ]
        }));
        assert!(metrics.any_upstream_up());
        let text = metrics.render();
        assert!(text.contains("kestra_edge_upstream_up{upstream=\"127.0.0.2:8080\"} 1"));
        assert!(text.contains("kestra_edge_upstream_up{upstream=\"127.0.0.3:8080\"} 0"));
        for line in [
            "kestra_edge_upstream_requests_total{upstream=\"127.0.0.2:8080\",outcome=\"response\"} 7",
            "kestra_edge_upstream_requests_total{upstream=\"127.0.0.2:8080\",outcome=\"connect_error\"} 1",
            "kestra_edge_upstream_requests_total{upstream=\"127.0.0.3:8080\",outcome=\"closed\"} 2",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
