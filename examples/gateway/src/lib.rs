//! The `kestra-edge` gateway: configuration (flags, environment, TOML file) and the serve
//! loop the binary runs. Tests start the same [`Gateway`] in-process.

use bytesize::ByteSize;
use clap::Parser;
use kestra_edge::{server::PerCoreServer, ForwardedHeaders, KestraEdge, PrefixMode};
use kestra_edge_standin::{Standin, StandinConfig};
use serde::Deserialize;
use std::{future::Future, io, net::SocketAddr, num::NonZeroUsize, path::PathBuf, time::Duration};
use tower::Layer;
use tower_http::compression::{
    predicate::{And, DefaultPredicate, Predicate},
    Compression, CompressionLayer,
};

/// Defaults, shared by the flags' help and the merge.
mod defaults {
    use std::time::Duration;

    pub(crate) const LISTEN: &str = "127.0.0.1:8000";
    pub(crate) const UPSTREAM: &str = "http://127.0.0.1:8080";
    pub(crate) const CONNECT_TIMEOUT: Duration = kestra_edge::proxy::DEFAULT_CONNECT_TIMEOUT;
    pub(crate) const READ_TIMEOUT: Duration = kestra_edge::proxy::DEFAULT_READ_TIMEOUT;
    pub(crate) const UPSTREAM_IDLE_TIMEOUT: Duration =
        kestra_edge::proxy::DEFAULT_POOL_IDLE_TIMEOUT;
    pub(crate) const BODY_TIMEOUT: Duration = kestra_edge::proxy::DEFAULT_BODY_TIMEOUT;
    pub(crate) const HEADER_TIMEOUT: Duration = kestra_edge::server::DEFAULT_HEADER_READ_TIMEOUT;
    pub(crate) const SHUTDOWN_GRACE: Duration = kestra_edge::server::DEFAULT_SHUTDOWN_GRACE;
    pub(crate) const MAX_BODY: u64 = kestra_edge::proxy::DEFAULT_MAX_BODY;
    pub(crate) const MAX_URI: usize = kestra_edge::proxy::DEFAULT_MAX_URI;
    pub(crate) const MAX_HEADER_BYTES: usize = kestra_edge::server::DEFAULT_MAX_HEADER_BYTES;
    pub(crate) const MAX_HEADERS: usize = kestra_edge::server::DEFAULT_MAX_HEADERS;
    pub(crate) const SSE_HEARTBEAT: Duration = kestra_edge::sse::DEFAULT_HEARTBEAT;
    pub(crate) const SSE_IDLE_TIMEOUT: Duration = kestra_edge::sse::DEFAULT_IDLE_TIMEOUT;
}

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

/// Whether the context path reaches the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PrefixModeArg {
    /// Forward `/kestra/…` unchanged (Kestra runs with `micronaut.server.context-path`).
    #[default]
    Keep,
    /// Forward `/kestra/…` as `/…` and map redirects and cookie paths back.
    Strip,
}

impl From<PrefixModeArg> for PrefixMode {
    fn from(mode: PrefixModeArg) -> Self {
        match mode {
            PrefixModeArg::Keep => PrefixMode::Keep,
            PrefixModeArg::Strip => PrefixMode::Strip,
        }
    }
}

/// A forwarded header that can be left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Real-IP`.
    XRealIp,
    /// `X-Forwarded-For`.
    XForwardedFor,
    /// `X-Forwarded-Proto`.
    XForwardedProto,
    /// `X-Forwarded-Protocol`.
    XForwardedProtocol,
    /// `X-Forwarded-Host`.
    XForwardedHost,
    /// `X-Forwarded-Port`.
    XForwardedPort,
    /// `Forwarded`.
    Forwarded,
}

/// Every forwarded header but those in `omit`.
fn forwarded_headers(omit: &[ForwardedHeader]) -> ForwardedHeaders {
    let on = |header| !omit.contains(&header);
    ForwardedHeaders {
        x_real_ip: on(ForwardedHeader::XRealIp),
        x_forwarded_for: on(ForwardedHeader::XForwardedFor),
        x_forwarded_proto: on(ForwardedHeader::XForwardedProto),
        x_forwarded_protocol: on(ForwardedHeader::XForwardedProtocol),
        x_forwarded_host: on(ForwardedHeader::XForwardedHost),
        x_forwarded_port: on(ForwardedHeader::XForwardedPort),
        forwarded: on(ForwardedHeader::Forwarded),
    }
}

/// The reverse proxy in front of Kestra.
///
/// Every flag can also be set with its environment variable or in the TOML file given by
/// `--config` (keys are the flag names with `_` for `-`); a flag beats its variable, which
/// beats the file.
#[derive(Debug, Default, Parser)]
#[command(name = "kestra-edge", version, about, long_about = None)]
pub struct Args {
    /// TOML file with any of the settings below.
    #[arg(long, env = "KESTRA_EDGE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8000].
    #[arg(long, env = "KESTRA_EDGE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Kestra's webserver, http://host:port [default: http://127.0.0.1:8080].
    #[arg(long, env = "KESTRA_EDGE_UPSTREAM", value_name = "URL")]
    pub upstream: Option<String>,
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
    /// Longest time a client may take to send its request head, also the idle time of a
    /// keep-alive connection between two requests [default: 30s].
    #[arg(long, env = "KESTRA_EDGE_HEADER_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub header_timeout: Option<Duration>,
    /// Longest time a client may leave its request body without sending a byte; then the
    /// upstream request is aborted and the client answered 408 (nginx's
    /// client_body_timeout) [default: 60s].
    #[arg(long, env = "KESTRA_EDGE_BODY_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub body_timeout: Option<Duration>,
    /// On SIGINT/SIGTERM, how long in-flight requests may finish [default: 30s].
    #[arg(long, env = "KESTRA_EDGE_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Largest request body: a larger Content-Length is answered 413 before anything reaches
    /// Kestra, a streamed body is cut there [default: 10GiB, Kestra's own limit].
    #[arg(long, env = "KESTRA_EDGE_MAX_BODY", value_name = "SIZE")]
    pub max_body: Option<ByteSize>,
    /// Longest request target (path and query); longer is answered 414 [default: 16KiB].
    #[arg(long, env = "KESTRA_EDGE_MAX_URI", value_name = "SIZE")]
    pub max_uri: Option<ByteSize>,
    /// Largest request head (request line and header fields), at least 8KiB; larger is
    /// answered 431 [default: 64KiB].
    #[arg(long, env = "KESTRA_EDGE_MAX_HEADER_BYTES", value_name = "SIZE")]
    pub max_header_bytes: Option<ByteSize>,
    /// Most header fields in a request; more are answered 431 [default: 100].
    #[arg(long, env = "KESTRA_EDGE_MAX_HEADERS", value_name = "N")]
    pub max_headers: Option<usize>,
    /// Threads serving requests, each with its own listener and upstream pool
    /// [default: one per CPU core].
    #[arg(long, env = "KESTRA_EDGE_WORKERS", value_name = "N")]
    pub workers: Option<NonZeroUsize>,
    /// Host header sent upstream [default: client].
    #[arg(long, env = "KESTRA_EDGE_HOST_HEADER", value_name = "WHICH")]
    pub host_header: Option<HostHeader>,
    /// Serve Kestra under this path prefix, e.g. /kestra; other paths get 404
    /// [default: none, every path is forwarded; with --demo: /kestra].
    #[arg(long, env = "KESTRA_EDGE_CONTEXT_PATH", value_name = "PATH")]
    pub context_path: Option<String>,
    /// Keep the prefix (Kestra has the same context-path) or strip it [default: keep].
    #[arg(long, env = "KESTRA_EDGE_PREFIX_MODE", value_name = "MODE")]
    pub prefix_mode: Option<PrefixModeArg>,
    /// A proxy in front of the gateway whose X-Forwarded-For/Forwarded is believed, as a
    /// CIDR or an address; repeatable [default: none, the TCP peer is the client].
    #[arg(
        long = "trusted-proxy",
        env = "KESTRA_EDGE_TRUSTED_PROXIES",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// Send a `:` comment to an SSE stream after this much quiet, at an event boundary;
    /// 0 turns it off [default: 15s].
    #[arg(long, env = "KESTRA_EDGE_SSE_HEARTBEAT", value_name = "DURATION", value_parser = parse_duration)]
    pub sse_heartbeat: Option<Duration>,
    /// End an SSE stream after this long without upstream data (heartbeats do not count);
    /// 0 turns it off [default: 1h, Kestra's own idle timeout].
    #[arg(long, env = "KESTRA_EDGE_SSE_IDLE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub sse_idle_timeout: Option<Duration>,
    /// End every SSE stream at the first event boundary after this long, with a jittered
    /// `retry:` [default: no cap].
    #[arg(long, env = "KESTRA_EDGE_SSE_MAX_LIFETIME", value_name = "DURATION", value_parser = parse_duration)]
    pub sse_max_lifetime: Option<Duration>,
    /// An `Upgrade` protocol to tunnel; repeatable (h2c is never tunnelled)
    /// [default: websocket].
    #[arg(
        long = "upgrade-protocol",
        env = "KESTRA_EDGE_UPGRADE_PROTOCOLS",
        value_name = "TOKEN",
        value_delimiter = ','
    )]
    pub upgrade_protocols: Vec<String>,
    /// Close a tunnel (WebSocket) after this long without a byte either way
    /// [default: the read timeout].
    #[arg(long, env = "KESTRA_EDGE_TUNNEL_IDLE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub tunnel_idle_timeout: Option<Duration>,
    /// Close every tunnel after this long [default: no cap].
    #[arg(long, env = "KESTRA_EDGE_TUNNEL_MAX_LIFETIME", value_name = "DURATION", value_parser = parse_duration)]
    pub tunnel_max_lifetime: Option<Duration>,
    /// Compress ordinary responses (gzip, br) for clients that accept it; SSE never.
    #[arg(long, env = "KESTRA_EDGE_COMPRESSION")]
    pub compression: bool,
    /// A forwarded header not to send upstream; repeatable [default: send them all].
    #[arg(
        long = "forwarded-omit",
        env = "KESTRA_EDGE_FORWARDED_OMIT",
        value_name = "HEADER",
        value_delimiter = ','
    )]
    pub forwarded_omit: Vec<ForwardedHeader>,
    /// Start a Kestra stand-in on a free port and front it (ignores --upstream).
    #[arg(long, env = "KESTRA_EDGE_DEMO")]
    pub demo: bool,
}

fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

/// The settings a TOML file may hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct FileConfig {
    listen: Option<SocketAddr>,
    upstream: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    read_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    upstream_idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    body_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    shutdown_grace: Option<Duration>,
    max_body: Option<ByteSize>,
    max_uri: Option<ByteSize>,
    max_header_bytes: Option<ByteSize>,
    max_headers: Option<usize>,
    workers: Option<NonZeroUsize>,
    host_header: Option<HostHeader>,
    context_path: Option<String>,
    prefix_mode: Option<PrefixModeArg>,
    trusted_proxies: Option<Vec<String>>,
    forwarded_omit: Option<Vec<ForwardedHeader>>,
    #[serde(default, with = "humantime_serde_opt")]
    sse_heartbeat: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    sse_idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    sse_max_lifetime: Option<Duration>,
    compression: Option<bool>,
    upgrade_protocols: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde_opt")]
    tunnel_idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    tunnel_max_lifetime: Option<Duration>,
    demo: Option<bool>,
}

/// Durations in the TOML file are humantime strings (`"600s"`, `"2m"`).
mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// A size as a `usize` (saturating on 32-bit targets).
fn byte_count(size: ByteSize) -> usize {
    usize::try_from(size.as_u64()).unwrap_or(usize::MAX)
}

/// A configuration that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The `--config` file is not valid.
    #[error("invalid config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// The stack refused the settings.
    #[error(transparent)]
    Build(#[from] kestra_edge::BuildError),
    /// A setting is out of its range.
    #[error("{setting} {reason}")]
    OutOfRange {
        /// The setting's flag name.
        setting: &'static str,
        /// What it must be.
        reason: &'static str,
    },
}

/// The resolved settings of a gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Upstream base URL.
    pub upstream: String,
    /// See `--connect-timeout`.
    pub connect_timeout: Duration,
    /// See `--read-timeout`.
    pub read_timeout: Duration,
    /// See `--upstream-idle-timeout`.
    pub upstream_idle_timeout: Duration,
    /// See `--header-timeout`.
    pub header_timeout: Duration,
    /// See `--body-timeout`.
    pub body_timeout: Duration,
    /// See `--shutdown-grace`.
    pub shutdown_grace: Duration,
    /// See `--max-body`, in bytes.
    pub max_body: u64,
    /// See `--max-uri`, in bytes.
    pub max_uri: usize,
    /// See `--max-header-bytes`.
    pub max_header_bytes: usize,
    /// See `--max-headers`.
    pub max_headers: usize,
    /// See `--workers`.
    pub workers: NonZeroUsize,
    /// See `--host-header`.
    pub host_header: HostHeader,
    /// See `--context-path`.
    pub context_path: Option<String>,
    /// See `--prefix-mode`.
    pub prefix_mode: PrefixModeArg,
    /// See `--trusted-proxy`.
    pub trusted_proxies: Vec<String>,
    /// See `--forwarded-omit`.
    pub forwarded_omit: Vec<ForwardedHeader>,
    /// See `--sse-heartbeat` (zero: off).
    pub sse_heartbeat: Duration,
    /// See `--sse-idle-timeout` (zero: off).
    pub sse_idle_timeout: Duration,
    /// See `--sse-max-lifetime`.
    pub sse_max_lifetime: Option<Duration>,
    /// See `--compression`.
    pub compression: bool,
    /// See `--upgrade-protocol`.
    pub upgrade_protocols: Vec<String>,
    /// See `--tunnel-idle-timeout` (`None`: the read timeout).
    pub tunnel_idle_timeout: Option<Duration>,
    /// See `--tunnel-max-lifetime`.
    pub tunnel_max_lifetime: Option<Duration>,
    /// See `--demo`.
    pub demo: bool,
}

impl GatewayConfig {
    /// Defaults for fronting `upstream`, listening on `127.0.0.1:0`: what tests start from.
    pub fn for_upstream(upstream: impl Into<String>) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            upstream: upstream.into(),
            ..Self::resolve(Args::default(), FileConfig::default())
        }
    }

    /// Merges flags and environment (already in `args`) over the `--config` file over the
    /// defaults.
    pub fn from_args(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Parse {
                    path: path.clone(),
                    source: Box::new(source),
                })?
            }
            None => FileConfig::default(),
        };
        Ok(Self::resolve(args, file))
    }

    fn resolve(args: Args, file: FileConfig) -> Self {
        Self {
            listen: args.listen.or(file.listen).unwrap_or_else(|| {
                defaults::LISTEN
                    .parse()
                    .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8000)))
            }),
            upstream: args
                .upstream
                .or(file.upstream)
                .unwrap_or_else(|| defaults::UPSTREAM.to_owned()),
            connect_timeout: args
                .connect_timeout
                .or(file.connect_timeout)
                .unwrap_or(defaults::CONNECT_TIMEOUT),
            read_timeout: args
                .read_timeout
                .or(file.read_timeout)
                .unwrap_or(defaults::READ_TIMEOUT),
            upstream_idle_timeout: args
                .upstream_idle_timeout
                .or(file.upstream_idle_timeout)
                .unwrap_or(defaults::UPSTREAM_IDLE_TIMEOUT),
            header_timeout: args
                .header_timeout
                .or(file.header_timeout)
                .unwrap_or(defaults::HEADER_TIMEOUT),
            body_timeout: args
                .body_timeout
                .or(file.body_timeout)
                .unwrap_or(defaults::BODY_TIMEOUT),
            shutdown_grace: args
                .shutdown_grace
                .or(file.shutdown_grace)
                .unwrap_or(defaults::SHUTDOWN_GRACE),
            max_body: args
                .max_body
                .or(file.max_body)
                .map_or(defaults::MAX_BODY, |size| size.as_u64()),
            max_uri: args
                .max_uri
                .or(file.max_uri)
                .map_or(defaults::MAX_URI, byte_count),
            max_header_bytes: args
                .max_header_bytes
                .or(file.max_header_bytes)
                .map_or(defaults::MAX_HEADER_BYTES, byte_count),
            max_headers: args
                .max_headers
                .or(file.max_headers)
                .unwrap_or(defaults::MAX_HEADERS),
            workers: args.workers.or(file.workers).unwrap_or_else(|| {
                std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
            }),
            host_header: args.host_header.or(file.host_header).unwrap_or_default(),
            context_path: args.context_path.or(file.context_path),
            prefix_mode: args.prefix_mode.or(file.prefix_mode).unwrap_or_default(),
            trusted_proxies: Some(args.trusted_proxies)
                .filter(|v| !v.is_empty())
                .or(file.trusted_proxies)
                .unwrap_or_default(),
            forwarded_omit: Some(args.forwarded_omit)
                .filter(|v| !v.is_empty())
                .or(file.forwarded_omit)
                .unwrap_or_default(),
            sse_heartbeat: args
                .sse_heartbeat
                .or(file.sse_heartbeat)
                .unwrap_or(defaults::SSE_HEARTBEAT),
            sse_idle_timeout: args
                .sse_idle_timeout
                .or(file.sse_idle_timeout)
                .unwrap_or(defaults::SSE_IDLE_TIMEOUT),
            sse_max_lifetime: args.sse_max_lifetime.or(file.sse_max_lifetime),
            compression: args.compression || file.compression.unwrap_or(false),
            upgrade_protocols: Some(args.upgrade_protocols)
                .filter(|v| !v.is_empty())
                .or(file.upgrade_protocols)
                .unwrap_or_else(|| vec!["websocket".to_owned()]),
            tunnel_idle_timeout: args.tunnel_idle_timeout.or(file.tunnel_idle_timeout),
            tunnel_max_lifetime: args.tunnel_max_lifetime.or(file.tunnel_max_lifetime),
            demo: args.demo || file.demo.unwrap_or(false),
        }
    }
}

/// Compression on or off, decided once at start-up.
#[derive(Debug, Clone, Copy)]
pub struct CompressionSwitch(bool);

impl Predicate for CompressionSwitch {
    fn should_compress<B: http_body::Body>(&self, _response: &http::Response<B>) -> bool {
        self.0
    }
}

/// What the gateway serves: the kestra-edge stack, behind optional compression (whose
/// default predicate never compresses `text/event-stream`).
pub type GatewayService =
    Compression<KestraEdge<hyper::body::Incoming>, And<CompressionSwitch, DefaultPredicate>>;

/// A gateway bound to its address, ready to serve.
pub struct Gateway {
    server: PerCoreServer,
    // One stack per thread: each has its own upstream pool; all share the tunnel count.
    services: Vec<GatewayService>,
    tunnels: kestra_edge::Tunnels,
    shutdown_grace: Duration,
    standin: Option<Standin>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("server", &self.server)
            .field("standin", &self.standin)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Builds the stack and binds the listener; with `demo`, starts the stand-in first.
    pub async fn bind(mut config: GatewayConfig) -> Result<Self, GatewayError> {
        let standin = if config.demo {
            let standin = Standin::start(StandinConfig::default()).await?;
            config.upstream = standin.url();
            // The recommended setup: Kestra and the gateway share the context path.
            if config.context_path.is_none() {
                config.context_path = Some(standin.context_path().to_owned());
            }
            Some(standin)
        } else {
            None
        };
        if config.max_header_bytes < kestra_edge::server::MIN_MAX_HEADER_BYTES {
            return Err(ConfigError::OutOfRange {
                setting: "--max-header-bytes",
                reason: "must be at least 8KiB",
            }
            .into());
        }
        if config.max_headers == 0 {
            return Err(ConfigError::OutOfRange {
                setting: "--max-headers",
                reason: "must be at least 1",
            }
            .into());
        }
        let mut edge = KestraEdge::builder(config.upstream.clone())
            .max_body(config.max_body)
            .max_uri(config.max_uri)
            .upstream_idle_timeout(config.upstream_idle_timeout)
            .body_timeout(config.body_timeout)
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .preserve_host(config.host_header == HostHeader::Client)
            .forwarded_headers(forwarded_headers(&config.forwarded_omit));
        for cidr in &config.trusted_proxies {
            edge = edge.trusted_proxy(cidr.clone());
        }
        if let Some(path) = &config.context_path {
            edge = edge.context_path(path.clone(), config.prefix_mode.into());
        }
        if let Some(idle) = config.tunnel_idle_timeout {
            edge = edge.tunnel_idle_timeout(idle);
        }
        let edge = edge
            .upgrade_protocols(config.upgrade_protocols.iter().cloned())
            .tunnel_max_lifetime(config.tunnel_max_lifetime)
            .sse_heartbeat(Some(config.sse_heartbeat))
            .sse_idle_timeout(Some(config.sse_idle_timeout))
            .sse_max_lifetime(config.sse_max_lifetime);
        let compression = CompressionLayer::new()
            .compress_when(CompressionSwitch(config.compression).and(DefaultPredicate::new()));
        // Clones of one builder share the tunnel count, so one drain closes them all.
        let services = (0..config.workers.get())
            .map(|_| Ok(compression.layer(edge.clone().build()?)))
            .collect::<Result<Vec<_>, kestra_edge::BuildError>>()
            .map_err(ConfigError::from)?;
        let tunnels = services[0].get_ref().tunnels().clone();
        let server = PerCoreServer::bind(config.listen, config.workers)?
            .header_read_timeout(config.header_timeout)
            .max_header_bytes(config.max_header_bytes)
            .max_headers(config.max_headers)
            .shutdown_grace(config.shutdown_grace);
        Ok(Self {
            server,
            services,
            tunnels,
            shutdown_grace: config.shutdown_grace,
            standin,
        })
    }

    /// The address the gateway listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.server.local_addr())
    }

    /// The demo stand-in, when `demo` is on.
    pub fn standin(&self) -> Option<&Standin> {
        self.standin.as_ref()
    }

    /// Live connection counts of the listener.
    pub fn connections(&self) -> kestra_edge::server::Connections {
        self.server.connections()
    }

    /// The open upgrade tunnels.
    pub fn tunnels(&self) -> &kestra_edge::Tunnels {
        &self.tunnels
    }

    /// Serves until `shutdown` resolves and the grace period has run its course: then
    /// connections and tunnels still open are closed.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let Self {
            server,
            services,
            tunnels,
            shutdown_grace,
            standin,
        } = self;
        let (began, began_rx) = tokio::sync::oneshot::channel();
        let shutdown = async move {
            shutdown.await;
            let _ = began.send(tokio::time::Instant::now());
        };
        // Tunnels are not HTTP connections any more: they get the same deadline, drained
        // while the server threads still drive them.
        let drain = async move {
            if let Ok(began) = began_rx.await {
                tunnels.drain(began + shutdown_grace).await;
            }
        };
        let result = server.serve(|i| services[i].clone(), shutdown, drain).await;
        drop(standin);
        result
    }
}

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A socket could not be bound.
    #[error("cannot listen: {0}")]
    Io(#[from] io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> GatewayConfig {
        let args = Args::try_parse_from(std::iter::once("kestra-edge").chain(args.iter().copied()))
            .unwrap();
        GatewayConfig::from_args(args).unwrap()
    }

    #[test]
    fn defaults_match_the_nginx_block() {
        let c = config(&[]);
        assert_eq!(c.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(c.upstream, "http://127.0.0.1:8080");
        assert_eq!(c.read_timeout, Duration::from_secs(600));
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.host_header, HostHeader::Client);
        assert_eq!(c.context_path, None);
        assert_eq!(c.prefix_mode, PrefixModeArg::Keep);
        assert_eq!(c.max_body, 10 << 30);
        assert_eq!(c.max_uri, 16 << 10);
        assert_eq!(c.max_header_bytes, 64 << 10);
        assert_eq!(c.max_headers, 100);
        assert_eq!(c.header_timeout, Duration::from_secs(30));
        assert_eq!(c.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.body_timeout, Duration::from_secs(60));
    }

    #[test]
    fn sizes_take_units() {
        let c = config(&[
            "--max-body",
            "1MiB",
            "--max-uri",
            "8 KiB",
            "--max-header-bytes",
            "16384",
            "--max-headers",
            "50",
        ]);
        assert_eq!(c.max_body, 1 << 20);
        assert_eq!(c.max_uri, 8 << 10);
        assert_eq!(c.max_header_bytes, 16 << 10);
        assert_eq!(c.max_headers, 50);
        assert!(Args::try_parse_from(["kestra-edge", "--max-body", "lots"]).is_err());
    }

    #[tokio::test]
    async fn limits_out_of_range_are_configuration_errors() {
        let mut c = GatewayConfig::for_upstream("http://127.0.0.1:9");
        c.max_header_bytes = 4096;
        let err = Gateway::bind(c).await.unwrap_err();
        assert!(err.to_string().contains("--max-header-bytes"), "{err}");
        let mut c = GatewayConfig::for_upstream("http://127.0.0.1:9");
        c.max_headers = 0;
        let err = Gateway::bind(c).await.unwrap_err();
        assert!(err.to_string().contains("--max-headers"), "{err}");
    }

    #[test]
    fn flags_are_parsed() {
        let c = config(&[
            "--context-path",
            "/kestra",
            "--prefix-mode",
            "strip",
            "--read-timeout",
            "2m",
            "--connect-timeout",
            "1500ms",
            "--host-header",
            "upstream",
            "--trusted-proxy",
            "10.0.0.0/8",
            "--trusted-proxy",
            "fd00::/8,192.0.2.1",
            "--forwarded-omit",
            "x-real-ip",
        ]);
        assert_eq!(c.context_path.as_deref(), Some("/kestra"));
        assert_eq!(c.prefix_mode, PrefixModeArg::Strip);
        assert_eq!(c.read_timeout, Duration::from_secs(120));
        assert_eq!(c.connect_timeout, Duration::from_millis(1500));
        assert_eq!(c.host_header, HostHeader::Upstream);
        assert_eq!(c.trusted_proxies, ["10.0.0.0/8", "fd00::/8", "192.0.2.1"]);
        assert_eq!(c.forwarded_omit, [ForwardedHeader::XRealIp]);
        assert!(Args::try_parse_from(["kestra-edge", "--prefix-mode", "drop"]).is_err());
        assert!(Args::try_parse_from(["kestra-edge", "--forwarded-omit", "cookie"]).is_err());
    }

    #[tokio::test]
    async fn an_invalid_trusted_proxy_is_a_configuration_error() {
        let mut c = GatewayConfig::for_upstream("http://127.0.0.1:9");
        c.trusted_proxies = vec!["10.0.0.0/33".to_owned()];
        let err = Gateway::bind(c).await.unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/33"), "{err}");
    }

    #[tokio::test]
    async fn an_invalid_context_path_is_a_configuration_error() {
        let mut c = GatewayConfig::for_upstream("http://127.0.0.1:9");
        c.context_path = Some("/kestra/".to_owned());
        let err = Gateway::bind(c).await.unwrap_err();
        assert!(matches!(err, GatewayError::Config(_)), "{err}");
        assert!(err.to_string().contains("must not end with '/'"), "{err}");
    }
}
