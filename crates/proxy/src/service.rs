//! [`ReverseProxy`] and its builder.

use crate::{
    body::{Progress, RequestBody},
    error::{BoxError, ProxyError},
    future::{EventStreamReadTimeout, Replay, ResponseFuture},
    h1::{
        codec::write_request_head,
        exchange::{Exchange, Upstream},
    },
    tls::ConnectDeadline,
};
use http::{
    header::{HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, UPGRADE},
    uri::{Authority, PathAndQuery, Scheme},
    Method, Request, StatusCode, Uri, Version,
};
use http_body::Body;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{self, connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioTimer},
};
use kestra_edge_headers::{recycle, remove_hop_by_hop};
use std::{
    fmt,
    path::PathBuf,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::Instant;
use tower::Service;

/// Default for [`ReverseProxyBuilder::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`ReverseProxyBuilder::read_timeout`]: the seed nginx block's `proxy_read_timeout 600s`.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(600);
/// Default for [`ReverseProxyBuilder::max_body`]: 10 GiB, Kestra's own upload limit.
pub const DEFAULT_MAX_BODY: u64 = 10 * 1024 * 1024 * 1024;
/// Default for [`ReverseProxyBuilder::body_timeout`]: nginx's `client_body_timeout`.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default for [`ReverseProxyBuilder::max_uri`]: 16 KiB.
pub const DEFAULT_MAX_URI: usize = 16 * 1024;
/// Default for [`ReverseProxyBuilder::pool_idle_timeout`].
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A configuration that [`ReverseProxyBuilder::build`] refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The upstream is not a URI.
    #[error("upstream {0:?} is not a valid URL")]
    InvalidUpstream(String),
    /// The upstream is not `http://host[:port]` or `https://host[:port]`.
    #[error("upstream {0:?} must be http://host[:port] or https://host[:port] (no path, no query, no user)")]
    UnsupportedUpstream(String),
    /// An [`upstream_ca`](ReverseProxyBuilder::upstream_ca) file cannot be read or is not
    /// valid PEM, or one of its certificates cannot be a trust root.
    #[error("upstream CA file {}: {source}", path.display())]
    UpstreamCa {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An [`upstream_ca`](ReverseProxyBuilder::upstream_ca) file holds no PEM certificate.
    #[error("upstream CA file {} holds no certificate", path.display())]
    UpstreamCaEmpty {
        /// The file.
        path: PathBuf,
    },
    /// The upstream is `https://`, and neither the system trust store nor an
    /// [`upstream_ca`](ReverseProxyBuilder::upstream_ca) file gave a trusted root.
    #[error("no trusted root for the https upstream: the system trust store is empty and no upstream CA file was given")]
    NoTrustedRoots,
    /// rustls refused the TLS configuration.
    #[error("cannot configure TLS to the upstream: {0}")]
    TlsConfig(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A timeout of zero would fail every request.
    #[error("{0} must be greater than zero")]
    ZeroTimeout(&'static str),
}

/// Configures and builds a [`ReverseProxy`].
#[derive(Debug, Clone)]
pub struct ReverseProxyBuilder {
    upstream: String,
    connect_timeout: Duration,
    read_timeout: Duration,
    preserve_host: bool,
    pool_idle_timeout: Duration,
    pool_max_idle_per_host: usize,
    max_body: u64,
    max_uri: usize,
    body_timeout: Duration,
    upstream_ca: Vec<PathBuf>,
    event_stream_read_timeout: Option<EventStreamReadTimeout>,
}

impl ReverseProxyBuilder {
    /// Starts a proxy to `upstream`, a base URL `http://host[:port]` or `https://host[:port]`.
    ///
    /// An `https://` upstream's certificate must chain to a root of the operating system's
    /// trust store (read once, by [`build`](Self::build)) or of an
    /// [`upstream_ca`](Self::upstream_ca) file, and name the upstream's host, which is also
    /// the SNI sent. The system store rather than a compiled-in Mozilla list (webpki-roots):
    /// operators update it without a rebuild, and corporate CAs are installed there; a
    /// compiled-in list holds no private CA. A rejected certificate is answered 502.
    pub fn new(upstream: impl Into<String>) -> Self {
        Self {
            upstream: upstream.into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            preserve_host: true,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            pool_max_idle_per_host: usize::MAX,
            max_body: DEFAULT_MAX_BODY,
            max_uri: DEFAULT_MAX_URI,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            upstream_ca: Vec::new(),
            event_stream_read_timeout: None,
        }
    }

    /// Also trusts every certificate of the PEM file at `path` for an `https://` upstream,
    /// besides the system's roots: Kestra inside a cluster with a private CA. Repeatable.
    ///
    /// The file is read by [`build`](Self::build), which fails ([`BuildError::UpstreamCa`],
    /// [`BuildError::UpstreamCaEmpty`]) when it cannot be read or holds no certificate. An
    /// `http://` upstream never reads it.
    pub fn upstream_ca(mut self, path: impl Into<PathBuf>) -> Self {
        self.upstream_ca.push(path.into());
        self
    }

    /// The longest a client may leave its request body without sending a byte (default
    /// 60 s, nginx's `client_body_timeout`); past it, the upstream request is aborted and
    /// the client answered 408. Against slow-body attacks.
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.body_timeout = timeout;
        self
    }

    /// The largest request body, in bytes (default 10 GiB, Kestra's own limit). A larger
    /// `Content-Length` is answered 413 before anything is sent upstream; a streamed body
    /// (chunked, HTTP/2) that passes it is cut there, the upstream request aborted, and
    /// the client answered 413.
    pub fn max_body(mut self, bytes: u64) -> Self {
        self.max_body = bytes;
        self
    }

    /// The longest request target (path and query), in bytes (default 16 KiB); longer
    /// ones are answered 414.
    pub fn max_uri(mut self, bytes: usize) -> Self {
        self.max_uri = bytes;
        self
    }

    /// The longest wait for a TCP connection to the upstream (default 10 s); past it, 504.
    /// For an `https://` upstream it bounds the TCP connect and the TLS handshake together.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest silence from the upstream (default 600 s): the wait for the response head
    /// after the last request byte (else 504), and the wait between two reads of the
    /// response body (else the client's transfer is aborted). Like nginx's
    /// `proxy_read_timeout`, it limits idleness, not the total.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// The read timeout of `text/event-stream` responses to requests that carry no
    /// [`EventStreamReadTimeout`] extension: `None` leaves a quiet stream's idleness to an
    /// outer layer (the SSE guard's idle timeout), a duration replaces
    /// [`read_timeout`](Self::read_timeout) for them. Unset, event streams get the read
    /// timeout. Set once here, the outer layer need not mark every request (an allocation
    /// each): the kestra-edge facade does so, with `SseGuardLayer::mark_requests(false)`.
    pub fn event_stream_read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.event_stream_read_timeout = Some(EventStreamReadTimeout(timeout));
        self
    }

    /// Sends the client's `Host` upstream (the default, nginx's `Host $http_host`); with
    /// `false`, the upstream's own authority.
    pub fn preserve_host(mut self, preserve: bool) -> Self {
        self.preserve_host = preserve;
        self
    }

    /// How long an idle pooled upstream connection is kept (default 90 s).
    pub fn pool_idle_timeout(mut self, timeout: Duration) -> Self {
        self.pool_idle_timeout = timeout;
        self
    }

    /// How many idle upstream connections are kept (default: no limit).
    pub fn pool_max_idle(mut self, max: usize) -> Self {
        self.pool_max_idle_per_host = max;
        self
    }

    /// Validates the configuration and builds the proxy for request bodies of type `B`.
    pub fn build<B>(self) -> Result<ReverseProxy<B>, BuildError>
    where
        B: Body + Send + 'static + Unpin,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let uri: Uri = self
            .upstream
            .parse()
            .map_err(|_| BuildError::InvalidUpstream(self.upstream.clone()))?;
        let unsupported = || BuildError::UnsupportedUpstream(self.upstream.clone());
        let scheme = match uri.scheme() {
            Some(scheme) if *scheme == Scheme::HTTP || *scheme == Scheme::HTTPS => scheme.clone(),
            _ => return Err(unsupported()),
        };
        if uri.query().is_some() {
            return Err(unsupported());
        }
        if !matches!(uri.path(), "" | "/") {
            return Err(unsupported());
        }
        let authority = uri.authority().cloned().ok_or_else(unsupported)?;
        if authority.as_str().contains('@') {
            return Err(unsupported());
        }
        let authority_header =
            HeaderValue::from_str(authority.as_str()).map_err(|_| unsupported())?;
        if self.connect_timeout.is_zero() {
            return Err(BuildError::ZeroTimeout("connect_timeout"));
        }
        if self.read_timeout.is_zero() {
            return Err(BuildError::ZeroTimeout("read_timeout"));
        }
        if self.body_timeout.is_zero() {
            return Err(BuildError::ZeroTimeout("body_timeout"));
        }

        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(self.connect_timeout));
        connector.set_nodelay(true);
        let mut client = Client::builder(TokioExecutor::new());
        client
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(self.pool_idle_timeout)
            .pool_max_idle_per_host(self.pool_max_idle_per_host);
        let client = if scheme == Scheme::HTTPS {
            // The HttpConnector refuses https URIs unless told the TLS layer above handles them.
            connector.enforce_http(false);
            // hyper-rustls takes the SNI and the name to verify from the request URI's host,
            // which `call` always sets to the upstream's authority. Built from the tuple, not
            // `HttpsConnectorBuilder`, whose `with_tls_config` refuses a config with ALPN set
            // and whose HTTP/1-only connector offers no ALPN at all.
            let config = crate::tls::client_config(&self.upstream_ca)?;
            let https = HttpsConnector::from((connector, config));
            UpstreamClient::Https(client.build(ConnectDeadline::new(https, self.connect_timeout)))
        } else {
            UpstreamClient::Http(client.build(connector))
        };

        let own = (scheme == Scheme::HTTP).then(|| {
            Arc::new(Upstream::new(
                authority.host(),
                authority.port_u16().unwrap_or(80),
                authority.as_str(),
                self.connect_timeout,
                self.pool_idle_timeout,
                self.pool_max_idle_per_host,
            ))
        });
        Ok(ReverseProxy {
            client: Arc::new(client),
            own,
            shared: Arc::new(Shared {
                scheme,
                authority,
                authority_header,
                read_timeout: self.read_timeout,
                event_stream_read_timeout: self.event_stream_read_timeout,
                preserve_host: self.preserve_host,
                max_body: self.max_body,
                max_uri: self.max_uri,
                body_timeout: self.body_timeout,
            }),
        })
    }
}

/// A request extension asking the proxy to forward an upgrade to `protocol` (RFC 9110 §7.8):
/// after hop-by-hop removal, `Connection: upgrade` and `Upgrade: <protocol>` are put back, and
/// the upstream's `101 Switching Protocols` is passed on unmodified, its connection ready to
/// be taken with `hyper::upgrade::on`.
///
/// kestra-edge's upgrade layer inserts it once it has validated the request; without it an
/// upgrade never reaches the upstream and a `101` from the upstream is answered 502.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeProtocol(pub HeaderValue);

/// The pooled client, by the upstream's scheme: a plain `http://` upstream keeps the bare
/// `HttpConnector`, with no TLS wrapper around its connections.
pub(crate) enum UpstreamClient<B> {
    Http(Client<HttpConnector, RequestBody<B>>),
    Https(Client<ConnectDeadline<HttpsConnector<HttpConnector>>, RequestBody<B>>),
}

impl<B> UpstreamClient<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    pub(crate) fn request(&self, req: Request<RequestBody<B>>) -> legacy::ResponseFuture {
        match self {
            Self::Http(client) => client.request(req),
            Self::Https(client) => client.request(req),
        }
    }
}

/// What every request of one proxy shares.
#[derive(Debug)]
struct Shared {
    scheme: Scheme,
    authority: Authority,
    authority_header: HeaderValue,
    read_timeout: Duration,
    /// For event streams of requests without the extension.
    event_stream_read_timeout: Option<EventStreamReadTimeout>,
    preserve_host: bool,
    max_body: u64,
    max_uri: usize,
    body_timeout: Duration,
}

/// A tower service that forwards each request to one upstream and streams the answer back.
///
/// - Bodies stream frame by frame both ways, trailers included; memory stays bounded by
///   hyper's buffers whatever the body size.
/// - Hop-by-hop fields are removed both ways ([`remove_hop_by_hop`]).
/// - The path and query pass byte for byte; the request goes upstream as HTTP/1.1.
/// - `Host` is the client's (an HTTP/2 `:authority` or an absolute-form target's authority
///   wins, RFC 9112 §3.2.2), or the upstream's with `preserve_host(false)`.
/// - Limits are answers: a request target over `max_uri` is 414, a body over `max_body`
///   413 (a streamed one is cut there and never completed upstream).
/// - Failures are answers ([`ProxyError`](crate::ProxyError)): 502, 504, 400. A failure
///   after the head was sent ends the body with an error, so the client's transfer aborts.
/// - A request is retried when hyper proves it was never written to a reused pooled
///   connection; a GET, HEAD or OPTIONS without a body also once when the upstream closes
///   the connection before any byte of an answer (RFC 9110 §9.2.2, as Go's `Transport`
///   does). Other requests are never sent twice.
///
/// Each request runs in a `proxy` tracing span (level DEBUG) with `method`, `path`,
/// `status` and `upstream_ms` (time to the response head).
pub struct ReverseProxy<B> {
    /// Shared: hyper-util's client is some 350 bytes, and tower services are cloned per
    /// request (`TowerToHyperService`) and per connection.
    pub(crate) client: Arc<UpstreamClient<B>>,
    /// The own HTTP/1.1 path of bodiless requests, for a plain `http://` upstream.
    own: Option<Arc<Upstream>>,
    shared: Arc<Shared>,
}

impl<B> Clone for ReverseProxy<B> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            own: self.own.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<B> fmt::Debug for ReverseProxy<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReverseProxy")
            .field("upstream", &self.shared.authority)
            .field("read_timeout", &self.shared.read_timeout)
            .field("preserve_host", &self.shared.preserve_host)
            .finish()
    }
}

impl<B> ReverseProxy<B> {
    /// The upstream's `host:port`.
    pub fn upstream(&self) -> &Authority {
        &self.shared.authority
    }

    /// A request the limits refuse before anything is sent upstream.
    fn over_limit(&self, req: &Request<B>) -> Option<ProxyError> {
        let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
        if target > self.shared.max_uri {
            return Some(ProxyError::UriTooLong);
        }
        // hyper has already refused an invalid or conflicting Content-Length.
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match declared {
            Some(length) if length > self.shared.max_body => Some(ProxyError::BodyTooLarge),
            _ => None,
        }
    }

    /// The `Host` value sent upstream.
    fn host(&self, req: &Request<B>) -> Option<HeaderValue> {
        if !self.shared.preserve_host {
            return Some(self.shared.authority_header.clone());
        }
        match req.uri().authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
            None => None,
        }
    }
}

impl<B> Service<Request<B>> for ReverseProxy<B>
where
    B: Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = http::Response<crate::ProxyBody>;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pooled client queues internally; there is no readiness to wait for.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> ResponseFuture {
        let start = Instant::now();
        let span = tracing::debug_span!(
            "proxy",
            method = %req.method(),
            path = %req.uri().path(),
            status = tracing::field::Empty,
            upstream_ms = tracing::field::Empty,
        );
        // A CONNECT tunnel to an arbitrary target is a forward proxy's job, not ours.
        if req.method() == Method::CONNECT {
            return ResponseFuture::answer(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
        }
        if let Some(err) = self.over_limit(&req) {
            tracing::debug!(parent: &span, error = %err, "refused before forwarding");
            return ResponseFuture::answer(err.status(), &err.to_string());
        }
        let host = self.host(&req);
        let (mut parts, body) = req.into_parts();
        let event_stream_timeout = parts
            .extensions
            .get::<EventStreamReadTimeout>()
            .copied()
            .or(self.shared.event_stream_read_timeout);
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let upgrade = parts.extensions.get::<UpgradeProtocol>().cloned();
        remove_hop_by_hop(&mut parts.headers);
        if let Some(host) = host {
            parts.headers.insert(HOST, host);
        }
        if let (Some(own), None, true) = (&self.own, &upgrade, body.is_end_stream()) {
            // The hot path: a bodiless request to a plain upstream, on the own HTTP/1.1
            // client. The origin-form target is all it needs; no URI is rebuilt.
            if path_and_query.as_str().starts_with('/') {
                let head = write_request_head(
                    &parts.method,
                    path_and_query.as_str(),
                    &parts.headers,
                    own.authority(),
                );
                drop(body);
                let replayable =
                    matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
                // Written: the map and the extensions go back to the thread's for the next
                // request.
                recycle::give_header_map(parts.headers);
                recycle::give_extensions(parts.extensions);
                let exchange = Exchange::new(
                    own.clone(),
                    head,
                    parts.method == Method::HEAD,
                    replayable,
                    start + self.shared.read_timeout,
                );
                return ResponseFuture::new(
                    ResponseFuture::own(exchange),
                    None,
                    start,
                    self.shared.read_timeout,
                    event_stream_timeout,
                    false,
                    None,
                    span,
                );
            }
        }
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(self.shared.scheme.clone());
        uri.authority = Some(self.shared.authority.clone());
        uri.path_and_query = Some(path_and_query);
        let Ok(uri) = Uri::from_parts(uri) else {
            // `OPTIONS *` and other non-path targets have no origin-form to forward.
            return ResponseFuture::answer(StatusCode::BAD_REQUEST, "invalid request target");
        };
        parts.uri = uri;
        parts.version = Version::HTTP_11;
        if let Some(UpgradeProtocol(protocol)) = &upgrade {
            // RFC 9110 §7.8: the only hop-by-hop fields that go on, put back after removal.
            parts
                .headers
                .insert(CONNECTION, HeaderValue::from_static("upgrade"));
            parts.headers.insert(UPGRADE, protocol.clone());
        }

        // RFC 9110 §9.2.2: a safe request without a body may be sent again when the upstream
        // closes the connection before answering (a pooled connection it had just closed).
        let replay = (upgrade.is_none()
            && body.is_end_stream()
            && matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS))
        .then(|| {
            let client = self.client.clone();
            let (method, uri, headers) = (
                parts.method.clone(),
                parts.uri.clone(),
                parts.headers.clone(),
            );
            Replay(Box::new(move || {
                let mut req = Request::new(RequestBody::empty());
                *req.method_mut() = method;
                *req.uri_mut() = uri;
                *req.headers_mut() = headers;
                client.request(req)
            }))
        });
        let progress = (!body.is_end_stream()).then(|| Arc::new(Progress::new(start)));
        let req = Request::from_parts(
            parts,
            RequestBody::new(
                body,
                progress.clone(),
                self.shared.max_body,
                self.shared.body_timeout,
            ),
        );
        let future = {
            let _enter = span.enter();
            self.client.request(req)
        };
        ResponseFuture::new(
            ResponseFuture::hyper(future),
            progress,
            start,
            self.shared.read_timeout,
            event_stream_timeout,
            upgrade.is_some(),
            replay,
            span,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Empty;

    type TestBody = Empty<bytes::Bytes>;

    #[test]
    fn upstream_is_validated_when_built() {
        let accepted = [
            "http://127.0.0.1:8080",
            "http://127.0.0.1:8080/",
            "http://kestra",
            "http://[::1]:8080",
        ];
        for upstream in accepted {
            let proxy = ReverseProxyBuilder::new(upstream).build::<TestBody>();
            assert!(proxy.is_ok(), "{upstream}: {proxy:?}");
        }
        let refused = [
            "",
            "kestra:8080",
            "wss://kestra:8443",
            "https://kestra:8443/?a=1",
            "ftp://kestra",
            "http://kestra:8080/kestra",
            "http://kestra:8080/?a=1",
            "http://user:pass@kestra:8080",
            "http://",
            "not a url",
        ];
        for upstream in refused {
            let proxy = ReverseProxyBuilder::new(upstream).build::<TestBody>();
            assert!(proxy.is_err(), "{upstream} was accepted");
        }
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let zero = ReverseProxyBuilder::new("http://127.0.0.1:8080")
            .read_timeout(Duration::ZERO)
            .build::<TestBody>();
        assert!(matches!(zero, Err(BuildError::ZeroTimeout("read_timeout"))));
        let zero = ReverseProxyBuilder::new("http://127.0.0.1:8080")
            .connect_timeout(Duration::ZERO)
            .build::<TestBody>();
        assert!(matches!(
            zero,
            Err(BuildError::ZeroTimeout("connect_timeout"))
        ));
    }

    #[tokio::test]
    async fn a_refused_connection_is_marked_never_sent() {
        use tower::ServiceExt;
        // Bind then drop: nothing listens on the port any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let proxy = ReverseProxyBuilder::new(format!("http://127.0.0.1:{port}"))
            .build::<TestBody>()
            .unwrap();
        let request = Request::get("/ping").body(TestBody::new()).unwrap();
        let response = proxy.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let failure = response.extensions().get::<crate::UpstreamFailure>();
        assert_eq!(failure, Some(&crate::UpstreamFailure::Connect));
        assert!(failure.is_some_and(|f| f.never_sent()));
    }

    #[tokio::test]
    async fn connect_is_answered_405_and_never_forwarded() {
        use tower::ServiceExt;
        // Nothing listens on port 9 of a test box; CONNECT must not even try it.
        let proxy = ReverseProxyBuilder::new("http://127.0.0.1:9")
            .build::<TestBody>()
            .unwrap();
        let request = Request::connect("kestra.example:443")
            .body(TestBody::new())
            .unwrap();
        let response = proxy.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    /// An upstream that answers one event stream: `data: a`, a quiet gap of `gap`, then
    /// `data: b` and the end.
    async fn quiet_event_stream(gap: Duration) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "the proxy closed before its request head");
                head.extend_from_slice(&buf[..n]);
            }
            let first = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                Transfer-Encoding: chunked\r\n\r\n9\r\ndata: a\n\n\r\n";
            tcp.write_all(first).await.unwrap();
            tokio::time::sleep(gap).await;
            // The proxy may have cut the stream meanwhile: then these writes fail.
            let _ = tcp.write_all(b"9\r\ndata: b\n\n\r\n0\r\n\r\n").await;
        });
        format!("http://{addr}")
    }

    /// The event stream's body through `proxy`: its frames' bytes, or the error that cut it.
    async fn stream_through(proxy: ReverseProxy<TestBody>) -> Result<Vec<u8>, crate::BodyError> {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let request = Request::get("/follow").body(TestBody::new()).unwrap();
        let response = proxy.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut seen = Vec::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                seen.extend_from_slice(&data);
            }
        }
        Ok(seen)
    }

    #[tokio::test]
    async fn an_event_stream_read_timeout_set_on_the_builder_spares_quiet_streams() {
        let read_timeout = Duration::from_millis(150);
        let gap = Duration::from_millis(500);

        // Unset: an event stream gets the read timeout, and the quiet gap cuts it.
        let upstream = quiet_event_stream(gap).await;
        let proxy = ReverseProxyBuilder::new(upstream)
            .read_timeout(read_timeout)
            .build::<TestBody>()
            .unwrap();
        let cut = stream_through(proxy).await;
        assert!(matches!(cut, Err(crate::BodyError::ReadTimeout)), "{cut:?}");

        // `None`: its idleness is an outer layer's business; the stream outlives the gap,
        // without any extension on the request.
        let upstream = quiet_event_stream(gap).await;
        let proxy = ReverseProxyBuilder::new(upstream)
            .read_timeout(read_timeout)
            .event_stream_read_timeout(None)
            .build::<TestBody>()
            .unwrap();
        let whole = stream_through(proxy).await.unwrap();
        assert_eq!(whole, b"data: a\n\ndata: b\n\n");
    }
}
