//! [`BalanceBuilder`], the shared [`Balancer`] and its per-worker [`Balance`] service.

use crate::{
    affinity::{self, Affinity, AffinityKey},
    body::Reclaim,
    discover::{Resolve, Source, SystemResolver},
    endpoint::{Endpoint, Stats},
    future::{ResponseFuture, Retry},
    health::{self, HealthCheck},
    EjectionBackoff,
};
use arc_swap::ArcSwap;
use http::{header::HeaderName, HeaderValue, Method, Request, Response};
use http_body::Body;
use kestra_edge_proxy::ReverseProxyBuilder;
use kestra_edge_server::TlsConnection;
use std::{
    cell::Cell,
    collections::HashSet,
    fmt,
    sync::{atomic::AtomicU32, Arc, Mutex, PoisonError, Weak},
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tokio::task::JoinHandle;
use tower::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Default for [`BalanceBuilder::dns_refresh`].
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(30);
/// Default for [`BalanceBuilder::retries`].
pub const DEFAULT_RETRIES: u32 = 1;

/// A configuration that [`BalanceBuilder::build`] refused, or no replica to start with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No upstream was given.
    #[error("no upstream given")]
    NoUpstream,
    /// An upstream is not `http://host[:port]` or `https://host[:port]`.
    #[error("upstream {0:?} must be http://host[:port] or https://host[:port]")]
    InvalidUpstream(String),
    /// No upstream resolved to any address.
    #[error("no upstream resolves: {0}")]
    NothingResolves(String),
    /// A replica's proxy refused its settings.
    #[error(transparent)]
    Proxy(#[from] kestra_edge_proxy::BuildError),
    /// The health check settings.
    #[error("{0}")]
    Health(&'static str),
    /// The affinity cookie name is not an RFC 6265 token.
    #[error("affinity cookie name {0:?} is not a valid cookie name")]
    AffinityCookie(String),
    /// The affinity cookie path is not an absolute path.
    #[error("affinity cookie path {0:?} is not a valid path")]
    AffinityPath(String),
    /// The affinity key file cannot be read or is empty.
    #[error("affinity key file {}: {source}", path.display())]
    AffinityKey {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A period of zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
}

/// Builds one [`ReverseProxyBuilder`] per replica URL: how every replica is proxied.
type ProxyFactory = Arc<dyn Fn(&str) -> ReverseProxyBuilder + Send + Sync>;

/// Configures a [`Balancer`]; [`build`](Self::build) validates it, resolves the upstreams
/// and probes the replicas.
#[derive(Clone)]
pub struct BalanceBuilder {
    upstreams: Vec<String>,
    proxy: ProxyFactory,
    workers: usize,
    health: Option<HealthCheck>,
    backoff: EjectionBackoff,
    retries: u32,
    affinity: Option<Affinity>,
    dns_refresh: Duration,
    resolver: Arc<dyn Resolve>,
    default_rtt: Duration,
    decay: Duration,
    probe_timeout: Duration,
    report_replica: bool,
}

impl fmt::Debug for BalanceBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalanceBuilder")
            .field("upstreams", &self.upstreams)
            .field("workers", &self.workers)
            .field("health", &self.health)
            .field("backoff", &self.backoff)
            .field("retries", &self.retries)
            .field("affinity", &self.affinity)
            .field("dns_refresh", &self.dns_refresh)
            .finish_non_exhaustive()
    }
}

impl BalanceBuilder {
    /// Balances over `upstreams` (`http://host:port`, each one replica, or one per address
    /// for a name that resolves to several).
    pub fn new<I, S>(upstreams: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            upstreams: upstreams.into_iter().map(Into::into).collect(),
            proxy: Arc::new(|url: &str| ReverseProxyBuilder::new(url)),
            workers: 1,
            health: None,
            backoff: EjectionBackoff::default(),
            retries: DEFAULT_RETRIES,
            affinity: None,
            dns_refresh: DEFAULT_DNS_REFRESH,
            resolver: Arc::new(SystemResolver),
            default_rtt: Duration::from_millis(10),
            decay: Duration::from_secs(10),
            probe_timeout: health::DEFAULT_HEALTH_TIMEOUT,
            report_replica: false,
        }
    }

    /// Adds another upstream.
    pub fn upstream(mut self, url: impl Into<String>) -> Self {
        self.upstreams.push(url.into());
        self
    }

    /// The upstreams given so far.
    pub fn upstreams(&self) -> &[String] {
        &self.upstreams
    }

    /// The affinity settings given so far.
    pub fn affinity_settings(&self) -> Option<&Affinity> {
        self.affinity.as_ref()
    }

    /// How each replica is proxied: `factory(url)` returns the builder for the replica at
    /// `url` (timeouts, limits, CA files), [`ReverseProxyBuilder::new`] by default.
    pub fn proxy(
        mut self,
        factory: impl Fn(&str) -> ReverseProxyBuilder + Send + Sync + 'static,
    ) -> Self {
        self.proxy = Arc::new(factory);
        self
    }

    /// How many worker threads serve (default 1): each gets its own connection pool per
    /// replica through [`Balancer::service`]; load and health are shared.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Active health checks (none by default: replicas are taken out only passively).
    pub fn health_check(mut self, check: HealthCheck) -> Self {
        self.probe_timeout = check.timeout;
        self.health = Some(check);
        self
    }

    /// How long a replica that refused, reset or timed out is ejected (default 1 s, doubling
    /// up to 30 s while it keeps failing).
    pub fn ejection(mut self, backoff: EjectionBackoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Puts a [`ServedBy`](kestra_edge_proxy::ServedBy) naming the replica on every answer
    /// that came from one (off by default: an allocation per request), for an access log.
    pub fn report_replica(mut self, on: bool) -> Self {
        self.report_replica = on;
        self
    }

    /// How many times a request may go to another replica (default 1).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Cookie affinity (off by default).
    pub fn affinity(mut self, affinity: Option<Affinity>) -> Self {
        self.affinity = affinity;
        self
    }

    /// How often host names are resolved again (default 30 s).
    pub fn dns_refresh(mut self, every: Duration) -> Self {
        self.dns_refresh = every;
        self
    }

    /// The resolver of host names (default: the system's).
    pub fn resolver(mut self, resolver: impl Resolve) -> Self {
        self.resolver = Arc::new(resolver);
        self
    }

    /// How fast the latency estimate forgets a slow answer (default 10 s, linkerd's).
    pub fn decay(mut self, decay: Duration) -> Self {
        self.decay = decay;
        self
    }

    /// Validates the settings, resolves the upstreams, probes every replica once, then starts
    /// the health-check and DNS-refresh tasks on the current tokio runtime. An upstream that
    /// does not resolve is a warning when another one does.
    pub async fn build<B>(self) -> Result<Balancer<B>, BuildError>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        if self.upstreams.is_empty() {
            return Err(BuildError::NoUpstream);
        }
        if self.dns_refresh.is_zero() {
            return Err(BuildError::Zero("dns refresh"));
        }
        if self.backoff.base.is_zero() {
            return Err(BuildError::Zero("ejection period"));
        }
        if let Some(check) = &self.health {
            check.validate()?;
        }
        let affinity = self.affinity.as_ref().map(AffinityKey::new).transpose()?;
        let sources = self
            .upstreams
            .iter()
            .map(|u| Source::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        let retry_after = self
            .health
            .as_ref()
            .map_or(1, |c| c.interval.as_secs_f64().ceil().max(1.0) as u64);
        let config = Config {
            sources,
            proxy: self.proxy,
            workers: self.workers,
            health: self.health,
            backoff: self.backoff,
            retries: self.retries,
            affinity,
            dns_refresh: self.dns_refresh,
            resolver: self.resolver,
            default_rtt: self.default_rtt,
            decay: self.decay,
            probe_timeout: self.probe_timeout,
            report_replica: self.report_replica,
            retry_after: HeaderValue::from(retry_after),
            epoch: Instant::now(),
        };

        let mut endpoints = Vec::new();
        let mut failures = Vec::new();
        for (index, source) in config.sources.iter().enumerate() {
            match source.addresses(&*config.resolver).await {
                Ok(addresses) => {
                    for address in addresses {
                        endpoints.push(Arc::new(config.endpoint(index, address)?));
                    }
                }
                Err(err) => failures.push(format!("{}: {err}", source.url)),
            }
        }
        if endpoints.is_empty() {
            return Err(BuildError::NothingResolves(failures.join("; ")));
        }
        for failure in &failures {
            tracing::warn!(upstream = %failure, "upstream does not resolve; balancing over the others");
        }
        config.probe_all(&endpoints).await;
        let dynamic = config.sources.iter().any(Source::is_dynamic);
        let health = config.health.is_some();
        let shared = Arc::new(Shared {
            endpoints: ArcSwap::from_pointee(endpoints),
            config,
            tasks: Mutex::new(Vec::new()),
        });
        let mut tasks = Vec::new();
        if health {
            tasks.push(tokio::spawn(health_task(Arc::downgrade(&shared))));
        }
        if dynamic {
            tasks.push(tokio::spawn(discovery_task(Arc::downgrade(&shared))));
        }
        *shared.tasks.lock().unwrap_or_else(PoisonError::into_inner) = tasks;
        Ok(Balancer { shared })
    }
}

/// The validated settings.
pub(crate) struct Config {
    sources: Vec<Source>,
    proxy: ProxyFactory,
    workers: usize,
    pub(crate) health: Option<HealthCheck>,
    pub(crate) backoff: EjectionBackoff,
    pub(crate) retries: u32,
    pub(crate) affinity: Option<AffinityKey>,
    dns_refresh: Duration,
    resolver: Arc<dyn Resolve>,
    default_rtt: Duration,
    decay: Duration,
    probe_timeout: Duration,
    pub(crate) report_replica: bool,
    pub(crate) retry_after: HeaderValue,
    epoch: Instant,
}

impl Config {
    /// A replica at `address` of upstream `source`, with its proxies and health client.
    fn endpoint<B>(&self, source: usize, address: String) -> Result<Endpoint<B>, BuildError>
    where
        B: Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let upstream = &self.sources[source];
        let url = upstream.url_for(&address, None);
        let proxies = (0..self.workers)
            .map(|_| (self.proxy)(&url).build::<Reclaim<B>>())
            .collect::<Result<Vec<_>, _>>()?
            .into_boxed_slice();
        let health = match &self.health {
            Some(check) => Some(
                (self.proxy)(&upstream.url_for(&address, check.port))
                    .connect_timeout(check.timeout)
                    .read_timeout(check.timeout)
                    .preserve_host(false)
                    .build()?,
            ),
            None => None,
        };
        let affinity_id = self
            .affinity
            .as_ref()
            .map(|key| key.id(&address))
            .unwrap_or_default();
        let set_cookie = self
            .affinity
            .as_ref()
            .and_then(|key| key.set_cookie(&affinity_id));
        Ok(Endpoint {
            stats: Arc::new(Stats::new(
                self.epoch,
                self.default_rtt,
                self.decay,
                self.health.is_none(),
            )),
            served_by: kestra_edge_proxy::ServedBy(address.as_str().into()),
            address,
            source,
            affinity_id,
            set_cookie,
            proxies,
            health,
            passes: AtomicU32::new(0),
            fails: AtomicU32::new(0),
        })
    }

    /// Probes every replica once, concurrently: with a health check, a replica is in only if
    /// its check passes; without one, a replica that refuses a TCP connection starts ejected.
    async fn probe_all<B: Send + 'static>(&self, endpoints: &[Arc<Endpoint<B>>]) {
        let mut probes = tokio::task::JoinSet::new();
        for (index, endpoint) in endpoints.iter().enumerate() {
            let endpoint = endpoint.clone();
            let path = self.health.as_ref().map(|c| c.path.clone());
            let timeout = self.probe_timeout;
            probes.spawn(async move {
                let passed = match (&endpoint.health, path) {
                    (Some(proxy), Some(path)) => health::probe(proxy, &path, timeout).await,
                    _ => tcp_probe(&endpoint.address, timeout).await,
                };
                (index, passed)
            });
        }
        while let Some(done) = probes.join_next().await {
            let Ok((index, passed)) = done else { continue };
            let endpoint = &endpoints[index];
            if self.health.is_some() {
                endpoint.stats.set_healthy(passed);
            } else if !passed {
                endpoint
                    .stats
                    .ejection
                    .fail(endpoint.stats.now(), &self.backoff);
            }
            if passed {
                tracing::info!(replica = %endpoint.address, "replica ready");
            } else {
                tracing::warn!(replica = %endpoint.address, "replica not ready at start-up");
            }
        }
    }
}

async fn tcp_probe(address: &str, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await,
        Ok(Ok(_))
    )
}

/// What every worker's [`Balance`] shares.
pub(crate) struct Shared<B> {
    pub(crate) endpoints: ArcSwap<Vec<Arc<Endpoint<B>>>>,
    pub(crate) config: Config,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl<B> Drop for Shared<B> {
    fn drop(&mut self) {
        let tasks = self.tasks.get_mut().unwrap_or_else(PoisonError::into_inner);
        for task in tasks.drain(..) {
            task.abort();
        }
    }
}

/// A replica as the balancer sees it (for logs, tests and status pages).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaState {
    /// `ip:port`.
    pub address: String,
    /// The active health check's verdict (`true` without checks).
    pub healthy: bool,
    /// Passively ejected right now.
    pub ejected: bool,
    /// Requests in flight and open streams.
    pub in_flight: u32,
    /// How its exchanges ended so far.
    pub outcomes: crate::ReplicaOutcomes,
}

/// The balancer: replicas, their load and health, and the background tasks that keep them
/// current (stopped when the balancer and all its services are dropped).
pub struct Balancer<B> {
    shared: Arc<Shared<B>>,
}

impl<B> fmt::Debug for Balancer<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("replicas", &self.replicas())
            .finish()
    }
}

impl<B> Clone for Balancer<B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<B> Balancer<B> {
    /// The service for worker thread `worker` (0 when there is one): its requests use that
    /// worker's connection pools.
    pub fn service(&self, worker: usize) -> Balance<B> {
        Balance {
            shared: self.shared.clone(),
            worker: worker % self.shared.config.workers,
        }
    }

    /// Every replica's state now.
    pub fn replicas(&self) -> Vec<ReplicaState> {
        replicas(&self.shared)
    }
}

fn replicas<B>(shared: &Shared<B>) -> Vec<ReplicaState> {
    shared
        .endpoints
        .load()
        .iter()
        .map(|e| ReplicaState {
            address: e.address.clone(),
            healthy: e.stats.is_healthy(),
            ejected: e.stats.ejection.is_ejected(e.stats.now()),
            in_flight: e.stats.pending(),
            outcomes: e.stats.outcomes(),
        })
        .collect()
}

/// The balancing tower service of one worker; cloning it is one `Arc` clone.
///
/// Each request goes to the cheaper of two replicas picked at random among the usable ones
/// (power of two choices), cost being the peak-EWMA latency times the requests in flight
/// plus one; see the [crate docs](crate).
pub struct Balance<B> {
    pub(crate) shared: Arc<Shared<B>>,
    pub(crate) worker: usize,
}

impl<B> Clone for Balance<B> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            worker: self.worker,
        }
    }
}

impl<B> fmt::Debug for Balance<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balance")
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

impl<B> Balance<B> {
    /// Every replica's state now.
    pub fn replicas(&self) -> Vec<ReplicaState> {
        replicas(&self.shared)
    }
}

/// `X-Forwarded-Proto`, as the forwarded layer writes it (it removes a client's own unless
/// the client is a trusted proxy).
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Whether the client reached the gateway over TLS: served by the TLS transport, or told so
/// by the forwarded layer (a trusted TLS terminator in front).
fn client_used_tls<B>(req: &Request<B>) -> bool {
    req.extensions().get::<TlsConnection>().is_some()
        || req
            .headers()
            .get(&X_FORWARDED_PROTO)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"))
}

impl<B> Service<Request<B>> for Balance<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<crate::BalanceBody>;
    type Error = std::convert::Infallible;
    type Future = ResponseFuture<B>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each replica's pooled client queues internally: always ready, like ReverseProxy.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> ResponseFuture<B> {
        let shared = &*self.shared;
        let list = shared.endpoints.load();
        let now = shared.config.epoch.elapsed().as_nanos() as u64;
        let affinity = shared.config.affinity.as_ref();
        let sticky = affinity.and_then(|key| {
            let id = affinity::cookie(req.headers(), &key.cookie)?;
            list.iter()
                .find(|e| e.affinity_id.as_bytes() == id && e.usable(now))
        });
        let endpoint = match sticky {
            Some(endpoint) => endpoint,
            None => match pick(&list, now, &[]) {
                Some(endpoint) => endpoint,
                None => return ResponseFuture::unavailable(&shared.config.retry_after),
            },
        };
        let secure = affinity.is_some() && client_used_tls(&req);
        let cookie = match (affinity, sticky) {
            (Some(_), None) => Some(secure),
            _ => None,
        };
        let endpoint = endpoint.clone();
        let retryable = shared.config.retries > 0 && list.len() > 1;
        drop(list);

        let (parts, body) = req.into_parts();
        let (body, retry) = if retryable {
            let has_body = !body.is_end_stream();
            let (body, slot) = if has_body {
                let (body, slot) = Reclaim::shared(body);
                (body, Some(slot))
            } else {
                (Reclaim::owned(body), None)
            };
            let safe =
                !has_body && matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
            let retry = Retry::new(&parts, slot, safe, shared.config.retries, secure);
            (body, Some(retry))
        } else {
            (Reclaim::owned(body), None)
        };
        let in_flight = endpoint.stats.in_flight();
        let mut proxy = endpoint.proxies[self.worker].clone();
        let future = proxy.call(Request::from_parts(parts, body));
        ResponseFuture::new(
            future,
            self.shared.clone(),
            self.worker,
            endpoint,
            in_flight,
            retry,
            cookie,
            now,
        )
    }
}

thread_local! {
    // Seeded per thread from std's randomly keyed hasher; quality matters little, speed does.
    static RNG: Cell<u64> = Cell::new({
        use std::hash::{BuildHasher, Hasher};
        std::collections::hash_map::RandomState::new().build_hasher().finish() | 1
    });
}

/// xorshift64*: a random `u64` without a lock or a syscall.
fn random() -> u64 {
    RNG.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// Power of two choices among the usable replicas not in `exclude`; when none is usable but
/// some are ejected only passively, the least recently failed of those (Envoy's panic
/// mode); `None` when every replica failed its active check.
pub(crate) fn pick<'a, B>(
    list: &'a [Arc<Endpoint<B>>],
    now: u64,
    exclude: &[Arc<Endpoint<B>>],
) -> Option<&'a Arc<Endpoint<B>>> {
    let candidate = |e: &&Arc<Endpoint<B>>| !exclude.iter().any(|x| Arc::ptr_eq(x, e));
    let usable = |e: &&Arc<Endpoint<B>>| e.usable(now) && candidate(e);
    let count = list.iter().filter(usable).count();
    match count {
        0 => list
            .iter()
            .filter(candidate)
            .filter(|e| e.stats.is_healthy())
            .min_by_key(|e| e.stats.ejection.last_failure()),
        1 => list.iter().find(usable),
        _ => {
            let r = random();
            let first = (r % count as u64) as usize;
            let second = (first + 1 + ((r >> 32) % (count as u64 - 1)) as usize) % count;
            let a = list.iter().filter(usable).nth(first)?;
            let b = list.iter().filter(usable).nth(second)?;
            if b.stats.cost(now) < a.stats.cost(now) {
                Some(b)
            } else {
                Some(a)
            }
        }
    }
}

/// Probes every replica every interval and counts the results against the thresholds.
async fn health_task<B: Send + 'static>(shared: Weak<Shared<B>>) {
    let Some(interval) = shared
        .upgrade()
        .and_then(|s| s.config.health.as_ref().map(|c| c.interval))
    else {
        return;
    };
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Some(check) = shared.config.health.clone() else {
            return;
        };
        let endpoints = shared.endpoints.load_full();
        drop(shared);
        let mut probes = tokio::task::JoinSet::new();
        for endpoint in endpoints.iter() {
            let endpoint = endpoint.clone();
            let check = check.clone();
            probes.spawn(async move {
                if let Some(proxy) = &endpoint.health {
                    let passed = health::probe(proxy, &check.path, check.timeout).await;
                    health::record(&endpoint, passed, &check);
                }
            });
        }
        while probes.join_next().await.is_some() {}
    }
}

/// Resolves the names again every refresh period: new addresses join (after passing a probe
/// when there is a health check), vanished ones get no new requests while their in-flight
/// requests and open streams finish on the proxies they hold.
async fn discovery_task<B>(shared: Weak<Shared<B>>)
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let Some(every) = shared.upgrade().map(|s| s.config.dns_refresh) else {
        return;
    };
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        refresh(&shared).await;
    }
}

pub(crate) async fn refresh<B>(shared: &Shared<B>)
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let config = &shared.config;
    let current = shared.endpoints.load_full();
    let mut next: Vec<Arc<Endpoint<B>>> = Vec::with_capacity(current.len());
    let mut joined = Vec::new();
    for (index, source) in config.sources.iter().enumerate() {
        let kept = current.iter().filter(|e| e.source == index);
        if !source.is_dynamic() {
            next.extend(kept.cloned());
            continue;
        }
        let addresses = match source.addresses(&*config.resolver).await {
            Ok(addresses) => addresses,
            Err(err) => {
                // A failed lookup keeps the replicas known so far.
                tracing::warn!(upstream = %source.url, error = %err, "upstream does not resolve; keeping its replicas");
                next.extend(kept.cloned());
                continue;
            }
        };
        let wanted: HashSet<&str> = addresses.iter().map(String::as_str).collect();
        for endpoint in kept {
            if wanted.contains(endpoint.address.as_str()) {
                next.push(endpoint.clone());
            } else {
                tracing::info!(replica = %endpoint.address, in_flight = endpoint.stats.pending(), "replica left DNS: draining");
            }
        }
        for address in addresses {
            if next
                .iter()
                .any(|e| e.source == index && e.address == address)
            {
                continue;
            }
            match config.endpoint::<B>(index, address) {
                Ok(endpoint) => joined.push(Arc::new(endpoint)),
                Err(err) => tracing::warn!(error = %err, "cannot add replica"),
            }
        }
    }
    if !joined.is_empty() {
        config.probe_all(&joined).await;
        for endpoint in &joined {
            tracing::info!(replica = %endpoint.address, "replica joined from DNS");
        }
        next.extend(joined);
    }
    let changed = next.len() != current.len()
        || next
            .iter()
            .zip(current.iter())
            .any(|(a, b)| !Arc::ptr_eq(a, b));
    if changed {
        shared.endpoints.store(Arc::new(next));
    }
}

impl<B> Balancer<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    /// Resolves the upstream names now instead of at the next refresh.
    pub async fn refresh(&self) {
        refresh(&self.shared).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::affinity::AffinityKey;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use kestra_edge_standin::{Standin, StandinConfig};
    use std::net::SocketAddr;
    use tower::ServiceExt;

    /// An address nothing listens on any more.
    fn closed() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    }

    /// A POST whose affinity cookie names the replica that refuses connections.
    async fn post_to_refusing(retries: u32) -> (Response<crate::BalanceBody>, Standin) {
        let standin = Standin::start(StandinConfig::default()).await.unwrap();
        let refusing = closed();
        let balancer = BalanceBuilder::new([format!("http://{refusing}"), standin.url()])
            .retries(retries)
            // Ejections end at once, so the cookie still leads to the refusing replica.
            .ejection(EjectionBackoff {
                base: Duration::from_nanos(1),
                max: Duration::from_nanos(1),
            })
            .affinity(Some(Affinity::default()))
            .build::<Full<Bytes>>()
            .await
            .unwrap();
        let id = AffinityKey::new(&Affinity::default())
            .unwrap()
            .id(&refusing.to_string());
        let request = Request::post("/kestra/api/v1/upload")
            .header("cookie", format!("kestra_edge_replica={id}"))
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap();
        let response = balancer.service(0).oneshot(request).await.unwrap();
        (response, standin)
    }

    #[tokio::test]
    async fn a_never_sent_post_goes_to_another_replica_with_its_whole_body() {
        let (response, _standin) = post_to_refusing(1).await;
        assert_eq!(response.status(), 200);
        let cookie = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(cookie.starts_with("kestra_edge_replica="), "{cookie}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["length"], 5, "{json}");
    }

    #[tokio::test]
    async fn without_retries_the_refusal_is_the_answer() {
        let (response, _standin) = post_to_refusing(0).await;
        assert_eq!(response.status(), 502);
        assert!(response.headers().get("set-cookie").is_none());
    }

    #[tokio::test]
    async fn when_every_replica_is_ejected_the_least_recently_failed_is_tried() {
        let standin = Standin::start(StandinConfig::default()).await.unwrap();
        let balancer = BalanceBuilder::new([standin.url(), format!("http://{}", closed())])
            .build::<Full<Bytes>>()
            .await
            .unwrap();
        let list = balancer.shared.endpoints.load();
        let backoff = EjectionBackoff::default();
        let now = list[0].stats.now();
        // The live one failed first, so it failed least recently.
        list[0].stats.ejection.fail(now, &backoff);
        list[1].stats.ejection.fail(now + 1, &backoff);
        assert!(balancer.replicas().iter().all(|r| r.ejected));
        let picked = pick(&list, now + 2, &[]).unwrap();
        assert!(Arc::ptr_eq(picked, &list[0]));
        let request = Request::get("/kestra/ping").body(Full::default()).unwrap();
        let response = balancer.service(0).oneshot(request).await.unwrap();
        assert_eq!(response.status(), 200);
    }
}
