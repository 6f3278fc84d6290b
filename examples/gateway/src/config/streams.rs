//! Long-lived exchanges: Server-Sent Event streams and upgrade tunnels; and compression,
//! which event streams never get.

use super::{humantime_serde_opt, parse_duration};
use serde::Deserialize;
use std::time::Duration;

/// Flags of streams and tunnels.
#[derive(Debug, Default, clap::Args)]
pub struct StreamsArgs {
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
    /// Answer an SSE stream 429 (with Retry-After) while its client, after trusted-proxy
    /// resolution, has this many open; 0 turns it off [default: 64].
    #[arg(long, env = "KESTRA_EDGE_SSE_MAX_STREAMS_PER_CLIENT", value_name = "N")]
    pub sse_max_streams_per_client: Option<u32>,
    /// Answer an SSE stream 503 (with Retry-After) while this many are open in all
    /// [default: no cap].
    #[arg(long, env = "KESTRA_EDGE_SSE_MAX_STREAMS", value_name = "N")]
    pub sse_max_streams: Option<u32>,
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
}

/// The streams' keys in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) struct StreamsFile {
    #[serde(default, with = "humantime_serde_opt")]
    sse_heartbeat: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    sse_idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    sse_max_lifetime: Option<Duration>,
    sse_max_streams_per_client: Option<u32>,
    sse_max_streams: Option<u32>,
    upgrade_protocols: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde_opt")]
    tunnel_idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    tunnel_max_lifetime: Option<Duration>,
    compression: Option<bool>,
}

/// The streams' resolved settings.
#[derive(Debug, Clone)]
pub struct StreamsConfig {
    /// See `--sse-heartbeat` (zero: off).
    pub sse_heartbeat: Duration,
    /// See `--sse-idle-timeout` (zero: off).
    pub sse_idle_timeout: Duration,
    /// See `--sse-max-lifetime`.
    pub sse_max_lifetime: Option<Duration>,
    /// See `--sse-max-streams-per-client` (zero: off).
    pub sse_max_streams_per_client: u32,
    /// See `--sse-max-streams`.
    pub sse_max_streams: Option<u32>,
    /// See `--upgrade-protocol`.
    pub upgrade_protocols: Vec<String>,
    /// See `--tunnel-idle-timeout` (`None`: the read timeout).
    pub tunnel_idle_timeout: Option<Duration>,
    /// See `--tunnel-max-lifetime`.
    pub tunnel_max_lifetime: Option<Duration>,
    /// See `--compression`.
    pub compression: bool,
}

impl StreamsConfig {
    pub(super) fn resolve(args: StreamsArgs, file: StreamsFile) -> Self {
        Self {
            sse_heartbeat: args
                .sse_heartbeat
                .or(file.sse_heartbeat)
                .unwrap_or(kestra_edge::sse::DEFAULT_HEARTBEAT),
            sse_idle_timeout: args
                .sse_idle_timeout
                .or(file.sse_idle_timeout)
                .unwrap_or(kestra_edge::sse::DEFAULT_IDLE_TIMEOUT),
            sse_max_lifetime: args.sse_max_lifetime.or(file.sse_max_lifetime),
            sse_max_streams_per_client: args
                .sse_max_streams_per_client
                .or(file.sse_max_streams_per_client)
                .unwrap_or(kestra_edge::sse::DEFAULT_MAX_STREAMS_PER_CLIENT),
            sse_max_streams: args
                .sse_max_streams
                .or(file.sse_max_streams)
                .filter(|&n| n > 0),
            upgrade_protocols: Some(args.upgrade_protocols)
                .filter(|v| !v.is_empty())
                .or(file.upgrade_protocols)
                .unwrap_or_else(|| vec!["websocket".to_owned()]),
            tunnel_idle_timeout: args.tunnel_idle_timeout.or(file.tunnel_idle_timeout),
            tunnel_max_lifetime: args.tunnel_max_lifetime.or(file.tunnel_max_lifetime),
            compression: args.compression || file.compression.unwrap_or(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Args, GatewayConfig};
    use clap::Parser;

    fn parse(args: &[&str]) -> GatewayConfig {
        let argv = std::iter::once("kestra-edge").chain(args.iter().copied());
        GatewayConfig::from_args(Args::try_parse_from(argv).unwrap()).unwrap()
    }

    #[test]
    fn stream_caps_from_the_command_line_the_file_and_the_environment() {
        let _env = crate::config::env_lock();
        let c = parse(&[]);
        assert_eq!(c.streams.sse_max_streams_per_client, 64);
        assert_eq!(c.streams.sse_max_streams, None);
        let c = parse(&[
            "--sse-max-streams-per-client",
            "8",
            "--sse-max-streams",
            "1000",
        ]);
        assert_eq!(c.streams.sse_max_streams_per_client, 8);
        assert_eq!(c.streams.sse_max_streams, Some(1000));
        let c = parse(&[
            "--sse-max-streams-per-client",
            "0",
            "--sse-max-streams",
            "0",
        ]);
        assert_eq!(c.streams.sse_max_streams_per_client, 0);
        assert_eq!(c.streams.sse_max_streams, None);
        assert!(Args::try_parse_from(["kestra-edge", "--sse-max-streams", "-1"]).is_err());

        let path = std::env::temp_dir().join(format!(
            "kestra-edge-stream-caps-{}.toml",
            std::process::id()
        ));
        std::fs::write(
            &path,
            "sse_max_streams_per_client = 16\nsse_max_streams = 500\n",
        )
        .unwrap();
        let c = parse(&[
            "--config",
            path.to_str().unwrap(),
            "--sse-max-streams",
            "600",
        ]);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(c.streams.sse_max_streams_per_client, 16);
        assert_eq!(c.streams.sse_max_streams, Some(600));

        // Only this test reads these variables.
        std::env::set_var("KESTRA_EDGE_SSE_MAX_STREAMS_PER_CLIENT", "4");
        std::env::set_var("KESTRA_EDGE_SSE_MAX_STREAMS", "40");
        let c = parse(&[]);
        std::env::remove_var("KESTRA_EDGE_SSE_MAX_STREAMS_PER_CLIENT");
        std::env::remove_var("KESTRA_EDGE_SSE_MAX_STREAMS");
        assert_eq!(c.streams.sse_max_streams_per_client, 4);
        assert_eq!(c.streams.sse_max_streams, Some(40));
    }
}
