//! The streaming reverse-proxy service at the heart of kestra-edge.
//!
//! [`ReverseProxy`] is a tower [`Service`](tower::Service) that forwards every request to one
//! upstream (`http://host:port` or `https://host:port`, Kestra's webserver) over a pooled
//! keep-alive client, and streams the answer back. It is the counterpart of the seed nginx
//! block's `proxy_pass`, `proxy_http_version 1.1`, `proxy_set_header Host $http_host`,
//! `proxy_read_timeout` and `proxy_buffering off`: bodies are never buffered whole, in either
//! direction.
//!
//! An `https://` upstream is reached with rustls (ring): SNI and certificate name are the
//! upstream's host, ALPN offers `http/1.1` only, and the certificate must chain to the
//! operating system's trust store or to an [`upstream_ca`](ReverseProxyBuilder::upstream_ca)
//! file (a cluster's private CA), like nginx's `proxy_ssl_verify on` with
//! `proxy_ssl_server_name on`. The system store rather than a compiled-in Mozilla list:
//! operators update it without a rebuild, and corporate CAs live there. Everything is loaded
//! once, by `build`; an `http://` upstream loads nothing and keeps a plain TCP connector.
//!
//! Two clients carry the requests, behind the same [`Service`](tower::Service):
//!
//! | request | client |
//! |---|---|
//! | no body (GET, HEAD, DELETE, OPTIONS, `Content-Length: 0`), `http://` upstream, no upgrade | the own HTTP/1.1 path ([`h1`]): `httparse`, strict RFC 9112 framing, a per-thread pool, driven inline by the client connection's task |
//! | a request body, an upgrade (WebSocket), or an `https://` upstream | hyper-util's pooled client over hyper's HTTP/1.1 |
//!
//! The first is the hot path (the UI's API polls, pages, event streams): it costs no
//! connection task, channel or oneshot per request, and an idle event stream holds no read
//! buffer. Both give the same answers to the same failures (the table below); the own codec
//! is fuzzed (`fuzz/fuzz_targets/h1_response.rs`) and tested against hyper on the same bytes
//! (`tests/differential.rs`).
//!
//! ```no_run
//! use kestra_edge_proxy::ReverseProxyBuilder;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let proxy = ReverseProxyBuilder::new("https://kestra.internal:8443")
//!     .upstream_ca("/etc/kestra-edge/cluster-ca.pem")
//!     .build::<hyper::body::Incoming>()?;
//! # let _ = proxy;
//! # Ok(())
//! # }
//! ```
//!
//! ```no_run
//! use kestra_edge_proxy::ReverseProxyBuilder;
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let proxy = ReverseProxyBuilder::new("http://127.0.0.1:8080")
//!     .connect_timeout(Duration::from_secs(10))
//!     .read_timeout(Duration::from_secs(600))
//!     .build::<hyper::body::Incoming>()?;
//! # let _ = proxy;
//! # Ok(())
//! # }
//! ```
//!
//! | failure | answer |
//! |---|---|
//! | upstream refused or unreachable | 502 `upstream unavailable` |
//! | connect (for https: TCP and TLS handshake) took longer than `connect_timeout` | 504 `upstream connect timed out` |
//! | upstream certificate rejected (unknown issuer, wrong name, expired, …) or TLS handshake failed | 502 `upstream TLS failed` |
//! | no response head within `read_timeout` of the last request byte | 504 `upstream response timed out` |
//! | upstream closed or sent no valid HTTP | 502 `upstream connection failed` |
//! | the client's request body failed | 400 `request body failed` |
//! | `Content-Length` over `max_body` (nothing is sent upstream) | 413 `request body too large` |
//! | a streamed body passes `max_body` (the upstream request is aborted) | 413, then the connection closes |
//! | request target longer than `max_uri` | 414 `request target too long` |
//! | the client sends nothing of its body for `body_timeout` (the upstream request is aborted) | 408 `request body timed out` |
//! | upstream silent for `read_timeout` mid-body, or died mid-body | the client's transfer is aborted |

mod body;
mod error;
mod future;
pub mod h1;
mod service;
mod tls;

pub use body::{BodyTimeout, BodyTooLarge, ProxyBody, RequestBody};
pub use error::{BodyError, ProxyError, UpstreamFailure, UpstreamTlsError, UpstreamTlsReason};
pub use future::{EventStreamReadTimeout, ResponseFuture};
pub use kestra_edge_headers::ServedBy;
pub use service::{
    BuildError, ReverseProxy, ReverseProxyBuilder, UpgradeProtocol, DEFAULT_BODY_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_BODY, DEFAULT_MAX_URI, DEFAULT_POOL_IDLE_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
};
