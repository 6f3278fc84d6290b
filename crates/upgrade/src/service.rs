//! [`UpgradeLayer`] and the [`Upgrade`] service.

use crate::{
    handshake::{
        new_websocket_key, plan, upstream_agrees, Plan, HTTP2_SETTINGS, SEC_WEBSOCKET_ACCEPT,
        SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_VERSION,
    },
    tunnel::{self, ObserveTunnel, TunnelGuard, TunnelLimits, Tunnels},
};
use http::{
    header::{CONNECTION, UPGRADE},
    HeaderValue, Method, Request, Response, StatusCode, Version,
};
use hyper::upgrade::OnUpgrade;
use kestra_edge_headers::plain_text;
use kestra_edge_proxy::UpgradeProtocol;
use pin_project_lite::pin_project;
use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};
use tower::{Layer, Service};

/// Default for [`UpgradeLayer::idle_timeout`]: the proxy's default read timeout.
pub const DEFAULT_TUNNEL_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug)]
struct Config {
    allowed: Vec<String>,
    limits: TunnelLimits,
}

/// Tunnels allowed upgrades (WebSocket by default) byte for byte; see the
/// [crate docs](crate).
#[derive(Debug, Clone)]
pub struct UpgradeLayer {
    config: Arc<Config>,
    tunnels: Tunnels,
}

impl Default for UpgradeLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl UpgradeLayer {
    /// WebSocket only; tunnels close after 600 s without a byte either way; no lifetime cap.
    pub fn new() -> Self {
        Self {
            config: Arc::new(Config {
                allowed: vec!["websocket".to_owned()],
                limits: TunnelLimits {
                    idle_timeout: DEFAULT_TUNNEL_IDLE_TIMEOUT,
                    max_lifetime: None,
                },
            }),
            tunnels: Tunnels::default(),
        }
    }

    fn with(self, change: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config {
            allowed: self.config.allowed.clone(),
            limits: self.config.limits,
        };
        change(&mut config);
        Self {
            config: Arc::new(config),
            tunnels: self.tunnels,
        }
    }

    /// The `Upgrade` tokens that are tunnelled (compared case-insensitively; `h2c` is never
    /// forwarded whatever this says).
    pub fn protocols<I, T>(self, protocols: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let allowed = protocols
            .into_iter()
            .map(|p| p.into().to_ascii_lowercase())
            .filter(|p| p != "h2c")
            .collect();
        self.with(|c| c.allowed = allowed)
    }

    /// Closes a tunnel after this long without a byte either way (zero: the default).
    pub fn idle_timeout(self, idle: Duration) -> Self {
        let idle = if idle.is_zero() {
            DEFAULT_TUNNEL_IDLE_TIMEOUT
        } else {
            idle
        };
        self.with(|c| c.limits.idle_timeout = idle)
    }

    /// Closes every tunnel after this long (`None` or zero: no cap).
    pub fn max_lifetime(self, cap: Option<Duration>) -> Self {
        self.with(|c| c.limits.max_lifetime = cap.filter(|d| !d.is_zero()))
    }

    /// The open tunnels of every service this layer makes.
    pub fn tunnels(&self) -> &Tunnels {
        &self.tunnels
    }
}

impl<S> Layer<S> for UpgradeLayer {
    type Service = Upgrade<S>;

    fn layer(&self, inner: S) -> Upgrade<S> {
        Upgrade {
            inner,
            config: self.config.clone(),
            tunnels: self.tunnels.clone(),
        }
    }
}

/// The service of [`UpgradeLayer`].
#[derive(Debug, Clone)]
pub struct Upgrade<S> {
    inner: S,
    config: Arc<Config>,
    tunnels: Tunnels,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Upgrade<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<&'static str>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        req.headers_mut().remove(HTTP2_SETTINGS);
        let (protocol, key, extended_connect) = if is_extended_connect(&req) {
            match self.extended_connect(&mut req) {
                Some((protocol, key)) => (protocol, Some(key), true),
                None => {
                    return ResponseFuture::answer(
                        StatusCode::BAD_REQUEST,
                        "protocol not allowed\n",
                    )
                }
            }
        } else {
            match plan(&req, &self.config.allowed) {
                Plan::Plain => {
                    return ResponseFuture {
                        kind: Kind::Plain {
                            future: self.inner.call(req),
                        },
                    }
                }
                Plan::Refuse(status, text) => return ResponseFuture::answer(status, text),
                Plan::Upgrade { protocol, key } => (protocol, key, false),
            }
        };
        let client = hyper::upgrade::on(&mut req);
        let observer = req.extensions_mut().remove::<ObserveTunnel>();
        req.extensions_mut()
            .insert(UpgradeProtocol(protocol.clone()));
        ResponseFuture {
            kind: Kind::Upgrading {
                future: self.inner.call(req),
                pending: Some(Box::new(Pending {
                    client,
                    protocol,
                    key,
                    extended_connect,
                    limits: self.config.limits,
                    tunnels: self.tunnels.clone(),
                    observer,
                })),
            },
        }
    }
}

impl<S> Upgrade<S> {
    /// Turns an RFC 8441 extended CONNECT into the HTTP/1.1 upgrade the upstream understands:
    /// a GET with a fresh `Sec-WebSocket-Key`. `None` when its protocol is not allowed.
    fn extended_connect<B>(&self, req: &mut Request<B>) -> Option<(HeaderValue, HeaderValue)> {
        let protocol = req
            .extensions()
            .get::<hyper::ext::Protocol>()?
            .as_str()
            .to_ascii_lowercase();
        if protocol != "websocket" || !self.config.allowed.contains(&protocol) {
            return None;
        }
        let key = new_websocket_key();
        *req.method_mut() = Method::GET;
        *req.version_mut() = Version::HTTP_11;
        let headers = req.headers_mut();
        headers.insert(SEC_WEBSOCKET_KEY, key.clone());
        headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        Some((HeaderValue::from_static("websocket"), key))
    }
}

/// RFC 8441 §4: a CONNECT carrying the `:protocol` pseudo-header.
fn is_extended_connect<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT && req.extensions().get::<hyper::ext::Protocol>().is_some()
}

/// What an upgrade needs once the upstream has answered.
#[derive(Debug)]
struct Pending {
    client: OnUpgrade,
    protocol: HeaderValue,
    key: Option<HeaderValue>,
    extended_connect: bool,
    limits: TunnelLimits,
    tunnels: Tunnels,
    observer: Option<ObserveTunnel>,
}

pin_project! {
    /// Response future of [`Upgrade`].
    #[derive(Debug)]
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, B> {
        Plain {
            #[pin]
            future: F,
        },
        // The upgrade's state and the layer's own answers are boxed: both are rare, and
        // inline they would make every request's future (moved on each call) larger.
        Upgrading {
            #[pin]
            future: F,
            pending: Option<Box<Pending>>,
        },
        Answer {
            response: Option<Box<Response<B>>>,
        },
    }
}

impl<F, B: From<&'static str>> ResponseFuture<F, B> {
    fn answer(status: StatusCode, text: &'static str) -> Self {
        Self {
            kind: Kind::Answer {
                response: Some(Box::new(plain_text(status, text))),
            },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: From<&'static str>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Plain { future } => future.poll(cx),
            KindProj::Upgrading { future, pending } => {
                let response = ready!(future.poll(cx))?;
                let Some(pending) = pending.take() else {
                    return Poll::Pending;
                };
                Poll::Ready(Ok(switch(response, *pending)))
            }
            KindProj::Answer { response } => match response.take() {
                Some(response) => Poll::Ready(Ok(*response)),
                None => Poll::Pending,
            },
        }
    }
}

/// The client's answer to an upgrade, and the tunnel behind it when the upstream switched.
fn switch<B: From<&'static str>>(mut upstream: Response<B>, pending: Pending) -> Response<B> {
    if upstream.status() != StatusCode::SWITCHING_PROTOCOLS {
        // Refused or answered otherwise: relayed as an ordinary response, no tunnel.
        return upstream;
    }
    if !upstream_agrees(&upstream, &pending.protocol, pending.key.as_ref()) {
        tracing::warn!("upstream switched protocols without a valid handshake");
        return plain_text(StatusCode::BAD_GATEWAY, "upstream upgrade failed\n");
    }
    let upstream_io = hyper::upgrade::on(&mut upstream);
    let guard = upstream.extensions_mut().remove::<TunnelGuard>();
    let mut response = Response::new(B::from(""));
    if pending.extended_connect {
        // RFC 8441 §5: a 2xx opens the stream as the tunnel.
        *response.status_mut() = StatusCode::OK;
    } else {
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, pending.protocol.clone());
        if let Some(accept) = upstream.headers().get(SEC_WEBSOCKET_ACCEPT) {
            headers.insert(SEC_WEBSOCKET_ACCEPT, accept.clone());
        }
    }
    for name in [SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_EXTENSIONS] {
        if let Some(value) = upstream.headers().get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    tokio::spawn(tunnel::run(
        pending.client,
        upstream_io,
        pending.limits,
        pending.tunnels,
        guard,
        pending.observer,
    ));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TunnelGuard;
    use hyper::body::Incoming;
    use hyper_util::rt::TokioIo;
    use std::convert::Infallible;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
        sync::oneshot,
    };
    use tower::ServiceExt;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    /// RFC 6455 §1.3: the accept for `KEY`.
    const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    /// Reads until the end of an HTTP head.
    async fn read_head(io: &mut TcpStream) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(io.read(&mut byte).await.unwrap(), 1, "head cut short");
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap()
    }

    /// An upstream that switches to WebSocket, then echoes bytes until the client's FIN.
    async fn echo_upstream() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut io, _) = listener.accept().await.unwrap();
            read_head(&mut io).await;
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
            );
            io.write_all(answer.as_bytes()).await.unwrap();
            let (mut read, mut write) = io.split();
            tokio::io::copy(&mut read, &mut write).await.unwrap();
        });
        addr
    }

    #[tokio::test]
    async fn the_guard_of_a_101_lives_until_the_tunnel_ends() {
        let upstream = echo_upstream().await;
        // The guard is a sender: its receiver learns when the tunnel lets it go.
        let (guard, mut dropped) = oneshot::channel::<()>();
        let guard = Arc::new(std::sync::Mutex::new(Some(TunnelGuard::new(guard))));
        // The inner service: a plain HTTP/1.1 client that hangs the guard on the 101.
        let inner = tower::service_fn(move |req: Request<Incoming>| {
            let guard = guard.lock().unwrap().take();
            async move {
                let io = TokioIo::new(TcpStream::connect(upstream).await.unwrap());
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn.with_upgrades());
                let mut response = sender.send_request(req).await.unwrap();
                if let Some(guard) = guard {
                    response.extensions_mut().insert(guard);
                }
                Ok::<_, Infallible>(response.map(|_| String::new()))
            }
        });
        let layer = UpgradeLayer::new();
        let tunnels = layer.tunnels().clone();
        let service = layer.layer(inner);
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        tokio::spawn(async move {
            let (io, _) = front.accept().await.unwrap();
            let service = hyper::service::service_fn(move |req| service.clone().oneshot(req));
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), service)
                .with_upgrades()
                .await
                .unwrap();
        });

        let mut client = TcpStream::connect(front_addr).await.unwrap();
        let upgrade = format!("GET /ws HTTP/1.1\r\nHost: k\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n");
        client.write_all(upgrade.as_bytes()).await.unwrap();
        let head = read_head(&mut client).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        client.write_all(b"ping").await.unwrap();
        let mut echoed = [0u8; 4];
        client.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"ping");
        assert_eq!(tunnels.open(), 1);
        assert_eq!(dropped.try_recv(), Err(oneshot::error::TryRecvError::Empty));

        // The client's FIN reaches the upstream, which closes; both directions have ended.
        client.shutdown().await.unwrap();
        assert_eq!(client.read(&mut echoed).await.unwrap(), 0);
        let ended = tokio::time::timeout(Duration::from_secs(5), dropped).await;
        assert!(matches!(ended, Ok(Err(_))), "guard still held: {ended:?}");
        assert_eq!(tunnels.open(), 0);
    }
}
