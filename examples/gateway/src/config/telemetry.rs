//! Telemetry: the admin listener that serves the metrics and the health probes, and
//! request ids.

use serde::Deserialize;
use std::net::SocketAddr;

/// Flags of the admin listener.
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
}

/// The admin listener's keys in the TOML file.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) struct TelemetryFile {
    admin_listen: Option<SocketAddr>,
    request_id: Option<bool>,
}

/// The admin listener's resolved settings.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// See `--admin-listen`.
    pub admin_listen: Option<SocketAddr>,
    /// See `--request-id`.
    pub request_id: bool,
}

impl TelemetryConfig {
    pub(super) fn resolve(args: TelemetryArgs, file: TelemetryFile) -> Self {
        Self {
            admin_listen: args.admin_listen.or(file.admin_listen),
            request_id: args.request_id || file.request_id.unwrap_or(false),
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
            "admin_listen = \"0.0.0.0:9100\"\nrequest_id = true\n",
        )
        .unwrap();
        let argv = ["kestra-edge", "--config", path.to_str().unwrap()];
        let c = GatewayConfig::from_args(Args::try_parse_from(argv).unwrap()).unwrap();
        assert_eq!(c.telemetry.admin_listen, Some(([0, 0, 0, 0], 9100).into()));
        assert!(c.telemetry.request_id);
        // The flag beats the file.
        let argv = [&argv[..], &["--admin-listen", "127.0.0.1:9101"]].concat();
        let c = GatewayConfig::from_args(Args::try_parse_from(argv).unwrap()).unwrap();
        assert_eq!(
            c.telemetry.admin_listen,
            Some(([127, 0, 0, 1], 9101).into())
        );
        std::fs::remove_file(path).unwrap();
        // Only this test reads the variable.
        std::env::set_var("KESTRA_EDGE_ADMIN_LISTEN", "127.0.0.1:9102");
        let c = GatewayConfig::from_args(Args::try_parse_from(["kestra-edge"]).unwrap());
        std::env::remove_var("KESTRA_EDGE_ADMIN_LISTEN");
        assert_eq!(
            c.unwrap().telemetry.admin_listen,
            Some(([127, 0, 0, 1], 9102).into())
        );
    }
}
