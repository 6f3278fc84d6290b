//! What the upstream is told about the client: the trusted proxies and the headers sent.

use kestra_edge::ForwardedHeaders;
use serde::Deserialize;

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

/// Flags of the forwarded headers.
#[derive(Debug, Default, clap::Args)]
pub struct ForwardedArgs {
    /// A proxy in front of the gateway whose X-Forwarded-For/Forwarded is believed, as a
    /// CIDR or an address; repeatable [default: none, the TCP peer is the client].
    #[arg(
        long = "trusted-proxy",
        env = "KESTRA_EDGE_TRUSTED_PROXIES",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<String>,
    /// A forwarded header not to send upstream; repeatable [default: send them all].
    #[arg(
        long = "forwarded-omit",
        env = "KESTRA_EDGE_FORWARDED_OMIT",
        value_name = "HEADER",
        value_delimiter = ','
    )]
    pub forwarded_omit: Vec<ForwardedHeader>,
}

/// The forwarded headers' keys in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) struct ForwardedFile {
    trusted_proxies: Option<Vec<String>>,
    forwarded_omit: Option<Vec<ForwardedHeader>>,
}

/// The forwarded headers' resolved settings.
#[derive(Debug, Clone, Default)]
pub struct ForwardedConfig {
    /// See `--trusted-proxy`.
    pub trusted_proxies: Vec<String>,
    /// See `--forwarded-omit`.
    pub omit: Vec<ForwardedHeader>,
}

impl ForwardedConfig {
    pub(super) fn resolve(args: ForwardedArgs, file: ForwardedFile) -> Self {
        Self {
            trusted_proxies: Some(args.trusted_proxies)
                .filter(|v| !v.is_empty())
                .or(file.trusted_proxies)
                .unwrap_or_default(),
            omit: Some(args.forwarded_omit)
                .filter(|v| !v.is_empty())
                .or(file.forwarded_omit)
                .unwrap_or_default(),
        }
    }

    /// Every forwarded header but those omitted.
    pub fn headers(&self) -> ForwardedHeaders {
        let on = |header| !self.omit.contains(&header);
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
}
