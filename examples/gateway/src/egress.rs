//! The egress forward proxy's own listener, beside the reverse proxy or alone.

use crate::{ConfigError, GatewayConfig, GatewayError};
use kestra_edge::{
    egress::{Egress, ProxyCredentials},
    server::Server,
    Tunnels,
};
use kestra_edge_telemetry::{AccessLog, Admin, Metrics, TelemetryLayer, UpstreamView};
use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};
use tokio::time::Instant;
use tower::Layer;

/// The `--egress-listen` listener and the forward proxy it serves.
#[derive(Debug)]
pub struct EgressListener {
    server: Server,
    egress: Egress,
    shutdown_grace: Duration,
    allowed: usize,
    /// `--admin-listen` when the forward proxy runs alone (beside the reverse proxy, the
    /// gateway's admin listener reports it: [`report_to`](Self::report_to)).
    admin: Option<(Server, Admin)>,
    /// The access log: a `connect` line per tunnel, a `forward` line per request.
    log: Option<AccessLog>,
}

impl EgressListener {
    /// Builds the forward proxy (reading and watching its credentials file) and binds
    /// `--egress-listen`; `None` without it. The listener's header limits and shutdown grace
    /// are the main listener's.
    pub async fn bind(config: &GatewayConfig) -> Result<Option<Self>, GatewayError> {
        let Some(addr) = config.egress.listen else {
            return Ok(None);
        };
        let egress = config
            .egress
            .build(&config.streams, &config.upstream)
            .map_err(ConfigError::from)?;
        let listen = &config.listener;
        let server = Server::bind(addr)
            .await?
            .header_read_timeout(listen.header_timeout)
            .max_header_bytes(listen.max_header_bytes)
            .max_headers(listen.max_headers)
            .shutdown_grace(listen.shutdown_grace);
        let mut bound = Self {
            server,
            egress,
            shutdown_grace: listen.shutdown_grace,
            allowed: config.egress.allow.len(),
            admin: None,
            log: None,
        };
        if let (true, Some(addr)) = (config.egress.alone, config.telemetry.admin_listen) {
            let metrics = Metrics::new(UpstreamView::None);
            bound.report_to(&metrics);
            bound.admin = Some((Server::bind(addr).await?, Admin::new(metrics)));
        }
        Ok(Some(bound))
    }

    /// Reports the forward proxy's open tunnels and requests by outcome in `metrics` (read
    /// when scraped): `kestra_edge_egress_tunnels_open` and
    /// `kestra_edge_egress_requests_total{outcome}`.
    pub fn report_to(&self, metrics: &Metrics) {
        let stats = self.egress.stats().clone();
        metrics.egress(move || {
            let now = stats.snapshot();
            let outcomes = now.outcomes().map(|(o, n)| (o.as_str(), n)).collect();
            (now.tunnels_open, outcomes)
        });
    }

    /// Writes a line per tunnel (when it ends: destination, address dialled, bytes each way,
    /// duration) and per forwarded request to `log` (`--access-log`; the gateway's, when both
    /// run).
    pub fn with_access_log(mut self, log: Option<AccessLog>) -> Self {
        if let (Some((_, admin)), Some(log)) = (&self.admin, &log) {
            admin.metrics().access_log(log.clone());
        }
        self.log = log;
        self
    }

    /// The address of its own `--admin-listen` listener (the forward proxy alone).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .and_then(|(server, _)| server.local_addr().ok())
    }

    /// The address the forward proxy listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.server.local_addr()
    }

    /// The proxy's users (for SIGHUP), when `--egress-credentials-file` is given.
    pub fn credentials(&self) -> Option<ProxyCredentials> {
        self.egress.credentials().cloned()
    }

    /// The open `CONNECT` tunnels.
    pub fn tunnels(&self) -> &Tunnels {
        self.egress.tunnels()
    }

    /// Logs where the forward proxy listens and what it lets through (never the users).
    pub fn log_ready(&self) {
        match self.local_addr() {
            Ok(addr) => tracing::info!(
                listen = %addr,
                allow_patterns = self.allowed,
                authentication = self.egress.credentials().is_some(),
                "egress forward proxy ready"
            ),
            Err(err) => tracing::warn!(error = %err, "egress listener has no address"),
        }
        if let Some(admin) = self.admin_addr() {
            tracing::info!(listen = %admin, "admin listener: /metrics, /livez, /readyz");
        }
    }

    /// Serves until `shutdown` resolves; then in-flight requests and tunnels get the
    /// shutdown grace, and what is left is closed.
    /// Its own admin listener, if any, answers `/readyz` 503 from the start of the drain
    /// and stops after it.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let began = Arc::new(OnceLock::new());
        let marked = began.clone();
        let tunnels = self.egress.tunnels().clone();
        let (served, served_rx) = tokio::sync::oneshot::channel::<()>();
        let (readiness, admin) = match self.admin {
            Some((server, admin)) => (
                Some(admin.readiness().clone()),
                Some(tokio::spawn(server.serve(admin, async move {
                    let _ = served_rx.await;
                }))),
            ),
            None => (None, None),
        };
        let logged = match self.log {
            Some(log) => TelemetryLayer::disabled().forward_proxy_log(log),
            None => TelemetryLayer::disabled(),
        }
        .layer(self.egress);
        let result = self
            .server
            .serve(logged, async move {
                shutdown.await;
                if let Some(readiness) = readiness {
                    readiness.drain();
                }
                let _ = marked.set(Instant::now());
            })
            .await;
        let began = began.get().copied().unwrap_or_else(Instant::now);
        tunnels.drain(began + self.shutdown_grace).await;
        drop(served);
        if let Some(admin) = admin {
            match admin.await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "admin listener failed"),
                Err(err) => tracing::warn!(error = %err, "admin listener panicked"),
            }
        }
        result
    }
}

/// Reads the proxy's credentials file again on each SIGHUP (it is also watched on disk).
#[cfg(unix)]
pub fn reload_on_sighup(credentials: Option<ProxyCredentials>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Some(credentials) = credentials else {
        return;
    };
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGHUP");
            return;
        }
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match credentials.reload() {
                Ok(()) => tracing::info!(
                    path = %credentials.path().display(),
                    trigger = "SIGHUP",
                    "egress credentials reloaded"
                ),
                Err(err) => tracing::error!(
                    trigger = "SIGHUP",
                    "refused the new egress credentials, still using the last good ones: {err}"
                ),
            }
        }
    });
}
