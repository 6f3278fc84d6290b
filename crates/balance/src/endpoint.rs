//! One replica: its proxies (one per worker thread), its load and its health, all atomics.

use crate::{body::Reclaim, ejection::Ejection};
use bytes::Bytes;
use http::HeaderValue;
use http_body_util::Empty;
use kestra_edge_proxy::{ReverseProxy, UpstreamFailure};
use std::{
    fmt,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// A replica's load and health, shared by every worker and by the in-flight guards.
///
/// Every field is an atomic updated without a lock: a lost EWMA update under a race costs one
/// sample, never correctness.
#[derive(Debug)]
pub(crate) struct Stats {
    /// The balancer's clock origin; every timestamp below is nanoseconds since it.
    epoch: Instant,
    /// Requests in flight, counting open response bodies (SSE streams) until they end.
    pending: AtomicU32,
    /// Peak-EWMA of the time to a response head, in nanoseconds, as `f64` bits.
    rtt_ns: AtomicU64,
    /// When `rtt_ns` was last updated.
    rtt_at: AtomicU64,
    /// The decay of the EWMA, in nanoseconds.
    decay_ns: f64,
    /// The active health check's verdict (always `true` without active checks).
    healthy: AtomicBool,
    /// Passive ejection.
    pub(crate) ejection: Ejection,
    /// Exchanges with this replica by outcome (see [`ReplicaOutcomes`]), for metrics.
    outcomes: [AtomicU64; 5],
}

/// How the exchanges with one replica ended, counted since it joined: each attempt of a
/// retried request counts on the replica it went to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaOutcomes {
    /// A response head came back.
    pub responses: u64,
    /// The connection was refused, the replica unreachable or its TLS handshake failed.
    pub connect_errors: u64,
    /// Connecting took longer than the connect timeout.
    pub connect_timeouts: u64,
    /// The connection closed or carried something that is not HTTP before a response.
    pub closed: u64,
    /// No response head within the read timeout.
    pub response_timeouts: u64,
}

impl Stats {
    pub(crate) fn new(
        epoch: Instant,
        default_rtt: Duration,
        decay: Duration,
        healthy: bool,
    ) -> Self {
        Self {
            epoch,
            pending: AtomicU32::new(0),
            rtt_ns: AtomicU64::new((default_rtt.as_nanos() as f64).to_bits()),
            rtt_at: AtomicU64::new(nanos_since(epoch, Instant::now())),
            decay_ns: (decay.as_nanos() as f64).max(1.0),
            healthy: AtomicBool::new(healthy),
            ejection: Ejection::default(),
            outcomes: Default::default(),
        }
    }

    /// Counts one exchange: `None` for a response, else how it failed.
    pub(crate) fn count(&self, failure: Option<UpstreamFailure>) {
        let slot = match failure {
            None => 0,
            Some(UpstreamFailure::Connect) => 1,
            Some(UpstreamFailure::ConnectTimeout) => 2,
            Some(UpstreamFailure::Closed) => 3,
            Some(_) => 4,
        };
        self.outcomes[slot].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn outcomes(&self) -> ReplicaOutcomes {
        let [responses, connect_errors, connect_timeouts, closed, response_timeouts] =
            self.outcomes.each_ref().map(|c| c.load(Ordering::Relaxed));
        ReplicaOutcomes {
            responses,
            connect_errors,
            connect_timeouts,
            closed,
            response_timeouts,
        }
    }

    pub(crate) fn now(&self) -> u64 {
        nanos_since(self.epoch, Instant::now())
    }

    /// Requests in flight and open streams.
    pub(crate) fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed)
    }

    /// Peak-EWMA cost (linkerd, Finagle): the latency estimate, decayed towards zero since
    /// its last sample, times the requests in flight plus one.
    pub(crate) fn cost(&self, now: u64) -> f64 {
        let rtt = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let at = self.rtt_at.load(Ordering::Relaxed);
        let elapsed = now.saturating_sub(at) as f64;
        let decayed = rtt * (-elapsed / self.decay_ns).exp();
        decayed * f64::from(self.pending() + 1)
    }

    /// Records one time to a response head: a sample above the estimate replaces it (the
    /// peak), one below is blended in with a weight that grows with the time since the last.
    pub(crate) fn observe(&self, rtt: Duration, now: u64) {
        let sample = rtt.as_nanos() as f64;
        let old = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let at = self.rtt_at.swap(now, Ordering::Relaxed);
        let estimate = if sample > old {
            sample
        } else {
            let w = (-(now.saturating_sub(at) as f64) / self.decay_ns).exp();
            old * w + sample * (1.0 - w)
        };
        self.rtt_ns.store(estimate.to_bits(), Ordering::Relaxed);
    }

    /// Counts a request (or an open stream) until the guard is dropped.
    pub(crate) fn in_flight(self: &Arc<Self>) -> InFlight {
        self.pending.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

fn nanos_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

/// One request in flight on a replica, or one of its response bodies still open.
#[derive(Debug)]
pub(crate) struct InFlight(pub(crate) Arc<Stats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One replica address, with a proxy per worker thread (each with its own connection pool,
/// so a worker's requests stay on its own runtime) and its health-check client.
pub(crate) struct Endpoint<B> {
    /// `ip:port` (or `host:port` for an https name that is not split into addresses).
    pub(crate) address: String,
    /// `address`, shared, for the answers' extensions.
    pub(crate) served_by: kestra_edge_proxy::ServedBy,
    /// Which configured `--upstream` it came from.
    pub(crate) source: usize,
    /// The affinity cookie's value: a keyed hash of `address`.
    pub(crate) affinity_id: String,
    /// `Set-Cookie` for this replica, without and with `Secure`.
    pub(crate) set_cookie: Option<[HeaderValue; 2]>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) proxies: Box<[ReverseProxy<Reclaim<B>>]>,
    pub(crate) health: Option<ReverseProxy<Empty<Bytes>>>,
    /// Consecutive active-check results, touched only by the health task.
    pub(crate) passes: AtomicU32,
    pub(crate) fails: AtomicU32,
}

impl<B> fmt::Debug for Endpoint<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("address", &self.address)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<B> Endpoint<B> {
    /// Whether new requests may go here: healthy by the active check and not ejected.
    #[inline]
    pub(crate) fn usable(&self, now: u64) -> bool {
        self.stats.is_healthy() && !self.stats.ejection.is_ejected(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_sample_peaks_at_once_and_decays_with_time() {
        let epoch = Instant::now();
        let stats = Stats::new(
            epoch,
            Duration::from_millis(1),
            Duration::from_secs(10),
            true,
        );
        let t0 = stats.now();
        stats.observe(Duration::from_millis(100), t0);
        let peak = stats.cost(t0);
        assert!(peak >= 99e6, "{peak}");
        // One decay period later the estimate has fallen to about 1/e.
        let later = t0 + 10_000_000_000;
        let decayed = stats.cost(later);
        assert!(decayed < peak / 2.0 && decayed > peak / 4.0, "{decayed}");
        // Fast samples pull it down.
        for i in 1..=50 {
            stats.observe(Duration::from_millis(1), t0 + i * 1_000_000_000);
        }
        assert!(stats.cost(t0 + 50_000_000_000) < 10e6);
    }

    #[test]
    fn load_counts_until_the_guard_drops() {
        let stats = Arc::new(Stats::new(
            Instant::now(),
            Duration::from_millis(10),
            Duration::from_secs(10),
            true,
        ));
        let now = stats.now();
        let idle = stats.cost(now);
        let a = stats.in_flight();
        let b = stats.in_flight();
        assert_eq!(stats.pending(), 2);
        assert!((stats.cost(now) - 3.0 * idle).abs() < idle * 0.01);
        drop((a, b));
        assert_eq!(stats.pending(), 0);
    }
}
