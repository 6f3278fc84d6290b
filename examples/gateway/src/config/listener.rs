//! The listener: address, threads, request-head limits, HTTP/2 connections, shutdown.

use super::{byte_count, humantime_serde_opt, parse_duration, ConfigError};
use bytesize::ByteSize;
use serde::Deserialize;
use std::{net::SocketAddr, num::NonZeroUsize, time::Duration};

const LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8000);

/// Flags of the listener.
#[derive(Debug, Default, Clone, Copy, clap::Args)]
pub struct ListenerArgs {
    /// Address to listen on [default: 127.0.0.1:8000].
    #[arg(long, env = "KESTRA_EDGE_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Threads serving requests, each with its own listener and upstream pool
    /// [default: one per CPU core].
    #[arg(long, env = "KESTRA_EDGE_WORKERS", value_name = "N")]
    pub workers: Option<NonZeroUsize>,
    /// Longest time a client may take to send its request head (the TLS handshake included),
    /// also the idle time of a keep-alive connection between two requests [default: 30s].
    #[arg(long, env = "KESTRA_EDGE_HEADER_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub header_timeout: Option<Duration>,
    /// On SIGINT/SIGTERM, how long in-flight requests may finish [default: 30s].
    #[arg(long, env = "KESTRA_EDGE_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Largest request head (request line and header fields), at least 8KiB; larger is
    /// answered 431 [default: 64KiB].
    #[arg(long, env = "KESTRA_EDGE_MAX_HEADER_BYTES", value_name = "SIZE")]
    pub max_header_bytes: Option<ByteSize>,
    /// Most header fields in a request; more are answered 431 [default: 100].
    #[arg(long, env = "KESTRA_EDGE_MAX_HEADERS", value_name = "N")]
    pub max_headers: Option<usize>,
    /// Close an HTTP/2 connection (GOAWAY) without a request or an open stream for this
    /// long; a connection carrying a live stream is never cut; 0 turns it off [default: 5m].
    #[arg(long, env = "KESTRA_EDGE_H2_IDLE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub h2_idle_timeout: Option<Duration>,
    /// Most concurrent streams per HTTP/2 connection [default: 128].
    #[arg(long, env = "KESTRA_EDGE_H2_MAX_STREAMS", value_name = "N")]
    pub h2_max_streams: Option<u32>,
}

/// The listener's keys in the TOML file.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) struct ListenerFile {
    listen: Option<SocketAddr>,
    workers: Option<NonZeroUsize>,
    #[serde(default, with = "humantime_serde_opt")]
    header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    shutdown_grace: Option<Duration>,
    max_header_bytes: Option<ByteSize>,
    max_headers: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    h2_idle_timeout: Option<Duration>,
    h2_max_streams: Option<u32>,
}

/// The listener's resolved settings.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// See `--listen`.
    pub listen: SocketAddr,
    /// See `--workers`.
    pub workers: NonZeroUsize,
    /// See `--header-timeout`.
    pub header_timeout: Duration,
    /// See `--shutdown-grace`.
    pub shutdown_grace: Duration,
    /// See `--max-header-bytes`.
    pub max_header_bytes: usize,
    /// See `--max-headers`.
    pub max_headers: usize,
    /// See `--h2-idle-timeout` (zero: off).
    pub h2_idle_timeout: Duration,
    /// See `--h2-max-streams`.
    pub h2_max_streams: u32,
}

impl ListenerConfig {
    pub(super) fn resolve(args: ListenerArgs, file: ListenerFile) -> Self {
        use kestra_edge::server as defaults;
        Self {
            listen: args.listen.or(file.listen).unwrap_or(LISTEN),
            workers: args.workers.or(file.workers).unwrap_or_else(|| {
                std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
            }),
            header_timeout: args
                .header_timeout
                .or(file.header_timeout)
                .unwrap_or(defaults::DEFAULT_HEADER_READ_TIMEOUT),
            shutdown_grace: args
                .shutdown_grace
                .or(file.shutdown_grace)
                .unwrap_or(defaults::DEFAULT_SHUTDOWN_GRACE),
            max_header_bytes: args
                .max_header_bytes
                .or(file.max_header_bytes)
                .map_or(defaults::DEFAULT_MAX_HEADER_BYTES, byte_count),
            max_headers: args
                .max_headers
                .or(file.max_headers)
                .unwrap_or(defaults::DEFAULT_MAX_HEADERS),
            h2_idle_timeout: args
                .h2_idle_timeout
                .or(file.h2_idle_timeout)
                .unwrap_or(defaults::DEFAULT_H2_IDLE_TIMEOUT),
            h2_max_streams: args
                .h2_max_streams
                .or(file.h2_max_streams)
                .unwrap_or(defaults::DEFAULT_H2_MAX_CONCURRENT_STREAMS),
        }
    }

    /// Refuses values the server cannot run with.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_header_bytes < kestra_edge::server::MIN_MAX_HEADER_BYTES {
            return Err(ConfigError::OutOfRange {
                setting: "--max-header-bytes",
                reason: "must be at least 8KiB",
            });
        }
        if self.max_headers == 0 {
            return Err(ConfigError::OutOfRange {
                setting: "--max-headers",
                reason: "must be at least 1",
            });
        }
        if self.h2_max_streams == 0 {
            return Err(ConfigError::OutOfRange {
                setting: "--h2-max-streams",
                reason: "must be at least 1",
            });
        }
        Ok(())
    }
}
