//! TLS on the main listener, and the plain-HTTP listener that redirects to it.

use super::ConfigError;
use serde::Deserialize;
use std::{net::SocketAddr, path::PathBuf};

/// Flags of TLS.
#[derive(Debug, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain (leaf first) for HTTPS on --listen, with --tls-key; reloaded
    /// on SIGHUP and when the file changes.
    #[arg(long, env = "KESTRA_EDGE_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "KESTRA_EDGE_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS with a certificate for localhost generated at start-up (prints its
    /// SHA-256 fingerprint); for trying it out.
    #[arg(long, env = "KESTRA_EDGE_TLS_SELF_SIGNED")]
    pub tls_self_signed: bool,
    /// A second, plain-HTTP listener that answers every request with 308 to the HTTPS
    /// listener (needs TLS).
    #[arg(long, env = "KESTRA_EDGE_REDIRECT_HTTP", value_name = "ADDR")]
    pub redirect_http: Option<SocketAddr>,
}

/// TLS's keys in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) struct TlsFile {
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_self_signed: Option<bool>,
    redirect_http: Option<SocketAddr>,
}

/// Where the main listener's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// PEM files, reloaded when they change.
    Files {
        /// The chain.
        cert: PathBuf,
        /// Its key.
        key: PathBuf,
    },
    /// Generated for localhost at start-up.
    SelfSigned,
}

/// TLS's resolved settings.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// See `--tls-cert` and `--tls-key`.
    pub cert_file: Option<PathBuf>,
    /// See `--tls-key`.
    pub key_file: Option<PathBuf>,
    /// See `--tls-self-signed`.
    pub self_signed: bool,
    /// See `--redirect-http`.
    pub redirect_http: Option<SocketAddr>,
}

impl TlsConfig {
    pub(super) fn resolve(args: TlsArgs, file: TlsFile) -> Self {
        Self {
            cert_file: args.tls_cert.or(file.tls_cert),
            key_file: args.tls_key.or(file.tls_key),
            self_signed: args.tls_self_signed || file.tls_self_signed.unwrap_or(false),
            redirect_http: args.redirect_http.or(file.redirect_http),
        }
    }

    /// The certificate source, `None` for plain HTTP; refuses half or double settings.
    pub fn source(&self) -> Result<Option<CertSource>, ConfigError> {
        let source = match (&self.cert_file, &self.key_file, self.self_signed) {
            (Some(cert), Some(key), false) => Some(CertSource::Files {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None, true) => Some(CertSource::SelfSigned),
            (None, None, false) => None,
            (_, _, true) => {
                return Err(ConfigError::Conflict(
                    "--tls-self-signed cannot be combined with --tls-cert/--tls-key",
                ))
            }
            (Some(_), None, false) => {
                return Err(ConfigError::Conflict("--tls-cert needs --tls-key"))
            }
            (None, Some(_), false) => {
                return Err(ConfigError::Conflict("--tls-key needs --tls-cert"))
            }
        };
        if source.is_none() && self.redirect_http.is_some() {
            return Err(ConfigError::Conflict(
                "--redirect-http needs TLS (--tls-cert and --tls-key, or --tls-self-signed)",
            ));
        }
        Ok(source)
    }
}
