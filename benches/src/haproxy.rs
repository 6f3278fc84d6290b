//! HAProxy in front of the same upstream: HTTP mode, keep-alive on both sides with idle
//! upstream connections shared between clients (`http-reuse always`), nothing logged.

use crate::targets::{BoxError, ConfigDir, Sizing, Stop, Target};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

/// The name of its rows.
pub(crate) const NAME: &str = "haproxy";

/// Starts `haproxy` (in the foreground, `-db`) in front of `upstream` and waits until it
/// accepts.
pub(crate) fn start(
    haproxy: &Path,
    upstream: SocketAddr,
    sizing: Sizing,
) -> Result<Target, BoxError> {
    let server = ConfigDir::new(NAME)?;
    let config = server.write("haproxy.cfg", &render(server.port, upstream, sizing))?;
    let mut command = Command::new(haproxy);
    command.arg("-db").arg("-f").arg(config);
    server.start(command, Stop::Kill)
}

/// `haproxy.cfg`. Client and server timeouts of an hour so that no SSE stream is cut during
/// a run; `option http-keep-alive` (HAProxy's default mode, never `http-server-close`) keeps
/// upstream connections open between requests; `option http-no-delay` sends each SSE event
/// as it arrives.
fn render(port: u16, upstream: SocketAddr, sizing: Sizing) -> String {
    let threads = sizing.threads;
    // HAProxy refuses to start when `maxconn` needs more descriptors than it may open: each
    // proxied connection takes two.
    let maxconn = (sizing.open_files.saturating_sub(64) / 2).min(100_000);
    format!(
        "global
    nbthread {threads}
    maxconn {maxconn}
    # No `log` line: nothing is logged.

defaults
    mode http
    option http-keep-alive
    http-reuse always
    # Without it HAProxy holds small writes back for more (MSG_MORE): SSE events arrive
    # 100–200 ms late.
    option http-no-delay
    maxconn {maxconn}
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout http-request 10s
    timeout http-keep-alive 1h

frontend edge
    bind 127.0.0.1:{port}
    # The forwarded headers that nginx's block sets too.
    option forwardfor
    http-request set-header X-Forwarded-Proto http
    default_backend kestra

backend kestra
    server kestra {upstream}
"
    )
}

/// `haproxy` on the PATH (or in `/usr/sbin`), if any.
pub(crate) fn find() -> Option<PathBuf> {
    crate::targets::find_program("haproxy")
}

/// `2.6.12-1+deb12u4` from `HAProxy version 2.6.12-1+deb12u4 2026/10/17 - …`.
pub(crate) fn version(haproxy: &Path) -> String {
    let line = crate::targets::first_output_line(haproxy, &["-v"]);
    line.split_whitespace()
        .nth(2)
        .map_or(line.clone(), str::to_owned)
}
