//! Caddy in front of the same upstream: `reverse_proxy` over plain HTTP, responses flushed
//! as they arrive (SSE), no access log.

use crate::targets::{BoxError, ConfigDir, Sizing, Stop, Target};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

/// The name of its rows.
pub(crate) const NAME: &str = "caddy";

/// Starts `caddy run` in front of `upstream` with `GOMAXPROCS` = `sizing.threads` and waits
/// until it accepts.
pub(crate) fn start(
    caddy: &Path,
    upstream: SocketAddr,
    sizing: Sizing,
) -> Result<Target, BoxError> {
    let server = ConfigDir::new(NAME)?;
    let config = server.write("Caddyfile", &render(server.port, upstream))?;
    let mut command = Command::new(caddy);
    command
        .arg("run")
        .arg("--config")
        .arg(config)
        .arg("--adapter")
        .arg("caddyfile")
        .env("GOMAXPROCS", sizing.threads.to_string())
        // Caddy keeps state under the home and XDG directories: keep it in ours.
        .env("HOME", &server.dir)
        .env("XDG_DATA_HOME", &server.dir)
        .env("XDG_CONFIG_HOME", &server.dir);
    server.start(command, Stop::Kill)
}

/// The `Caddyfile`: no admin endpoint, no automatic HTTPS, errors only in its own log (Caddy
/// writes no access log unless told to). Up to 256 idle upstream connections are kept, like
/// `nginx-keepalive`'s `keepalive 256` (Caddy's default keeps 32).
fn render(port: u16, upstream: SocketAddr) -> String {
    format!(
        "{{
	admin off
	auto_https off
	log {{
		level ERROR
	}}
}}

http://:{port} {{
	bind 127.0.0.1
	reverse_proxy {upstream} {{
		flush_interval -1
		transport http {{
			keepalive_idle_conns_per_host 256
		}}
	}}
}}
"
    )
}

/// `caddy` on the PATH (or in `/usr/sbin`), if any.
pub(crate) fn find() -> Option<PathBuf> {
    crate::targets::find_program("caddy")
}

/// `caddy version`'s first word (`2.6.2`).
pub(crate) fn version(caddy: &Path) -> String {
    let line = crate::targets::first_output_line(caddy, &["version"]);
    line.split_whitespace()
        .next()
        .map_or(line.clone(), str::to_owned)
}
