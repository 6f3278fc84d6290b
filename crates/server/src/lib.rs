//! The accept loop that kestra-edge's binary, its tests and the stand-in all serve with.
//!
//! [`Server`] serves a tower service on a [`TcpListener`]:
//!
//! - HTTP/1.1 and HTTP/2 cleartext (prior knowledge) on the same port. On plain TCP the
//!   server's own HTTP/1.1 codec ([`h1`]) serves requests without a body (the UI's polls,
//!   pages, assets and SSE streams) on the connection's own task, with buffers lent only
//!   while bytes are in flight; the first request it does not take (a body, an upgrade,
//!   `Expect`, HTTP/1.0, the HTTP/2 preface, anything malformed or over the limits) hands
//!   the connection, with the bytes already read, to hyper's HTTP/1 (upgrades enabled) or
//!   HTTP/2 connection, which serves it to its end. [`Server::own_http1`]`(false)` leaves
//!   everything to hyper (hyper-util's auto builder);
//! - or, with another [`Transport`] (`kestra-edge-tls`'s TLS acceptor), each connection
//!   handed straight to hyper's HTTP/2 or HTTP/1 connection by what the transport negotiated
//!   (ALPN), without reading the protocol again; its requests carry [`TlsConnection`];
//! - a header read timeout (slowloris): a connection whose first request has not arrived
//!   within it is closed, whatever protocol it speaks or how few bytes it sent (the TLS
//!   handshake counts against it), and each later HTTP/1 request head must arrive within it
//!   of the previous response;
//! - HTTP/2: at most 128 concurrent streams per connection, keep-alive PINGs, and an idle
//!   timeout that closes a connection with GOAWAY when it has carried no request and no open
//!   response for 5 minutes (a quiet SSE stream keeps it open); hyper's limits on pending
//!   resets (rapid reset, CVE-2023-44487) and on the header list (CONTINUATION floods) apply;
//! - a limit on the request head: more than [`Server::max_headers`] fields, or a head larger
//!   than [`Server::max_header_bytes`], is answered 431 (HTTP/1 and HTTP/2); hyper answers
//!   an over-long request line 414;
//! - `TCP_NODELAY` on every accepted socket;
//! - HTTP/2 extended CONNECT advertised (RFC 8441), for WebSockets over HTTP/2;
//! - services receive [`IncomingBody`]: empty for the own codec's requests, hyper's
//!   `Incoming` otherwise;
//! - each request carries a [`PeerAddr`] extension (the TCP peer) and a [`LocalAddr`]
//!   extension (the listener address it came in on);
//! - graceful shutdown: when `shutdown` resolves, accepting stops at once, in-flight requests
//!   finish within the grace period, then every remaining connection is closed.
//!
//! [`PerCoreServer`] runs the same loop on one single-threaded runtime per thread, each with
//! its own `SO_REUSEPORT` listener on the same address: what the `kestra-edge` binary uses.
//!
//! ```no_run
//! use kestra_edge_server::Server;
//! use std::{convert::Infallible, time::Duration};
//!
//! # async fn run() -> std::io::Result<()> {
//! let service = tower::service_fn(|_req: http::Request<kestra_edge_server::IncomingBody>| async {
//!     Ok::<_, Infallible>(http::Response::new(String::from("pong")))
//! });
//! let server = Server::bind("127.0.0.1:0".parse().unwrap())
//!     .await?
//!     .shutdown_grace(Duration::from_secs(30));
//! println!("listening on {}", server.local_addr()?);
//! server.serve(service, std::future::pending::<()>()).await
//! # }
//! ```

use connection::{Builders, Connection};
use futures_util::FutureExt;
use http::{Request, Response};
use std::{
    convert::Infallible,
    error::Error as StdError,
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tower::Service;

mod body;
mod connection;
pub mod h1;
mod per_core;
mod transport;
pub use body::IncomingBody;
pub use per_core::PerCoreServer;
pub use transport::{Accepted, PlainTcp, Protocol, TlsConnection, Transport};

/// Default for [`Server::header_read_timeout`].
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`Server::shutdown_grace`].
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default for [`Server::max_header_bytes`]: 64 KiB (nginx allows 4 × 8 KiB lines).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// The smallest [`Server::max_header_bytes`] hyper accepts.
pub const MIN_MAX_HEADER_BYTES: usize = 8 * 1024;
/// Default for [`Server::max_headers`] (hyper's own).
pub const DEFAULT_MAX_HEADERS: usize = 100;
/// Default for [`Server::h2_idle_timeout`]: 5 minutes.
pub const DEFAULT_H2_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default for [`Server::h2_max_concurrent_streams`]: nginx's `http2_max_concurrent_streams`.
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Default for [`Server::h2_keep_alive`]: a PING after this much silence from the client.
pub const DEFAULT_H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Default for [`Server::h2_keep_alive`]: how long the PING's answer may take.
pub const DEFAULT_H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The settings [`Server`] and [`PerCoreServer`] share.
#[derive(Debug, Clone, Copy)]
struct Settings {
    header_read_timeout: Duration,
    shutdown_grace: Duration,
    max_header_bytes: usize,
    max_headers: usize,
    h2_idle_timeout: Option<Duration>,
    h2_max_concurrent_streams: u32,
    h2_keep_alive_interval: Option<Duration>,
    h2_keep_alive_timeout: Duration,
    own_http1: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
            h2_idle_timeout: Some(DEFAULT_H2_IDLE_TIMEOUT),
            h2_max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            h2_keep_alive_interval: Some(DEFAULT_H2_KEEP_ALIVE_INTERVAL),
            h2_keep_alive_timeout: DEFAULT_H2_KEEP_ALIVE_TIMEOUT,
            own_http1: true,
        }
    }
}

/// The setters [`Server`] and [`PerCoreServer`] share, written once.
macro_rules! settings_setters {
    () => {
        /// The longest a client may take to send a request head (default 30 s): from the
        /// accept to the first request (any protocol, the TLS handshake included), and from
        /// each HTTP/1 response to the next request head, so it also ends idle keep-alive
        /// connections.
        pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
            self.settings.header_read_timeout = timeout;
            self
        }

        /// How long in-flight requests may run after shutdown begins (default 30 s).
        pub fn shutdown_grace(mut self, grace: Duration) -> Self {
            self.settings.shutdown_grace = grace;
            self
        }

        /// The largest request head, in bytes (default 64 KiB, at least
        /// [`MIN_MAX_HEADER_BYTES`](crate::MIN_MAX_HEADER_BYTES): a smaller value is raised
        /// to it); larger heads are answered 431. For HTTP/1 it also caps the connection's
        /// read buffer; for HTTP/2 it is the header list size (SETTINGS_MAX_HEADER_LIST_SIZE),
        /// which also bounds a CONTINUATION flood.
        pub fn max_header_bytes(mut self, max: usize) -> Self {
            self.settings.max_header_bytes = max.max(crate::MIN_MAX_HEADER_BYTES);
            self
        }

        /// The most header fields an HTTP/1 request may have (default 100); more are
        /// answered 431.
        pub fn max_headers(mut self, max: usize) -> Self {
            self.settings.max_headers = max;
            self
        }

        /// Closes a connection (with GOAWAY on HTTP/2) that has carried no request and no
        /// open response for this long (default 5 minutes; `None`: never). A connection with
        /// a live stream, such as a quiet SSE stream, is never closed by it. It is checked
        /// four times per period, so the close comes within 1¼ of it.
        pub fn h2_idle_timeout(mut self, idle: Option<Duration>) -> Self {
            self.settings.h2_idle_timeout = idle.filter(|d| !d.is_zero());
            self
        }

        /// The most concurrent streams an HTTP/2 client may open on one connection
        /// (default 128, nginx's `http2_max_concurrent_streams`).
        pub fn h2_max_concurrent_streams(mut self, max: u32) -> Self {
            self.settings.h2_max_concurrent_streams = max;
            self
        }

        /// HTTP/2 keep-alive: a PING after `interval` without a frame from the client, and
        /// the connection closed when its answer takes longer than `timeout` (default 30 s
        /// and 20 s; `None`: no PINGs).
        pub fn h2_keep_alive(mut self, interval: Option<Duration>, timeout: Duration) -> Self {
            self.settings.h2_keep_alive_interval = interval;
            self.settings.h2_keep_alive_timeout = timeout;
            self
        }

        /// Whether plain-TCP HTTP/1.1 requests without a body are served by the server's own
        /// codec ([`h1`](crate::h1); default true). `false` leaves every request to hyper, as
        /// before the codec existed (for comparisons).
        pub fn own_http1(mut self, on: bool) -> Self {
            self.settings.own_http1 = on;
            self
        }
    };
}
pub(crate) use settings_setters;

/// The TCP peer of the connection a request arrived on (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The local address of the connection a request arrived on (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddr(pub SocketAddr);

/// Live connection counts of a [`Server`], readable while it serves.
#[derive(Debug, Clone, Default)]
pub struct Connections {
    inner: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    open: AtomicUsize,
    accepted: AtomicU64,
    heads_too_large: AtomicU64,
}

impl Connections {
    /// Connections currently open (upgraded connections count until their tunnel ends).
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }

    /// Connections accepted since the server started.
    pub fn accepted(&self) -> u64 {
        self.inner.accepted.load(Ordering::Acquire)
    }

    /// Connections that ended on a request head over the limits (too many or too large
    /// header fields, an over-long request line), which hyper answered 431 or 414 before
    /// any service saw the request.
    pub fn heads_too_large(&self) -> u64 {
        self.inner.heads_too_large.load(Ordering::Relaxed)
    }

    fn opened(&self) -> OpenGuard {
        self.inner.accepted.fetch_add(1, Ordering::AcqRel);
        self.inner.open.fetch_add(1, Ordering::AcqRel);
        OpenGuard(self.inner.clone())
    }
}

/// Decrements the open count when a connection task ends, however it ends.
struct OpenGuard(Arc<Counts>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves a tower service over TCP (or TLS, with another [`Transport`]); see the
/// [crate docs](crate).
#[derive(Debug)]
pub struct Server<T = PlainTcp> {
    listener: TcpListener,
    transport: T,
    settings: Settings,
    connections: Connections,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        Ok(Self::from_listener(TcpListener::bind(addr).await?))
    }

    /// Serves on an already bound listener.
    pub fn from_listener(listener: TcpListener) -> Self {
        Self {
            listener,
            transport: PlainTcp,
            settings: Settings::default(),
            connections: Connections::default(),
        }
    }
}

impl<T: Transport> Server<T> {
    settings_setters!();

    /// Serves over `transport` instead (for example `kestra-edge-tls`'s TLS acceptor).
    pub fn transport<U: Transport>(self, transport: U) -> Server<U> {
        Server {
            listener: self.listener,
            transport,
            settings: self.settings,
            connections: self.connections,
        }
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle on the live connection counts.
    pub fn connections(&self) -> Connections {
        self.connections.clone()
    }

    /// Serves `service` until `shutdown` resolves and the grace period has run its course.
    pub async fn serve<S, B>(self, service: S, shutdown: impl Future<Output = ()>) -> io::Result<()>
    where
        S: Service<Request<IncomingBody>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let local = self.listener.local_addr()?;
        let settings = self.settings;
        let builders = Arc::new(Builders::new(&settings));
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);

        loop {
            let (tcp, peer) = tokio::select! {
                biased;
                () = &mut shutdown => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!(error = %err, "TCP_NODELAY not set");
            }
            let guard = self.connections.opened();
            let connection = Connection {
                transport: self.transport.clone(),
                tcp,
                peer,
                local,
                service: service.clone(),
                builders: builders.clone(),
                settings,
                shutdown: stopped.clone(),
            };
            // A combinator, not an `async` block: a block awaiting the connection's future
            // would keep a second slot of its size in the task.
            let task = connection.run().map(move |heads_too_large| {
                if heads_too_large {
                    guard.0.heads_too_large.fetch_add(1, Ordering::Relaxed);
                }
                drop(guard);
            });
            tasks.spawn(task);
        }

        drop(self.listener);
        tracing::info!(
            open = self.connections.open(),
            grace = ?settings.shutdown_grace,
            "shutting down: no longer accepting"
        );
        let _ = stop.send(true);
        let drained = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(settings.shutdown_grace, drained)
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.connections.open(),
                "grace period over: closing remaining connections"
            );
        }
        tasks.shutdown().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn requests_carry_the_peer_and_local_addresses() {
        let server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let local = server.local_addr().unwrap();
        let connections = server.connections();
        let service = tower::service_fn(|req: Request<IncomingBody>| async move {
            let peer = req.extensions().get::<PeerAddr>().map(|p| p.0.to_string());
            let local = req.extensions().get::<LocalAddr>().map(|l| l.0.to_string());
            Ok::<_, Infallible>(Response::new(format!("{peer:?} {local:?}")))
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(service, async {
            let _ = stopped.await;
        }));

        let mut stream = tokio::net::TcpStream::connect(local).await.unwrap();
        let peer = stream.local_addr().unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(
            response.ends_with(&format!("Some(\"{peer}\") Some(\"{local}\")")),
            "{response}"
        );
        assert_eq!(connections.accepted(), 1);

        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
        assert_eq!(connections.open(), 0);
        assert!(tokio::net::TcpStream::connect(local).await.is_err());
    }
}

#[cfg(test)]
mod h2_keep_alive_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A gateway-style server with 100 ms PINGs, answered within 100 ms or the connection ends.
    async fn server() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap()
            .h2_keep_alive(Some(Duration::from_millis(100)), Duration::from_millis(100));
        let addr = server.local_addr().unwrap();
        let service = tower::service_fn(|_req: Request<IncomingBody>| async {
            Ok::<_, Infallible>(Response::new(String::from("pong")))
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server.serve(service, async {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    #[tokio::test]
    async fn an_http2_client_that_does_not_answer_pings_is_closed() {
        let (addr, _stop) = server().await;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The prior-knowledge preface and an empty SETTINGS frame (RFC 9113 §3.4), then silence:
        // no SETTINGS ACK, no PING ACK.
        tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let mut frames = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut frames)).await;
        assert!(read.is_ok(), "still open 5 s later");
        // A PING frame (type 6) was sent before the close.
        assert!(
            frames
                .windows(4)
                .any(|w| w[0] == 0 && w[1] == 8 && w[2] == 6),
            "no PING in {frames:?}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(150),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn an_http2_client_that_answers_pings_stays_connected() {
        let (addr, _stop) = server().await;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        // The h2 crate answers PINGs by itself while its connection is driven.
        let (send, conn) = h2::client::handshake(tcp).await.unwrap();
        let driven = tokio::spawn(conn);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut send = send
            .ready()
            .await
            .expect("still connected after 3 PING periods");
        let (response, _) = send
            .send_request(Request::get("http://t/").body(()).unwrap(), true)
            .unwrap();
        assert_eq!(response.await.unwrap().status(), 200);
        assert!(!driven.is_finished());
    }
}
