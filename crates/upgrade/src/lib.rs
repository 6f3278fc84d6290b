//! Tunnel WebSocket (and other allowed upgrades) through the proxy transparently, and close
//! the known holes.
//!
//! The seed nginx block passes `Upgrade $http_upgrade` and `Connection "upgrade"` for every
//! request. [`UpgradeLayer`] instead:
//!
//! - forwards an HTTP/1.1 request with `Connection: upgrade` and an allowed `Upgrade` token
//!   (`websocket` by default) with only `Connection: upgrade` and that token put back after
//!   hop-by-hop removal; `Sec-WebSocket-*` pass untouched;
//! - never forwards `h2c` (nor any token not allowed): `Upgrade` and `HTTP2-Settings` are
//!   dropped and the request is served as ordinary HTTP/1.1, closing h2c smuggling;
//! - answers 400 to a WebSocket upgrade that is not a GET with `Sec-WebSocket-Version: 13`
//!   and a valid `Sec-WebSocket-Key`;
//! - relays any upstream answer but 101 as an ordinary response, with no tunnel;
//! - checks a 101: its `Upgrade` must name the requested protocol and, for WebSocket,
//!   `Sec-WebSocket-Accept` must be base64(SHA-1(key + RFC 6455 GUID)); else 502 and nothing
//!   is tunnelled. Then the client gets its 101 with the upstream's accept, subprotocol and
//!   extensions, and bytes are copied both ways with no reframing;
//! - limits tunnels: an idle timeout (default 600 s), an optional lifetime, FIN passed on
//!   while the other direction drains, errors close both sides; [`Tunnels`] counts them and
//!   closes the rest at the end of a graceful shutdown; a [`TunnelGuard`] in the upstream's
//!   `101` extensions is kept until its tunnel ends (a balancer counts the tunnel as load so),
//!   and an [`ObserveTunnel`] in the request's extensions is told how the tunnel ended (bytes
//!   each way, duration: an access log's line);
//! - accepts RFC 8441 extended CONNECT (`:protocol websocket`) from HTTP/2 clients and turns
//!   it into an HTTP/1.1 WebSocket upgrade toward the upstream (serve with
//!   `enable_connect_protocol`, as kestra-edge's server does).
//!
//! The layer must run before any layer that removes hop-by-hop fields (kestra-edge's
//! facade puts it outermost).

mod handshake;
mod service;
mod tunnel;

pub use service::{ResponseFuture, Upgrade, UpgradeLayer, DEFAULT_TUNNEL_IDLE_TIMEOUT};
pub use tunnel::{ObserveTunnel, TunnelEnd, TunnelGuard, TunnelObserver, Tunnels};
