//! What the forward proxy did: open tunnels and every request's outcome, counted with relaxed
//! atomics that a metrics exporter reads when scraped.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

/// How the forward proxy answered a request: each request counts exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// `200` to `CONNECT`: the destination was dialled and the tunnel handed over.
    Tunnel,
    /// An absolute-form request answered by its destination (whatever the status).
    Forwarded,
    /// `407`: `Proxy-Authorization` missing or wrong.
    AuthRequired,
    /// `403`: the destination matches no allow pattern.
    Forbidden,
    /// `403`: the destination resolves only to internal addresses (the SSRF guard).
    Private,
    /// `400`: a malformed request-target.
    BadRequest,
    /// `502`: the destination cannot be resolved, refuses, or fails before its answer.
    BadGateway,
    /// `504`: resolution and connect beyond the connect timeout, or a forwarded request's
    /// destination silent beyond the idle timeout before its answer.
    GatewayTimeout,
    /// `503`: over the tunnel cap.
    TooManyTunnels,
}

impl Outcome {
    /// Every outcome, in the order of [`EgressSnapshot::requests`].
    pub const ALL: [Self; 9] = [
        Self::Tunnel,
        Self::Forwarded,
        Self::AuthRequired,
        Self::Forbidden,
        Self::Private,
        Self::BadRequest,
        Self::BadGateway,
        Self::GatewayTimeout,
        Self::TooManyTunnels,
    ];

    /// The metric label: `tunnel`, `forwarded`, `auth_required`, `forbidden`, `private`,
    /// `bad_request`, `bad_gateway`, `gateway_timeout`, `too_many_tunnels`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tunnel => "tunnel",
            Self::Forwarded => "forwarded",
            Self::AuthRequired => "auth_required",
            Self::Forbidden => "forbidden",
            Self::Private => "private",
            Self::BadRequest => "bad_request",
            Self::BadGateway => "bad_gateway",
            Self::GatewayTimeout => "gateway_timeout",
            Self::TooManyTunnels => "too_many_tunnels",
        }
    }

    const fn index(self) -> usize {
        self as usize
    }
}

/// The forward proxy's counts, shared by its service and whoever reads them (cheap to
/// clone: an `Arc`). Written with relaxed atomic additions, no lock and no allocation.
#[derive(Debug, Clone, Default)]
pub struct EgressStats {
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    tunnels_open: AtomicU64,
    requests: [AtomicU64; Outcome::ALL.len()],
}

/// The counts at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EgressSnapshot {
    /// Tunnels whose client connection was handed over and that have not ended.
    pub tunnels_open: u64,
    /// Requests by outcome, in the order of [`Outcome::ALL`].
    pub requests: [u64; Outcome::ALL.len()],
}

impl EgressSnapshot {
    /// The requests that ended with `outcome`.
    pub fn requests(&self, outcome: Outcome) -> u64 {
        self.requests[outcome.index()]
    }

    /// Each outcome with its count, in the order of [`Outcome::ALL`].
    pub fn outcomes(&self) -> impl Iterator<Item = (Outcome, u64)> + '_ {
        Outcome::ALL.into_iter().zip(self.requests)
    }
}

impl EgressStats {
    /// Reads every count.
    pub fn snapshot(&self) -> EgressSnapshot {
        let counts = &*self.counts;
        EgressSnapshot {
            tunnels_open: counts.tunnels_open.load(Ordering::Relaxed),
            requests: counts
                .requests
                .each_ref()
                .map(|c| c.load(Ordering::Relaxed)),
        }
    }

    pub(crate) fn count(&self, outcome: Outcome) {
        self.counts.requests[outcome.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a tunnel as open until the guard is dropped (also when its task is dropped
    /// at shutdown).
    pub(crate) fn tunnel_open(&self) -> OpenTunnel {
        self.counts.tunnels_open.fetch_add(1, Ordering::Relaxed);
        OpenTunnel {
            counts: self.counts.clone(),
        }
    }
}

/// One open tunnel in [`EgressSnapshot::tunnels_open`].
pub(crate) struct OpenTunnel {
    counts: Arc<Counts>,
}

impl Drop for OpenTunnel {
    fn drop(&mut self) {
        self.counts.tunnels_open.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_in_order() {
        for (i, outcome) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(outcome.index(), i);
        }
        let mut labels: Vec<_> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), Outcome::ALL.len());
    }

    #[test]
    fn open_tunnels_count_until_their_guard_drops() {
        let stats = EgressStats::default();
        let first = stats.tunnel_open();
        // A clone shares the counts.
        let shared = stats.clone();
        let second = shared.tunnel_open();
        stats.count(Outcome::Tunnel);
        stats.count(Outcome::Tunnel);
        assert_eq!(stats.snapshot().tunnels_open, 2);
        drop(first);
        assert_eq!(stats.snapshot().tunnels_open, 1);
        drop(second);
        let snapshot = stats.snapshot();
        assert_eq!(snapshot.tunnels_open, 0);
        assert_eq!(snapshot.requests(Outcome::Tunnel), 2);
        assert_eq!(
            snapshot.outcomes().map(|(_, n)| n).sum::<u64>(),
            2,
            "{snapshot:?}"
        );
    }
}
