//! kestra-edge: the reverse proxy in front of Kestra, as tower middleware.
//!
//! [`KestraEdge`] composes the kestra-edge layers, in the order they must run, around the
//! streaming [`proxy::ReverseProxy`], so a custom gateway gets the whole stack in one call.
//! It replaces the nginx block of Kestra's documentation (`location /kestra`, `proxy_pass`,
//! `proxy_http_version 1.1`, `Host $http_host`, `proxy_read_timeout 600s`,
//! `proxy_buffering off`). From the outside in:
//!
//! 1. [`upgrade`]: allowed upgrades (WebSocket, also over HTTP/2 extended CONNECT) validated
//!    and tunnelled; `h2c` never forwarded; first, because it must see `Upgrade` before
//!    hop-by-hop removal;
//! 2. [`forwarded`]: hop-by-hop fields removed, `Host` checked (400), then who the client is
//!    (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`) with the trusted-proxy model; first, so
//!    that nothing a client sends can remove or forge what the gateway adds;
//! 3. [`prefix`]: the context path (keep or strip), when one is configured; requests outside
//!    it are answered 404, unsafe paths 400;
//! 4. [`sse`]: event streams forwarded event by event, with heartbeats at event boundaries
//!    and their own idle and lifetime limits;
//! 5. [`auth`]: forward authentication (oauth2-proxy, Authelia, Authentik) and Kestra's
//!    credentials injected, when [configured](KestraEdgeBuilder::forward_auth); after the
//!    forwarded layer, whose `X-Forwarded-*` it sends to the auth service, and the prefix
//!    layer, so that nothing outside the context path costs an auth round trip;
//! 6. [`proxy`]: limits (414 for an over-long target, 413 for a body over `max_body`),
//!    `Host`, timeouts, streaming to the upstream.
//!
//! The request head limits (431 for too many or too large header fields, the header read
//! timeout against slowloris) belong to the accept loop: [`server::Server`]. So does TLS:
//! serve with [`tls::TlsAcceptor`] as the server's transport for HTTPS with HTTP/2 (ALPN),
//! and the forwarded layer tells Kestra `https`.
//!
//! Several Kestra webserver replicas: add each with [`KestraEdgeBuilder::upstream`] (or
//! give a host name that resolves to one address per replica), configure the
//! [`balance`] settings with [`KestraEdgeBuilder::balance`], and build one stack per worker
//! thread with [`KestraEdgeBuilder::build_per_worker`]: the replicas are resolved and
//! probed first, and every stack shares one balancer. A single upstream without balancing
//! settings keeps the direct path ([`proxy::ReverseProxy`] with nothing in between).
//!
//! ```no_run
//! use kestra_edge::{balance::HealthCheck, KestraEdge, PrefixMode};
//!
//! # async fn run() -> Result<(), kestra_edge::BuildError> {
//! let mut check = HealthCheck::new("/health/readiness");
//! check.port = Some(8081);
//! let stacks = KestraEdge::builder("http://kestra-webserver-headless:8080")
//!     .context_path("/kestra", PrefixMode::Keep)
//!     .balance(|b| b.health_check(check))
//!     .build_per_worker::<kestra_edge::server::IncomingBody>(2)
//!     .await?;
//! # let _ = stacks;
//! # Ok(())
//! # }
//! ```
//!
//! Embedding it in your own axum app:
//!
//! ```
//! use axum::{routing::get, Router};
//! use kestra_edge::{KestraEdge, PrefixMode};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), kestra_edge::BuildError> {
//! let kestra = KestraEdge::builder("http://127.0.0.1:8080")
//!     .read_timeout(Duration::from_secs(600))
//!     .context_path("/kestra", PrefixMode::Keep)
//!     .build_router()?;
//!
//! // Your own routes win; everything else goes to Kestra.
//! let app: Router = Router::new()
//!     .route("/healthz", get(|| async { "ok" }))
//!     .merge(kestra);
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! Serving it yourself with the same accept loop as the `kestra-edge` binary (HTTP/1.1 and
//! h2c, upgrades, header read timeout, graceful shutdown):
//!
//! ```no_run
//! use kestra_edge::{server::Server, KestraEdge};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let edge = KestraEdge::builder("http://127.0.0.1:8080").build::<kestra_edge::server::IncomingBody>()?;
//! let server = Server::bind("127.0.0.1:8000".parse()?).await?;
//! server.serve(edge, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(())
//! # }
//! ```

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

mod upstream;

use axum::Router;
use http::{Request, Response};
use http_body::Body;
use kestra_edge_telemetry::EdgeRequestIds;
use std::{
    convert::Infallible,
    error::Error as StdError,
    fmt,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tower::{util::Either, Layer, Service};
use tower_http::request_id::{
    PropagateRequestId, PropagateRequestIdLayer, SetRequestId, SetRequestIdLayer,
};

pub use kestra_edge_auth as auth;
pub use kestra_edge_auth::ForwardAuthLayer;
pub use kestra_edge_balance as balance;
pub use kestra_edge_egress as egress;
pub use kestra_edge_forwarded as forwarded;
pub use kestra_edge_forwarded::ForwardedHeaders;
pub use kestra_edge_prefix as prefix;
pub use kestra_edge_prefix::{ContextPath, PrefixMode};
pub use kestra_edge_proxy as proxy;
pub use kestra_edge_proxy::ProxyBody;
pub use kestra_edge_server as server;
pub use kestra_edge_sse as sse;
pub use kestra_edge_telemetry as telemetry;
pub use kestra_edge_tls as tls;
pub use kestra_edge_upgrade as upgrade;
pub use kestra_edge_upgrade::Tunnels;
pub use upstream::{Upstream, UpstreamBody, UpstreamFuture};

use kestra_edge_auth::ForwardAuth;
use kestra_edge_forwarded::{Forwarded, ForwardedLayer, ForwardedLayerBuilder};
use kestra_edge_prefix::{Prefix, PrefixLayer};
use kestra_edge_proxy::{ReverseProxy, ReverseProxyBuilder};
use kestra_edge_sse::{SseBody, SseGuard, SseGuardLayer};
use kestra_edge_upgrade::{Upgrade, UpgradeLayer};

/// A configuration that [`KestraEdgeBuilder::build`] refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The proxy settings (upstream URL, timeouts).
    #[error(transparent)]
    Proxy(#[from] proxy::BuildError),
    /// The context path.
    #[error(transparent)]
    ContextPath(#[from] prefix::ContextPathError),
    /// The trusted proxies or listener scheme.
    #[error(transparent)]
    Forwarded(#[from] forwarded::ForwardedError),
    /// The balancing settings, or no replica to start with.
    #[error(transparent)]
    Balance(#[from] balance::BuildError),
    /// Balancing resolves and probes the replicas first: build with
    /// [`KestraEdgeBuilder::build_per_worker`].
    #[error("several upstreams or balancing settings: build with build_per_worker")]
    NeedsBalancer,
}

/// The proxy settings given so far, kept to configure every replica's proxy the same way.
#[derive(Clone)]
struct ProxySettings(Vec<Arc<dyn Fn(ReverseProxyBuilder) -> ReverseProxyBuilder + Send + Sync>>);

impl fmt::Debug for ProxySettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProxySettings({})", self.0.len())
    }
}

/// Configures a [`KestraEdge`] stack; every setting is validated by [`build`](Self::build).
#[derive(Debug, Clone)]
pub struct KestraEdgeBuilder {
    proxy: ReverseProxyBuilder,
    settings: ProxySettings,
    balance: balance::BalanceBuilder,
    balanced: bool,
    forwarded: ForwardedLayerBuilder,
    sse: SseGuardLayer,
    upgrade: UpgradeLayer,
    read_timeout: Duration,
    tunnel_idle_timeout: Option<Duration>,
    context_path: Option<(String, PrefixMode)>,
    auth: ForwardAuthLayer,
    request_ids: Option<EdgeRequestIds>,
    /// The SSE guard limits per client: it needs the resolved client.
    per_client: bool,
    /// An access log outside the stack reads the client and the replica off the responses.
    report: bool,
}

impl KestraEdgeBuilder {
    /// See [`ReverseProxyBuilder::connect_timeout`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.proxy = self.proxy.connect_timeout(timeout);
        self.settings
            .0
            .push(Arc::new(move |p| p.connect_timeout(timeout)));
        self
    }

    /// Also trusts the certificates of the PEM file at `path` for an `https://` upstream
    /// (a cluster's private CA); repeatable. See [`ReverseProxyBuilder::upstream_ca`].
    pub fn upstream_ca(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        let path = path.into();
        self.proxy = self.proxy.upstream_ca(path.clone());
        self.settings
            .0
            .push(Arc::new(move |p| p.upstream_ca(path.clone())));
        self
    }

    /// See [`ReverseProxyBuilder::read_timeout`].
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.proxy = self.proxy.read_timeout(timeout);
        self.settings
            .0
            .push(Arc::new(move |p| p.read_timeout(timeout)));
        self.read_timeout = timeout;
        self
    }

    /// The largest request body (default 10 GiB, Kestra's own limit); see
    /// [`ReverseProxyBuilder::max_body`]: 413, and a streamed body over it never completes
    /// upstream.
    pub fn max_body(mut self, bytes: u64) -> Self {
        self.proxy = self.proxy.max_body(bytes);
        self.settings.0.push(Arc::new(move |p| p.max_body(bytes)));
        self
    }

    /// The longest a client may leave its request body without a byte (default 60 s); see
    /// [`ReverseProxyBuilder::body_timeout`]: 408, and the upstream request is aborted.
    pub fn body_timeout(mut self, timeout: Duration) -> Self {
        self.proxy = self.proxy.body_timeout(timeout);
        self.settings
            .0
            .push(Arc::new(move |p| p.body_timeout(timeout)));
        self
    }

    /// The longest request target (default 16 KiB); see [`ReverseProxyBuilder::max_uri`]:
    /// 414.
    pub fn max_uri(mut self, bytes: usize) -> Self {
        self.proxy = self.proxy.max_uri(bytes);
        self.settings.0.push(Arc::new(move |p| p.max_uri(bytes)));
        self
    }

    /// How long an idle upstream connection stays pooled (default 90 s); see
    /// [`ReverseProxyBuilder::pool_idle_timeout`].
    pub fn upstream_idle_timeout(mut self, timeout: Duration) -> Self {
        self.proxy = self.proxy.pool_idle_timeout(timeout);
        self.settings
            .0
            .push(Arc::new(move |p| p.pool_idle_timeout(timeout)));
        self
    }

    /// How many idle upstream connections each worker thread keeps pooled (default: no
    /// limit); see [`ReverseProxyBuilder::pool_max_idle`]. The oldest idle one is closed
    /// when another would pass the limit.
    pub fn upstream_max_idle(mut self, max: usize) -> Self {
        self.proxy = self.proxy.pool_max_idle(max);
        self.settings
            .0
            .push(Arc::new(move |p| p.pool_max_idle(max)));
        self
    }

    /// See [`ReverseProxyBuilder::preserve_host`].
    pub fn preserve_host(mut self, preserve: bool) -> Self {
        self.proxy = self.proxy.preserve_host(preserve);
        self.settings
            .0
            .push(Arc::new(move |p| p.preserve_host(preserve)));
        self
    }

    /// Trusts the proxies in `cidr` to report the client; see [`forwarded`]. None by default.
    pub fn trusted_proxy(mut self, cidr: impl Into<String>) -> Self {
        self.forwarded = self.forwarded.trusted_proxy(cidr);
        self
    }

    /// Which forwarded headers the upstream gets (all by default).
    pub fn forwarded_headers(mut self, headers: ForwardedHeaders) -> Self {
        self.forwarded = self.forwarded.headers(headers);
        self
    }

    /// The scheme of the listener the stack is served on (`http` by default; `https` when
    /// your gateway terminates TLS itself), reported as `X-Forwarded-Proto`. Requests served
    /// through [`tls::TlsAcceptor`] are known to be `https` without it.
    pub fn listener_scheme(mut self, scheme: impl Into<String>) -> Self {
        self.forwarded = self.forwarded.listener_scheme(scheme);
        self
    }

    /// See [`SseGuardLayer::heartbeat`] (default 15 s).
    pub fn sse_heartbeat(mut self, every: Option<Duration>) -> Self {
        self.sse = self.sse.heartbeat(every);
        self
    }

    /// See [`SseGuardLayer::idle_timeout`] (default 60 minutes).
    pub fn sse_idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.sse = self.sse.idle_timeout(idle);
        self
    }

    /// See [`SseGuardLayer::max_lifetime`] (default none).
    pub fn sse_max_lifetime(mut self, cap: Option<Duration>) -> Self {
        self.sse = self.sse.max_lifetime(cap);
        self
    }

    /// See [`SseGuardLayer::max_streams_per_client`] (default none; the binary's is 64): the
    /// client is the one the forwarded layer resolves, trusted proxies considered.
    pub fn sse_max_streams_per_client(mut self, max: Option<u32>) -> Self {
        self.sse = self.sse.max_streams_per_client(max);
        self.per_client = max.is_some_and(|m| m > 0);
        self.forwarded = self
            .forwarded
            .client_addr_extension(self.per_client || self.report);
        self
    }

    /// Puts on every response what an access log around the stack (kestra-edge-telemetry's
    /// `TelemetryLayer::access_log`) reports: the client a trusted proxy reported
    /// ([`forwarded::ClientAddr`]) and the replica that answered ([`proxy::ServedBy`]). Off
    /// by default: it costs an allocation on the requests it concerns.
    pub fn report_to_access_log(mut self, on: bool) -> Self {
        self.report = on;
        self.forwarded = self
            .forwarded
            .client_addr_extension(self.per_client || self.report);
        self
    }

    /// Gives every request an `X-Request-Id`: a client's own is kept only when its peer is a
    /// trusted proxy (the `X-Forwarded-For` rule), else one is generated
    /// ([`EdgeRequestIds`]); Kestra gets it and the response carries it back, the gateway's
    /// own answers (502, 504, 413 …) included (tower-http's request-id layers, inside the
    /// forwarded layer). Off by default.
    pub fn request_id(mut self, on: bool) -> Self {
        self.request_ids = on.then(EdgeRequestIds::new);
        self.forwarded = self.forwarded.request_id_from_trusted_only(on);
        self
    }

    /// See [`SseGuardLayer::max_streams`] (default none).
    pub fn sse_max_streams(mut self, max: Option<u32>) -> Self {
        self.sse = self.sse.max_streams(max);
        self
    }

    /// The `Upgrade` protocols tunnelled (default `websocket`; `h2c` never).
    pub fn upgrade_protocols<I, T>(mut self, protocols: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.upgrade = self.upgrade.protocols(protocols);
        self
    }

    /// Closes a tunnel after this long without a byte either way (default: the read timeout).
    pub fn tunnel_idle_timeout(mut self, idle: Duration) -> Self {
        self.tunnel_idle_timeout = Some(idle);
        self
    }

    /// Closes every tunnel after this long (default: no cap).
    pub fn tunnel_max_lifetime(mut self, cap: Option<Duration>) -> Self {
        self.upgrade = self.upgrade.max_lifetime(cap);
        self
    }

    /// Serves Kestra under `path` (such as `/kestra`), keeping or stripping it; see
    /// [`prefix`]. Without it, every path is forwarded.
    pub fn context_path(mut self, path: impl Into<String>, mode: PrefixMode) -> Self {
        self.context_path = Some((path.into(), mode));
        self
    }

    /// Checks every request with a forward-auth service and presents Kestra's credentials
    /// upstream, as `layer` is configured (see [`auth`]); off by default. Clones of this
    /// builder share the layer's connection pool, allow cache and credentials.
    pub fn forward_auth(mut self, layer: ForwardAuthLayer) -> Self {
        self.auth = layer;
        self
    }

    /// Adds another Kestra webserver replica (`http://host:port`); with more than one, the
    /// stack balances over them (see [`balance`]) and is built with
    /// [`build_per_worker`](Self::build_per_worker).
    pub fn upstream(mut self, url: impl Into<String>) -> Self {
        self.balance = self.balance.upstream(url);
        self.balanced = true;
        self
    }

    /// Balances, even over one upstream (a host name resolving to one address per
    /// replica), with the settings `configure` makes: health checks, retries, affinity, DNS
    /// refresh, the resolver. Every replica is proxied with this builder's proxy settings;
    /// the affinity cookie's path is the context path.
    pub fn balance(
        mut self,
        configure: impl FnOnce(balance::BalanceBuilder) -> balance::BalanceBuilder,
    ) -> Self {
        self.balance = configure(self.balance);
        self.balanced = true;
        self
    }

    /// Whether the stack balances over replicas.
    pub fn is_balanced(&self) -> bool {
        self.balanced
    }

    /// Builds one stack per worker thread (`workers` at least 1). Balanced, the replicas are
    /// resolved and probed first and every stack shares one balancer (each worker keeps its
    /// own connection pool per replica); otherwise each is [`build`](Self::build).
    pub async fn build_per_worker<B>(self, workers: usize) -> Result<Vec<KestraEdge<B>>, BuildError>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let workers = workers.max(1);
        if !self.balanced {
            return (0..workers).map(|_| self.clone().build()).collect();
        }
        let settings = self.settings.clone();
        let mut balance = self
            .balance
            .clone()
            .workers(workers)
            .report_replica(self.report)
            .proxy(move |url| {
                settings
                    .0
                    .iter()
                    .fold(ReverseProxyBuilder::new(url), |builder, setting| {
                        setting(builder)
                    })
            });
        if let Some(affinity) = balance.affinity_settings().cloned() {
            // Keep mode: the browser's path is the context path. Strip mode: the prefix layer
            // maps the upstream's cookie paths back under the prefix, so `/` becomes it.
            let path = match &self.context_path {
                Some((path, PrefixMode::Keep)) => path.clone(),
                _ => "/".to_owned(),
            };
            balance = balance.affinity(Some(balance::Affinity { path, ..affinity }));
        }
        let authority = balance
            .upstreams()
            .first()
            .and_then(|u| u.parse::<http::Uri>().ok())
            .and_then(|u| u.authority().map(ToString::to_string))
            .unwrap_or_default();
        let balancer = balance.build::<B>().await?;
        (0..workers)
            .map(|worker| {
                self.clone().compose(
                    Upstream::Balanced(balancer.service(worker)),
                    authority.clone(),
                )
            })
            .collect()
    }

    /// Builds the stack for request bodies of type `B` ([`server::IncomingBody`] when serving with
    /// [`server::Server`], axum's `Body` inside a `Router`). Several upstreams or balancing
    /// settings need [`build_per_worker`](Self::build_per_worker) instead
    /// ([`BuildError::NeedsBalancer`]).
    pub fn build<B>(self) -> Result<KestraEdge<B>, BuildError>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        if self.balanced {
            return Err(BuildError::NeedsBalancer);
        }
        let proxy: ReverseProxy<B> = self.proxy.clone().build()?;
        let authority = proxy.upstream().to_string();
        self.compose(Upstream::Single(proxy), authority)
    }

    /// The layers around `upstream`, whose (first) authority is `authority`.
    fn compose<B>(
        self,
        upstream: Upstream<B>,
        authority: String,
    ) -> Result<KestraEdge<B>, BuildError>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn StdError + Send + Sync>>,
    {
        let forwarded = self.forwarded.build()?;
        let upstream_service = upstream.clone();
        let guarded = self.sse.layer(self.auth.layer(upstream));
        let upstream = authority;
        let routed = match self.context_path {
            Some((path, mode)) => {
                let layer =
                    PrefixLayer::new(ContextPath::new(path)?, mode).upstream_authority(upstream);
                Either::Left(layer.layer(guarded))
            }
            None => Either::Right(guarded),
        };
        let identified = match self.request_ids {
            Some(ids) => Either::Left(
                SetRequestIdLayer::x_request_id(ids)
                    .layer(PropagateRequestIdLayer::x_request_id().layer(routed)),
            ),
            None => Either::Right(routed),
        };
        let upgrade = self
            .upgrade
            .idle_timeout(self.tunnel_idle_timeout.unwrap_or(self.read_timeout));
        Ok(KestraEdge {
            tunnels: upgrade.tunnels().clone(),
            stack: upgrade.layer(forwarded.layer(identified)),
            upstream: upstream_service,
        })
    }

    /// Builds the stack as an axum [`Router`] that sends every request to Kestra; merge it
    /// into your app or nest it.
    pub fn build_router(self) -> Result<Router, BuildError> {
        Ok(Router::new().fallback_service(self.build::<axum::body::Body>()?))
    }
}

/// The layers around the proxy, outermost first.
type Stack<B> = Upgrade<Forwarded<Identified<B>>>;
/// With request ids: set (kept from a trusted proxy, else generated), then returned.
type Identified<B> = Either<SetRequestId<PropagateRequestId<Routed<B>>, EdgeRequestIds>, Routed<B>>;
type Routed<B> = Either<Prefix<Guarded<B>, Guarded<B>>, Guarded<B>>;
type Guarded<B> = SseGuard<ForwardAuth<Upstream<B>>>;

/// The body of every response of the stack.
pub type EdgeBody = SseBody<UpstreamBody>;

/// The whole kestra-edge stack as one tower service; see the [crate docs](crate).
#[derive(Debug)]
pub struct KestraEdge<B> {
    stack: Stack<B>,
    tunnels: Tunnels,
    upstream: Upstream<B>,
}

impl<B> KestraEdge<B> {
    /// The replicas and their state, when the stack balances.
    pub fn replicas(&self) -> Option<Vec<balance::ReplicaState>> {
        match &self.upstream {
            Upstream::Single(_) => None,
            Upstream::Balanced(balance) => Some(balance.replicas()),
        }
    }

    /// The open upgrade tunnels; close the rest with [`Tunnels::drain`] when shutting down.
    pub fn tunnels(&self) -> &Tunnels {
        &self.tunnels
    }
}

impl KestraEdge<()> {
    /// Starts configuring a stack in front of the Kestra webserver at `upstream`
    /// (`http://host:port`).
    pub fn builder(upstream: impl Into<String>) -> KestraEdgeBuilder {
        let upstream = upstream.into();
        KestraEdgeBuilder {
            // The SSE guard governs event streams' idleness: the proxies are told once, so
            // the guard need not mark each request (an extension, an allocation each).
            proxy: ReverseProxyBuilder::new(upstream.clone()).event_stream_read_timeout(None),
            settings: ProxySettings(vec![Arc::new(|p| p.event_stream_read_timeout(None))]),
            balance: balance::BalanceBuilder::new([upstream]),
            balanced: false,
            forwarded: ForwardedLayer::builder(),
            sse: SseGuardLayer::new().mark_requests(false),
            upgrade: UpgradeLayer::new(),
            read_timeout: proxy::DEFAULT_READ_TIMEOUT,
            tunnel_idle_timeout: None,
            context_path: None,
            auth: ForwardAuthLayer::disabled(),
            request_ids: None,
            per_client: false,
            report: false,
        }
    }
}

impl<B> Clone for KestraEdge<B> {
    fn clone(&self) -> Self {
        Self {
            stack: self.stack.clone(),
            tunnels: self.tunnels.clone(),
            upstream: self.upstream.clone(),
        }
    }
}

impl<B> Service<Request<B>> for KestraEdge<B>
where
    Stack<B>: Service<Request<B>, Response = Response<EdgeBody>, Error = Infallible>,
{
    type Response = Response<EdgeBody>;
    type Error = Infallible;
    type Future = <Stack<B> as Service<Request<B>>>::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.stack.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        self.stack.call(req)
    }
}
