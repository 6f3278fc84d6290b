//! Telemetry: the admin listener that serves the metrics and the health probes, the access
//! log, and request ids.

use kestra_edge_telemetry::AccessLogFormat;
use serde::Deserialize;
use std::net::SocketAddr;

/// `--access-log`: off, or the lines' format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessLogArg {
    /// No access log.
    Off,
    /// logfmt `key=value` lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl AccessLogArg {
    /// The format, or `None` when off.
    pub fn format(self) -> Option<AccessLogFormat> {
        match self {
            Self::Off => None,
            Self::Text => Some(AccessLogFormat::Text),
            Self::Json => Some(AccessLogFormat::Json),
        }
    }
}

/// Flags of the admin listener, the access log and request ids.
#[derive(Debug, Default, Clone, Copy, clap::Args)]
pub struct TelemetryArgs {
    /// Serve GET /metrics (Prometheus), /livez and /readyz on this address, never on
    /// --listen [default: off].
    #[arg(long, env = "KESTRA_EDGE_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,
    /// Give every request an X-Request-Id (a client's own kept only from a --trusted-proxy),
    /// sent to Kestra and returned on the response [default: off].
    #[arg(long, env = "KESTRA_EDGE_REQUEST_ID")]
    pub request_id: bool,
    /// One line per finished request on stdout (SSE and WebSocket when they end), written
    /// off the request path; lines stdout cannot take are dropped and counted [default:
    /// text].
    #[arg(
        long,
        env = "KESTRA_EDGE_ACCESS_LOG",
        value_name = "FORMAT",
        value_enum
    )]
    pub access_log: Option<AccessLogArg>,
}

/// The admin listener's keys in the TOML file.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) struct TelemetryFile {
    admin_listen: Option<SocketAddr>,
    request_id: Option<bool>,
    access_log: Option<AccessLogArg>,
}

/// The admin listener's resolved settings.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// See `--admin-listen`.
    pub admin_listen: Option<SocketAddr>,
    /// See `--request-id`.
    pub request_id: bool,
    /// See `--access-log`.
    pub access_log: AccessLogArg,
}

impl TelemetryConfig {
    pub(super) fn resolve(args: TelemetryArgs, file: TelemetryFile) -> Self {
        Self {
            admin_listen: args.admin_listen.or(file.admin_listen),
            request_id: args.request_id || file.request_id.unwrap_or(false),
            access_log: args.access_log.or(file.access_log).unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Args, GatewayConfig};
    use clap::Parser;

    #[test]
    fn the_admin_listener_is_off_unless_asked_for() {
        let _env = crate::config::env_lock();
        let c = GatewayConfig::from_args(Args::try_parse_from(["kestra-edge"]).unwrap()).unwrap();
        assert_eq!(c.telemetry.admin_listen, None);
        let args = Args::try_parse_from(["kestra-edge", "--admin-listen", "127.0.0.1:9100"]);
        let c = GatewayConfig::from_args(args.unwrap()).unwrap();
        assert_eq!(
            c.telemetry.admin_listen,
            Some(([127, 0, 0, 1], 9100).into())
        );
        assert!(Args::try_parse_from(["kestra-edge", "--admin-listen", "nowhere"]).is_err());
        assert!(!c.telemetry.request_id);
        assert_eq!(c.telemetry.access_log, super::AccessLogArg::Text);
        for (value, expected) in [
            ("off", super::AccessLogArg::Off),
            ("text", super::AccessLogArg::Text),
            ("json", super::AccessLogArg::Json),
        ] {
            let args = Args::try_parse_from(["kestra-edge", "--access-log", value]).unwrap();
            let c = GatewayConfig::from_args(args).unwrap();
            assert_eq!(c.telemetry.access_log, expected);
        }
        assert!(Args::try_parse_from(["kestra-edge", "--access-log", "xml"]).is_err());
        let args = Args::try_parse_from(["kestra-edge", "--request-id"]);
        assert!(
            GatewayConfig::from_args(args.unwrap())
                .unwrap()
                .telemetry
                .request_id
        );
    }

    #[test]
    fn the_admin_listener_from_the_file_and_the_environment() {
        let _env = crate::config::env_lock();
        let path =
            std::env::temp_dir().join(format!("kestra-edge-telemetry-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "admin_listen = \"0.0.0.0:9100\"\nrequest_id = true\naccess_log = \"json\"\n",
        )
        .unwrap();
        let argv = ["kestra-edge", "--config", path.to_str().unwrap()];
        let c = GatewayConfig::from_args(Args::try_parse_from(argv).unwrap()).unwrap();
        assert_eq!(c.telemetry.admin_listen, Some(([0, 0, 0, 0], 9100).into()));
        assert!(c.telemetry.request_id);
        assert_eq!(c.telemetry.access_log, super::AccessLogArg::Json);
        // The flag beats the file.
        let argv = [
            &argv[..],
            &["--admin-listen", "127.0.0.1:9101", "--access-log", "off"],
        ]
        .concat();
        let c = GatewayConfig::from_args(Args::try_parse_from(argv).unwrap()).unwrap();
        assert_eq!(c.telemetry.access_log, super::AccessLogArg::Off);
        assert_eq!(
            c.telemetry.admin_listen,
            Some(([127, 0, 0, 1], 9101).into())
        );
        std::fs::remove_file(path).unwrap();
        // Only this test reads the variable.
        std::env::set_var("KESTRA_EDGE_ADMIN_LISTEN", "127.0.0.1:9102");
        std::env::set_var("KESTRA_EDGE_ACCESS_LOG", "json");
        let c = GatewayConfig::from_args(Args::try_parse_from(["kestra-edge"]).unwrap());
        std::env::remove_var("KESTRA_EDGE_ADMIN_LISTEN");
        std::env::remove_var("KESTRA_EDGE_ACCESS_LOG");
        let c = c.unwrap();
        assert_eq!(
            c.telemetry.admin_listen,
            Some(([127, 0, 0, 1], 9102).into())
        );
        assert_eq!(c.telemetry.access_log, super::AccessLogArg::Json);
    }
}
