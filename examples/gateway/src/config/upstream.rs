//! The upstream: Kestra's webserver, how to reach it, and what a request may carry to it.

use super::{byte_count, humantime_serde_opt, parse_duration};
use bytesize::ByteSize;
use kestra_edge::proxy as defaults;
use serde::Deserialize;
use std::{path::PathBuf, time::Duration};

const UPSTREAM: &str = "http://127.0.0.1:8080";

/// Default of `--upstream-max-idle`: what nginx's `keepalive 256` keeps per worker.
pub(super) const DEFAULT_UPSTREAM_MAX_IDLE: usize = 256;

/// Which `Host` the upstream sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum HostHeader {
    /// The client's `Host` (nginx's `Host $http_host`).
    #[default]
    Client,
    /// The upstream's `host:port`.
    Upstream,
}

/// Flags of the upstream.
#[derive(Debug, Default, clap::Args)]
pub struct UpstreamArgs {
    /// Kestra's webserver, http://host:port or https://host:port; repeatable, one per
    /// replica (a name resolving to several addresses is one replica per address)
    /// [default: http://127.0.0.1:8080].
    #[arg(
        long,
        env = "KESTRA_EDGE_UPSTREAM",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub upstream: Vec<String>,
    /// A PEM file of CA certificates trusted for an https upstream, besides the system's;
    /// repeatable.
    #[arg(
        long = "upstream-ca",
        env = "KESTRA_EDGE_UPSTREAM_CA",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub upstream_ca: Vec<PathBuf>,
    /// Longest wait to connect to the upstream [default: 10s].
    #[arg(long, env = "KESTRA_EDGE_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Longest upstream silence: before the response head, and between two body reads
    /// (nginx's proxy_read_timeout) [default: 600s].
    #[arg(long, env = "KESTRA_EDGE_READ_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub read_timeout: Option<Duration>,
    /// How long an idle upstream connection stays pooled for reuse [default: 90s].
    #[arg(long, env = "KESTRA_EDGE_UPSTREAM_IDLE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub upstream_idle_timeout: Option<Duration>,
    /// Most idle upstream connections each worker keeps pooled; the oldest is closed when
    /// another would pass it, so a burst of streams does not leave thousands open at Kestra
    /// (nginx's upstream keepalive) [default: 256].
    #[arg(long, env = "KESTRA_EDGE_UPSTREAM_MAX_IDLE", value_name = "N")]
    pub upstream_max_idle: Option<usize>,
    /// Longest time a client may leave its request body without sending a byte; then the
    /// upstream request is aborted and the client answered 408 (nginx's
    /// client_body_timeout) [default: 60s].
    #[arg(long, env = "KESTRA_EDGE_BODY_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub body_timeout: Option<Duration>,
    /// Largest request body: a larger Content-Length is answered 413 before anything reaches
    /// Kestra, a streamed body is cut there [default: 10GiB, Kestra's own limit].
    #[arg(long, env = "KESTRA_EDGE_MAX_BODY", value_name = "SIZE")]
    pub max_body: Option<ByteSize>,
    /// Longest request target (path and query); longer is answered 414 [default: 16KiB].
    #[arg(long, env = "KESTRA_EDGE_MAX_URI", value_name = "SIZE")]
    pub max_uri: Option<ByteSize>,
    /// Host header sent upstream [default: client].
    #[arg(long, env = "KESTRA_EDGE_HOST_HEADER", value_name = "WHICH")]
    pub host_header: Option<HostHeader>,
}

/// The upstream's keys in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) struct UpstreamFile {
    upstream: Option<OneOrMany>,
    upstream_ca: Option<Vec<PathBuf>>,
    #[serde(default, with = "humantime_serde_opt")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    upstream_idle_timeout: Option<Duration>,
    upstream_max_idle: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    body_timeout: Option<Duration>,
    max_body: Option<ByteSize>,
    max_uri: Option<ByteSize>,
    host_header: Option<HostHeader>,
}

/// `upstream = "http://a:8080"` or `upstream = ["http://a:8080", "http://b:8080"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// The upstream's resolved settings.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// See `--upstream`: the first one.
    pub url: String,
    /// See `--upstream`: the other replicas.
    pub more: Vec<String>,
    /// See `--upstream-ca`.
    pub ca: Vec<PathBuf>,
    /// See `--connect-timeout`.
    pub connect_timeout: Duration,
    /// See `--read-timeout`.
    pub read_timeout: Duration,
    /// See `--upstream-idle-timeout`.
    pub idle_timeout: Duration,
    /// See `--upstream-max-idle`.
    pub max_idle: usize,
    /// See `--body-timeout`.
    pub body_timeout: Duration,
    /// See `--max-body`, in bytes.
    pub max_body: u64,
    /// See `--max-uri`, in bytes.
    pub max_uri: usize,
    /// See `--host-header`.
    pub host_header: HostHeader,
}

impl UpstreamFile {
    /// Whether the file names an upstream (then the reverse proxy runs beside the egress
    /// proxy).
    pub(super) fn names_upstream(&self) -> bool {
        self.upstream.is_some()
    }
}

impl UpstreamConfig {
    pub(super) fn resolve(args: UpstreamArgs, file: UpstreamFile) -> Self {
        let mut urls = match (args.upstream, file.upstream) {
            (urls, _) if !urls.is_empty() => urls,
            (_, Some(OneOrMany::One(url))) => vec![url],
            (_, Some(OneOrMany::Many(urls))) => urls,
            (_, None) => Vec::new(),
        };
        let url = if urls.is_empty() {
            UPSTREAM.to_owned()
        } else {
            urls.remove(0)
        };
        Self {
            url,
            more: urls,
            ca: Some(args.upstream_ca)
                .filter(|v| !v.is_empty())
                .or(file.upstream_ca)
                .unwrap_or_default(),
            connect_timeout: args
                .connect_timeout
                .or(file.connect_timeout)
                .unwrap_or(defaults::DEFAULT_CONNECT_TIMEOUT),
            read_timeout: args
                .read_timeout
                .or(file.read_timeout)
                .unwrap_or(defaults::DEFAULT_READ_TIMEOUT),
            idle_timeout: args
                .upstream_idle_timeout
                .or(file.upstream_idle_timeout)
                .unwrap_or(defaults::DEFAULT_POOL_IDLE_TIMEOUT),
            max_idle: args
                .upstream_max_idle
                .or(file.upstream_max_idle)
                .unwrap_or(DEFAULT_UPSTREAM_MAX_IDLE),
            body_timeout: args
                .body_timeout
                .or(file.body_timeout)
                .unwrap_or(defaults::DEFAULT_BODY_TIMEOUT),
            max_body: args
                .max_body
                .or(file.max_body)
                .map_or(defaults::DEFAULT_MAX_BODY, |size| size.as_u64()),
            max_uri: args
                .max_uri
                .or(file.max_uri)
                .map_or(defaults::DEFAULT_MAX_URI, byte_count),
            host_header: args.host_header.or(file.host_header).unwrap_or_default(),
        }
    }
}
