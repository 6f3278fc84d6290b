//! [`ForwardedLayer`] and the [`Forwarded`] service.

use crate::rfc7239::{
    ascii_alphanumeric_and, parse_node, write_decimal, write_element, write_ip, ForwardedElement,
};
use futures_util::future::Either;
use http::{
    header::{FORWARDED, HOST},
    HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version,
};
use ipnet::IpNet;
use kestra_edge_headers::{list_items, plain_text, remove_hop_by_hop};
use kestra_edge_server::{PeerAddr, TlsConnection};
use pin_project_lite::pin_project;
use std::{
    cell::Cell,
    future::{ready, Future, Ready},
    net::{IpAddr, SocketAddr},
    ops::Range,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
};
use tower::{Layer, Service};

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Protocol`: not standard, but what the seed nginx block sends.
pub const X_FORWARDED_PROTOCOL: HeaderName = HeaderName::from_static("x-forwarded-protocol");
/// `X-Forwarded-Port`.
pub const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
/// `X-Forwarded-Prefix`.
pub const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
/// `X-Real-IP`.
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// `X-Request-Id`: one request's id, kept from a trusted proxy, else generated.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Every header through which a client could claim an identity; removed from untrusted peers.
const CLAIMS: [HeaderName; 8] = [
    FORWARDED,
    X_FORWARDED_FOR,
    X_FORWARDED_HOST,
    X_FORWARDED_PROTO,
    X_FORWARDED_PROTOCOL,
    X_FORWARDED_PORT,
    X_FORWARDED_PREFIX,
    X_REAL_IP,
];

thread_local! {
    /// The text [`ClientView::write`] formats, kept between the requests of a thread.
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// The largest scratch buffer kept for the next request (a few hundred bytes is usual).
const SCRATCH_KEPT: usize = 4096;

/// How many `X-Forwarded-For` items are examined, from the right: a longer chain of trusted
/// proxies is not a real deployment, and the bound keeps a hostile header cheap.
const MAX_HOPS: usize = 32;

/// Which headers the upstream gets; all of them by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedHeaders {
    /// `X-Real-IP: <client>`.
    pub x_real_ip: bool,
    /// `X-Forwarded-For`: the trusted chain plus the peer.
    pub x_forwarded_for: bool,
    /// `X-Forwarded-Proto`: `http` or `https`.
    pub x_forwarded_proto: bool,
    /// `X-Forwarded-Protocol`: the same, as the seed nginx block names it.
    pub x_forwarded_protocol: bool,
    /// `X-Forwarded-Host`: the original `Host` (Micronaut only reads `X-Forwarded-*` when it is present).
    pub x_forwarded_host: bool,
    /// `X-Forwarded-Port`.
    pub x_forwarded_port: bool,
    /// `Forwarded` (RFC 7239), which Micronaut reads first.
    pub forwarded: bool,
}

impl Default for ForwardedHeaders {
    fn default() -> Self {
        Self {
            x_real_ip: true,
            x_forwarded_for: true,
            x_forwarded_proto: true,
            x_forwarded_protocol: true,
            x_forwarded_host: true,
            x_forwarded_port: true,
            forwarded: true,
        }
    }
}

/// A configuration that [`ForwardedLayerBuilder::build`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardedError {
    /// A trusted proxy is not a CIDR (`10.0.0.0/8`) or an address.
    #[error("trusted proxy {0:?} is not a CIDR or an IP address")]
    InvalidCidr(String),
    /// The listener scheme is not `http` or `https`.
    #[error("listener scheme {0:?} must be http or https")]
    InvalidScheme(String),
}

/// Configures a [`ForwardedLayer`].
#[derive(Debug, Clone, Default)]
pub struct ForwardedLayerBuilder {
    trusted: Vec<String>,
    scheme: Option<String>,
    headers: ForwardedHeaders,
    client_addr: bool,
    request_id_trust: bool,
}

/// A request extension: the client's address as a trusted peer reported it, for the layers
/// inside that limit or log per client; also put on the response, for the layers outside. Added only when
/// [`ForwardedLayerBuilder::client_addr_extension`] asks for it, and only when the client
/// is not the peer itself, so that the common case costs no allocation: read it with
/// [`client_addr`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

/// The client of a request that went through the forwarded layer (with
/// [`ForwardedLayerBuilder::client_addr_extension`]): what a trusted peer reported, else the
/// peer ([`PeerAddr`] or axum's `ConnectInfo`).
pub fn client_addr<B>(req: &Request<B>) -> Option<IpAddr> {
    req.extensions()
        .get::<ClientAddr>()
        .map(|c| c.0)
        .or_else(|| peer_addr(req))
}

impl ForwardedLayerBuilder {
    /// Trusts the proxies in `cidr` (`10.0.0.0/8`, `2001:db8::/32`, or one address) to report
    /// the client, scheme and host; none by default, so the peer is the client.
    pub fn trusted_proxy(mut self, cidr: impl Into<String>) -> Self {
        self.trusted.push(cidr.into());
        self
    }

    /// The scheme the gateway's own listener serves (`http` by default; `https` when the
    /// gateway terminates TLS).
    pub fn listener_scheme(mut self, scheme: impl Into<String>) -> Self {
        self.scheme = Some(scheme.into());
        self
    }

    /// Which headers are sent upstream.
    pub fn headers(mut self, headers: ForwardedHeaders) -> Self {
        self.headers = headers;
        self
    }

    /// Removes a client's own `X-Request-Id` unless its peer is a trusted proxy, so that the
    /// request-id layer inside generates one (the same trust rule as `X-Forwarded-For`; off
    /// by default: the header passes as any other).
    pub fn request_id_from_trusted_only(mut self, on: bool) -> Self {
        self.request_id_trust = on;
        self
    }

    /// Puts the resolved client on each request whose client is not its peer (behind a
    /// trusted proxy) as a [`ClientAddr`] extension, for [`client_addr`] (off by default: it
    /// costs an allocation per such request).
    pub fn client_addr_extension(mut self, on: bool) -> Self {
        self.client_addr = on;
        self
    }

    /// Validates the configuration.
    pub fn build(self) -> Result<ForwardedLayer, ForwardedError> {
        let trusted = self
            .trusted
            .iter()
            .map(|text| {
                let text = text.trim();
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| ForwardedError::InvalidCidr(text.to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let scheme = match self
            .scheme
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            Some(other) => return Err(ForwardedError::InvalidScheme(other.to_owned())),
        };
        Ok(ForwardedLayer {
            config: Arc::new(Config {
                trusted,
                scheme,
                headers: self.headers,
                client_addr: self.client_addr,
                request_id_trust: self.request_id_trust,
                warned_no_peer: AtomicBool::new(false),
            }),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn parse(text: &[u8]) -> Option<Self> {
        if text.eq_ignore_ascii_case(b"http") {
            Some(Self::Http)
        } else if text.eq_ignore_ascii_case(b"https") {
            Some(Self::Https)
        } else {
            None
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }

    fn default_port_value(self) -> HeaderValue {
        match self {
            Self::Http => HeaderValue::from_static("80"),
            Self::Https => HeaderValue::from_static("443"),
        }
    }
}

#[derive(Debug)]
struct Config {
    trusted: Vec<IpNet>,
    scheme: Scheme,
    headers: ForwardedHeaders,
    client_addr: bool,
    request_id_trust: bool,
    warned_no_peer: AtomicBool,
}

impl Config {
    fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.trusted.iter().any(|net| net.contains(&ip))
    }
}

/// Tells the upstream who the client is, over what scheme and host; see the
/// [crate docs](crate).
#[derive(Debug, Clone)]
pub struct ForwardedLayer {
    config: Arc<Config>,
}

impl ForwardedLayer {
    /// Starts a configuration: no trusted proxy, `http` listener, every header on.
    pub fn builder() -> ForwardedLayerBuilder {
        ForwardedLayerBuilder::default()
    }
}

impl<S> Layer<S> for ForwardedLayer {
    type Service = Forwarded<S>;

    fn layer(&self, inner: S) -> Forwarded<S> {
        Forwarded {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service of [`ForwardedLayer`].
#[derive(Debug, Clone)]
pub struct Forwarded<S> {
    inner: S,
    config: Arc<Config>,
}

pin_project! {
    /// Response future of [`Forwarded`]: the inner service's, or an immediate 400. With
    /// [`ForwardedLayerBuilder::client_addr_extension`], a [`ClientAddr`] that went on the
    /// request goes on its response too, for an outer layer (an access log) to read.
    pub struct ResponseFuture<F, T, E> {
        #[pin]
        inner: Either<F, Ready<Result<T, E>>>,
        client: Option<IpAddr>,
    }
}

impl<F, T, E> ResponseFuture<F, T, E> {
    fn answer(response: T) -> Self {
        Self {
            inner: Either::Right(ready(Ok(response))),
            client: None,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, Response<B>, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        if let (Ok(response), Some(client)) = (&mut result, this.client.take()) {
            response.extensions_mut().insert(ClientAddr(client));
        }
        Poll::Ready(result)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Forwarded<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: From<&'static str>,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, Response<ResBody>, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let Ok(host) = effective_host(&mut req) else {
            return ResponseFuture::answer(plain_text(StatusCode::BAD_REQUEST, "invalid host\n"));
        };
        let peer = peer_addr(&req);
        if peer.is_none() && !self.config.warned_no_peer.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "no peer address on the request: serve with kestra_edge::server::Server or \
                 axum's into_make_service_with_connect_info::<SocketAddr>()"
            );
        }
        let tls = req.extensions().get::<TlsConnection>().is_some();
        let view = ClientView::resolve(&self.config, req.headers_mut(), peer, host, tls);
        if view.request_id
            && self.config.request_id_trust
            && !peer.is_some_and(|p| self.config.is_trusted(p))
        {
            req.headers_mut().remove(X_REQUEST_ID);
        }
        let client = view
            .client
            .filter(|&client| self.config.client_addr && Some(client) != peer);
        view.write(&self.config.headers, req.headers_mut());
        if let Some(client) = client {
            req.extensions_mut().insert(ClientAddr(client));
        }
        ResponseFuture {
            inner: Either::Left(self.inner.call(req)),
            client,
        }
    }
}

/// The peer from [`PeerAddr`] (kestra-edge's server) or axum's `ConnectInfo<SocketAddr>`.
fn peer_addr<B>(req: &Request<B>) -> Option<IpAddr> {
    let extensions = req.extensions();
    extensions
        .get::<PeerAddr>()
        .map(|p| p.0)
        .or_else(|| {
            extensions
                .get::<axum::extract::ConnectInfo<SocketAddr>>()
                .map(|c| c.0)
        })
        .map(|addr| addr.ip().to_canonical())
}

/// The host the client asked for, made the single `Host` of the request.
///
/// An absolute-form target's authority (and an HTTP/2 `:authority`) wins over `Host`
/// (RFC 9112 §3.2.2). An HTTP/1.1 request without `Host`, with several, or with one that is
/// no `host[:port]` is refused (RFC 9112 §3.2: "A server MUST respond with a 400 (Bad
/// Request) status code to any HTTP/1.1 request message that lacks a Host header field and
/// to any request message that contains more than one Host header field line or a Host
/// header field with an invalid field value").
fn effective_host<B>(req: &mut Request<B>) -> Result<Option<Host>, ()> {
    let mut lines = req.headers().get_all(HOST).iter();
    let host = lines.next().cloned();
    if lines.next().is_some() {
        return Err(());
    }
    if let Some(authority) = req.uri().authority() {
        let value = HeaderValue::from_str(authority.as_str()).map_err(|_| ())?;
        let host = Host {
            value: value.clone(),
            port: authority.port_u16(),
        };
        req.headers_mut().insert(HOST, value);
        return Ok(Some(host));
    }
    match host {
        Some(value) => Host::parse(value).map(Some).ok_or(()),
        None if req.version() == Version::HTTP_11 => Err(()),
        None => Ok(None),
    }
}

/// A `host[:port]` the client addressed, with its explicit port.
#[derive(Debug)]
struct Host {
    /// Sent as `X-Forwarded-Host`.
    value: HeaderValue,
    port: Option<u16>,
}

impl Host {
    /// `value` if it is `host[:port]` with no user info; parsed once, for the port too.
    fn parse(value: HeaderValue) -> Option<Self> {
        let port = authority_port(value.as_bytes())?;
        Some(Self { value, port })
    }
}

/// The port of `text` when it is an authority without user info, as `http`'s `Authority`
/// parses it (`Some(None)` when it has no port); `None` when it is not one.
///
/// The same rules as `Authority::try_from(text)` followed by `port_u16()`, which a test
/// checks on random input, without the copy into a new `Bytes` that `try_from` makes.
fn authority_port(text: &[u8]) -> Option<Option<u16>> {
    if text.is_empty() {
        return None;
    }
    // Nearly every `Host` is a name or IPv4 address with at most one `:`: one pass without
    // branches says so; brackets and `%` take the full rules below.
    let (mut plain, mut colons) = (true, 0usize);
    for &b in text {
        plain &= AUTHORITY_CHAR[usize::from(b)] | (b == b':');
        colons += usize::from(b == b':');
    }
    if plain && colons <= 1 {
        return Some(port_after_last_colon(text));
    }
    // At most 8 colons before a `]`: `[FEDC:BA98:7654:3210:FEDC:BA98:7654:3210]:80`.
    let (mut colons, mut percent, mut open, mut close) = (0u32, false, false, false);
    for &b in text {
        match b {
            b':' if colons >= 8 => return None,
            b':' => colons += 1,
            // In an IPv6 zone (`[fe80::1%25eth0]`) only.
            b'%' => percent = true,
            b'[' if percent || open => return None,
            b'[' => open = true,
            b']' if !open || close => return None,
            b']' => {
                close = true;
                colons = 0;
                percent = false;
            }
            _ if !AUTHORITY_CHAR[usize::from(b)] => return None,
            _ => {}
        }
    }
    if open != close || colons > 1 || percent {
        return None;
    }
    Some(port_after_last_colon(text))
}

/// What follows the last `:` as a port, the way `Authority::port_u16` reads it.
fn port_after_last_colon(text: &[u8]) -> Option<u16> {
    let colon = text.iter().rposition(|&b| b == b':')?;
    // An authority is ASCII, so UTF-8.
    std::str::from_utf8(&text[colon + 1..]).ok()?.parse().ok()
}

/// The bytes an authority may hold besides `:`, `[`, `]` and `%`, as `http` allows them
/// (RFC 3986 §3.2: unreserved and sub-delims); never `@` (user info), `/`, `?` or `#`.
const AUTHORITY_CHAR: [bool; 256] = ascii_alphanumeric_and(b"!$&'()*+,-.;=_~");

/// Who the client is, as the gateway tells the upstream.
#[derive(Debug)]
struct ClientView {
    client: Option<IpAddr>,
    /// Every trusted hop after the client, the peer last; empty when the peer is the client.
    hops: Vec<IpAddr>,
    scheme: Scheme,
    host: Option<Host>,
    /// The port the client addressed, when known; else the scheme's default.
    port: Option<u16>,
    /// Whether the request carries `X-Request-Id` (seen while the claims were looked for).
    request_id: bool,
}

impl ClientView {
    /// Reads what a trusted peer reported, then removes every claim a client could make:
    /// hop-by-hop fields first (so `Connection: X-Forwarded-For` cannot remove what the
    /// gateway adds), then the forwarded headers, then header names with underscores.
    fn resolve(
        config: &Config,
        headers: &mut HeaderMap,
        peer: Option<IpAddr>,
        host: Option<Host>,
        tls: bool,
    ) -> Self {
        remove_hop_by_hop(headers);
        let mut view = Self {
            client: peer,
            hops: Vec::new(),
            scheme: if tls { Scheme::Https } else { config.scheme },
            host,
            port: None,
            request_id: false,
        };
        if let Some(peer) = peer.filter(|&p| config.is_trusted(p)) {
            view.trust_hop(config, headers, peer);
        }
        // The port the client addressed, never the one the gateway listens on (behind
        // Docker's `-p 8080:8000` they differ): the Host's, so that X-Forwarded-Host,
        // X-Forwarded-Port and `Forwarded: host=` agree; else what a trusted hop reported;
        // else the scheme's default (as Traefik does).
        view.port = view.host.as_ref().and_then(|h| h.port).or(view.port);
        view.request_id = remove_claims(headers);
        view
    }

    /// Takes the client, scheme, host and port a trusted `peer` reported (nginx's
    /// `real_ip_recursive on`: `X-Forwarded-For` walked from the right, trusted addresses
    /// skipped).
    fn trust_hop(&mut self, config: &Config, headers: &HeaderMap, peer: IpAddr) {
        let mut addresses: Vec<IpAddr> = list_items(headers, &X_FORWARDED_FOR)
            .filter_map(|item| parse_node(std::str::from_utf8(item).ok()?))
            .collect();
        let elements: Vec<ForwardedElement> = list_items(headers, &FORWARDED)
            .filter_map(|item| ForwardedElement::parse(std::str::from_utf8(item).ok()?))
            .collect();
        if addresses.is_empty() {
            addresses = elements.iter().filter_map(|e| e.for_node).collect();
        }
        let start = addresses.len().saturating_sub(MAX_HOPS);
        let addresses = &addresses[start..];
        if !addresses.is_empty() {
            let untrusted = addresses.iter().rposition(|&ip| !config.is_trusted(ip));
            let client = untrusted.unwrap_or(0);
            self.client = Some(addresses[client]);
            self.hops = addresses[client + 1..].to_vec();
            self.hops.push(peer);
        }

        let first = |name: &HeaderName| list_items(headers, name).next();
        let first_element = elements.first();
        let scheme = first(&X_FORWARDED_PROTO)
            .and_then(Scheme::parse)
            .or_else(|| {
                first_element?
                    .proto
                    .as_deref()
                    .and_then(|p| Scheme::parse(p.as_bytes()))
            })
            .or_else(|| first(&X_FORWARDED_PROTOCOL).and_then(Scheme::parse));
        if let Some(scheme) = scheme {
            self.scheme = scheme;
        }
        let host = first(&X_FORWARDED_HOST)
            .and_then(|h| Host::parse(HeaderValue::from_bytes(h).ok()?))
            .or_else(|| Host::parse(HeaderValue::from_str(first_element?.host.as_deref()?).ok()?));
        if let Some(host) = host {
            self.host = Some(host);
        }
        let port =
            first(&X_FORWARDED_PORT).and_then(|p| std::str::from_utf8(p).ok()?.parse::<u16>().ok());
        if port.is_some() {
            self.port = port;
        }
    }

    /// Adds the enabled headers.
    fn write(self, enabled: &ForwardedHeaders, headers: &mut HeaderMap) {
        // The values are formatted into one scratch buffer, then each is copied into a header
        // value of its own: slices of one shared buffer would update its reference count
        // atomically on every slice and drop, measured slower than copying a few bytes. The
        // buffer is the thread's, reused: no allocation for it per request.
        SCRATCH.with(|scratch| {
            let mut text = scratch.take();
            text.clear();
            self.write_with(enabled, headers, &mut text);
            // A hostile `Host` may have grown it: keep only a buffer of ordinary size.
            if text.capacity() <= SCRATCH_KEPT {
                scratch.set(text);
            }
        });
    }

    /// [`write`](Self::write), formatting into `text`.
    fn write_with(self, enabled: &ForwardedHeaders, headers: &mut HeaderMap, text: &mut Vec<u8>) {
        text.reserve(self.text_room(enabled));
        let mut client_in_forwarded = None;
        let forwarded = enabled.forwarded.then(|| {
            let host = self.host.as_ref().and_then(|h| h.value.to_str().ok());
            append(text, |t| {
                // The client's element with `proto` and `host`, then one `for=` per hop.
                client_in_forwarded =
                    write_element(t, self.client, Some(self.scheme.as_str()), host);
                for &hop in &self.hops {
                    t.extend_from_slice(b", ");
                    write_element(t, Some(hop), None, None);
                }
            })
        });
        // The client's address as `Forwarded` has it, else written now.
        let client = self
            .client
            .filter(|_| enabled.x_real_ip || enabled.x_forwarded_for)
            .map(|ip| client_in_forwarded.unwrap_or_else(|| append(text, |t| write_ip(t, ip))));
        // `client, hop, …, peer`: just the client when the peer is the client.
        let chain = client
            .clone()
            .filter(|_| enabled.x_forwarded_for)
            .map(|client| {
                if self.hops.is_empty() {
                    return client;
                }
                append(text, |t| {
                    for (i, &ip) in self.client.iter().chain(&self.hops).enumerate() {
                        if i > 0 {
                            t.extend_from_slice(b", ");
                        }
                        write_ip(t, ip);
                    }
                })
            });
        // Any port but the scheme's default, which nearly every request has and is a constant.
        let other_port = self
            .port
            .filter(|&port| enabled.x_forwarded_port && port != self.scheme.default_port())
            .map(|port| append(text, |t| write_decimal(t, port)));

        let value = |range: Range<usize>| HeaderValue::from_bytes(text.get(range)?).ok();
        // Room for every field added, so that the map grows (and rehashes) once at most: a
        // request's map is built by hyper exactly as large as the client's fields.
        headers.reserve(8);
        if let Some(chain) = chain.and_then(value) {
            headers.insert(X_FORWARDED_FOR, chain);
        }
        if let (true, Some(client)) = (enabled.x_real_ip, client) {
            headers.insert(
                X_REAL_IP,
                value(client).unwrap_or_else(|| HeaderValue::from_static("unknown")),
            );
        }
        let proto = HeaderValue::from_static(self.scheme.as_str());
        if enabled.x_forwarded_proto {
            headers.insert(X_FORWARDED_PROTO, proto.clone());
        }
        if enabled.x_forwarded_protocol {
            headers.insert(X_FORWARDED_PROTOCOL, proto);
        }
        if let (true, Some(host)) = (enabled.x_forwarded_host, self.host) {
            headers.insert(X_FORWARDED_HOST, host.value);
        }
        if enabled.x_forwarded_port {
            if let Some(port) = other_port.map_or(Some(self.scheme.default_port_value()), value) {
                headers.insert(X_FORWARDED_PORT, port);
            }
        }
        if let Some(forwarded) = forwarded.and_then(value) {
            headers.insert(FORWARDED, forwarded);
        }
    }

    /// Room for everything [`write`](Self::write) formats, so that its buffer is allocated
    /// once. An address is at most 39 bytes of text (IPv6): the client's text, a port and the
    /// first `Forwarded` element (47 for `for=`, `;proto=https;host=""`) fit in 128 with the
    /// host; each hop adds 41 to `X-Forwarded-For` and 49 to `Forwarded`.
    fn text_room(&self, enabled: &ForwardedHeaders) -> usize {
        if !(enabled.x_real_ip
            || enabled.x_forwarded_for
            || enabled.x_forwarded_port
            || enabled.forwarded)
        {
            return 0;
        }
        let host = self.host.as_ref().map_or(0, |h| h.value.len());
        128 + host + 96 * self.hops.len()
    }
}

/// Appends what `write` writes to `text`; the range it fills.
fn append(text: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) -> Range<usize> {
    let start = text.len();
    write(text);
    start..text.len()
}

/// Removes every claim a client could make: the [`CLAIMS`], and every header whose name has
/// an underscore (`X_Forwarded_For`): some backends fold `_` into `-`, which would let a
/// client smuggle the claims back in (nginx drops them too, `underscores_in_headers off`).
///
/// Says whether `X-Request-Id` is there, noted in the same look at the names.
fn remove_claims(headers: &mut HeaderMap) -> bool {
    // One look at each name first: a browser's request holds none of them, and removing
    // each claim by name would hash all eight names.
    let (mut claims, mut underscored, mut request_id) = (false, false, false);
    for name in headers.keys() {
        claims |= CLAIMS.contains(name);
        underscored |= has_underscore(name);
        request_id |= name == X_REQUEST_ID;
    }
    if claims {
        for name in &CLAIMS {
            headers.remove(name);
        }
    }
    if underscored {
        let names: Vec<HeaderName> = headers
            .keys()
            .filter(|name| has_underscore(name))
            .cloned()
            .collect();
        for name in names {
            headers.remove(name);
        }
    }
    request_id
}

/// Whether `name` has an underscore. Branch-free: every name of every request is looked at,
/// and a branch per byte costs more than the comparisons.
fn has_underscore(name: &HeaderName) -> bool {
    name.as_str()
        .bytes()
        .fold(false, |found, byte| found | (byte == b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::Full;
    use kestra_edge_headers::HOP_BY_HOP;
    use kestra_edge_server::LocalAddr;
    use std::{
        convert::Infallible,
        sync::{Arc, Mutex},
    };
    use tower::{service_fn, ServiceExt};

    type Seen = Arc<Mutex<Option<HeaderMap>>>;

    /// Runs one request through the layer; the headers the upstream saw, or the status.
    async fn run(
        layer: &ForwardedLayer,
        peer: Option<&str>,
        lines: &[(&str, &str)],
    ) -> Result<HeaderMap, StatusCode> {
        run_over(layer, peer, lines, false).await
    }

    /// [`run`], over TLS when `tls`.
    async fn run_over(
        layer: &ForwardedLayer,
        peer: Option<&str>,
        lines: &[(&str, &str)],
        tls: bool,
    ) -> Result<HeaderMap, StatusCode> {
        let seen: Seen = Arc::default();
        let recorder = seen.clone();
        let upstream = service_fn(move |req: Request<()>| {
            *recorder.lock().unwrap() = Some(req.headers().clone());
            async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
        });
        let mut request = Request::get("/kestra/ping").body(()).unwrap();
        for (name, value) in lines {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            );
        }
        if let Some(peer) = peer {
            request
                .extensions_mut()
                .insert(PeerAddr(peer.parse().unwrap()));
            request
                .extensions_mut()
                .insert(LocalAddr("127.0.0.1:8000".parse().unwrap()));
        }
        if tls {
            request.extensions_mut().insert(TlsConnection);
        }
        let response = layer.layer(upstream).oneshot(request).await.unwrap();
        let seen = seen.lock().unwrap().take();
        seen.ok_or(response.status())
    }

    fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
        let mut values = headers.get_all(name).iter();
        let value = values.next().map(|v| v.to_str().unwrap());
        assert!(values.next().is_none(), "{name} sent twice");
        value
    }

    /// The `ClientAddr` extension the inner service sees, for a request from `peer`.
    async fn seen_client(layer: &ForwardedLayer, peer: &str, xff: &str) -> Option<IpAddr> {
        let seen = Arc::new(Mutex::new(None));
        let recorder = seen.clone();
        let upstream = service_fn(move |req: Request<()>| {
            *recorder.lock().unwrap() = super::client_addr(&req);
            async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
        });
        let mut request = Request::get("/").header("host", "k").body(()).unwrap();
        request
            .headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_str(xff).unwrap());
        request
            .extensions_mut()
            .insert(PeerAddr(peer.parse().unwrap()));
        layer.layer(upstream).oneshot(request).await.unwrap();
        let client = *seen.lock().unwrap();
        client
    }

    #[tokio::test]
    async fn the_resolved_client_is_an_extension_only_when_asked_for() {
        let on = ForwardedLayer::builder()
            .trusted_proxy("10.0.0.0/8")
            .client_addr_extension(true)
            .build()
            .unwrap();
        let ip = |text: &str| Some(text.parse::<IpAddr>().unwrap());
        // A trusted peer reports the client; an untrusted one is the client, whatever it
        // says (from the peer address: no extension, no allocation).
        assert_eq!(
            seen_client(&on, "10.0.0.1:1", "192.0.2.7").await,
            ip("192.0.2.7")
        );
        assert_eq!(
            seen_client(&on, "198.51.100.1:1", "192.0.2.7").await,
            ip("198.51.100.1")
        );
        let off = ForwardedLayer::builder()
            .trusted_proxy("10.0.0.0/8")
            .build()
            .unwrap();
        // Without the extension, the peer.
        assert_eq!(
            seen_client(&off, "10.0.0.1:1", "192.0.2.7").await,
            ip("10.0.0.1")
        );
    }

    fn layer(trusted: &[&str]) -> ForwardedLayer {
        trusted
            .iter()
            .fold(ForwardedLayer::builder(), |b, cidr| b.trusted_proxy(*cidr))
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn tls_connections_are_https_and_the_port_is_the_one_the_client_addressed() {
        let layer = layer(&[]);
        let cases: &[(bool, &str, &str, &str)] = &[
            // (over TLS, Host, proto, port)
            (true, "kestra.example.com", "https", "443"),
            (true, "kestra.example.com:8443", "https", "8443"),
            (false, "kestra.example.com", "http", "80"),
            (false, "kestra.example.com:8080", "http", "8080"),
            (false, "[2001:db8::1]:8080", "http", "8080"),
        ];
        for &(tls, host, proto, port) in cases {
            let headers = run_over(&layer, Some("203.0.113.9:5000"), &[("host", host)], tls)
                .await
                .unwrap();
            assert_eq!(get(&headers, "x-forwarded-proto"), Some(proto), "{host}");
            assert_eq!(get(&headers, "x-forwarded-protocol"), Some(proto), "{host}");
            assert_eq!(get(&headers, "x-forwarded-host"), Some(host), "{host}");
            assert_eq!(get(&headers, "x-forwarded-port"), Some(port), "{host}");
            let host_param = if host.contains(':') {
                format!("\"{host}\"")
            } else {
                host.to_owned()
            };
            assert_eq!(
                get(&headers, "forwarded"),
                Some(format!("for=203.0.113.9;proto={proto};host={host_param}").as_str()),
                "{host}"
            );
        }
    }

    #[tokio::test]
    async fn untrusted_peers_cannot_claim_anything() {
        let layer = layer(&["10.0.0.0/8"]);
        let spoof: &[(&str, &str)] = &[
            ("host", "kestra.example.com"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "5.6.7.8"),
            ("x-real-ip", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4;proto=https;host=evil.example"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-protocol", "https"),
            ("x-forwarded-host", "evil.example"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/evil"),
            ("x_forwarded_for", "1.2.3.4"),
            ("x_real_ip", "1.2.3.4"),
            ("connection", "X-Forwarded-For, X-Real-IP, Forwarded"),
        ];
        let headers = run(&layer, Some("203.0.113.9:5000"), spoof).await.unwrap();
        assert_eq!(get(&headers, "x-real-ip"), Some("203.0.113.9"));
        assert_eq!(get(&headers, "x-forwarded-for"), Some("203.0.113.9"));
        assert_eq!(get(&headers, "x-forwarded-proto"), Some("http"));
        assert_eq!(get(&headers, "x-forwarded-protocol"), Some("http"));
        assert_eq!(
            get(&headers, "x-forwarded-host"),
            Some("kestra.example.com")
        );
        // The port the client addressed (none in Host: http's 80), not the listener's 8000.
        assert_eq!(get(&headers, "x-forwarded-port"), Some("80"));
        assert_eq!(
            get(&headers, "forwarded"),
            Some("for=203.0.113.9;proto=http;host=kestra.example.com")
        );
        assert_eq!(get(&headers, "x-forwarded-prefix"), None);
        assert!(headers.keys().all(|n| !n.as_str().contains('_')));
        assert_eq!(get(&headers, "connection"), None);
    }

    #[tokio::test]
    async fn each_hop_by_hop_field_is_removed_as_the_shared_rule_says() {
        let layer = layer(&[]);
        for name in &HOP_BY_HOP {
            let lines = [
                ("host", "h"),
                (name.as_str(), "trailers, x-a"),
                ("x-a", "1"),
            ];
            let mut expected = HeaderMap::new();
            for (name, value) in lines {
                expected.append(
                    HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_static(value),
                );
            }
            remove_hop_by_hop(&mut expected);
            let headers = run(&layer, Some("192.0.2.1:1"), &lines).await.unwrap();
            for seen in [name.as_str(), "x-a"] {
                assert_eq!(
                    headers.get_all(seen).iter().collect::<Vec<_>>(),
                    expected.get_all(seen).iter().collect::<Vec<_>>(),
                    "{name}: {seen}"
                );
            }
        }
    }

    #[tokio::test]
    async fn trusted_chains_are_walked_from_the_right() {
        // (trusted CIDRs, peer, X-Forwarded-For lines, client, chain sent upstream)
        type Case<'a> = (&'a [&'a str], &'a str, &'a [&'a str], &'a str, &'a str);
        let cases: &[Case<'_>] = &[
            // Chain of length 0: nothing trusted, the peer is the client.
            (&[], "10.0.0.1:1", &["1.2.3.4"], "10.0.0.1", "10.0.0.1"),
            // Length 1: a trusted load balancer.
            (
                &["10.0.0.0/8"],
                "10.0.0.1:1",
                &["203.0.113.7"],
                "203.0.113.7",
                "203.0.113.7, 10.0.0.1",
            ),
            // A client-supplied prefix of the header is dropped.
            (
                &["10.0.0.0/8"],
                "10.0.0.1:1",
                &["1.1.1.1, 203.0.113.7"],
                "203.0.113.7",
                "203.0.113.7, 10.0.0.1",
            ),
            // Length 2 over two lines.
            (
                &["10.0.0.0/8"],
                "10.0.0.1:1",
                &["6.6.6.6, 203.0.113.7", "10.0.0.2"],
                "203.0.113.7",
                "203.0.113.7, 10.0.0.2, 10.0.0.1",
            ),
            // Length 3, mixed IPv4 and IPv6, ports and junk.
            (
                &["10.0.0.0/8", "fd00::/8"],
                "[fd00::1]:443",
                &[
                    "unknown, [2001:db8::7]:4711, _hidden",
                    "10.1.1.1:8080, garbage, [fd00::2]",
                ],
                "2001:db8::7",
                "2001:db8::7, 10.1.1.1, fd00::2, fd00::1",
            ),
            // IPv6 zone dropped.
            (
                &["127.0.0.1"],
                "127.0.0.1:9",
                &["fe80::1%eth0"],
                "fe80::1",
                "fe80::1, 127.0.0.1",
            ),
            // Nothing valid: the peer.
            (
                &["10.0.0.0/8"],
                "10.0.0.1:1",
                &["unknown, , garbage"],
                "10.0.0.1",
                "10.0.0.1",
            ),
            // Everything trusted: the leftmost.
            (
                &["10.0.0.0/8"],
                "10.0.0.1:1",
                &["10.9.9.9, 10.0.0.2"],
                "10.9.9.9",
                "10.9.9.9, 10.0.0.2, 10.0.0.1",
            ),
            // IPv4-mapped peer matches an IPv4 CIDR.
            (
                &["10.0.0.0/8"],
                "[::ffff:10.0.0.1]:1",
                &["203.0.113.7"],
                "203.0.113.7",
                "203.0.113.7, 10.0.0.1",
            ),
        ];
        for (trusted, peer, xff, client, chain) in cases {
            let mut lines = vec![("host", "kestra.example.com")];
            lines.extend(xff.iter().map(|v| ("x-forwarded-for", *v)));
            let headers = run(&layer(trusted), Some(peer), &lines).await.unwrap();
            assert_eq!(get(&headers, "x-real-ip"), Some(*client), "{peer} {xff:?}");
            assert_eq!(
                get(&headers, "x-forwarded-for"),
                Some(*chain),
                "{peer} {xff:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_trusted_hop_reports_scheme_host_and_port() {
        let layer = layer(&["10.0.0.0/8"]);
        let headers = run(
            &layer,
            Some("10.0.0.1:1"),
            &[
                ("host", "internal:8000"),
                ("x-forwarded-for", "2001:db8::1"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "kestra.example.com"),
            ],
        )
        .await
        .unwrap();
        assert_eq!(get(&headers, "x-forwarded-proto"), Some("https"));
        assert_eq!(get(&headers, "x-forwarded-protocol"), Some("https"));
        assert_eq!(
            get(&headers, "x-forwarded-host"),
            Some("kestra.example.com")
        );
        assert_eq!(get(&headers, "x-forwarded-port"), Some("443"));
        assert_eq!(
            get(&headers, "forwarded"),
            Some("for=\"[2001:db8::1]\";proto=https;host=kestra.example.com, for=10.0.0.1")
        );

        // Only `Forwarded` from the hop.
        let headers = run(
            &layer,
            Some("10.0.0.1:1"),
            &[
                ("host", "internal:8000"),
                (
                    "forwarded",
                    "for=\"[2001:db8::1]:4711\";proto=https;host=\"kestra.example.com:8443\"",
                ),
            ],
        )
        .await
        .unwrap();
        assert_eq!(get(&headers, "x-real-ip"), Some("2001:db8::1"));
        assert_eq!(
            get(&headers, "x-forwarded-host"),
            Some("kestra.example.com:8443")
        );
        assert_eq!(get(&headers, "x-forwarded-proto"), Some("https"));
    }

    #[tokio::test]
    async fn headers_can_be_switched_off() {
        let layer = ForwardedLayer::builder()
            .headers(ForwardedHeaders {
                forwarded: false,
                x_forwarded_port: false,
                ..ForwardedHeaders::default()
            })
            .build()
            .unwrap();
        let headers = run(
            &layer,
            Some("192.0.2.1:1"),
            &[("host", "h"), ("forwarded", "for=1.1.1.1")],
        )
        .await
        .unwrap();
        assert_eq!(
            get(&headers, "forwarded"),
            None,
            "the client's copy is still removed"
        );
        assert_eq!(get(&headers, "x-forwarded-port"), None);
        assert_eq!(get(&headers, "x-real-ip"), Some("192.0.2.1"));
    }

    #[tokio::test]
    async fn host_rules() {
        let layer = layer(&[]);
        let peer = Some("192.0.2.1:1");
        assert_eq!(
            run(&layer, peer, &[]).await.unwrap_err(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            run(&layer, peer, &[("host", "a"), ("host", "b")])
                .await
                .unwrap_err(),
            StatusCode::BAD_REQUEST
        );
        for invalid in ["user@host", "a b", "host/path", ""] {
            assert_eq!(
                run(&layer, peer, &[("host", invalid)]).await.unwrap_err(),
                StatusCode::BAD_REQUEST,
                "{invalid:?}"
            );
        }
        for valid in [
            "kestra.example.com",
            "kestra.example.com:8443",
            "[2001:db8::1]:443",
            "10.0.0.1",
        ] {
            let headers = run(&layer, peer, &[("host", valid)]).await.unwrap();
            assert_eq!(get(&headers, "x-forwarded-host"), Some(valid));
        }
    }

    #[tokio::test]
    async fn absolute_form_authority_wins_and_http10_may_omit_host() {
        let layer = layer(&[]);
        let seen: Seen = Arc::default();
        let recorder = seen.clone();
        let upstream = service_fn(move |req: Request<()>| {
            *recorder.lock().unwrap() = Some(req.headers().clone());
            async { Ok::<_, Infallible>(Response::new(Full::<Bytes>::default())) }
        });
        let service = layer.layer(upstream);
        let mut request = Request::get("http://public.example/kestra")
            .header("host", "other.example")
            .body(())
            .unwrap();
        request
            .extensions_mut()
            .insert(PeerAddr("192.0.2.1:1".parse().unwrap()));
        service.clone().oneshot(request).await.unwrap();
        let headers = seen.lock().unwrap().take().unwrap();
        assert_eq!(get(&headers, "host"), Some("public.example"));
        assert_eq!(get(&headers, "x-forwarded-host"), Some("public.example"));

        let mut request = Request::get("/kestra")
            .version(Version::HTTP_10)
            .body(())
            .unwrap();
        request
            .extensions_mut()
            .insert(PeerAddr("192.0.2.1:1".parse().unwrap()));
        let response = service.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[test]
    fn configuration_is_validated() {
        for ok in [
            "10.0.0.0/8",
            "10.1.2.3/8",
            "192.0.2.1",
            "2001:db8::/32",
            "::1",
        ] {
            assert!(
                ForwardedLayer::builder().trusted_proxy(ok).build().is_ok(),
                "{ok}"
            );
        }
        for bad in ["10.0.0.0/33", "10.0.0", "example.com", "", "2001:db8::/129"] {
            assert_eq!(
                ForwardedLayer::builder()
                    .trusted_proxy(bad)
                    .build()
                    .unwrap_err(),
                ForwardedError::InvalidCidr(bad.to_owned())
            );
        }
        assert!(ForwardedLayer::builder()
            .listener_scheme("ftp")
            .build()
            .is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn claim_value() -> impl Strategy<Value = String> {
            prop_oneof![
                "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}(:[0-9]{1,5})?",
                "\\[?[0-9a-f:]{2,20}\\]?",
                Just("unknown".to_owned()),
                Just("for=1.2.3.4;proto=https".to_owned()),
                "[ -~]{0,20}",
            ]
        }

        fn claim_name() -> impl Strategy<Value = &'static str> {
            prop_oneof![
                Just("x-forwarded-for"),
                Just("x-real-ip"),
                Just("forwarded"),
                Just("x_forwarded_for"),
                Just("x-forwarded-host"),
                Just("connection"),
            ]
        }

        /// What `Host::parse` did before it had its own validator.
        fn authority_port_by_http(text: &[u8]) -> Option<Option<u16>> {
            if text.is_empty() || text.contains(&b'@') {
                return None;
            }
            let authority = http::uri::Authority::try_from(text).ok()?;
            Some(authority.port_u16())
        }

        #[test]
        fn authority_ports_at_the_edges() {
            for text in [
                "kestra.example.com",
                "kestra.example.com:8443",
                "h:",
                "h:+80",
                "h:65536",
                "h:1:2",
                "[2001:db8::1]:443",
                "[2001:db8::1]",
                "[fe80::1%25eth0]:80",
                "fe80%25::1",
                "[1:2:3:4:5:6:7:8:9]",
                "[a]:b:c",
                "[[a]]",
                "]a[",
                "user@host",
                "a b",
                "host/path",
                "a?b",
                "a#b",
                "",
                "\u{e9}",
            ] {
                assert_eq!(
                    authority_port(text.as_bytes()),
                    authority_port_by_http(text.as_bytes()),
                    "{text:?}"
                );
            }
        }

        proptest! {
            #[test]
            fn authority_ports_are_https_own(
                text in "[a-z0-9.:%\\[\\]@/?#+ \"~!$&'()*,;=_-]{0,24}",
            ) {
                prop_assert_eq!(
                    authority_port(text.as_bytes()),
                    authority_port_by_http(text.as_bytes())
                );
            }

            #[test]
            fn authority_ports_of_bracketed_hosts(
                text in "\\[?[a-f0-9:%.]{0,12}\\]?(:[0-9+]{0,6})?",
            ) {
                prop_assert_eq!(
                    authority_port(text.as_bytes()),
                    authority_port_by_http(text.as_bytes())
                );
            }

            #[test]
            fn authority_ports_of_any_bytes(text in proptest::collection::vec(any::<u8>(), 0..16)) {
                prop_assert_eq!(authority_port(&text), authority_port_by_http(&text));
            }

            #[test]
            fn an_untrusted_peer_is_always_the_client(
                peer in any::<[u8; 4]>(),
                claims in proptest::collection::vec((claim_name(), claim_value()), 0..8),
            ) {
                let peer = std::net::Ipv4Addr::from(peer);
                // Anything but 10/8 is untrusted.
                prop_assume!(peer.octets()[0] != 10);
                let mut lines: Vec<(&str, &str)> = vec![("host", "kestra.example.com")];
                let claims: Vec<(&str, String)> = claims;
                for (name, value) in &claims {
                    if HeaderValue::from_str(value).is_ok() {
                        lines.push((name, value.as_str()));
                    }
                }
                let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let headers = runtime
                    .block_on(run(&layer(&["10.0.0.0/8"]), Some(&format!("{peer}:1")), &lines))
                    .unwrap();
                let peer = peer.to_string();
                prop_assert_eq!(get(&headers, "x-real-ip"), Some(peer.as_str()));
                prop_assert_eq!(get(&headers, "x-forwarded-for"), Some(peer.as_str()));
                let forwarded = format!("for={peer};proto=http;host=kestra.example.com");
                prop_assert_eq!(get(&headers, "forwarded"), Some(forwarded.as_str()));
                prop_assert_eq!(get(&headers, "x-forwarded-host"), Some("kestra.example.com"));
            }
        }
    }
}
