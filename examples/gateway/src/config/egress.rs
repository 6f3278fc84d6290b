//! The forward proxy for Kestra's outbound calls (`micronaut.http.services.api.proxy-*`),
//! on a listener of its own (see `kestra_edge::egress`).

use super::{StreamsConfig, UpstreamConfig};
use kestra_edge::egress::{Egress, EgressError, DEFAULT_MAX_TUNNELS};
use serde::Deserialize;
use std::{net::SocketAddr, path::PathBuf};

/// Flags of the egress forward proxy.
#[derive(Debug, Default, clap::Args)]
pub struct EgressArgs {
    /// Serve a forward proxy for Kestra's outbound calls here (CONNECT tunnels and
    /// absolute-form http://); alone when no --upstream is given [default: off].
    #[arg(long, env = "KESTRA_EDGE_EGRESS_LISTEN", value_name = "ADDR")]
    pub egress_listen: Option<SocketAddr>,
    /// Lines of `user:password` the forward proxy requires in Proxy-Authorization: Basic;
    /// read again when it changes [default: no authentication].
    #[arg(long, env = "KESTRA_EDGE_EGRESS_CREDENTIALS_FILE", value_name = "PATH")]
    pub egress_credentials_file: Option<PathBuf>,
    /// A destination the forward proxy may reach: host, host:port or *.domain
    /// (case-insensitive); repeatable [default: none, everything is refused].
    #[arg(
        long = "egress-allow",
        env = "KESTRA_EDGE_EGRESS_ALLOW",
        value_name = "PATTERN",
        value_delimiter = ','
    )]
    pub egress_allow: Vec<String>,
    /// Let the forward proxy reach loopback, private, link-local, unique-local, CGNAT and
    /// cloud-metadata addresses.
    #[arg(long, env = "KESTRA_EDGE_EGRESS_ALLOW_PRIVATE")]
    pub egress_allow_private: bool,
    /// Most tunnels the forward proxy keeps open at once; more get 503 [default: 1024].
    #[arg(long, env = "KESTRA_EDGE_EGRESS_MAX_TUNNELS", value_name = "N")]
    pub egress_max_tunnels: Option<usize>,
}

/// The egress keys in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) struct EgressFile {
    egress_listen: Option<SocketAddr>,
    egress_credentials_file: Option<PathBuf>,
    egress_allow: Option<Vec<String>>,
    egress_allow_private: Option<bool>,
    egress_max_tunnels: Option<usize>,
}

/// The egress resolved settings.
#[derive(Debug, Clone, Default)]
pub struct EgressConfig {
    /// See `--egress-listen` (`None`: no forward proxy).
    pub listen: Option<SocketAddr>,
    /// See `--egress-credentials-file`.
    pub credentials_file: Option<PathBuf>,
    /// See `--egress-allow`.
    pub allow: Vec<String>,
    /// See `--egress-allow-private`.
    pub allow_private: bool,
    /// See `--egress-max-tunnels`.
    pub max_tunnels: usize,
    /// The forward proxy runs alone: `--egress-listen` without any `--upstream` (flag,
    /// variable or file) and without `--demo`.
    pub alone: bool,
}

impl EgressConfig {
    pub(super) fn resolve(args: EgressArgs, file: EgressFile, upstream_given: bool) -> Self {
        let listen = args.egress_listen.or(file.egress_listen);
        Self {
            listen,
            credentials_file: args
                .egress_credentials_file
                .or(file.egress_credentials_file),
            allow: Some(args.egress_allow)
                .filter(|v| !v.is_empty())
                .or(file.egress_allow)
                .unwrap_or_default(),
            allow_private: args.egress_allow_private || file.egress_allow_private.unwrap_or(false),
            max_tunnels: args
                .egress_max_tunnels
                .or(file.egress_max_tunnels)
                .unwrap_or(DEFAULT_MAX_TUNNELS),
            alone: listen.is_some() && !upstream_given,
        }
    }

    /// The forward proxy, with the tunnel limits (`--tunnel-idle-timeout`, defaulting to
    /// the read timeout as for WebSockets, `--tunnel-max-lifetime`) and `--connect-timeout`
    /// shared with the reverse proxy; reads the credentials file and starts watching it.
    pub fn build(
        &self,
        streams: &StreamsConfig,
        upstream: &UpstreamConfig,
    ) -> Result<Egress, EgressError> {
        let mut builder = Egress::builder()
            .allow_private(self.allow_private)
            .max_tunnels(self.max_tunnels)
            .connect_timeout(upstream.connect_timeout)
            .idle_timeout(streams.tunnel_idle_timeout.unwrap_or(upstream.read_timeout))
            .max_lifetime(streams.tunnel_max_lifetime);
        for pattern in &self.allow {
            builder = builder.allow(pattern.clone());
        }
        if let Some(file) = &self.credentials_file {
            builder = builder.credentials_file(file.clone());
        }
        builder.build()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Args, GatewayConfig};
    use clap::Parser;
    use std::time::Duration;

    fn parse(args: &[&str]) -> GatewayConfig {
        let args = Args::try_parse_from(std::iter::once("kestra-edge").chain(args.iter().copied()))
            .unwrap();
        GatewayConfig::from_args(args).unwrap()
    }

    /// Flags, then the environment, then the file; each in one test so that the
    /// variables set here are never seen by another egress test.
    #[test]
    fn egress_flags_work_from_the_command_line_the_environment_and_the_file() {
        let _env = crate::config::env_lock();
        let c = parse(&[]);
        assert_eq!(c.egress.listen, None);
        assert!(c.egress.allow.is_empty());
        assert!(!c.egress.allow_private);
        assert!(!c.egress.alone);
        assert_eq!(c.egress.max_tunnels, DEFAULT_MAX_TUNNELS);

        let c = parse(&[
            "--egress-listen",
            "127.0.0.1:3128",
            "--egress-credentials-file",
            "/etc/kestra-edge/egress-users",
            "--egress-allow",
            "api.kestra.io",
            "--egress-allow",
            "*.githubusercontent.com,repo.maven.apache.org:443",
            "--egress-allow-private",
            "--egress-max-tunnels",
            "64",
        ]);
        assert_eq!(c.egress.listen, Some("127.0.0.1:3128".parse().unwrap()));
        assert_eq!(
            c.egress.credentials_file.as_deref(),
            Some(std::path::Path::new("/etc/kestra-edge/egress-users"))
        );
        assert_eq!(
            c.egress.allow,
            [
                "api.kestra.io",
                "*.githubusercontent.com",
                "repo.maven.apache.org:443"
            ]
        );
        assert!(c.egress.allow_private);
        assert_eq!(c.egress.max_tunnels, 64);
        assert!(c.egress.alone, "no --upstream: the forward proxy alone");
        let c = parse(&[
            "--egress-listen",
            "127.0.0.1:3128",
            "--upstream",
            "http://kestra:8080",
        ]);
        assert!(!c.egress.alone);
        let c = parse(&["--egress-listen", "127.0.0.1:3128", "--demo"]);
        assert!(!c.egress.alone);

        let vars = [
            ("KESTRA_EDGE_EGRESS_LISTEN", "127.0.0.1:3129"),
            ("KESTRA_EDGE_EGRESS_CREDENTIALS_FILE", "/env/users"),
            ("KESTRA_EDGE_EGRESS_ALLOW", "api.kestra.io,*.env.test"),
            ("KESTRA_EDGE_EGRESS_ALLOW_PRIVATE", "true"),
            ("KESTRA_EDGE_EGRESS_MAX_TUNNELS", "7"),
        ];
        for (name, value) in vars {
            std::env::set_var(name, value);
        }
        let from_env = Args::try_parse_from(["kestra-edge"]);
        for (name, _) in vars {
            std::env::remove_var(name);
        }
        let c = GatewayConfig::from_args(from_env.unwrap()).unwrap();
        assert_eq!(c.egress.listen, Some("127.0.0.1:3129".parse().unwrap()));
        assert_eq!(
            c.egress.credentials_file.as_deref(),
            Some(std::path::Path::new("/env/users"))
        );
        assert_eq!(c.egress.allow, ["api.kestra.io", "*.env.test"]);
        assert!(c.egress.allow_private);
        assert_eq!(c.egress.max_tunnels, 7);

        let path = std::env::temp_dir().join(format!(
            "kestra-edge-egress-config-{}.toml",
            std::process::id()
        ));
        std::fs::write(
            &path,
            r#"
                egress_listen = "0.0.0.0:3128"
                egress_credentials_file = "/f/users"
                egress_allow = ["api.kestra.io", "*.f.test"]
                egress_allow_private = true
                egress_max_tunnels = 9
                upstream = "http://kestra:8080"
            "#,
        )
        .unwrap();
        let path_arg = path.to_str().unwrap().to_owned();
        let c = parse(&["--config", &path_arg, "--egress-max-tunnels", "10"]);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(c.egress.listen, Some("0.0.0.0:3128".parse().unwrap()));
        assert_eq!(
            c.egress.credentials_file.as_deref(),
            Some(std::path::Path::new("/f/users"))
        );
        assert_eq!(c.egress.allow, ["api.kestra.io", "*.f.test"]);
        assert!(c.egress.allow_private);
        assert_eq!(c.egress.max_tunnels, 10, "the flag beats the file");
        assert!(!c.egress.alone, "the file names an upstream");
    }

    #[test]
    fn the_forward_proxy_takes_the_shared_tunnel_and_connect_limits_and_checks_its_settings() {
        let _env = crate::config::env_lock();
        let c = parse(&[
            "--egress-listen",
            "127.0.0.1:0",
            "--egress-allow",
            "api.kestra.io",
            "--tunnel-idle-timeout",
            "2m",
            "--tunnel-max-lifetime",
            "1h",
            "--connect-timeout",
            "3s",
        ]);
        assert_eq!(
            c.streams.tunnel_idle_timeout,
            Some(Duration::from_secs(120))
        );
        assert_eq!(c.upstream.connect_timeout, Duration::from_secs(3));
        assert!(c.egress.build(&c.streams, &c.upstream).is_ok());

        for args in [
            &["--egress-allow", "not a pattern"][..],
            &["--egress-max-tunnels", "0"][..],
            &[
                "--egress-credentials-file",
                "/nonexistent/kestra-edge/users",
            ][..],
        ] {
            let c = parse(args);
            assert!(c.egress.build(&c.streams, &c.upstream).is_err(), "{args:?}");
        }
    }
}
