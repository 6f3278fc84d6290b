//! The forward-proxy service and its builder.

use crate::{
    allow::{AllowList, PatternError},
    body::EgressBody,
    credentials::{CredentialsError, ProxyCredentials},
    guard::is_internal,
    idle::{Activity, Progress},
    resolve::{Resolve, SystemResolver},
    stats::{EgressStats, Outcome},
    target::{classify, Kind, Target},
};
use http::{
    header::{HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION},
    HeaderValue, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use kestra_edge_headers::{plain_text, remove_hop_by_hop, ServedBy};
use kestra_edge_upgrade::{ObserveTunnel, Tunnels, DEFAULT_TUNNEL_IDLE_TIMEOUT};
use std::{
    convert::Infallible,
    error::Error as StdError,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tower::Service;

/// Default for [`EgressBuilder::connect_timeout`] (resolution and TCP connect together).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for [`EgressBuilder::max_tunnels`].
pub const DEFAULT_MAX_TUNNELS: usize = 1024;
/// The `407` challenge (RFC 9110 §11.7.1, RFC 7617 §2).
const CHALLENGE: &str = "Basic realm=\"kestra-edge\"";

/// Settings [`EgressBuilder::build`] refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EgressError {
    /// An allow pattern is not `host`, `host:port` or `*.domain`.
    #[error(transparent)]
    Pattern(#[from] PatternError),
    /// The credentials file cannot be read, parsed or watched.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// `max_tunnels` is zero.
    #[error("the egress tunnel cap must be at least 1")]
    NoTunnels,
}

/// Builds an [`Egress`]; every setting is checked once, in [`build`](Self::build).
#[must_use]
pub struct EgressBuilder {
    allow: Vec<String>,
    credentials_file: Option<PathBuf>,
    credentials: Option<ProxyCredentials>,
    allow_private: bool,
    max_tunnels: usize,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_lifetime: Option<Duration>,
    resolver: Arc<dyn Resolve>,
    tunnels: Tunnels,
}

impl std::fmt::Debug for EgressBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressBuilder")
            .field("allow", &self.allow)
            .field("allow_private", &self.allow_private)
            .field("max_tunnels", &self.max_tunnels)
            .finish_non_exhaustive()
    }
}

impl Default for EgressBuilder {
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            credentials_file: None,
            credentials: None,
            allow_private: false,
            max_tunnels: DEFAULT_MAX_TUNNELS,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            idle_timeout: DEFAULT_TUNNEL_IDLE_TIMEOUT,
            max_lifetime: None,
            resolver: Arc::new(SystemResolver),
            tunnels: Tunnels::default(),
        }
    }
}

impl EgressBuilder {
    /// Allows a destination: `host`, `host:port` or `*.domain` (case-insensitive, on the name
    /// the client asked for). Repeatable; with none, nothing is allowed.
    pub fn allow(mut self, pattern: impl Into<String>) -> Self {
        self.allow.push(pattern.into());
        self
    }

    /// Requires `Proxy-Authorization: Basic` of a `user:password` line of this file, read
    /// again whenever it changes. Without credentials, no authentication is asked for.
    pub fn credentials_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.credentials_file = Some(path.into());
        self
    }

    /// Requires these users (already loaded; watching is the caller's choice).
    pub fn credentials(mut self, credentials: ProxyCredentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Lets destinations that resolve to loopback, private, link-local, unique-local, CGNAT
    /// or metadata addresses through (default: refused with `403`).
    pub fn allow_private(mut self, allow: bool) -> Self {
        self.allow_private = allow;
        self
    }

    /// At most this many tunnels at once (default 1024); more get `503`.
    pub fn max_tunnels(mut self, max: usize) -> Self {
        self.max_tunnels = max;
        self
    }

    /// The longest resolution plus TCP connect to a destination may take (default 10 s);
    /// then `504`.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Closes a tunnel, and ends a forwarded exchange, after this long without a byte either
    /// way (default 600 s): a forwarded request whose destination has not answered by then
    /// gets `504`; a response body that stalls that long is cut (an aborted transfer).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Closes every tunnel after this long (default: no cap).
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.max_lifetime = lifetime;
        self
    }

    /// Resolves names with `resolver` instead of the system's.
    pub fn resolver(mut self, resolver: impl Resolve) -> Self {
        self.resolver = Arc::new(resolver);
        self
    }

    /// Counts tunnels in (and closes them with) this registry, for example the one the
    /// reverse proxy's graceful shutdown drains.
    pub fn tunnels(mut self, tunnels: Tunnels) -> Self {
        self.tunnels = tunnels;
        self
    }

    /// Checks the settings, reads the credentials file and starts watching it.
    pub fn build(self) -> Result<Egress, EgressError> {
        if self.max_tunnels == 0 {
            return Err(EgressError::NoTunnels);
        }
        let allow = AllowList::new(&self.allow)?;
        let credentials = match (self.credentials, self.credentials_file) {
            (Some(credentials), _) => Some(credentials),
            (None, Some(path)) => {
                let credentials = ProxyCredentials::load(path)?;
                credentials.watch()?;
                Some(credentials)
            }
            (None, None) => None,
        };
        if allow.is_empty() {
            tracing::warn!("egress proxy with no allowed destination: every request gets 403");
        }
        Ok(Egress {
            inner: Arc::new(Inner {
                allow,
                credentials,
                allow_private: self.allow_private,
                slots: Arc::new(Semaphore::new(self.max_tunnels)),
                connect_timeout: self.connect_timeout,
                idle_timeout: self.idle_timeout,
                max_lifetime: self.max_lifetime,
                resolver: self.resolver,
                tunnels: self.tunnels,
                challenge: HeaderValue::from_static(CHALLENGE),
                stats: EgressStats::default(),
            }),
        })
    }
}

/// The forward proxy: a Tower service answering `CONNECT host:port` with a tunnel and
/// absolute-form `http://` requests by forwarding them; see the [crate docs](crate).
#[derive(Clone)]
pub struct Egress {
    inner: Arc<Inner>,
}

struct Inner {
    allow: AllowList,
    credentials: Option<ProxyCredentials>,
    allow_private: bool,
    slots: Arc<Semaphore>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_lifetime: Option<Duration>,
    resolver: Arc<dyn Resolve>,
    tunnels: Tunnels,
    challenge: HeaderValue,
    stats: EgressStats,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("allow", &self.inner.allow)
            .field("allow_private", &self.inner.allow_private)
            .finish_non_exhaustive()
    }
}

impl Egress {
    /// A builder with the defaults: nothing allowed, no authentication, private addresses
    /// refused.
    pub fn builder() -> EgressBuilder {
        EgressBuilder::default()
    }

    /// The users, when a credentials file was given (for a reload on SIGHUP).
    pub fn credentials(&self) -> Option<&ProxyCredentials> {
        self.inner.credentials.as_ref()
    }

    /// The tunnel registry (how many are open; closing them at shutdown).
    pub fn tunnels(&self) -> &Tunnels {
        &self.inner.tunnels
    }

    /// Open tunnels and requests by outcome, for metrics (clones share the counts).
    pub fn stats(&self) -> &EgressStats {
        &self.inner.stats
    }
}

/// The future of [`Egress`]: every request resolves and dials, so one box per request is
/// small beside that.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<EgressBody>, Infallible>> + Send>>;

impl<B> Service<Request<B>> for Egress
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Response = Response<EgressBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> ResponseFuture {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.handle(request).await) })
    }
}

/// Why a destination was not reached, as the client's answer.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    NotAllowed,
    Internal,
    Unresolvable,
    Unreachable,
    Timeout,
    Silent,
    Busy,
}

impl Refusal {
    fn response(self) -> Response<EgressBody> {
        let (status, text) = match self {
            Self::NotAllowed => (StatusCode::FORBIDDEN, "destination not allowed\n"),
            Self::Internal => (StatusCode::FORBIDDEN, "destination address not allowed\n"),
            Self::Unresolvable => (StatusCode::BAD_GATEWAY, "destination cannot be resolved\n"),
            Self::Unreachable => (StatusCode::BAD_GATEWAY, "destination unreachable\n"),
            Self::Timeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "destination too slow to connect\n",
            ),
            Self::Silent => (
                StatusCode::GATEWAY_TIMEOUT,
                "destination too slow to answer\n",
            ),
            Self::Busy => (StatusCode::SERVICE_UNAVAILABLE, "too many tunnels\n"),
        };
        plain_text(status, text)
    }

    fn outcome(self) -> Outcome {
        match self {
            Self::NotAllowed => Outcome::Forbidden,
            Self::Internal => Outcome::Private,
            Self::Unresolvable | Self::Unreachable => Outcome::BadGateway,
            Self::Timeout | Self::Silent => Outcome::GatewayTimeout,
            Self::Busy => Outcome::TooManyTunnels,
        }
    }
}

impl Inner {
    /// Answers `refusal`, counted.
    fn refuse(&self, refusal: Refusal) -> Response<EgressBody> {
        self.stats.count(refusal.outcome());
        refusal.response()
    }

    async fn handle<B>(&self, mut request: Request<B>) -> Response<EgressBody>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        if let Some(credentials) = &self.credentials {
            if !credentials.check(request.headers().get(PROXY_AUTHORIZATION)) {
                tracing::debug!("egress: proxy authentication missing or wrong");
                self.stats.count(Outcome::AuthRequired);
                let mut response = plain_text(
                    StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                    "proxy authentication required\n",
                );
                response
                    .headers_mut()
                    .insert(PROXY_AUTHENTICATE, self.challenge.clone());
                return response;
            }
        }
        let Some(kind) = classify(request.method(), request.uri()) else {
            self.stats.count(Outcome::BadRequest);
            return plain_text(StatusCode::BAD_REQUEST, "malformed request-target\n");
        };
        match kind {
            Kind::Tunnel(target) => {
                if !self.allow.allows(&target) {
                    tracing::debug!(host = %target.host, port = target.port, "egress: not allowed");
                    return self.refuse(Refusal::NotAllowed);
                }
                let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                    tracing::warn!("egress: tunnel cap reached");
                    return self.refuse(Refusal::Busy);
                };
                let stream = match self.dial(&target).await {
                    Ok(stream) => stream,
                    Err(refusal) => return self.refuse(refusal),
                };
                let upgrade = hyper::upgrade::on(&mut request);
                let observer = request.extensions_mut().remove::<ObserveTunnel>();
                let dialled = served_by(&stream);
                self.tunnel(target, upgrade, stream, permit, observer);
                self.stats.count(Outcome::Tunnel);
                let mut response = Response::new(EgressBody::empty());
                if let Some(dialled) = dialled {
                    response.extensions_mut().insert(dialled);
                }
                response
            }
            Kind::Forward(target, origin) => {
                if !self.allow.allows(&target) {
                    tracing::debug!(host = %target.host, port = target.port, "egress: not allowed");
                    return self.refuse(Refusal::NotAllowed);
                }
                let stream = match self.dial(&target).await {
                    Ok(stream) => stream,
                    Err(refusal) => return self.refuse(refusal),
                };
                let dialled = served_by(&stream);
                match forward(request, origin, stream, self.idle_timeout).await {
                    Ok(mut response) => {
                        self.stats.count(Outcome::Forwarded);
                        if let Some(dialled) = dialled {
                            response.extensions_mut().insert(dialled);
                        }
                        response
                    }
                    Err(refusal) => self.refuse(refusal),
                }
            }
        }
    }

    /// Resolves once, drops internal addresses (unless allowed), and dials only what was
    /// checked, within the connect timeout.
    async fn dial(&self, target: &Target) -> Result<TcpStream, Refusal> {
        let attempt = async {
            let addrs = match target.ip {
                Some(ip) => vec![SocketAddr::new(ip, target.port)],
                None => match self.resolver.resolve(&target.host, target.port).await {
                    Ok(addrs) if !addrs.is_empty() => addrs,
                    Ok(_) => return Err(Refusal::Unresolvable),
                    Err(err) => {
                        tracing::debug!(host = %target.host, error = %err, "egress: cannot resolve");
                        return Err(Refusal::Unresolvable);
                    }
                },
            };
            let checked: Vec<SocketAddr> = addrs
                .into_iter()
                .filter(|addr| self.allow_private || !is_internal(addr.ip()))
                .collect();
            if checked.is_empty() {
                tracing::debug!(host = %target.host, "egress: resolves to internal addresses only");
                return Err(Refusal::Internal);
            }
            for addr in checked {
                match TcpStream::connect(addr).await {
                    Ok(stream) => {
                        if let Err(err) = stream.set_nodelay(true) {
                            tracing::debug!(error = %err, "TCP_NODELAY not set");
                        }
                        return Ok(stream);
                    }
                    Err(err) => {
                        tracing::debug!(host = %target.host, %addr, error = %err, "egress: connect failed");
                    }
                }
            }
            Err(Refusal::Unreachable)
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Refusal::Timeout),
        }
    }

    /// Splices the client's upgraded connection with the destination once the `200` is sent.
    fn tunnel(
        &self,
        target: Target,
        upgrade: hyper::upgrade::OnUpgrade,
        stream: TcpStream,
        permit: OwnedSemaphorePermit,
        observer: Option<ObserveTunnel>,
    ) {
        let tunnels = self.tunnels.clone();
        let stats = self.stats.clone();
        let (idle, lifetime) = (self.idle_timeout, self.max_lifetime);
        tokio::spawn(async move {
            match upgrade.await {
                Ok(client) => {
                    tracing::debug!(host = %target.host, port = target.port, "egress tunnel open");
                    let _open = stats.tunnel_open();
                    let end = tunnels
                        .splice(TokioIo::new(client), stream, idle, lifetime)
                        .await;
                    if let Some(observer) = observer {
                        observer.0.ended(&end);
                    }
                }
                Err(err) => tracing::debug!(error = %err, "egress: CONNECT not upgraded"),
            }
            drop(permit);
        });
    }
}

/// The address dialled, for an access log ([`ServedBy`] on the answer).
fn served_by(stream: &TcpStream) -> Option<ServedBy> {
    let addr = stream.peer_addr().ok()?;
    Some(ServedBy(addr.to_string().into()))
}

/// Sends an absolute-form request on as origin-form over `stream`, streamed both ways, with
/// hop-by-hop fields (`Proxy-Authorization` among them) removed and `Host` set from the
/// request-target (RFC 9112 §3.2.2: a proxy replaces a received Host with the target's
/// authority). The exchange ends after `idle` without a byte either way: before the
/// response head that is a `504`, after it an aborted body. Sizes stay bounded: bodies move
/// frame by frame under backpressure, and hyper caps the response head (its read buffer).
async fn forward<B, T>(
    request: Request<B>,
    origin: http::Uri,
    stream: T,
    idle: Duration,
) -> Result<Response<EgressBody>, Refusal>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut parts, body) = request.into_parts();
    let host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
    remove_hop_by_hop(&mut parts.headers);
    if let Some(host) = host {
        parts.headers.insert(HOST, host);
    }
    parts.uri = origin;
    parts.version = http::Version::HTTP_11;
    let activity = Activity::new(idle);
    let request = Request::from_parts(parts, Progress::new(body, activity.clone()));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|err| {
            tracing::debug!(error = %err, "egress: handshake failed");
            Refusal::Unreachable
        })?;
    let connection = tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "egress: destination connection ended");
        }
    });
    let sent = sender.send_request(request);
    tokio::pin!(sent);
    let timer = tokio::time::sleep_until(activity.deadline());
    tokio::pin!(timer);
    let answer = loop {
        tokio::select! {
            answer = &mut sent => break answer,
            () = &mut timer => {
                // An upload still moving pushes the deadline on.
                let deadline = activity.deadline();
                if deadline <= tokio::time::Instant::now() {
                    tracing::debug!("egress: destination silent beyond the idle timeout");
                    connection.abort();
                    return Err(Refusal::Silent);
                }
                timer.as_mut().reset(deadline);
            }
        }
    };
    match answer {
        Ok(response) => {
            activity.touch();
            let (mut parts, body) = response.into_parts();
            remove_hop_by_hop(&mut parts.headers);
            Ok(Response::from_parts(
                parts,
                EgressBody::destination(body, activity),
            ))
        }
        Err(err) => {
            tracing::debug!(error = %err, "egress: destination failed");
            Err(Refusal::Unreachable)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::resolve::Resolving;
    use http_body_util::Empty;
    use std::{
        io,
        net::IpAddr,
        sync::atomic::{AtomicUsize, Ordering},
    };
    use tower::ServiceExt;

    /// Answers `ips` for every name, counting the calls.
    #[derive(Clone)]
    struct Fixed {
        ips: Vec<IpAddr>,
        calls: Arc<AtomicUsize>,
    }

    impl Resolve for Fixed {
        fn resolve<'a>(&'a self, _host: &'a str, port: u16) -> Resolving<'a> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let addrs = self
                .ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect();
            Box::pin(async move {
                if self.ips.is_empty() {
                    Err(io::Error::other("NXDOMAIN"))
                } else {
                    Ok(addrs)
                }
            })
        }
    }

    fn resolver(ips: &[&str]) -> (Fixed, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        (
            Fixed {
                ips,
                calls: calls.clone(),
            },
            calls,
        )
    }

    async fn status(
        egress: &Egress,
        method: &str,
        target: &str,
        auth: Option<&str>,
    ) -> Response<EgressBody> {
        let mut request = Request::builder().method(method).uri(target);
        if let Some(auth) = auth {
            request = request.header(PROXY_AUTHORIZATION, auth);
        }
        egress
            .clone()
            .oneshot(request.body(Empty::<bytes::Bytes>::new()).unwrap())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn refusals_are_answers_and_no_connection_is_made() {
        let (fixed, calls) = resolver(&["10.0.0.7"]);
        let egress = Egress::builder()
            .allow("api.kestra.io")
            .allow("*.internal.test")
            .resolver(fixed)
            .build()
            .unwrap();
        let cases = [
            ("CONNECT", "other.example:443", StatusCode::FORBIDDEN),
            ("GET", "http://other.example/", StatusCode::FORBIDDEN),
            ("GET", "/origin-form", StatusCode::BAD_REQUEST),
            ("GET", "https://api.kestra.io/", StatusCode::BAD_REQUEST),
            ("CONNECT", "api.kestra.io", StatusCode::BAD_REQUEST),
        ];
        for (method, target, expected) in cases {
            let response = status(&egress, method, target, None).await;
            assert_eq!(response.status(), expected, "{method} {target}");
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "a refused name was resolved"
        );

        // Allowed by name, but it resolves to a private address.
        let response = status(&egress, "CONNECT", "db.internal.test:5432", None).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // An allowed IP literal in a private range, and the metadata address.
        let egress = Egress::builder()
            .allow("127.0.0.1")
            .allow("169.254.169.254")
            .allow("[fd00:ec2::254]")
            .build()
            .unwrap();
        for target in ["127.0.0.1:22", "169.254.169.254:80", "[fd00:ec2::254]:80"] {
            let response = status(&egress, "CONNECT", target, None).await;
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{target}");
        }
        let response = status(
            &egress,
            "GET",
            "http://169.254.169.254/latest/meta-data/",
            None,
        )
        .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }

    /// Never answers.
    struct Silent;

    impl Resolve for Silent {
        fn resolve<'a>(&'a self, _host: &'a str, _port: u16) -> Resolving<'a> {
            Box::pin(std::future::pending())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn resolution_and_connect_beyond_the_connect_timeout_is_504() {
        let egress = Egress::builder()
            .allow("api.kestra.io")
            .resolver(Silent)
            .connect_timeout(Duration::from_secs(3))
            .build()
            .unwrap();
        for (method, target) in [
            ("CONNECT", "api.kestra.io:443"),
            ("GET", "http://api.kestra.io/"),
        ] {
            let response = status(&egress, method, target, None).await;
            assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT, "{method}");
        }
    }

    #[tokio::test]
    async fn an_unresolvable_name_is_502() {
        let (fixed, _) = resolver(&[]);
        let egress = Egress::builder()
            .allow("api.kestra.io")
            .resolver(fixed)
            .build()
            .unwrap();
        let response = status(&egress, "CONNECT", "api.kestra.io:443", None).await;
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    }

    #[tokio::test]
    async fn missing_or_wrong_credentials_get_407_with_the_challenge() {
        let dir =
            std::env::temp_dir().join(format!("kestra-edge-egress-svc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("users");
        std::fs::write(&file, "kestra:pw\n").unwrap();
        let egress = Egress::builder()
            .credentials(ProxyCredentials::load(&file).unwrap())
            .build()
            .unwrap();
        // base64("kestra:bad") and nothing: 407 before anything else, even a bad target.
        for auth in [None, Some("Basic a2VzdHJhOmJhZA=="), Some("Bearer x")] {
            let response = status(&egress, "CONNECT", "api.kestra.io:443", auth).await;
            assert_eq!(response.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
            assert_eq!(response.headers()[PROXY_AUTHENTICATE], CHALLENGE);
            let response = status(&egress, "GET", "/", auth).await;
            assert_eq!(response.status(), StatusCode::PROXY_AUTHENTICATION_REQUIRED);
        }
        // base64("kestra:pw"): past authentication, then refused by the (empty) allow-list.
        let response = status(
            &egress,
            "CONNECT",
            "api.kestra.io:443",
            Some("Basic a2VzdHJhOnB3"),
        )
        .await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A request body fed by the test, one frame per message.
    struct Fed(tokio::sync::mpsc::Receiver<bytes::Bytes>);

    impl http_body::Body for Fed {
        type Data = bytes::Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Infallible>>> {
            self.0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| Ok(http_body::Frame::data(c))))
        }
    }

    /// Reads one request head (and `body` more bytes) as the destination.
    async fn read_request(io: &mut tokio::io::DuplexStream, body: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\r\n\r\n") {
            assert_eq!(io.read(&mut byte).await.unwrap(), 1, "{got:?}");
            got.push(byte[0]);
        }
        let mut rest = vec![0u8; body];
        io.read_exact(&mut rest).await.unwrap();
        got.extend(rest);
        got
    }

    fn post<B>(body: B) -> Request<B> {
        Request::post("http://api.kestra.io/v1/x")
            .header(PROXY_AUTHORIZATION, "Basic a2VzdHJhOnB3")
            .body(body)
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_destination_is_504_after_the_idle_timeout_and_a_moving_upload_is_not() {
        use tokio::io::AsyncWriteExt;
        let idle = Duration::from_secs(3);
        let origin: http::Uri = "/v1/x".parse().unwrap();

        // The destination reads the request and never answers.
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let destination = tokio::spawn(async move {
            let head = read_request(&mut theirs, 0).await;
            std::future::pending::<()>().await;
            drop((head, theirs));
        });
        let started = tokio::time::Instant::now();
        let answer = forward(
            post(Empty::<bytes::Bytes>::new()),
            origin.clone(),
            ours,
            idle,
        )
        .await;
        assert!(matches!(answer, Err(Refusal::Silent)), "{answer:?}");
        assert_eq!(started.elapsed(), idle);
        assert_eq!(
            Refusal::Silent.response().status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        destination.abort();

        // Five frames 2 s apart, the end 2 s after the last: 10 s in all, never 3 s without a
        // byte.
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let (feed, fed) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for _ in 0..5 {
                feed.send(bytes::Bytes::from_static(b"chunk"))
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        });
        let destination = tokio::spawn(async move {
            // Chunked: five 5-byte chunks and the last chunk.
            let request = read_request(&mut theirs, 5 * 10 + 5).await;
            theirs
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            request
        });
        let started = tokio::time::Instant::now();
        let response = forward(post(Fed(fed)), origin, ours, idle).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        let request = String::from_utf8(destination.await.unwrap()).unwrap();
        assert!(request.starts_with("POST /v1/x HTTP/1.1\r\n"), "{request}");
        assert!(!request.to_ascii_lowercase().contains("proxy-authorization"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_response_body_that_stalls_is_cut_and_one_that_moves_is_not() {
        use http_body_util::BodyExt;
        use tokio::io::AsyncWriteExt;
        let idle = Duration::from_secs(3);
        let origin: http::Uri = "/v1/x".parse().unwrap();
        for stall in [Duration::from_secs(2), Duration::from_secs(4)] {
            let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
            tokio::spawn(async move {
                read_request(&mut theirs, 0).await;
                theirs
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
                    .await
                    .unwrap();
                tokio::time::sleep(stall).await;
                theirs.write_all(b"world").await.unwrap();
                std::future::pending::<()>().await;
                drop(theirs);
            });
            let request = Request::get("http://api.kestra.io/v1/x")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            let response = forward(request, origin.clone(), ours, idle).await.unwrap();
            let started = tokio::time::Instant::now();
            let body = response.into_body().collect().await;
            if stall < idle {
                assert_eq!(&body.unwrap().to_bytes()[..], b"helloworld");
            } else {
                let err = body.unwrap_err();
                assert!(err.is_idle(), "{err}");
                assert_eq!(started.elapsed(), idle);
            }
        }
    }

    #[test]
    fn settings_are_checked_once() {
        assert!(matches!(
            Egress::builder().max_tunnels(0).build(),
            Err(EgressError::NoTunnels)
        ));
        assert!(matches!(
            Egress::builder().allow("a b").build(),
            Err(EgressError::Pattern(_))
        ));
        assert!(matches!(
            Egress::builder()
                .credentials_file("/nonexistent/kestra-edge/users")
                .build(),
            Err(EgressError::Credentials(_))
        ));
    }
}
