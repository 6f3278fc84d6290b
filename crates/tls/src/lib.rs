//! TLS termination for kestra-edge: HTTPS and HTTP/2 for browsers.
//!
//! Browsers speak HTTP/2 only over TLS, and over HTTP/1.1 they open at most six connections
//! per origin. Kestra's UI keeps several Server-Sent Event streams open per tab (execution
//! follow, logs follow, notifications), so over HTTP/1.1 the seventh stream stalls; over
//! HTTP/2 they share one connection.
//!
//! - [`TlsAcceptor`] is a [`Transport`](kestra_edge_server::Transport) for
//!   `kestra-edge-server`'s [`Server`](kestra_edge_server::Server) and
//!   [`PerCoreServer`](kestra_edge_server::PerCoreServer): TLS 1.2 and 1.3 only, ALPN `h2`
//!   and `http/1.1`, each connection served by the HTTP version it negotiated (no ALPN:
//!   HTTP/1.1), plain HTTP on the TLS port answered 400 and closed, the handshake counted
//!   against the header read timeout. Requests over it carry
//!   [`TlsConnection`](kestra_edge_server::TlsConnection), from which the forwarded-headers
//!   layer tells Kestra `https`.
//! - [`CertReloader`] reads a PEM chain and its key (PKCS#8, PKCS#1 or SEC1) and reloads them
//!   on demand (SIGHUP) or when they change on disk ([`CertReloader::watch`] watches their
//!   directories, so atomic renames and Kubernetes Secret symlink swaps are seen). New
//!   handshakes use the new pair; open connections keep theirs; a broken or mismatched new
//!   pair is refused and the last good one kept.
//! - [`self_signed`] generates a certificate for localhost, for demos and tests.
//! - [`HttpsRedirect`] answers a plain-HTTP listener's requests with `308` to HTTPS.
//!
//! # Crypto provider: ring
//!
//! rustls needs one crypto provider, and this crate names it explicitly everywhere
//! ([`provider`]): *ring*. It builds with a C compiler alone (aws-lc-rs needs CMake or a
//! much longer C build, which matters on small CI machines), it has served rustls by default
//! for years, and it covers what a browser-facing proxy negotiates: ECDHE with X25519 and
//! P-256, AES-GCM and ChaCha20-Poly1305, ECDSA, Ed25519 and RSA certificates. aws-lc-rs
//! would add FIPS validation and post-quantum key exchange (X25519MLKEM768); a deployment
//! that needs those can build its own `rustls::ServerConfig` and use
//! [`TlsAcceptor::from_config`].
//!
//! PEM is parsed with `rustls-pki-types` (not the unmaintained `rustls-pemfile`).
//!
//! ```no_run
//! use kestra_edge_server::Server;
//! use kestra_edge_tls::{CertReloader, TlsAcceptor};
//! use std::{convert::Infallible, sync::Arc};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let certs = Arc::new(CertReloader::load("/etc/kestra-edge/tls.crt", "/etc/kestra-edge/tls.key")?);
//! let _watch = certs.watch()?; // reload when the files change
//! let service = tower::service_fn(|_req: http::Request<kestra_edge_server::IncomingBody>| async {
//!     Ok::<_, Infallible>(http::Response::new(String::from("hello over TLS")))
//! });
//! Server::bind("0.0.0.0:443".parse()?)
//!     .await?
//!     .transport(TlsAcceptor::new(certs.store())?)
//!     .serve(service, std::future::pending::<()>())
//!     .await?;
//! # Ok(())
//! # }
//! ```

mod acceptor;
mod certs;
mod redirect;
mod reload;

pub use acceptor::TlsAcceptor;
pub use certs::{fingerprint, load_pair, provider, self_signed, SelfSigned, TlsError};
pub use redirect::HttpsRedirect;
pub use reload::{CertReloader, CertStore, CertWatch};
