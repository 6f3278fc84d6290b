//! Several Kestra replicas: health checks, retries, DNS refresh, cookie affinity.

use super::{humantime_serde_opt, parse_duration};
use kestra_edge::balance::{self, Resolve};
use serde::Deserialize;
use std::{fmt, path::PathBuf, sync::Arc, time::Duration};

/// How a browser session sticks to a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AffinityMode {
    /// None: every request is balanced.
    #[default]
    None,
    /// A cookie naming the replica (opaquely) keeps a browser on it while it is healthy.
    Cookie,
}

/// Flags of balancing over several replicas.
#[derive(Debug, Default, clap::Args)]
pub struct BalanceArgs {
    /// Probe each replica with GET PATH (Kestra: /health/readiness); only 2xx is healthy
    /// [default: no active check].
    #[arg(long, env = "KESTRA_EDGE_HEALTH_PATH", value_name = "PATH")]
    pub health_path: Option<String>,
    /// The port probed (Kestra's management port, 8081) [default: the upstream's].
    #[arg(long, env = "KESTRA_EDGE_HEALTH_PORT", value_name = "PORT")]
    pub health_port: Option<u16>,
    /// Time between two probes of a replica [default: 5s].
    #[arg(long, env = "KESTRA_EDGE_HEALTH_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    pub health_interval: Option<Duration>,
    /// Longest wait for a probe's answer [default: 2s].
    #[arg(long, env = "KESTRA_EDGE_HEALTH_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub health_timeout: Option<Duration>,
    /// Consecutive failed probes that take a replica out [default: 2].
    #[arg(long, env = "KESTRA_EDGE_HEALTH_FAILS", value_name = "N")]
    pub health_fails: Option<u32>,
    /// Consecutive passed probes that bring it back [default: 2].
    #[arg(long, env = "KESTRA_EDGE_HEALTH_PASSES", value_name = "N")]
    pub health_passes: Option<u32>,
    /// How many times a request may go to another replica [default: 1].
    #[arg(long, env = "KESTRA_EDGE_RETRIES", value_name = "N")]
    pub retries: Option<u32>,
    /// Resolve upstream host names again this often [default: 30s].
    #[arg(long, env = "KESTRA_EDGE_DNS_REFRESH", value_name = "DURATION", value_parser = parse_duration)]
    pub dns_refresh: Option<Duration>,
    /// Keep a browser on one replica [default: none].
    #[arg(long, env = "KESTRA_EDGE_AFFINITY", value_name = "MODE")]
    pub affinity: Option<AffinityMode>,
    /// The affinity cookie's name [default: kestra_edge_replica].
    #[arg(long, env = "KESTRA_EDGE_AFFINITY_COOKIE", value_name = "NAME")]
    pub affinity_cookie: Option<String>,
    /// A file whose contents key the affinity id (the same on every kestra-edge instance)
    /// [default: a fixed key].
    #[arg(long, env = "KESTRA_EDGE_AFFINITY_KEY_FILE", value_name = "PATH")]
    pub affinity_key_file: Option<PathBuf>,
}

/// Balancing's keys in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) struct BalanceFile {
    health_path: Option<String>,
    health_port: Option<u16>,
    #[serde(default, with = "humantime_serde_opt")]
    health_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    health_timeout: Option<Duration>,
    health_fails: Option<u32>,
    health_passes: Option<u32>,
    retries: Option<u32>,
    #[serde(default, with = "humantime_serde_opt")]
    dns_refresh: Option<Duration>,
    affinity: Option<AffinityMode>,
    affinity_cookie: Option<String>,
    affinity_key_file: Option<PathBuf>,
}

/// A resolver a test (or an embedding program) injects instead of the system's.
#[derive(Clone)]
pub struct Resolver(pub Arc<dyn Resolve>);

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolver")
    }
}

/// Balancing's resolved settings.
#[derive(Debug, Clone)]
pub struct BalanceConfig {
    /// See `--health-path`.
    pub health_path: Option<String>,
    /// See `--health-port`.
    pub health_port: Option<u16>,
    /// See `--health-interval`.
    pub health_interval: Duration,
    /// See `--health-timeout`.
    pub health_timeout: Duration,
    /// See `--health-fails`.
    pub health_fails: u32,
    /// See `--health-passes`.
    pub health_passes: u32,
    /// See `--retries`.
    pub retries: u32,
    /// See `--dns-refresh`; `None` when not given (the default applies).
    pub dns_refresh: Option<Duration>,
    /// See `--affinity`.
    pub affinity: AffinityMode,
    /// See `--affinity-cookie`.
    pub affinity_cookie: String,
    /// See `--affinity-key-file`.
    pub affinity_key_file: Option<PathBuf>,
    /// Not a flag: the host-name resolver (default: the system's).
    pub resolver: Option<Resolver>,
}

impl BalanceConfig {
    pub(super) fn resolve(args: BalanceArgs, file: BalanceFile) -> Self {
        Self {
            health_path: args.health_path.or(file.health_path),
            health_port: args.health_port.or(file.health_port),
            health_interval: args
                .health_interval
                .or(file.health_interval)
                .unwrap_or(balance::DEFAULT_HEALTH_INTERVAL),
            health_timeout: args
                .health_timeout
                .or(file.health_timeout)
                .unwrap_or(balance::DEFAULT_HEALTH_TIMEOUT),
            health_fails: args
                .health_fails
                .or(file.health_fails)
                .unwrap_or(balance::DEFAULT_HEALTH_THRESHOLD),
            health_passes: args
                .health_passes
                .or(file.health_passes)
                .unwrap_or(balance::DEFAULT_HEALTH_THRESHOLD),
            retries: args
                .retries
                .or(file.retries)
                .unwrap_or(balance::DEFAULT_RETRIES),
            dns_refresh: args.dns_refresh.or(file.dns_refresh),
            affinity: args.affinity.or(file.affinity).unwrap_or_default(),
            affinity_cookie: args
                .affinity_cookie
                .or(file.affinity_cookie)
                .unwrap_or_else(|| balance::DEFAULT_AFFINITY_COOKIE.to_owned()),
            affinity_key_file: args.affinity_key_file.or(file.affinity_key_file),
            resolver: None,
        }
    }

    /// Whether a balancing setting was given: then even one upstream name is balanced (one
    /// replica per address it resolves to).
    pub fn is_set(&self) -> bool {
        self.health_path.is_some()
            || self.dns_refresh.is_some()
            || self.affinity == AffinityMode::Cookie
            || self.resolver.is_some()
    }

    /// The balancer's settings.
    pub fn apply(&self, mut builder: balance::BalanceBuilder) -> balance::BalanceBuilder {
        if let Some(path) = &self.health_path {
            let mut check = balance::HealthCheck::new(path.clone());
            check.port = self.health_port;
            check.interval = self.health_interval;
            check.timeout = self.health_timeout;
            check.fails = self.health_fails;
            check.passes = self.health_passes;
            builder = builder.health_check(check);
        }
        if let Some(every) = self.dns_refresh {
            builder = builder.dns_refresh(every);
        }
        if let Some(Resolver(resolver)) = &self.resolver {
            builder = builder.resolver(resolver.clone());
        }
        let affinity = (self.affinity == AffinityMode::Cookie).then(|| balance::Affinity {
            cookie: self.affinity_cookie.clone(),
            key_file: self.affinity_key_file.clone(),
            ..balance::Affinity::default()
        });
        builder.retries(self.retries).affinity(affinity)
    }
}
