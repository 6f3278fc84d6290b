//! The `kestra-edge` gateway: configuration (flags, environment, TOML file; one module per
//! concern in [`config`]) and the serve loop the binary runs. Tests start the same
//! [`Gateway`] in-process.

pub mod compress;
pub mod config;
pub mod doctor;
mod egress;

#[cfg(unix)]
pub use egress::reload_on_sighup as reload_egress_on_sighup;
pub use egress::EgressListener;

use compress::MaybeCompress;
pub use config::{
    Args, CertSource, ConfigError, ForwardedHeader, GatewayConfig, HostHeader, PrefixModeArg,
};
use kestra_edge::{
    server::{PerCoreServer, Server, Transport},
    tls::{CertReloader, CertStore, CertWatch, HttpsRedirect, TlsAcceptor},
    KestraEdge,
};
use kestra_edge_standin::{Standin, StandinConfig};
use kestra_edge_telemetry::{
    AccessLog, Admin, CountedBody, Metrics, ReplicaSample, Telemetry, TelemetryLayer, UpstreamView,
};
use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};
use tower::Layer;
use tower_http::compression::{
    predicate::{And, DefaultPredicate, Predicate},
    CompressionLayer,
};

/// Compression on or off, decided once at start-up.
#[derive(Debug, Clone, Copy)]
pub struct CompressionSwitch(bool);

impl Predicate for CompressionSwitch {
    fn should_compress<B: http_body::Body>(&self, _response: &http::Response<B>) -> bool {
        self.0
    }
}

/// The request body the stack gets: the client's, counted for the access log.
pub type GatewayBody = CountedBody<kestra_edge::server::IncomingBody>;

/// What the gateway serves: the kestra-edge stack, behind optional compression (whose
/// default predicate never compresses `text/event-stream`), counted by the telemetry layer
/// (metrics off without `--admin-listen`) and written to the access log (`--access-log`).
pub type GatewayService =
    Telemetry<MaybeCompress<KestraEdge<GatewayBody>, And<CompressionSwitch, DefaultPredicate>>>;

/// The main listener: plain HTTP (HTTP/1.1 and h2c), or TLS.
#[derive(Debug)]
enum Listener {
    Plain(PerCoreServer),
    Tls(PerCoreServer<TlsAcceptor>),
}

/// TLS state that lives as long as the gateway.
#[derive(Debug, Default)]
struct TlsState {
    /// The files' reloader (not with a self-signed certificate).
    reloader: Option<Arc<CertReloader>>,
    /// Keeps the file watch running.
    _watch: Option<CertWatch>,
    /// The SHA-256 fingerprint of a generated certificate.
    self_signed: Option<kestra_edge::tls::SelfSigned>,
    /// The plain listener that redirects to HTTPS.
    redirect: Option<Server>,
}

/// A gateway bound to its address, ready to serve.
pub struct Gateway {
    listener: Listener,
    local: SocketAddr,
    // One stack per thread: each has its own upstream pool; all share the tunnel count.
    services: Vec<GatewayService>,
    tunnels: kestra_edge::Tunnels,
    shutdown_grace: Duration,
    tls: TlsState,
    standin: Option<Standin>,
    /// Forward auth and Kestra's credentials (shared with every worker's stack).
    auth: kestra_edge::ForwardAuthLayer,
    /// The `--admin-listen` listener and what it serves.
    admin: Option<AdminListener>,
    /// The access log (`--access-log`).
    access_log: Option<AccessLog>,
}

/// The admin listener: metrics and health, on an address of its own.
#[derive(Debug)]
struct AdminListener {
    server: Server,
    admin: Admin,
    metrics: Metrics,
}

/// How often the histograms' recent observations are moved into their buckets.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("listener", &self.listener)
            .field("standin", &self.standin)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Builds the stack, loads the certificate and binds the listeners; with `demo`,
    /// starts the stand-in first. The access log (`--access-log`) goes to stdout.
    pub async fn bind(config: GatewayConfig) -> Result<Self, GatewayError> {
        let log = config.telemetry.access_log.format().map(AccessLog::stdout);
        Self::bind_with_log(config, log).await
    }

    /// [`bind`](Self::bind) with the access log given (whatever `--access-log` says): tests
    /// read the lines back so.
    pub async fn bind_with_log(
        mut config: GatewayConfig,
        access_log: Option<AccessLog>,
    ) -> Result<Self, GatewayError> {
        let cert_source = config.validate()?;
        let standin = if config.demo {
            let standin = Standin::start(StandinConfig::default()).await?;
            config.upstream.url = standin.url();
            // The recommended setup: Kestra and the gateway share the context path.
            if config.prefix.context_path.is_none() {
                config.prefix.context_path = Some(standin.context_path().to_owned());
            }
            Some(standin)
        } else {
            None
        };
        let auth = config
            .auth
            .layer(config.prefix.context_path.as_deref())
            .map_err(ConfigError::from)?;
        let edge = stack(&config)
            .forward_auth(auth.clone())
            .report_to_access_log(access_log.is_some());
        let compression = CompressionLayer::new().compress_when(
            CompressionSwitch(config.streams.compression).and(DefaultPredicate::new()),
        );
        let workers = config.listener.workers;
        // Clones of one builder share the tunnel count, so one drain closes them all; with
        // several replicas, one balancer (resolved and probed here, before the listener is
        // bound) serves every worker.
        let edges = edge
            .build_per_worker(workers.get())
            .await
            .map_err(ConfigError::from)?;
        let tunnels = edges[0].tunnels().clone();
        let admin = match config.telemetry.admin_listen {
            Some(addr) => {
                let metrics = metrics_for(&config, &edges[0]);
                metrics.tunnels(tunnels.clone());
                if let Some(log) = &access_log {
                    metrics.access_log(log.clone());
                }
                Some(AdminListener {
                    server: Server::bind(addr).await?,
                    admin: Admin::new(metrics.clone()),
                    metrics,
                })
            }
            None => None,
        };
        let mut telemetry = admin.as_ref().map_or_else(TelemetryLayer::disabled, |a| {
            TelemetryLayer::new(a.metrics.clone())
        });
        if let Some(log) = &access_log {
            // Replicas name themselves; one upstream is named as configured.
            let upstream = edges[0]
                .replicas()
                .is_none()
                .then(|| config.upstream.url.clone());
            telemetry = telemetry.access_log(log.clone(), upstream);
        }
        let services: Vec<GatewayService> = edges
            .into_iter()
            .map(|edge| {
                telemetry.layer(if config.streams.compression {
                    MaybeCompress::On(compression.layer(edge))
                } else {
                    MaybeCompress::Off(edge)
                })
            })
            .collect();

        let mut tls = TlsState::default();
        let store = match cert_source {
            None => None,
            Some(CertSource::Files { cert, key }) => {
                let reloader = Arc::new(CertReloader::load(cert, key).map_err(ConfigError::from)?);
                tls._watch = Some(reloader.watch().map_err(ConfigError::from)?);
                let store = reloader.store();
                tls.reloader = Some(reloader);
                Some(store)
            }
            Some(CertSource::SelfSigned) => {
                let generated = kestra_edge::tls::self_signed(&["localhost", "127.0.0.1", "::1"])
                    .map_err(ConfigError::from)?;
                let store = CertStore::new(generated.certified.clone());
                tls.self_signed = Some(generated);
                Some(store)
            }
        };
        let listen = &config.listener;
        let server = PerCoreServer::bind(listen.listen, workers)?
            .header_read_timeout(listen.header_timeout)
            .max_header_bytes(listen.max_header_bytes)
            .max_headers(listen.max_headers)
            .h2_idle_timeout(Some(listen.h2_idle_timeout))
            .h2_max_concurrent_streams(listen.h2_max_streams)
            .shutdown_grace(listen.shutdown_grace);
        let local = server.local_addr();
        if let Some(admin) = &admin {
            admin.metrics.connections(server.connections());
        }
        let listener = match store {
            None => Listener::Plain(server),
            Some(store) => {
                let acceptor = TlsAcceptor::new(store).map_err(ConfigError::from)?;
                if let Some(addr) = config.tls.redirect_http {
                    let redirect = Server::bind(addr)
                        .await?
                        .header_read_timeout(listen.header_timeout)
                        .max_header_bytes(listen.max_header_bytes)
                        .max_headers(listen.max_headers)
                        .shutdown_grace(listen.shutdown_grace);
                    tls.redirect = Some(redirect);
                }
                Listener::Tls(server.transport(acceptor))
            }
        };
        Ok(Self {
            listener,
            local,
            services,
            tunnels,
            shutdown_grace: config.listener.shutdown_grace,
            tls,
            standin,
            auth,
            admin,
            access_log,
        })
    }

    /// The access log, when `--access-log` is not `off`.
    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access_log.as_ref()
    }

    /// The address of the `--admin-listen` listener.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|admin| admin.server.local_addr().ok())
    }

    /// The metrics the admin listener serves, when `--admin-listen` is given.
    pub fn metrics(&self) -> Option<&Metrics> {
        self.admin.as_ref().map(|admin| &admin.metrics)
    }

    /// Kestra's credentials (for SIGHUP), when `--kestra-credentials-file` is given.
    pub fn kestra_credentials(&self) -> Option<kestra_edge::auth::KestraCredentials> {
        self.auth.kestra_credentials().cloned()
    }

    /// The address the gateway listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    /// `https` when the main listener speaks TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        match self.listener {
            Listener::Plain(_) => "http",
            Listener::Tls(_) => "https",
        }
    }

    /// The address of the `--redirect-http` listener.
    pub fn redirect_addr(&self) -> Option<SocketAddr> {
        self.tls
            .redirect
            .as_ref()
            .and_then(|server| server.local_addr().ok())
    }

    /// The certificate files' reloader (for SIGHUP), when the certificate comes from files.
    pub fn cert_reloader(&self) -> Option<Arc<CertReloader>> {
        self.tls.reloader.clone()
    }

    /// The certificate generated by `--tls-self-signed`.
    pub fn self_signed(&self) -> Option<&kestra_edge::tls::SelfSigned> {
        self.tls.self_signed.as_ref()
    }

    /// The demo stand-in, when `demo` is on.
    pub fn standin(&self) -> Option<&Standin> {
        self.standin.as_ref()
    }

    /// Live connection counts of the main listener.
    pub fn connections(&self) -> kestra_edge::server::Connections {
        match &self.listener {
            Listener::Plain(server) => server.connections(),
            Listener::Tls(server) => server.connections(),
        }
    }

    /// The first worker's stack (a cheap clone): its [`replicas`](KestraEdge::replicas)
    /// stay live while the gateway serves.
    pub fn edge(&self) -> Option<KestraEdge<GatewayBody>> {
        self.services.first().map(|s| s.get_ref().get_ref().clone())
    }

    /// The replicas and their state, when the gateway balances over several.
    pub fn replicas(&self) -> Option<Vec<kestra_edge::balance::ReplicaState>> {
        self.services
            .first()
            .and_then(|s| s.get_ref().get_ref().replicas())
    }

    /// The open upgrade tunnels.
    pub fn tunnels(&self) -> &kestra_edge::Tunnels {
        &self.tunnels
    }

    /// Serves until `shutdown` resolves and the grace period has run its course: then
    /// connections and tunnels still open are closed.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let Self {
            listener,
            services,
            tunnels,
            shutdown_grace,
            tls,
            standin,
            admin,
            ..
        } = self;
        let (began, began_rx) = tokio::sync::watch::channel(None);
        let readiness = admin.as_ref().map(|a| a.admin.readiness().clone());
        let shutdown = async move {
            shutdown.await;
            // /readyz answers 503 from the first moment of the drain.
            if let Some(readiness) = readiness {
                readiness.drain();
            }
            let _ = began.send(Some(tokio::time::Instant::now()));
        };
        // The admin listener outlives the drain, so that probes see it, and stops after.
        let (served, served_rx) = tokio::sync::oneshot::channel::<()>();
        let admin = admin.map(
            |AdminListener {
                 server,
                 admin,
                 metrics,
             }| {
                let upkeep = tokio::spawn(async move {
                    let mut every = tokio::time::interval(METRICS_UPKEEP);
                    loop {
                        every.tick().await;
                        metrics.run_upkeep();
                    }
                });
                let served = tokio::spawn(server.serve(admin, async move {
                    let _ = served_rx.await;
                }));
                (served, upkeep)
            },
        );
        let redirect = tls.redirect.map(|server| {
            let mut began = began_rx.clone();
            tokio::spawn(
                server.serve(HttpsRedirect::new(self.local.port()), async move {
                    let _ = began.wait_for(Option::is_some).await;
                }),
            )
        });
        // Tunnels are not HTTP connections any more: they get the same deadline, drained
        // while the server threads still drive them.
        let drain = async move {
            let mut began_rx = began_rx;
            let began = began_rx
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|b| *b);
            if let Some(began) = began {
                tunnels.drain(began + shutdown_grace).await;
            }
        };
        let result = match listener {
            Listener::Plain(server) => serve_on(server, &services, shutdown, drain).await,
            Listener::Tls(server) => serve_on(server, &services, shutdown, drain).await,
        };
        drop(served);
        if let Some((served, upkeep)) = admin {
            upkeep.abort();
            match served.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "admin listener failed"),
                Err(err) => tracing::warn!(error = %err, "admin listener panicked"),
            }
        }
        if let Some(redirect) = redirect {
            match redirect.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "redirect listener failed"),
                Err(err) => tracing::warn!(error = %err, "redirect listener panicked"),
            }
        }
        drop(tls._watch);
        drop(standin);
        result
    }
}

async fn serve_on<T: Transport>(
    server: PerCoreServer<T>,
    services: &[GatewayService],
    shutdown: impl Future<Output = ()>,
    drain: impl Future<Output = ()>,
) -> io::Result<()> {
    server.serve(|i| services[i].clone(), shutdown, drain).await
}

/// The metrics of a gateway serving `edge`: one upstream's last outcome, or the replicas'
/// health checks read when scraped.
fn metrics_for(config: &GatewayConfig, edge: &KestraEdge<GatewayBody>) -> Metrics {
    if edge.replicas().is_none() {
        return Metrics::new(UpstreamView::single(config.upstream.url.clone()));
    }
    // Read at scrape time only; the stack is not `Sync`.
    let edge = std::sync::Mutex::new(edge.clone());
    Metrics::new(UpstreamView::replicas(move || {
        let replicas = edge.lock().ok().and_then(|edge| edge.replicas());
        replicas
            .unwrap_or_default()
            .into_iter()
            .map(|replica| {
                let o = replica.outcomes;
                ReplicaSample {
                    label: replica.address,
                    up: replica.healthy,
                    outcomes: [
                        o.responses,
                        o.connect_errors,
                        o.connect_timeouts,
                        o.closed,
                        o.response_timeouts,
                    ],
                }
            })
            .collect()
    }))
}

/// The kestra-edge stack for `config`.
fn stack(config: &GatewayConfig) -> kestra_edge::KestraEdgeBuilder {
    let upstream = &config.upstream;
    let mut edge = KestraEdge::builder(upstream.url.clone())
        .max_body(upstream.max_body)
        .max_uri(upstream.max_uri)
        .upstream_idle_timeout(upstream.idle_timeout)
        .upstream_max_idle(upstream.max_idle)
        .body_timeout(upstream.body_timeout)
        .connect_timeout(upstream.connect_timeout)
        .read_timeout(upstream.read_timeout)
        .preserve_host(upstream.host_header == HostHeader::Client)
        .forwarded_headers(config.forwarded.headers());
    for ca in &upstream.ca {
        edge = edge.upstream_ca(ca.clone());
    }
    for cidr in &config.forwarded.trusted_proxies {
        edge = edge.trusted_proxy(cidr.clone());
    }
    if let Some(path) = &config.prefix.context_path {
        edge = edge.context_path(path.clone(), config.prefix.mode.into());
    }
    let balance = &config.balance;
    if !upstream.more.is_empty() || balance.is_set() {
        for url in &upstream.more {
            edge = edge.upstream(url.clone());
        }
        edge = edge.balance(|b| balance.apply(b));
    }
    let streams = &config.streams;
    if let Some(idle) = streams.tunnel_idle_timeout {
        edge = edge.tunnel_idle_timeout(idle);
    }
    edge.upgrade_protocols(streams.upgrade_protocols.iter().cloned())
        .tunnel_max_lifetime(streams.tunnel_max_lifetime)
        .sse_heartbeat(Some(streams.sse_heartbeat))
        .sse_idle_timeout(Some(streams.sse_idle_timeout))
        .sse_max_lifetime(streams.sse_max_lifetime)
        .sse_max_streams_per_client(Some(streams.sse_max_streams_per_client))
        .sse_max_streams(streams.sse_max_streams)
        .request_id(config.telemetry.request_id)
}

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A socket could not be bound.
    #[error("cannot listen: {0}")]
    Io(#[from] io::Error),
}
