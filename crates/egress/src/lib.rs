//! An authenticating forward proxy for Kestra's outbound API calls.
//!
//! Kestra fetches blueprints and plugin documentation from `https://api.kestra.io` through an
//! optional forward proxy (`micronaut.http.services.api.proxy-type: http`, `proxy-address`,
//! `proxy-username`/`proxy-password`). [`Egress`] is that proxy, as a Tower service served on
//! its own listener (kestra-edge's `Server`, which takes HTTP/1.1 upgrades, so `CONNECT`
//! works):
//!
//! - `CONNECT host:port` (RFC 9110 §9.3.6) opens a tunnel: the destination is dialled first
//!   (so a refusal is a `502`, not a dropped connection), then the client gets `200` and
//!   bytes are copied both ways with the upgrade crate's tunnel limits (idle timeout,
//!   optional lifetime, closed at shutdown, counted in [`Tunnels`](kestra_edge_upgrade::Tunnels));
//! - absolute-form `GET http://host/path` (RFC 9112 §3.2.2) is forwarded as origin-form on a
//!   fresh connection, bodies streamed both ways, hop-by-hop fields removed both ways by
//!   `kestra_edge_headers::remove_hop_by_hop` (which drops `Proxy-Authorization`), `Host`
//!   set from the target;
//! - with a credentials file ([`ProxyCredentials`]: `user:password` lines, read again when the
//!   file changes), a request without a listed user's `Proxy-Authorization: Basic …` gets
//!   `407` with `Proxy-Authenticate: Basic realm="kestra-edge"`; compared as SHA-256
//!   digests in constant time, never logged;
//! - only destinations matching an allow pattern (`host`, `host:port`, `*.domain`,
//!   case-insensitive, on the requested name) are reached; nothing is allowed by default;
//!   anything else is `403` and no connection is made;
//! - after resolution, loopback, private, link-local (cloud metadata 169.254.169.254),
//!   unique-local (fd00:ec2::254), CGNAT and other internal addresses ([`is_internal`]) are
//!   dropped, and `403` when none is left, unless [`EgressBuilder::allow_private`]; only the
//!   addresses that were checked are dialled, so a name that answers differently the second
//!   time (DNS rebinding) cannot slip through. The resolver is a trait ([`Resolve`]) so tests
//!   inject their own;
//! - `502` for a destination that cannot be resolved or refuses, `504` when resolution and
//!   connect exceed the connect timeout, `503` beyond the tunnel cap, `400` for a malformed
//!   request-target (origin-form, `https://` absolute-form, userinfo, a `CONNECT` without port);
//! - a forwarded exchange ends after the idle timeout without a byte either way: `504` when
//!   the destination has not answered by then, an aborted transfer when its body stalls
//!   ([`BodyError::Idle`]); an upload that keeps moving is never cut;
//! - every request counts one [`Outcome`] in [`EgressStats`] (relaxed atomics, no lock), and
//!   open tunnels are counted while they run: [`Egress::stats`] for a metrics exporter.
//!
//! ```no_run
//! use kestra_edge_egress::Egress;
//! use kestra_edge_server::Server;
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let egress = Egress::builder()
//!     .allow("api.kestra.io")
//!     .allow("*.githubusercontent.com")
//!     .credentials_file("/etc/kestra-edge/egress-users")
//!     .idle_timeout(Duration::from_secs(600))
//!     .build()?;
//! let server = Server::bind("0.0.0.0:3128".parse()?).await?;
//! server.serve(egress, std::future::pending::<()>()).await?;
//! # Ok(())
//! # }
//! ```

mod allow;
mod body;
mod credentials;
mod guard;
mod idle;
mod resolve;
mod service;
mod stats;
mod target;

pub use allow::{AllowList, PatternError};
pub use body::{BodyError, EgressBody};
pub use credentials::{CredentialsError, ProxyCredentials};
pub use guard::is_internal;
pub use resolve::{Resolve, Resolving, SystemResolver};
pub use service::{
    Egress, EgressBuilder, EgressError, ResponseFuture, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_TUNNELS,
};
pub use stats::{EgressSnapshot, EgressStats, Outcome};
