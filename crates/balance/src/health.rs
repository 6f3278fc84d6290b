//! Active health checks (Kestra: `GET /health/readiness` on the management port 8081) and
//! the start-up probe.

use crate::endpoint::Endpoint;
use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use kestra_edge_proxy::ReverseProxy;
use std::{sync::atomic::Ordering, time::Duration};
use tower::Service;

/// Default for [`HealthCheck::interval`].
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
/// Default for [`HealthCheck::timeout`].
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Default for [`HealthCheck::fails`] and [`HealthCheck::passes`].
pub const DEFAULT_HEALTH_THRESHOLD: u32 = 2;

/// An active health check: `GET path` on each replica every `interval`; only a 2xx within
/// `timeout` passes. `fails` consecutive failures take a replica out, `passes` consecutive
/// passes bring it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The path probed (Kestra: `/health/readiness`).
    pub path: String,
    /// The port probed (Kestra's management port, 8081); `None`: the replica's own port.
    pub port: Option<u16>,
    /// Time between two probes of a replica.
    pub interval: Duration,
    /// Longest wait for a probe's connection and answer.
    pub timeout: Duration,
    /// Consecutive failures that take a replica out.
    pub fails: u32,
    /// Consecutive passes that bring it back.
    pub passes: u32,
}

impl HealthCheck {
    /// A check of `path` with the defaults: the replica's own port, every 5 s, 2 s timeout,
    /// 2 failures out, 2 passes back.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            port: None,
            interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            fails: DEFAULT_HEALTH_THRESHOLD,
            passes: DEFAULT_HEALTH_THRESHOLD,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), crate::BuildError> {
        use crate::BuildError::Health;
        if !self.path.starts_with('/') || self.path.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(Health("the health path must be an absolute path"));
        }
        if self.interval.is_zero() || self.timeout.is_zero() {
            return Err(Health(
                "the health interval and timeout must be greater than zero",
            ));
        }
        if self.fails == 0 || self.passes == 0 {
            return Err(Health("health fails and passes must be at least 1"));
        }
        Ok(())
    }
}

/// One probe: whether the replica answered 2xx in time.
pub(crate) async fn probe(
    proxy: &ReverseProxy<Empty<Bytes>>,
    path: &str,
    timeout: Duration,
) -> bool {
    let Ok(request) = Request::get(path).body(Empty::new()) else {
        return false;
    };
    let mut proxy = proxy.clone();
    match tokio::time::timeout(timeout, proxy.call(request)).await {
        Ok(Ok(response)) => response.status().is_success(),
        Ok(Err(never)) => match never {},
        Err(_) => false,
    }
}

/// Counts one probe result against the thresholds; logs a change of verdict.
pub(crate) fn record<B>(endpoint: &Endpoint<B>, passed: bool, check: &HealthCheck) {
    let stats = &endpoint.stats;
    if passed {
        endpoint.fails.store(0, Ordering::Relaxed);
        let passes = endpoint.passes.fetch_add(1, Ordering::Relaxed) + 1;
        if !stats.is_healthy() && passes >= check.passes {
            stats.set_healthy(true);
            tracing::info!(replica = %endpoint.address, "replica passed its health checks: back in");
        }
    } else {
        endpoint.passes.store(0, Ordering::Relaxed);
        let fails = endpoint.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if stats.is_healthy() && fails >= check.fails {
            stats.set_healthy(false);
            tracing::warn!(replica = %endpoint.address, "replica failed its health checks: taken out");
        }
    }
}
