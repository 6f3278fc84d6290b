//! Prometheus metrics, health endpoints and the access log for kestra-edge.
//!
//! [`TelemetryLayer`] goes around the whole stack and counts, per request, what an operator
//! needs to see into the gateway; [`Admin`] is the service of a separate admin listener
//! that serves them (`GET /metrics`), and the probes `GET /livez` and `GET /readyz`. The
//! admin service is never part of the main listener's stack, so a client of Kestra can
//! neither read the metrics nor fake the gateway's health.
//!
//! ```
//! use kestra_edge_telemetry::{Admin, Metrics, TelemetryLayer, UpstreamView};
//! use tower::Layer;
//!
//! let metrics = Metrics::new(UpstreamView::single("http://127.0.0.1:8080"));
//! let admin = Admin::new(metrics.clone()); // serve it on its own address
//! let service = TelemetryLayer::new(metrics).layer(tower::service_fn(
//!     |_req: http::Request<kestra_edge_telemetry::CountedBody<http_body_util::Empty<bytes::Bytes>>>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
//!     },
//! ));
//! # let _ = (admin, service);
//! ```
//!
//! [`TelemetryLayer::access_log`] also writes one line per finished request (an event
//! stream's at its end, a WebSocket's when its tunnel closes) to an [`AccessLog`]: text
//! (logfmt) or JSON, never a header value or a query string, handed to a writer thread so
//! that a slow output drops (and counts) lines instead of holding requests up.
//!
//! # Metrics
//!
//! | name | type | labels |
//! |---|---|---|
//! | `kestra_edge_http_requests_total` | counter | `method` (the nine standard methods, else `other`), `status` (the code) |
//! | `kestra_edge_http_request_duration_seconds` | histogram | `method`; time to the response head |
//! | `kestra_edge_sse_streams_open` | gauge | responses with `Content-Type: text/event-stream` whose body has not ended |
//! | `kestra_edge_sse_streams_total` | counter | event streams opened |
//! | `kestra_edge_tunnels_open` | gauge | upgrade tunnels (WebSocket) open, read from the stack's [`Tunnels`] when scraped |
//! | `kestra_edge_upstream_up` | gauge | `upstream`: 1 or 0 per replica from its health checks; one upstream without checks: 0 after a failed exchange, 1 after an answer |
//! | `kestra_edge_upstream_requests_total` | counter | `upstream` (the URL, or each replica's `ip:port`), `outcome`: `response`, `connect_error`, `connect_timeout`, `closed`, `response_timeout`; with replicas, each attempt of a retried request counts on its replica |
//! | `kestra_edge_limit_rejections_total` | counter | `reason`: `body_timeout` (408), `body_too_large` (413), `uri_too_long` (414), `too_many_requests` (429), `headers_too_large` (431), `no_healthy_upstream` (503 with `Retry-After`), `sse_streams_per_client` (429) and `sse_streams` (503) from the SSE guard's stream caps; `head_too_large`: heads over the accept loop's limits that hyper answered 431 or 414 itself, read from the server's [`Connections`](kestra_edge_server::Connections) |
//! | `kestra_edge_egress_tunnels_open` | gauge | `CONNECT` tunnels of the egress forward proxy open, when [`Metrics::egress`] reads one |
//! | `kestra_edge_egress_requests_total` | counter | `outcome`: the egress forward proxy's requests (`tunnel`, `forwarded`, `auth_required`, `forbidden`, `private`, `bad_request`, `bad_gateway`, `gateway_timeout`, `too_many_tunnels`) |
//! | `kestra_edge_access_log_dropped_total` | counter | access-log lines dropped because the output did not keep up, when [`Metrics::access_log`] reads one |
//! | `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_start_time_seconds` | | from `/proc/self` (Linux) |
//!
//! Label values come from fixed sets or from the configuration, never from a request: no
//! path, no client address, no header value, so the number of series is bounded.
//!
//! # Why `metrics` with `metrics-exporter-prometheus`
//!
//! The target is at most 2% of a small GET's throughput. The per-request work here is a few
//! relaxed atomic additions into fixed tables that this crate owns (method × status,
//! outcome, reason, open streams) and one histogram observation, which the exporter
//! appends to a lock-free bucket of the series' handle, resolved once when the layer is
//! built. No map lookup, no lock and no allocation happens per request. At scrape time the
//! tables are copied into the exporter's counters and gauges, which renders the
//! Prometheus text format (version 0.0.4) that `promtool check metrics` and every
//! Prometheus read. `prometheus-client` was the alternative: its text output is OpenMetrics
//! (`# TYPE foo counter` with samples named `foo_total`, `# EOF`), which the Prometheus
//! text parser behind `promtool check metrics` reads as two families, and its `Family`
//! takes a read lock and hashes the label set on every lookup. The exporter's recorder is
//! used as an instance, never installed globally, so several gateways in one process (the
//! tests) keep their numbers apart. The histogram's buckets are drained by
//! [`Metrics::run_upkeep`], which the owner calls periodically (the gateway every 5 s).

mod access_log;
mod admin;
mod body;
mod future;
mod layer;
mod logging;
mod process;
mod registry;
mod request_id;

pub use access_log::{AccessLog, AccessLogFormat, Entry, DEFAULT_BUFFERED_BYTES};
pub use admin::{Admin, AdminBody, Readiness};
pub use body::TelemetryBody;
pub use future::ResponseFuture;
pub use kestra_edge_upgrade::Tunnels;
pub use layer::{Telemetry, TelemetryLayer};
pub use logging::CountedBody;
pub use registry::{Metrics, ReplicaSample, ReplicaSource, UpstreamView};
pub use request_id::EdgeRequestIds;
