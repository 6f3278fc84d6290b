//! Single sign-on: forward authentication in front of Kestra, and Kestra's own credentials
//! presented upstream (see `kestra_edge::auth`).

use super::{humantime_serde_opt, parse_duration};
use kestra_edge::auth::{ForwardAuthError, ForwardAuthLayer, DEFAULT_TIMEOUT};
use serde::Deserialize;
use std::{path::PathBuf, time::Duration};

/// Kestra's machine endpoints, under the context path: what `--auth-bypass` defaults to.
const KESTRA_MACHINE_ENDPOINTS: [&str; 3] = [
    "/ping",
    "/api/v1/executions/webhook/",
    "/api/v1/{tenant}/executions/webhook/",
];

/// Flags of forward authentication.
#[derive(Debug, Default, clap::Args)]
pub struct AuthArgs {
    /// Ask this auth service (oauth2-proxy, Authelia, Authentik; http or https) before forwarding a
    /// request: a bodiless GET with the client's Cookie, Authorization and X-Forwarded-*;
    /// 2xx forwards, any other answer goes back to the client [default: off].
    #[arg(long, env = "KESTRA_EDGE_FORWARD_AUTH", value_name = "URL")]
    pub forward_auth: Option<String>,
    /// A PEM file of CA certificates trusted for an https auth service besides the system's;
    /// repeatable.
    #[arg(
        long = "forward-auth-ca",
        env = "KESTRA_EDGE_FORWARD_AUTH_CA",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub forward_auth_ca: Vec<PathBuf>,
    /// Longest wait for the auth service, connecting included; then 503 [default: 5s].
    #[arg(long, env = "KESTRA_EDGE_FORWARD_AUTH_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub forward_auth_timeout: Option<Duration>,
    /// A header of the auth service's 2xx answer copied onto the request to Kestra (the
    /// client's own is always removed); repeatable.
    #[arg(
        long = "auth-response-header",
        env = "KESTRA_EDGE_AUTH_RESPONSE_HEADERS",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub auth_response_headers: Vec<String>,
    /// A path that skips forward auth, on whole segments; `{name}` is any one segment;
    /// repeatable; `none` for no path [default: {ctx}/ping, {ctx}/api/v1/executions/webhook/,
    /// {ctx}/api/v1/{tenant}/executions/webhook/].
    #[arg(
        long = "auth-bypass",
        env = "KESTRA_EDGE_AUTH_BYPASS",
        value_name = "PATH",
        value_delimiter = ','
    )]
    pub auth_bypass: Vec<String>,
    /// Cache the auth service's allow decisions this long, by Cookie and Authorization;
    /// denials are never cached [default: off].
    #[arg(long, env = "KESTRA_EDGE_FORWARD_AUTH_CACHE", value_name = "DURATION", value_parser = parse_duration)]
    pub forward_auth_cache: Option<Duration>,
    /// A file holding Kestra's `user:password`, presented to Kestra on every authenticated
    /// request (Authorization and the BASIC_AUTH cookie); read again when it changes.
    #[arg(long, env = "KESTRA_EDGE_KESTRA_CREDENTIALS_FILE", value_name = "PATH")]
    pub kestra_credentials_file: Option<PathBuf>,
}

/// The forward-auth keys in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) struct AuthFile {
    forward_auth: Option<String>,
    forward_auth_ca: Option<Vec<PathBuf>>,
    #[serde(default, with = "humantime_serde_opt")]
    forward_auth_timeout: Option<Duration>,
    auth_response_headers: Option<Vec<String>>,
    auth_bypass: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde_opt")]
    forward_auth_cache: Option<Duration>,
    kestra_credentials_file: Option<PathBuf>,
}

/// The forward-auth resolved settings.
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// See `--forward-auth`.
    pub url: Option<String>,
    /// See `--forward-auth-ca`.
    pub ca: Vec<PathBuf>,
    /// See `--forward-auth-timeout`.
    pub timeout: Option<Duration>,
    /// See `--auth-response-header`.
    pub response_headers: Vec<String>,
    /// See `--auth-bypass` (`None`: Kestra's machine endpoints).
    pub bypass: Option<Vec<String>>,
    /// See `--forward-auth-cache` (zero: off).
    pub cache: Option<Duration>,
    /// See `--kestra-credentials-file`.
    pub credentials_file: Option<PathBuf>,
}

impl AuthConfig {
    pub(super) fn resolve(args: AuthArgs, file: AuthFile) -> Self {
        Self {
            url: args.forward_auth.or(file.forward_auth),
            ca: Some(args.forward_auth_ca)
                .filter(|v| !v.is_empty())
                .or(file.forward_auth_ca)
                .unwrap_or_default(),
            timeout: args.forward_auth_timeout.or(file.forward_auth_timeout),
            response_headers: Some(args.auth_response_headers)
                .filter(|v| !v.is_empty())
                .or(file.auth_response_headers)
                .unwrap_or_default(),
            bypass: Some(args.auth_bypass)
                .filter(|v| !v.is_empty())
                .or(file.auth_bypass),
            cache: args.forward_auth_cache.or(file.forward_auth_cache),
            credentials_file: args
                .kestra_credentials_file
                .or(file.kestra_credentials_file),
        }
    }

    /// The bypass paths: the configured ones, or Kestra's machine endpoints under
    /// `context_path`; `none` alone means no path.
    pub fn bypass_paths(&self, context_path: Option<&str>) -> Vec<String> {
        match &self.bypass {
            Some(paths) if paths.iter().all(|p| p.trim() == "none") => Vec::new(),
            Some(paths) => paths.iter().map(|p| p.trim().to_owned()).collect(),
            None => {
                let ctx = context_path.unwrap_or("").trim_end_matches('/');
                KESTRA_MACHINE_ENDPOINTS
                    .iter()
                    .map(|path| format!("{ctx}{path}"))
                    .collect()
            }
        }
    }

    /// The layer (disabled when neither `--forward-auth` nor `--kestra-credentials-file` is
    /// given); reads the credentials file and starts watching it.
    pub fn layer(&self, context_path: Option<&str>) -> Result<ForwardAuthLayer, ForwardAuthError> {
        let mut builder = ForwardAuthLayer::builder()
            .timeout(self.timeout.unwrap_or(DEFAULT_TIMEOUT))
            .cache(self.cache);
        if let Some(url) = &self.url {
            builder = builder.url(url.clone());
            for path in self.bypass_paths(context_path) {
                builder = builder.bypass(path);
            }
        }
        for ca in &self.ca {
            builder = builder.auth_ca(ca.clone());
        }
        for name in &self.response_headers {
            builder = builder.auth_response_header(name.clone());
        }
        if let Some(file) = &self.credentials_file {
            builder = builder.kestra_credentials_file(file.clone());
        }
        builder.build()
    }
}
