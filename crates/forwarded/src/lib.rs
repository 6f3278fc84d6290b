//! Tell the upstream who the client is, over what scheme and host, in a way nobody outside
//! the trusted set can forge.
//!
//! Kestra's framework (Micronaut) takes the **leftmost** address of `Forwarded` /
//! `X-Forwarded-For` as the client, and the seed nginx block appends to whatever the client
//! sent (`$proxy_add_x_forwarded_for`): any client can choose the IP Kestra logs.
//! [`ForwardedLayer`] fixes that:
//!
//! - The peer is the TCP peer: the [`PeerAddr`](kestra_edge_server::PeerAddr) extension that
//!   kestra-edge's server inserts, or axum's `ConnectInfo<SocketAddr>` (serve with
//!   `into_make_service_with_connect_info::<SocketAddr>()`).
//! - **Untrusted peer** (the default: no proxy is trusted): every incoming `Forwarded`,
//!   `X-Forwarded-{For,Host,Proto,Protocol,Port,Prefix}` and `X-Real-IP` is removed and
//!   replaced by the gateway's own values; the client is the peer.
//! - **Trusted peer** (in a configured CIDR): `X-Forwarded-For` (every line, in order;
//!   `Forwarded`'s `for=` when there is none) is walked from the right, skipping trusted
//!   addresses; the client is the first untrusted one (nginx's `real_ip_recursive on`).
//!   Invalid items are skipped; ports and IPv6 zones are dropped; with nothing valid, the
//!   client is the peer. The hop's scheme, host and port are kept.
//! - Sent upstream (each can be switched off with [`ForwardedHeaders`]): `X-Real-IP`,
//!   `X-Forwarded-For` (client, trusted hops, peer), `X-Forwarded-Proto` and the seed's
//!   `X-Forwarded-Protocol`, `X-Forwarded-Host`, `X-Forwarded-Port`, and `Forwarded`
//!   (RFC 7239, `for="[2001:db8::1]"` for IPv6).
//! - The scheme is `https` on a connection that carries
//!   [`TlsConnection`](kestra_edge_server::TlsConnection) (kestra-edge's TLS acceptor), else
//!   the configured listener scheme (`http` by default). Kestra marks its cookies `Secure`
//!   and sends HSTS from it.
//! - `X-Forwarded-Port` is the port the client addressed: the one in its `Host` when there
//!   is one (so it always agrees with `X-Forwarded-Host` and `Forwarded: host=`), else a
//!   trusted hop's, else 443 for `https` and 80 for `http`, as Traefik does. It is never the
//!   port the gateway listens on: behind Docker's `-p 8080:8000` that would be wrong.
//! - Hop-by-hop fields are removed before anything is added, so `Connection:
//!   X-Forwarded-For` cannot remove the gateway's own headers; header names with
//!   underscores are dropped.
//! - `Host`: missing on HTTP/1.1, repeated, or invalid → 400; an absolute-form target's
//!   authority replaces it (RFC 9112 §3.2.2).
//!
//! ```
//! use kestra_edge_forwarded::ForwardedLayer;
//! use kestra_edge_server::PeerAddr;
//! use tower::{service_fn, Layer, ServiceExt};
//! use http::{Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = ForwardedLayer::builder().trusted_proxy("10.0.0.0/8").build()?;
//! let upstream = service_fn(|req: Request<()>| async move {
//!     assert_eq!(req.headers()["x-real-ip"], "203.0.113.7");
//!     assert_eq!(req.headers()["x-forwarded-for"], "203.0.113.7, 10.0.0.2, 10.0.0.1");
//!     Ok::<_, std::convert::Infallible>(Response::new(Full::<Bytes>::default()))
//! });
//! let mut request = Request::get("/kestra/ping")
//!     .header("host", "kestra.example.com")
//!     .header("x-forwarded-for", "198.51.100.66, 203.0.113.7, 10.0.0.2")
//!     .body(())?;
//! request.extensions_mut().insert(PeerAddr("10.0.0.1:4711".parse()?));
//! layer.layer(upstream).oneshot(request).await?;
//! # Ok(())
//! # }
//! ```

mod rfc7239;
mod service;

pub use rfc7239::{parse_node, ForwardedElement};
pub use service::{
    client_addr, ClientAddr, Forwarded, ForwardedError, ForwardedHeaders, ForwardedLayer,
    ForwardedLayerBuilder, ResponseFuture, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PORT,
    X_FORWARDED_PREFIX, X_FORWARDED_PROTO, X_FORWARDED_PROTOCOL, X_REAL_IP, X_REQUEST_ID,
};
