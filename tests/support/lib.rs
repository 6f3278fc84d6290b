//! What the end-to-end tests share: the gateway's real stack on `127.0.0.1:0` in front of the
//! stand-in (or a scripted raw upstream), and raw-socket clients.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use kestra_edge::server::IncomingBody;
use kestra_edge_gateway::{Gateway, GatewayConfig};
use kestra_edge_standin::{Standin, StandinConfig};
use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};

/// A gateway serving in the background; it shuts down when dropped.
pub struct RunningGateway {
    pub addr: SocketAddr,
    /// The `--admin-listen` listener, when configured.
    pub admin: Option<SocketAddr>,
    /// The access log, when one was given.
    pub access_log: Option<kestra_edge_telemetry::AccessLog>,
    pub connections: kestra_edge::server::Connections,
    pub tunnels: kestra_edge::Tunnels,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningGateway {
    pub async fn start(config: GatewayConfig) -> Self {
        Self::start_with_log(config, None).await
    }

    /// [`start`](Self::start) writing the access log to `log`.
    pub async fn start_with_log(
        config: GatewayConfig,
        log: Option<kestra_edge_telemetry::AccessLog>,
    ) -> Self {
        let gateway = Gateway::bind_with_log(config, log)
            .await
            .expect("gateway binds");
        let addr = gateway.local_addr().unwrap();
        let admin = gateway.admin_addr();
        let access_log = gateway.access_log().cloned();
        let connections = gateway.connections();
        let tunnels = gateway.tunnels().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.serve(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            admin,
            access_log,
            connections,
            tunnels,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Begins shutdown and waits for the serve loop to return.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().unwrap().await.unwrap()
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The stand-in and the gateway in front of it.
pub struct Stack {
    pub standin: Standin,
    pub gateway: RunningGateway,
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(configure: impl FnOnce(&mut GatewayConfig)) -> Self {
        Self::start_standin_with(StandinConfig::default(), configure).await
    }

    pub async fn start_standin_with(
        standin: StandinConfig,
        configure: impl FnOnce(&mut GatewayConfig),
    ) -> Self {
        let standin = Standin::start(standin).await.unwrap();
        let mut config = GatewayConfig::for_upstream(standin.url());
        configure(&mut config);
        let gateway = RunningGateway::start(config).await;
        Self { standin, gateway }
    }

    pub fn url(&self, path: &str) -> String {
        self.gateway.url(path)
    }
}

/// An HTTP client that never pools, so each test controls its connections.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .no_proxy()
        .build()
        .unwrap()
}

/// Waits until `condition` holds, checking every 10 ms, for at most `limit`.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends `request` as raw bytes and reads until the server closes or `limit` passes.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], limit: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut response)).await;
    response
}

/// Sends a raw request to the stand-in's echo through `addr` and parses what it received.
pub async fn raw_echo(addr: SocketAddr, request: &str) -> kestra_edge_standin::Echo {
    let response = raw_exchange(addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(
        raw_status(&response),
        200,
        "{}",
        String::from_utf8_lossy(&response)
    );
    serde_json::from_slice(raw_body(&response)).unwrap()
}

/// The body of a raw HTTP/1.1 response with `Content-Length`.
pub fn raw_body(response: &[u8]) -> &[u8] {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete head")
        + 4;
    &response[end..]
}

/// The status code of a raw HTTP/1.1 response.
pub fn raw_status(response: &[u8]) -> u16 {
    std::str::from_utf8(&response[9..12])
        .unwrap()
        .parse()
        .unwrap()
}

/// A scripted upstream on raw TCP: for each connection it reads one request head, counts it
/// and runs `answer` on the socket.
pub struct RawUpstream {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start<F, Fut>(answer: F) -> Self
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let answer = Arc::new(answer);
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counted = counted.clone();
                let answer = answer.clone();
                tokio::spawn(async move {
                    if read_head(&mut stream).await {
                        counted.fetch_add(1, Ordering::SeqCst);
                        answer(stream).await;
                    }
                });
            }
        });
        Self {
            addr,
            requests,
            task,
        }
    }

    /// An upstream that answers every request with `response`, then closes.
    pub async fn answering(response: &'static [u8]) -> Self {
        Self::start(move |mut stream| async move {
            let _ = stream.write_all(response).await;
            let _ = stream.shutdown().await;
        })
        .await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads up to the end of a request head; false if the peer closed first.
pub async fn read_head(stream: &mut TcpStream) -> bool {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return false,
        }
    }
    true
}

/// A port on which nothing listens.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    kestra_edge_standin::hex(&sha2::Sha256::digest(bytes))
}

/// What a [`RecordingUpstream`] saw of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    /// Body bytes received.
    pub body_len: u64,
    /// Whether the body arrived whole (false: it failed or is still arriving).
    pub completed: bool,
}

/// A real HTTP/1.1 upstream (hyper) that records every request it receives, reads its body
/// to the end, and answers 200 `ok`.
pub struct RecordingUpstream {
    pub addr: SocketAddr,
    pub connections: kestra_edge::server::Connections,
    log: Arc<std::sync::Mutex<Vec<Recorded>>>,
    stop: Option<oneshot::Sender<()>>,
}

impl RecordingUpstream {
    pub async fn start() -> Self {
        use http_body_util::BodyExt;
        let server = kestra_edge::server::Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap()
            .shutdown_grace(Duration::ZERO);
        let addr = server.local_addr().unwrap();
        let connections = server.connections();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = log.clone();
        let service = tower::service_fn(move |req: http::Request<IncomingBody>| {
            let log = recorded.clone();
            async move {
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push(Recorded {
                        method: req.method().to_string(),
                        target: req.uri().to_string(),
                        body_len: 0,
                        completed: false,
                    });
                    log.len() - 1
                };
                let mut body = req.into_body();
                let completed = loop {
                    match body.frame().await {
                        Some(Ok(frame)) => {
                            if let Some(data) = frame.data_ref() {
                                log.lock().unwrap()[index].body_len += data.len() as u64;
                            }
                        }
                        Some(Err(_)) => break false,
                        None => break true,
                    }
                };
                log.lock().unwrap()[index].completed = completed;
                Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
            }
        });
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(server.serve(service, async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            connections,
            log,
            stop: Some(stop),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in arrival order.
    pub fn log(&self) -> Vec<Recorded> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// Every status line in a raw byte stream of HTTP/1.1 responses, in order.
pub fn raw_statuses(bytes: &[u8]) -> Vec<u16> {
    let text = String::from_utf8_lossy(bytes);
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| text.get(at + 9..at + 12)?.parse().ok())
        .collect()
}
