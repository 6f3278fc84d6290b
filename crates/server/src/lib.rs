//! The accept loop that kestra-edge's binary, its tests and the stand-in all serve with.
//!
//! [`Server`] serves a tower service on a [`TcpListener`]:
//!
//! - HTTP/1.1 and HTTP/2 cleartext (prior knowledge) on the same port, with hyper-util's
//!   auto builder and upgrades enabled (`serve_connection_with_upgrades`);
//! - a header read timeout (slowloris): a connection whose first request has not arrived
//!   within it is closed, whatever protocol it speaks or how few bytes it sent, and each
//!   later HTTP/1 request head must arrive within it of the previous response;
//! - a limit on the request head: more than [`Server::max_headers`] fields, or a head larger
//!   than [`Server::max_header_bytes`], is answered 431 (HTTP/1 and HTTP/2); hyper answers
//!   an over-long request line 414;
//! - `TCP_NODELAY` on every accepted socket;
//! - HTTP/2 extended CONNECT advertised (RFC 8441), for WebSockets over HTTP/2;
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
//! let service = tower::service_fn(|_req: http::Request<hyper::body::Incoming>| async {
//!     Ok::<_, Infallible>(http::Response::new(String::from("pong")))
//! });
//! let server = Server::bind("127.0.0.1:0".parse().unwrap())
//!     .await?
//!     .shutdown_grace(Duration::from_secs(30));
//! println!("listening on {}", server.local_addr()?);
//! server.serve(service, std::future::pending::<()>()).await
//! # }
//! ```

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use std::{
    convert::Infallible,
    error::Error as StdError,
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::{net::TcpListener, task::JoinSet};
use tower::Service;

mod per_core;
pub use per_core::PerCoreServer;

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

/// The settings [`Server`] and [`PerCoreServer`] share.
#[derive(Debug, Clone, Copy)]
struct Settings {
    header_read_timeout: Duration,
    shutdown_grace: Duration,
    max_header_bytes: usize,
    max_headers: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_headers: DEFAULT_MAX_HEADERS,
        }
    }
}

impl Settings {
    /// hyper-util's builder for these settings.
    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        let mut http1 = builder.http1();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            .max_buf_size(self.max_header_bytes)
            .keep_alive(true);
        if self.max_headers != DEFAULT_MAX_HEADERS {
            // Moves hyper's header array from the stack to the heap: only when asked.
            http1.max_headers(self.max_headers);
        }
        // RFC 8441: HTTP/2 clients may open WebSockets with extended CONNECT.
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            .enable_connect_protocol();
        builder
    }
}

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

/// Serves a tower service over TCP; see the [crate docs](crate).
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
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
            settings: Settings::default(),
            connections: Connections::default(),
        }
    }

    /// The longest a client may take to send a request head (default 30 s): from the
    /// accept to the first request (any protocol), and from each HTTP/1 response to the
    /// next request head, so it also ends idle keep-alive connections.
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
    /// [`MIN_MAX_HEADER_BYTES`]: a smaller value is raised to it); larger heads are
    /// answered 431. For HTTP/1 it also caps the connection's read buffer.
    pub fn max_header_bytes(mut self, max: usize) -> Self {
        self.settings.max_header_bytes = max.max(MIN_MAX_HEADER_BYTES);
        self
    }

    /// The most header fields an HTTP/1 request may have (default 100); more are answered 431.
    pub fn max_headers(mut self, max: usize) -> Self {
        self.settings.max_headers = max;
        self
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
        S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let local = self.listener.local_addr()?;
        let Settings {
            header_read_timeout,
            shutdown_grace,
            ..
        } = self.settings;
        let builder = Arc::new(self.settings.builder());
        let graceful = GracefulShutdown::new();
        let mut tasks = JoinSet::new();
        tokio::pin!(shutdown);

        loop {
            let (stream, peer) = tokio::select! {
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
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(error = %err, "TCP_NODELAY not set");
            }
            let first_request = Arc::new(AtomicBool::new(false));
            let service = TowerToHyperService::new(AddConnectionInfo {
                inner: service.clone(),
                peer: PeerAddr(peer),
                local: LocalAddr(local),
                first_request: first_request.clone(),
            });
            let guard = self.connections.opened();
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            let conn = graceful.watch(conn);
            tasks.spawn(async move {
                // hyper-util's protocol sniffing waits for bytes with no deadline, and an
                // HTTP/2 connection has no header timeout of its own: a connection whose first
                // request has not arrived by the header timeout is closed here.
                let watchdog = tokio::time::sleep(header_read_timeout);
                tokio::pin!(conn, watchdog);
                let ended = tokio::select! {
                    ended = &mut conn => Some(ended),
                    () = &mut watchdog => None,
                };
                let ended = match ended {
                    Some(ended) => ended,
                    None if first_request.load(Ordering::Relaxed) => conn.await,
                    None => {
                        tracing::debug!(%peer, "no request within the header timeout: closed");
                        Ok(())
                    }
                };
                if let Err(err) = ended {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
                drop(guard);
            });
        }

        drop(self.listener);
        tracing::info!(
            open = self.connections.open(),
            grace = ?shutdown_grace,
            "shutting down: no longer accepting"
        );
        if tokio::time::timeout(shutdown_grace, graceful.shutdown())
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

/// Inserts [`PeerAddr`] and [`LocalAddr`] into every request of one connection, and notes
/// that the connection has sent a request.
#[derive(Debug, Clone)]
struct AddConnectionInfo<S> {
    inner: S,
    peer: PeerAddr,
    local: LocalAddr,
    first_request: Arc<AtomicBool>,
}

impl<S, B> Service<Request<B>> for AddConnectionInfo<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        self.first_request.store(true, Ordering::Relaxed);
        req.extensions_mut().insert(self.peer);
        req.extensions_mut().insert(self.local);
        self.inner.call(req)
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
        let service = tower::service_fn(|req: Request<Incoming>| async move {
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
