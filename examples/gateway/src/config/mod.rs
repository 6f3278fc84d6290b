//! The gateway's configuration, one module per concern (like the crates): each has its
//! flags (`clap`, with their environment variables), its keys in the TOML file, and its
//! resolved settings. A flag beats its variable, which beats the file, which beats the
//! default.

use bytesize::ByteSize;
use clap::Parser;
use serde::Deserialize;
use std::{collections::BTreeMap, io, path::PathBuf, time::Duration};

mod auth;
mod balance;
mod egress;
mod forwarded;
mod listener;
mod prefix;
mod streams;
mod telemetry;
mod tls;
mod upstream;

pub use auth::{AuthArgs, AuthConfig};
pub use balance::{AffinityMode, BalanceArgs, BalanceConfig, Resolver};
pub use egress::{EgressArgs, EgressConfig};
pub use forwarded::{ForwardedArgs, ForwardedConfig, ForwardedHeader};
pub use listener::{ListenerArgs, ListenerConfig};
pub use prefix::{PrefixArgs, PrefixConfig, PrefixModeArg};
pub use streams::{StreamsArgs, StreamsConfig};
pub use telemetry::{AccessLogArg, TelemetryArgs, TelemetryConfig};
pub use tls::{CertSource, TlsArgs, TlsConfig};
pub use upstream::{HostHeader, UpstreamArgs, UpstreamConfig};

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
    #[command(flatten)]
    #[allow(missing_docs)]
    pub listener: ListenerArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub tls: TlsArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub upstream: UpstreamArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub balance: BalanceArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub forwarded: ForwardedArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub prefix: PrefixArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub streams: StreamsArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub auth: AuthArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub egress: EgressArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub telemetry: TelemetryArgs,
    /// Start a Kestra stand-in on a free port and front it (ignores --upstream).
    #[arg(long, env = "KESTRA_EDGE_DEMO")]
    pub demo: bool,
}

/// The TOML file: every concern's keys side by side at the top level.
#[derive(Debug, Default, Deserialize)]
struct FileConfig {
    #[serde(flatten)]
    listener: listener::ListenerFile,
    #[serde(flatten)]
    tls: tls::TlsFile,
    #[serde(flatten)]
    upstream: upstream::UpstreamFile,
    #[serde(flatten)]
    balance: balance::BalanceFile,
    #[serde(flatten)]
    forwarded: forwarded::ForwardedFile,
    #[serde(flatten)]
    prefix: prefix::PrefixFile,
    #[serde(flatten)]
    streams: streams::StreamsFile,
    #[serde(flatten)]
    auth: auth::AuthFile,
    #[serde(flatten)]
    egress: egress::EgressFile,
    #[serde(flatten)]
    telemetry: telemetry::TelemetryFile,
    demo: Option<bool>,
    /// What no concern took: refused, so that a misspelt key is not silently ignored.
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
}

/// Durations on the command line: `600s`, `2m`, `1h 30m`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

/// Durations in the TOML file are humantime strings (`"600s"`, `"2m"`).
mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
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
    /// The `--config` file has keys no setting has.
    #[error("invalid config file {path}: unknown keys {keys:?}")]
    UnknownKeys {
        /// The file.
        path: PathBuf,
        /// The keys.
        keys: Vec<String>,
    },
    /// The stack refused the settings.
    #[error(transparent)]
    Build(#[from] kestra_edge::BuildError),
    /// The TLS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] kestra_edge::tls::TlsError),
    /// A setting is out of its range.
    #[error("{setting} {reason}")]
    OutOfRange {
        /// The setting's flag name.
        setting: &'static str,
        /// What it must be.
        reason: &'static str,
    },
    /// Settings that cannot go together.
    #[error("{0}")]
    Conflict(&'static str),
    /// The forward-auth settings or the Kestra credentials file.
    #[error(transparent)]
    Auth(#[from] kestra_edge::auth::ForwardAuthError),
    /// The egress forward proxy's settings or credentials file.
    #[error(transparent)]
    Egress(#[from] kestra_edge::egress::EgressError),
}

/// The resolved settings of a gateway, by concern.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The listener.
    pub listener: ListenerConfig,
    /// TLS on the listener.
    pub tls: TlsConfig,
    /// Kestra's webserver.
    pub upstream: UpstreamConfig,
    /// Balancing over several replicas.
    pub balance: BalanceConfig,
    /// What the upstream is told about the client.
    pub forwarded: ForwardedConfig,
    /// The context path.
    pub prefix: PrefixConfig,
    /// SSE streams, tunnels, compression.
    pub streams: StreamsConfig,
    /// Forward authentication and Kestra's credentials.
    pub auth: AuthConfig,
    /// The forward proxy for Kestra's outbound calls.
    pub egress: EgressConfig,
    /// The admin listener (metrics, health).
    pub telemetry: TelemetryConfig,
    /// See `--demo`.
    pub demo: bool,
}

impl GatewayConfig {
    /// Defaults for fronting `upstream`, listening on `127.0.0.1:0`, without an access log:
    /// what tests start from.
    pub fn for_upstream(upstream: impl Into<String>) -> Self {
        let mut config = Self::resolve(Args::default(), FileConfig::default());
        config.listener.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        config.upstream.url = upstream.into();
        // The binary logs each request to stdout; a gateway embedded in a program (a test)
        // asks for it.
        config.telemetry.access_log = AccessLogArg::Off;
        config
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
                let file: FileConfig =
                    toml::from_str(&text).map_err(|source| ConfigError::Parse {
                        path: path.clone(),
                        source: Box::new(source),
                    })?;
                if !file.unknown.is_empty() {
                    return Err(ConfigError::UnknownKeys {
                        path: path.clone(),
                        keys: file.unknown.into_keys().collect(),
                    });
                }
                file
            }
            None => FileConfig::default(),
        };
        Ok(Self::resolve(args, file))
    }

    fn resolve(args: Args, file: FileConfig) -> Self {
        let demo = args.demo || file.demo.unwrap_or(false);
        let upstream_given =
            demo || !args.upstream.upstream.is_empty() || file.upstream.names_upstream();
        Self {
            listener: ListenerConfig::resolve(args.listener, file.listener),
            tls: TlsConfig::resolve(args.tls, file.tls),
            upstream: UpstreamConfig::resolve(args.upstream, file.upstream),
            balance: BalanceConfig::resolve(args.balance, file.balance),
            forwarded: ForwardedConfig::resolve(args.forwarded, file.forwarded),
            prefix: PrefixConfig::resolve(args.prefix, file.prefix),
            streams: StreamsConfig::resolve(args.streams, file.streams),
            auth: AuthConfig::resolve(args.auth, file.auth),
            egress: EgressConfig::resolve(args.egress, file.egress, upstream_given),
            telemetry: TelemetryConfig::resolve(args.telemetry, file.telemetry),
            demo,
        }
    }

    /// Refuses settings that cannot run, before anything is bound.
    pub fn validate(&self) -> Result<Option<CertSource>, ConfigError> {
        self.listener.validate()?;
        self.tls.source()
    }
}

/// Every test that parses arguments reads the whole environment (clap reads each flag's
/// variable), so the tests that set variables and those that parse run one at a time.
#[cfg(test)]
pub(crate) fn env_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> GatewayConfig {
        let args = Args::try_parse_from(std::iter::once("kestra-edge").chain(args.iter().copied()))
            .unwrap();
        GatewayConfig::from_args(args).unwrap()
    }

    fn with_file(text: &str, args: &[&str]) -> Result<GatewayConfig, ConfigError> {
        let path = std::env::temp_dir().join(format!(
            "kestra-edge-config-{}-{}.toml",
            std::process::id(),
            text.len()
        ));
        std::fs::write(&path, text).unwrap();
        let path_arg = path.to_str().unwrap().to_owned();
        let argv = ["kestra-edge", "--config", path_arg.as_str()]
            .into_iter()
            .chain(args.iter().copied());
        let result = GatewayConfig::from_args(Args::try_parse_from(argv).unwrap());
        std::fs::remove_file(path).unwrap();
        result
    }

    #[test]
    fn tls_and_http2_flags_are_parsed() {
        let _env = crate::config::env_lock();
        let c = parse(&[
            "--tls-cert",
            "/etc/tls/tls.crt",
            "--tls-key",
            "/etc/tls/tls.key",
            "--redirect-http",
            "0.0.0.0:80",
            "--h2-idle-timeout",
            "90s",
            "--h2-max-streams",
            "64",
            "--upstream",
            "https://kestra.internal:8443",
            "--upstream-ca",
            "/etc/ca/a.pem",
            "--upstream-ca",
            "/etc/ca/b.pem,/etc/ca/c.pem",
        ]);
        assert_eq!(
            c.tls.source().unwrap(),
            Some(CertSource::Files {
                cert: "/etc/tls/tls.crt".into(),
                key: "/etc/tls/tls.key".into()
            })
        );
        assert_eq!(c.tls.redirect_http, Some("0.0.0.0:80".parse().unwrap()));
        assert_eq!(c.listener.h2_idle_timeout, Duration::from_secs(90));
        assert_eq!(c.listener.h2_max_streams, 64);
        assert_eq!(c.upstream.url, "https://kestra.internal:8443");
        let ca: Vec<PathBuf> = ["/etc/ca/a.pem", "/etc/ca/b.pem", "/etc/ca/c.pem"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(c.upstream.ca, ca);

        let c = parse(&["--tls-self-signed"]);
        assert_eq!(c.tls.source().unwrap(), Some(CertSource::SelfSigned));
        let c = parse(&[]);
        assert_eq!(c.tls.source().unwrap(), None);
        assert_eq!(c.listener.h2_idle_timeout, Duration::from_secs(300));
        assert_eq!(c.listener.h2_max_streams, 128);
    }

    #[test]
    fn tls_settings_that_cannot_go_together_are_refused() {
        let _env = crate::config::env_lock();
        for (args, message) in [
            (&["--tls-cert", "a.crt"][..], "--tls-cert needs --tls-key"),
            (&["--tls-key", "a.key"][..], "--tls-key needs --tls-cert"),
            (
                &["--tls-self-signed", "--tls-cert", "a", "--tls-key", "b"][..],
                "cannot be combined",
            ),
            (
                &["--redirect-http", "127.0.0.1:0"][..],
                "--redirect-http needs TLS",
            ),
        ] {
            let err = parse(args).validate().unwrap_err();
            assert!(err.to_string().contains(message), "{args:?}: {err}");
        }
        let err = parse(&["--h2-max-streams", "0"]).validate().unwrap_err();
        assert!(err.to_string().contains("--h2-max-streams"), "{err}");
    }

    #[test]
    fn the_file_sets_every_concern_and_flags_beat_it() {
        let _env = crate::config::env_lock();
        let c = with_file(
            r#"
                tls_cert = "/f/tls.crt"
                tls_key = "/f/tls.key"
                redirect_http = "127.0.0.1:8080"
                h2_idle_timeout = "2m"
                h2_max_streams = 32
                upstream = "https://kestra:8443"
                upstream_ca = ["/f/ca.pem"]
                read_timeout = "10m"
                upstream_max_idle = 64
                context_path = "/kestra"
            "#,
            &["--h2-max-streams", "16"],
        )
        .unwrap();
        assert_eq!(
            c.tls.cert_file.as_deref(),
            Some(std::path::Path::new("/f/tls.crt"))
        );
        assert_eq!(
            c.tls.key_file.as_deref(),
            Some(std::path::Path::new("/f/tls.key"))
        );
        assert_eq!(c.tls.redirect_http, Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(c.listener.h2_idle_timeout, Duration::from_secs(120));
        assert_eq!(c.listener.h2_max_streams, 16);
        assert_eq!(c.upstream.url, "https://kestra:8443");
        assert_eq!(c.upstream.ca, [PathBuf::from("/f/ca.pem")]);
        assert_eq!(c.upstream.read_timeout, Duration::from_secs(600));
        assert_eq!(c.upstream.max_idle, 64);
        assert_eq!(c.prefix.context_path.as_deref(), Some("/kestra"));
        let c = with_file("upstream_max_idle = 64", &["--upstream-max-idle", "8"]).unwrap();
        assert_eq!(c.upstream.max_idle, 8);
        let c = with_file("tls_self_signed = true", &[]).unwrap();
        assert!(c.tls.self_signed);
    }

    #[test]
    fn a_misspelt_file_key_is_refused_by_name() {
        let _env = crate::config::env_lock();
        let err = with_file("tls_certificate = \"x\"\nread_timeout = \"1s\"", &[]).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownKeys { .. }), "{err}");
        assert!(err.to_string().contains("tls_certificate"), "{err}");
        assert!(!err.to_string().contains("read_timeout"), "{err}");
    }

    /// A flag is done when it works from the command line, the environment and the file,
    /// and the README's flag table names it with its variable.
    #[test]
    fn every_flag_has_a_variable_a_file_key_and_a_readme_row() {
        let _env = crate::config::env_lock();
        let readme = include_str!("../../../../README.md");
        let command = Args::command();
        let mut checked = 0;
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let env = arg.get_env().and_then(|e| e.to_str());
            let env = env.unwrap_or_else(|| panic!("--{long} has no environment variable"));
            let row = readme
                .lines()
                .find(|line| line.starts_with(&format!("| `--{long}")))
                .unwrap_or_else(|| panic!("README's flag table has no row for --{long}"));
            assert!(
                row.contains(env),
                "README row of --{long} does not name {env}"
            );
            checked += 1;
            if long == "config" {
                continue;
            }
            // A known key may fail on its value's type, but is never an unknown key.
            let key = arg.get_id().as_str();
            let text = format!("{key} = \"not-a-valid-value-for-most-keys\"");
            let file: Result<FileConfig, _> = toml::from_str(&text);
            if let Ok(file) = file {
                assert!(file.unknown.is_empty(), "--{long}: {key} is not a file key");
            }
        }
        assert!(checked >= 30, "only {checked} flags found");
    }

    #[test]
    fn balance_flags_work_from_the_command_line_the_environment_and_the_file() {
        let _env = crate::config::env_lock();
        let c = parse(&[]);
        assert_eq!(c.upstream.url, "http://127.0.0.1:8080");
        assert!(c.upstream.more.is_empty());
        assert!(!c.balance.is_set());
        assert_eq!(c.balance.health_path, None);
        assert_eq!(c.balance.health_interval, Duration::from_secs(5));
        assert_eq!(c.balance.health_timeout, Duration::from_secs(2));
        assert_eq!((c.balance.health_fails, c.balance.health_passes), (2, 2));
        assert_eq!(c.balance.retries, 1);
        assert_eq!(c.balance.dns_refresh, None);
        assert_eq!(c.balance.affinity, AffinityMode::None);
        assert_eq!(c.balance.affinity_cookie, "kestra_edge_replica");

        let c = parse(&[
            "--upstream",
            "http://10.0.0.1:8080",
            "--upstream",
            "http://10.0.0.2:8080,http://10.0.0.3:8080",
            "--health-path",
            "/health/readiness",
            "--health-port",
            "8081",
            "--health-interval",
            "1s",
            "--health-timeout",
            "300ms",
            "--health-fails",
            "3",
            "--health-passes",
            "4",
            "--retries",
            "2",
            "--dns-refresh",
            "10s",
            "--affinity",
            "cookie",
            "--affinity-cookie",
            "edge",
            "--affinity-key-file",
            "/k/key",
        ]);
        assert_eq!(c.upstream.url, "http://10.0.0.1:8080");
        assert_eq!(
            c.upstream.more,
            ["http://10.0.0.2:8080", "http://10.0.0.3:8080"]
        );
        let b = &c.balance;
        assert!(b.is_set());
        assert_eq!(b.health_path.as_deref(), Some("/health/readiness"));
        assert_eq!(b.health_port, Some(8081));
        assert_eq!(b.health_interval, Duration::from_secs(1));
        assert_eq!(b.health_timeout, Duration::from_millis(300));
        assert_eq!((b.health_fails, b.health_passes, b.retries), (3, 4, 2));
        assert_eq!(b.dns_refresh, Some(Duration::from_secs(10)));
        assert_eq!(b.affinity, AffinityMode::Cookie);
        assert_eq!(b.affinity_cookie, "edge");
        assert_eq!(
            b.affinity_key_file.as_deref(),
            Some(std::path::Path::new("/k/key"))
        );
        assert!(Args::try_parse_from(["kestra-edge", "--affinity", "ip"]).is_err());

        let c = with_file(
            r#"
                upstream = ["http://a:8080", "http://b:8080"]
                health_path = "/health/readiness"
                health_port = 8081
                health_interval = "250ms"
                health_timeout = "100ms"
                health_fails = 5
                health_passes = 6
                retries = 0
                dns_refresh = "1m"
                affinity = "cookie"
                affinity_cookie = "f"
                affinity_key_file = "/f/key"
            "#,
            &["--health-fails", "7"],
        )
        .unwrap();
        assert_eq!(c.upstream.url, "http://a:8080");
        assert_eq!(c.upstream.more, ["http://b:8080"]);
        let b = &c.balance;
        assert_eq!(b.health_port, Some(8081));
        assert_eq!(b.health_interval, Duration::from_millis(250));
        assert_eq!(b.health_timeout, Duration::from_millis(100));
        assert_eq!((b.health_fails, b.health_passes, b.retries), (7, 6, 0));
        assert_eq!(b.dns_refresh, Some(Duration::from_secs(60)));
        assert_eq!(b.affinity, AffinityMode::Cookie);
        assert_eq!(b.affinity_cookie, "f");
        assert_eq!(
            b.affinity_key_file.as_deref(),
            Some(std::path::Path::new("/f/key"))
        );
        let c = with_file("upstream = \"http://one:8080\"", &[]).unwrap();
        assert_eq!(c.upstream.url, "http://one:8080");
        assert!(c.upstream.more.is_empty());

        // The environment: only variables no other test reads.
        let vars = [
            ("KESTRA_EDGE_HEALTH_PATH", "/env/ready"),
            ("KESTRA_EDGE_HEALTH_PORT", "9091"),
            ("KESTRA_EDGE_HEALTH_INTERVAL", "3s"),
            ("KESTRA_EDGE_HEALTH_TIMEOUT", "1s"),
            ("KESTRA_EDGE_HEALTH_FAILS", "8"),
            ("KESTRA_EDGE_HEALTH_PASSES", "9"),
            ("KESTRA_EDGE_RETRIES", "3"),
            ("KESTRA_EDGE_DNS_REFRESH", "5s"),
            ("KESTRA_EDGE_AFFINITY", "cookie"),
            ("KESTRA_EDGE_AFFINITY_COOKIE", "envcookie"),
            ("KESTRA_EDGE_AFFINITY_KEY_FILE", "/env/key"),
            ("KESTRA_EDGE_UPSTREAM_MAX_IDLE", "32"),
        ];
        for (name, value) in vars {
            std::env::set_var(name, value);
        }
        let c = parse(&[]);
        for (name, _) in vars {
            std::env::remove_var(name);
        }
        let b = &c.balance;
        assert_eq!(b.health_path.as_deref(), Some("/env/ready"));
        assert_eq!(b.health_port, Some(9091));
        assert_eq!(b.health_interval, Duration::from_secs(3));
        assert_eq!(b.health_timeout, Duration::from_secs(1));
        assert_eq!((b.health_fails, b.health_passes, b.retries), (8, 9, 3));
        assert_eq!(b.dns_refresh, Some(Duration::from_secs(5)));
        assert_eq!(c.upstream.max_idle, 32);
        assert_eq!(b.affinity, AffinityMode::Cookie);
        assert_eq!(b.affinity_cookie, "envcookie");
        assert_eq!(
            b.affinity_key_file.as_deref(),
            Some(std::path::Path::new("/env/key"))
        );
    }

    #[test]
    fn defaults_match_the_nginx_block() {
        let _env = crate::config::env_lock();
        let c = parse(&[]);
        assert_eq!(c.listener.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(c.upstream.url, "http://127.0.0.1:8080");
        assert_eq!(c.upstream.read_timeout, Duration::from_secs(600));
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.upstream.max_idle, 256);
        assert_eq!(c.upstream.host_header, HostHeader::Client);
        assert_eq!(c.prefix.context_path, None);
        assert_eq!(c.prefix.mode, PrefixModeArg::Keep);
        assert_eq!(c.upstream.max_body, 10 << 30);
        assert_eq!(c.upstream.max_uri, 16 << 10);
        assert_eq!(c.listener.max_header_bytes, 64 << 10);
        assert_eq!(c.listener.max_headers, 100);
        assert_eq!(c.listener.header_timeout, Duration::from_secs(30));
        assert_eq!(c.listener.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.upstream.body_timeout, Duration::from_secs(60));
    }

    #[test]
    fn sizes_take_units() {
        let _env = crate::config::env_lock();
        let c = parse(&[
            "--max-body",
            "1MiB",
            "--max-uri",
            "8 KiB",
            "--max-header-bytes",
            "16384",
            "--max-headers",
            "50",
        ]);
        assert_eq!(c.upstream.max_body, 1 << 20);
        assert_eq!(c.upstream.max_uri, 8 << 10);
        assert_eq!(c.listener.max_header_bytes, 16 << 10);
        assert_eq!(c.listener.max_headers, 50);
        assert!(Args::try_parse_from(["kestra-edge", "--max-body", "lots"]).is_err());
    }

    #[tokio::test]
    async fn limits_out_of_range_are_configuration_errors() {
        let mut c = GatewayConfig::for_upstream("http://127.0.0.1:9");
        c.listener.max_header_bytes = 4096;
        let err = crate::Gateway::bind(c).await.unwrap_err();
        assert!(err.to_string().contains("--max-header-bytes"), "{err}");
        let mut c = GatewayConfig::for_upstream("http://127.0.0.1:9");
        c.listener.max_headers = 0;
        let err = crate::Gateway::bind(c).await.unwrap_err();
        assert!(err.to_string().contains("--max-headers"), "{err}");
    }

    #[test]
    fn flags_are_parsed() {
        let _env = crate::config::env_lock();
        let c = parse(&[
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
        assert_eq!(c.prefix.context_path.as_deref(), Some("/kestra"));
        assert_eq!(c.prefix.mode, PrefixModeArg::Strip);
        assert_eq!(c.upstream.read_timeout, Duration::from_secs(120));
        assert_eq!(c.upstream.connect_timeout, Duration::from_millis(1500));
        assert_eq!(c.upstream.host_header, HostHeader::Upstream);
        assert_eq!(
            c.forwarded.trusted_proxies,
            ["10.0.0.0/8", "fd00::/8", "192.0.2.1"]
        );
        assert_eq!(c.forwarded.omit, [ForwardedHeader::XRealIp]);
        assert!(Args::try_parse_from(["kestra-edge", "--prefix-mode", "drop"]).is_err());
        assert!(Args::try_parse_from(["kestra-edge", "--forwarded-omit", "cookie"]).is_err());
    }

    #[tokio::test]
    async fn an_invalid_trusted_proxy_is_a_configuration_error() {
        let mut c = GatewayConfig::for_upstream("http://127.0.0.1:9");
        c.forwarded.trusted_proxies = vec!["10.0.0.0/33".to_owned()];
        let err = crate::Gateway::bind(c).await.unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/33"), "{err}");
    }

    #[test]
    fn forward_auth_flags_work_from_the_command_line_the_environment_and_the_file() {
        let _env = crate::config::env_lock();
        let c = parse(&[]);
        assert_eq!(c.auth.url, None);
        assert!(!c.auth.layer(None).unwrap().is_enabled());

        let c = parse(&[
            "--context-path",
            "/kestra",
            "--forward-auth",
            "http://127.0.0.1:4180/oauth2/auth",
            "--forward-auth-timeout",
            "750ms",
            "--auth-response-header",
            "X-Auth-Request-User",
            "--auth-response-header",
            "X-Auth-Request-Email,Remote-User",
            "--forward-auth-cache",
            "30s",
            "--forward-auth-ca",
            "/etc/ca/a.pem",
            "--forward-auth-ca",
            "/etc/ca/b.pem,/etc/ca/c.pem",
        ]);
        let a = &c.auth;
        assert_eq!(a.url.as_deref(), Some("http://127.0.0.1:4180/oauth2/auth"));
        assert_eq!(a.timeout, Some(Duration::from_millis(750)));
        assert_eq!(
            a.response_headers,
            ["X-Auth-Request-User", "X-Auth-Request-Email", "Remote-User"]
        );
        assert_eq!(a.cache, Some(Duration::from_secs(30)));
        assert_eq!(
            a.ca,
            ["/etc/ca/a.pem", "/etc/ca/b.pem", "/etc/ca/c.pem"].map(PathBuf::from)
        );
        // Kestra's machine endpoints under the context path, unless told otherwise.
        assert_eq!(
            a.bypass_paths(c.prefix.context_path.as_deref()),
            [
                "/kestra/ping",
                "/kestra/api/v1/executions/webhook/",
                "/kestra/api/v1/{tenant}/executions/webhook/"
            ]
        );
        let mut without_ca = a.clone();
        without_ca.ca.clear();
        assert!(without_ca.layer(Some("/kestra")).unwrap().is_enabled());
        // A CA file that cannot be read stops the gateway, naming it.
        let err = a.layer(Some("/kestra")).unwrap_err();
        assert!(err.to_string().contains("/etc/ca/a.pem"), "{err}");
        let c = parse(&["--auth-bypass", "/a/b", "--auth-bypass", "/c/{x}/d,/e"]);
        assert_eq!(c.auth.bypass_paths(None), ["/a/b", "/c/{x}/d", "/e"]);
        let c = parse(&["--auth-bypass", "none"]);
        assert!(c.auth.bypass_paths(Some("/kestra")).is_empty());

        let dir =
            std::env::temp_dir().join(format!("kestra-edge-auth-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let credentials = dir.join("credentials");
        std::fs::write(&credentials, "admin@kestra.io:Kestra123\n").unwrap();
        let c = with_file(
            &format!(
                r#"
                    forward_auth = "http://auth:9091/api/authz/forward-auth"
                    forward_auth_timeout = "2s"
                    auth_response_headers = ["Remote-User", "Remote-Email"]
                    auth_bypass = ["/kestra/ping"]
                    forward_auth_cache = "1m"
                    forward_auth_ca = ["/f/ca.pem"]
                    kestra_credentials_file = "{}"
                "#,
                credentials.display()
            ),
            &["--forward-auth-timeout", "3s"],
        )
        .unwrap();
        let a = &c.auth;
        assert_eq!(
            a.url.as_deref(),
            Some("http://auth:9091/api/authz/forward-auth")
        );
        assert_eq!(a.timeout, Some(Duration::from_secs(3)));
        assert_eq!(a.response_headers, ["Remote-User", "Remote-Email"]);
        assert_eq!(a.bypass_paths(None), ["/kestra/ping"]);
        assert_eq!(a.cache, Some(Duration::from_secs(60)));
        assert_eq!(a.ca, [PathBuf::from("/f/ca.pem")]);
        assert_eq!(a.credentials_file.as_deref(), Some(credentials.as_path()));
        let mut a = a.clone();
        a.ca.clear();
        let layer = a.layer(None).unwrap();
        assert!(layer.kestra_credentials().is_some());

        // The environment: only variables no other test reads.
        let vars = [
            (
                "KESTRA_EDGE_FORWARD_AUTH",
                "http://env-auth:4180/oauth2/auth",
            ),
            ("KESTRA_EDGE_FORWARD_AUTH_TIMEOUT", "1500ms"),
            (
                "KESTRA_EDGE_AUTH_RESPONSE_HEADERS",
                "Remote-User,Remote-Groups",
            ),
            (
                "KESTRA_EDGE_AUTH_BYPASS",
                "/x/ping,/x/api/v1/{tenant}/executions/webhook/",
            ),
            ("KESTRA_EDGE_FORWARD_AUTH_CACHE", "45s"),
            ("KESTRA_EDGE_FORWARD_AUTH_CA", "/env/a.pem,/env/b.pem"),
            ("KESTRA_EDGE_KESTRA_CREDENTIALS_FILE", "/env/credentials"),
        ];
        for (name, value) in vars {
            std::env::set_var(name, value);
        }
        let c = parse(&[]);
        for (name, _) in vars {
            std::env::remove_var(name);
        }
        let a = &c.auth;
        assert_eq!(a.url.as_deref(), Some("http://env-auth:4180/oauth2/auth"));
        assert_eq!(a.timeout, Some(Duration::from_millis(1500)));
        assert_eq!(a.response_headers, ["Remote-User", "Remote-Groups"]);
        assert_eq!(
            a.bypass_paths(None),
            ["/x/ping", "/x/api/v1/{tenant}/executions/webhook/"]
        );
        assert_eq!(a.cache, Some(Duration::from_secs(45)));
        assert_eq!(a.ca, ["/env/a.pem", "/env/b.pem"].map(PathBuf::from));
        assert_eq!(
            a.credentials_file.as_deref(),
            Some(std::path::Path::new("/env/credentials"))
        );
        // A missing credentials file stops the gateway, naming the file.
        let mut a = a.clone();
        a.ca.clear();
        let err = a.layer(None).unwrap_err();
        assert!(err.to_string().contains("/env/credentials"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn invalid_forward_auth_settings_are_configuration_errors() {
        for (url, bypass, message) in [
            (
                "ftp://auth/oauth2/auth",
                None,
                "must be an absolute http:// or https:// URL",
            ),
            (
                "auth:4180",
                None,
                "must be an absolute http:// or https:// URL",
            ),
            ("http://auth/", Some("ping"), "must start with /"),
            ("http://auth/", Some("/"), "would bypass everything"),
        ] {
            let mut c = GatewayConfig::for_upstream("http://127.0.0.1:9");
            c.auth.url = Some(url.to_owned());
            c.auth.bypass = bypass.map(|b| vec![b.to_owned()]);
            let err = crate::Gateway::bind(c).await.unwrap_err();
            assert!(matches!(err, crate::GatewayError::Config(_)), "{err}");
            assert!(err.to_string().contains(message), "{url}: {err}");
        }
    }

    #[tokio::test]
    async fn an_invalid_context_path_is_a_configuration_error() {
        let mut c = GatewayConfig::for_upstream("http://127.0.0.1:9");
        c.prefix.context_path = Some("/kestra/".to_owned());
        let err = crate::Gateway::bind(c).await.unwrap_err();
        assert!(matches!(err, crate::GatewayError::Config(_)), "{err}");
        assert!(err.to_string().contains("must not end with '/'"), "{err}");
    }
}
