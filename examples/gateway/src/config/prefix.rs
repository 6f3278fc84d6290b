//! The context path Kestra is served under.

use kestra_edge::PrefixMode;
use serde::Deserialize;

/// Whether the context path reaches the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PrefixModeArg {
    /// Forward `/kestra/…` unchanged (Kestra runs with `micronaut.server.context-path`).
    #[default]
    Keep,
    /// Forward `/kestra/…` as `/…` and map redirects and cookie paths back.
    Strip,
}

impl From<PrefixModeArg> for PrefixMode {
    fn from(mode: PrefixModeArg) -> Self {
        match mode {
            PrefixModeArg::Keep => PrefixMode::Keep,
            PrefixModeArg::Strip => PrefixMode::Strip,
        }
    }
}

/// Flags of the context path.
#[derive(Debug, Default, clap::Args)]
pub struct PrefixArgs {
    /// Serve Kestra under this path prefix, e.g. /kestra; other paths get 404
    /// [default: none, every path is forwarded; with --demo: /kestra].
    #[arg(long, env = "KESTRA_EDGE_CONTEXT_PATH", value_name = "PATH")]
    pub context_path: Option<String>,
    /// Keep the prefix (Kestra has the same context-path) or strip it [default: keep].
    #[arg(long, env = "KESTRA_EDGE_PREFIX_MODE", value_name = "MODE")]
    pub prefix_mode: Option<PrefixModeArg>,
}

/// The context path's keys in the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(super) struct PrefixFile {
    context_path: Option<String>,
    prefix_mode: Option<PrefixModeArg>,
}

/// The context path's resolved settings.
#[derive(Debug, Clone, Default)]
pub struct PrefixConfig {
    /// See `--context-path`.
    pub context_path: Option<String>,
    /// See `--prefix-mode`.
    pub mode: PrefixModeArg,
}

impl PrefixConfig {
    pub(super) fn resolve(args: PrefixArgs, file: PrefixFile) -> Self {
        Self {
            context_path: args.context_path.or(file.context_path),
            mode: args.prefix_mode.or(file.prefix_mode).unwrap_or_default(),
        }
    }
}
