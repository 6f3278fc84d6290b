//! Balancing over several Kestra webserver replicas.
//!
//! [`Balance`] is a tower [`Service`](tower::Service) over a changing set of replicas, each
//! proxied by its own [`ReverseProxy`](kestra_edge_proxy::ReverseProxy):
//!
//! - **Choice**: power of two choices by load (linkerd, Finagle): two usable replicas picked
//!   at random, the cheaper wins; cost is a peak-EWMA of the time to a response head
//!   (a slower answer replaces the estimate at once, faster ones pull it down over a 10 s
//!   decay) times the requests in flight plus one. Open response bodies count as in flight
//!   until they end, so a replica holding many SSE streams gets fewer new requests. A
//!   WebSocket tunnel counts until both its directions end: the `101` answer carries the
//!   count in a [`TunnelGuard`](kestra_edge_upgrade::TunnelGuard), which the upgrade layer
//!   keeps in the tunnel it opens.
//! - **Active health checks** ([`HealthCheck`]): `GET /health/readiness` on Kestra's
//!   management port; only 2xx passes; `fails` in a row take a replica out, `passes` bring
//!   it back. Every replica is probed once before [`BalanceBuilder::build`] returns.
//! - **Passive ejection** ([`EjectionBackoff`]): a replica whose connection is refused,
//!   reset or times out (the proxy's [`UpstreamFailure`](kestra_edge_proxy::UpstreamFailure)),
//!   or whose body fails mid-stream, is ejected at once for a period that doubles while it
//!   keeps failing. When every replica that passes its active check is ejected, the least
//!   recently failed one is tried (Envoy's panic mode) rather than refusing everything;
//!   when none passes, the answer is `503` with `Retry-After`, at once.
//! - **Retries** on another replica ([`BalanceBuilder::retries`], default 1): a request that
//!   was never sent (connection refused, connect timeout) whatever its method, its body
//!   taken back unread ([`Reclaim`]); a GET, HEAD or OPTIONS without a body whose
//!   connection closed before any byte of an answer. A body is never sent twice once a
//!   byte of it left.
//! - **DNS discovery** ([`Resolve`]): an `http://` host name is one replica per address
//!   (a Kubernetes headless Service), resolved again every [`BalanceBuilder::dns_refresh`];
//!   new addresses join, vanished ones get no new request while their in-flight requests
//!   and open streams finish.
//! - **Cookie affinity** ([`Affinity`]): an opaque, keyed id of the replica's address, the
//!   same on every kestra-edge instance.
//!
//! # Why not `tower::balance`
//!
//! `tower::balance::p2c::Balance` needs `&mut self` to pick and to drive its discovery
//! stream, so it is not `Clone`; sharing it between connections takes a `tower::buffer`,
//! which moves every request through a channel to a worker task: a task hop and a
//! cross-thread wake-up per request (tower issues 824 and 856). kestra-edge serves from one
//! runtime per core and clones its service per connection and request, so this crate keeps
//! the choice lock-free instead: replicas live in an `ArcSwap`ed list, load and health are
//! atomics, and picking is two random reads and two cost computations on the caller's own
//! task. Each worker thread has its own connection pool per replica.
//!
//! ```no_run
//! use kestra_edge_balance::{BalanceBuilder, HealthCheck};
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), kestra_edge_balance::BuildError> {
//! let mut check = HealthCheck::new("/health/readiness");
//! check.port = Some(8081);
//! let balancer = BalanceBuilder::new(["http://kestra-webserver-headless:8080"])
//!     .health_check(check)
//!     .dns_refresh(Duration::from_secs(30))
//!     .build::<hyper::body::Incoming>()
//!     .await?;
//! let service = balancer.service(0);
//! # let _ = service;
//! # Ok(())
//! # }
//! ```

mod affinity;
mod body;
mod discover;
mod ejection;
mod endpoint;
mod future;
mod health;
mod service;

pub use affinity::{Affinity, DEFAULT_AFFINITY_COOKIE};
pub use body::{BalanceBody, Reclaim};
pub use discover::{Resolve, Resolving, SystemResolver};
pub use ejection::EjectionBackoff;
pub use endpoint::ReplicaOutcomes;
pub use future::ResponseFuture;
pub use health::{
    HealthCheck, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_THRESHOLD, DEFAULT_HEALTH_TIMEOUT,
};
pub use service::{
    Balance, BalanceBuilder, Balancer, BuildError, ReplicaState, DEFAULT_DNS_REFRESH,
    DEFAULT_RETRIES,
};
