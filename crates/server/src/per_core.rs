//! [`PerCoreServer`]: one single-threaded runtime and one listener per thread.

use crate::IncomingBody;
use crate::{settings_setters, Connections, PlainTcp, Server, Settings, Transport};
use http::{Request, Response};
use socket2::{Domain, Protocol, Socket, Type};
use std::{
    convert::Infallible, error::Error as StdError, future::Future, io, net::SocketAddr,
    num::NonZeroUsize, time::Duration,
};
use tokio::sync::{oneshot, watch};
use tower::Service;

/// Pending connections the kernel queues per listener before accepting.
const BACKLOG: i32 = 1024;

/// Serves on several threads, each running a single-threaded tokio runtime that accepts on
/// its own listener bound to the same address (`SO_REUSEPORT`), the way nginx runs one
/// event loop per worker process.
///
/// The kernel spreads new connections over the listeners; a connection, its requests, its
/// upstream connections (each thread's service has its own pool) and its timers then stay
/// on one thread. On a small machine this beats a work-stealing runtime, whose threads
/// wake each other for every task that moves.
///
/// Each thread serves like [`Server`] (HTTP/1.1 and h2c, upgrades, header read timeout,
/// `TCP_NODELAY`, [`PeerAddr`](crate::PeerAddr), graceful shutdown with the same grace).
#[derive(Debug)]
pub struct PerCoreServer<T = PlainTcp> {
    listeners: Vec<std::net::TcpListener>,
    local: SocketAddr,
    transport: T,
    settings: Settings,
    connections: Connections,
}

impl PerCoreServer {
    /// Binds `threads` listeners to `addr` (port 0 picks one free port for all of them).
    pub fn bind(addr: SocketAddr, threads: NonZeroUsize) -> io::Result<Self> {
        let first = reuseport_listener(addr)?;
        let local = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..threads.get() {
            listeners.push(reuseport_listener(local)?);
        }
        Ok(Self {
            listeners,
            local,
            transport: PlainTcp,
            settings: Settings::default(),
            connections: Connections::default(),
        })
    }
}

impl<T: Transport> PerCoreServer<T> {
    settings_setters!();

    /// Serves over `transport` instead (see [`Server::transport`]); every thread shares it.
    pub fn transport<U: Transport>(self, transport: U) -> PerCoreServer<U> {
        PerCoreServer {
            listeners: self.listeners,
            local: self.local,
            transport,
            settings: self.settings,
            connections: self.connections,
        }
    }

    /// The address every thread listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// How many threads serve.
    pub fn threads(&self) -> usize {
        self.listeners.len()
    }

    /// The live connection counts of all threads together.
    pub fn connections(&self) -> Connections {
        self.connections.clone()
    }

    /// Serves `make_service(i)` on thread `i` until `shutdown` resolves and every thread's
    /// grace period has run its course. Then `finish` runs on the calling runtime while
    /// the threads' runtimes still drive what their services spawned (upgrade tunnels, for
    /// one), and the threads end when it returns.
    pub async fn serve<M, S, B, F>(
        self,
        make_service: M,
        shutdown: impl Future<Output = ()>,
        finish: F,
    ) -> io::Result<()>
    where
        M: Fn(usize) -> S,
        S: Service<Request<IncomingBody>, Response = Response<B>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
        F: Future<Output = ()>,
    {
        let (stop, stop_rx) = watch::channel(false);
        let (release, release_rx) = watch::channel(false);
        let mut served = Vec::new();
        let mut threads = Vec::new();
        for (i, listener) in self.listeners.into_iter().enumerate() {
            let service = make_service(i);
            let (done, done_rx) = oneshot::channel();
            let (mut stop_rx, mut release_rx) = (stop_rx.clone(), release_rx.clone());
            let connections = self.connections.clone();
            let settings = self.settings;
            let transport = self.transport.clone();
            let thread = std::thread::Builder::new()
                .name(format!("kestra-edge-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(err) => {
                            let _ = done.send(Err(err));
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let result = async {
                            let listener = tokio::net::TcpListener::from_std(listener)?;
                            let mut server = Server::from_listener(listener).transport(transport);
                            server.settings = settings;
                            server.connections = connections;
                            let stopped = async move {
                                let _ = stop_rx.wait_for(|stop| *stop).await;
                            };
                            server.serve(service, stopped).await
                        }
                        .await;
                        let _ = done.send(result);
                        // Keep driving this runtime's remaining tasks until released.
                        let _ = release_rx.wait_for(|release| *release).await;
                    });
                })?;
            served.push(done_rx);
            threads.push(thread);
        }

        shutdown.await;
        let _ = stop.send(true);
        let mut result = Ok(());
        for done in served {
            match done.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => result = Err(err),
                Err(_) => result = Err(io::Error::other("a server thread panicked")),
            }
        }
        finish.await;
        let _ = release.send(true);
        for thread in threads {
            // The thread has been released: it ends as soon as its runtime is dropped.
            let joined = tokio::task::spawn_blocking(move || thread.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                result = Err(io::Error::other("a server thread panicked"));
            }
        }
        result
    }
}

/// A non-blocking listener on `addr` that other sockets may bind too (`SO_REUSEPORT`).
fn reuseport_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn every_thread_serves_and_all_stop_on_shutdown() {
        let server = PerCoreServer::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            NonZeroUsize::new(2).unwrap(),
        )
        .unwrap()
        .shutdown_grace(Duration::from_millis(200));
        let addr = server.local_addr();
        let connections = server.connections();
        let seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let make = {
            let seen = seen.clone();
            move |i: usize| {
                let seen = seen.clone();
                tower::service_fn(move |_req: Request<IncomingBody>| {
                    let name = std::thread::current().name().map(str::to_owned);
                    seen.lock().unwrap().insert(name.clone());
                    async move { Ok::<_, Infallible>(Response::new(format!("{i} {name:?}"))) }
                })
            }
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let (finished, finished_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(
            make,
            async {
                let _ = stopped.await;
            },
            async move {
                let _ = finished.send(());
            },
        ));

        // The kernel hashes connections over the two listeners: enough of them reach both.
        for _ in 0..64 {
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut response = String::new();
            stream.read_to_string(&mut response).await.unwrap();
            assert!(response.starts_with("HTTP/1.1 200"), "{response}");
            if seen.lock().unwrap().len() == 2 {
                break;
            }
        }
        let threads = seen.lock().unwrap().clone();
        assert_eq!(threads.len(), 2, "{threads:?}");
        assert!(threads.iter().all(|name| name
            .as_deref()
            .is_some_and(|n| n.starts_with("kestra-edge-"))));
        assert!(connections.accepted() >= 2);

        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
        finished_rx.await.unwrap();
        assert_eq!(connections.open(), 0);
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
