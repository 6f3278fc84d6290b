//! Several Kestra replicas behind one gateway: three stand-ins on 127.0.0.2, 127.0.0.3 and
//! 127.0.0.4, on one port and one management port (like pods behind one Service), the
//! gateway on 127.0.0.1:0, everything over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use kestra_edge::balance::{ReplicaState, Resolve, Resolving};
use kestra_edge_gateway::{
    config::{AffinityMode, Resolver},
    Gateway, GatewayConfig,
};
use kestra_edge_standin::{IsolatedStandin, StandinConfig};
use kestra_edge_tests::{client, eventually};
use std::{
    collections::HashMap,
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use tokio::{sync::oneshot, task::JoinHandle};

const HOSTS: [[u8; 4]; 3] = [[127, 0, 0, 2], [127, 0, 0, 3], [127, 0, 0, 4]];

/// Three replicas on one port, each with a management port (also shared).
struct Replicas {
    standins: Vec<Option<IsolatedStandin>>,
    port: u16,
    management: u16,
}

impl Replicas {
    async fn start() -> Self {
        for _ in 0..20 {
            if let Some(replicas) = Self::try_start().await {
                return replicas;
            }
        }
        panic!("no free port shared by 127.0.0.2-4");
    }

    async fn try_start() -> Option<Self> {
        let config = |host: [u8; 4], port: u16, management: u16| StandinConfig {
            listen: SocketAddr::from((host, port)),
            management: Some(SocketAddr::from((host, management))),
            replica: Some(IpAddr::from(host).to_string()),
            event_interval: Duration::from_millis(20),
            ..StandinConfig::default()
        };
        let first = IsolatedStandin::start(config(HOSTS[0], 0, 0)).await.ok()?;
        let port = first.addr().port();
        let management = first.management_addr()?.port();
        let mut standins = vec![Some(first)];
        for host in &HOSTS[1..] {
            standins.push(Some(
                IsolatedStandin::start(config(*host, port, management))
                    .await
                    .ok()?,
            ));
        }
        Some(Self {
            standins,
            port,
            management,
        })
    }

    fn url(&self, i: usize) -> String {
        format!("http://{}:{}", IpAddr::from(HOSTS[i]), self.port)
    }

    fn name(i: usize) -> String {
        IpAddr::from(HOSTS[i]).to_string()
    }

    fn get(&self, i: usize) -> &IsolatedStandin {
        self.standins[i].as_ref().unwrap()
    }

    fn set_ready(&self, i: usize, ready: bool) {
        self.get(i).control().set_ready(ready);
    }

    /// Stops replica `i` at once, like SIGKILL: listeners and connections closed mid-answer.
    fn kill(&mut self, i: usize) {
        self.standins[i].take().unwrap().kill();
    }

    /// The gateway's settings for the three replicas: health checks every 30 ms.
    fn gateway_config(&self) -> GatewayConfig {
        let mut c = GatewayConfig::for_upstream(self.url(0));
        c.upstream.more = vec![self.url(1), self.url(2)];
        c.upstream.connect_timeout = Duration::from_millis(500);
        c.balance.health_path = Some("/health/readiness".to_owned());
        c.balance.health_port = Some(self.management);
        c.balance.health_interval = Duration::from_millis(30);
        c.balance.health_timeout = Duration::from_millis(300);
        c
    }
}

/// The gateway serving in the background, with a live view of its replicas.
struct Running {
    addr: SocketAddr,
    edge: kestra_edge::KestraEdge<kestra_edge_gateway::GatewayBody>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl Running {
    async fn start(config: GatewayConfig) -> Self {
        let gateway = Gateway::bind(config).await.expect("gateway binds");
        let addr = gateway.local_addr().unwrap();
        let edge = gateway.edge().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gateway.serve(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            edge,
            stop: Some(stop),
            task: Some(task),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn replicas(&self) -> Vec<ReplicaState> {
        self.edge.replicas().expect("the gateway balances")
    }

    fn healthy(&self, address: &str) -> bool {
        self.replicas()
            .iter()
            .any(|r| r.address == address && r.healthy)
    }

    fn unhealthy(&self, address: &str) -> bool {
        self.replicas()
            .iter()
            .any(|r| r.address == address && !r.healthy)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn address(replicas: &Replicas, i: usize) -> String {
    format!("{}:{}", Replicas::name(i), replicas.port)
}

/// `n` GETs of `path`, `concurrency` at a time: which replica answered each, and how many
/// failed (not 200).
async fn spread(
    gateway: &Running,
    path: &str,
    n: usize,
    concurrency: usize,
) -> (HashMap<String, usize>, usize) {
    spread_counting(gateway, path, n, concurrency, Arc::default()).await
}

/// [`spread`], counting the GETs done in `done` as they complete.
async fn spread_counting(
    gateway: &Running,
    path: &str,
    n: usize,
    concurrency: usize,
    done: Arc<AtomicUsize>,
) -> (HashMap<String, usize>, usize) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    let counts = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let failed = Arc::new(AtomicUsize::new(0));
    let left = Arc::new(AtomicUsize::new(n));
    let mut loops = Vec::new();
    for _ in 0..concurrency {
        let (client, counts, failed, left, done) = (
            client.clone(),
            counts.clone(),
            failed.clone(),
            left.clone(),
            done.clone(),
        );
        let url = gateway.url(path);
        loops.push(tokio::spawn(async move {
            while left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1))
                .is_ok()
            {
                match client.get(&url).send().await {
                    Ok(response) if response.status() == 200 => {
                        let replica = response
                            .headers()
                            .get("x-replica")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        let _ = response.bytes().await;
                        *counts.lock().unwrap().entry(replica).or_default() += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(response) => {
                        eprintln!("GET failed: {}", response.status());
                        failed.fetch_add(1, Ordering::Relaxed);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => {
                        eprintln!("GET failed: {err}");
                        failed.fetch_add(1, Ordering::Relaxed);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for l in loops {
        l.await.unwrap();
    }
    let counts = counts.lock().unwrap().clone();
    (counts, failed.load(Ordering::Relaxed))
}

#[tokio::test]
async fn requests_spread_over_the_three_replicas() {
    let replicas = Replicas::start().await;
    let gateway = Running::start(replicas.gateway_config()).await;
    assert!(
        gateway.replicas().iter().all(|r| r.healthy),
        "{:?}",
        gateway.replicas()
    );
    let (counts, failed) = spread(&gateway, "/kestra/ping", 600, 8).await;
    assert_eq!(failed, 0);
    for i in 0..3 {
        let got = counts.get(&Replicas::name(i)).copied().unwrap_or(0);
        assert!(got >= 90, "replica {i} got {got} of 600: {counts:?}");
    }
}

#[tokio::test]
async fn a_slow_replica_gets_little_traffic() {
    let replicas = Replicas::start().await;
    replicas
        .get(1)
        .control()
        .set_delay(Duration::from_millis(100));
    let gateway = Running::start(replicas.gateway_config()).await;
    let (counts, failed) = spread(&gateway, "/kestra/ping", 600, 8).await;
    assert_eq!(failed, 0);
    let slow = counts.get(&Replicas::name(1)).copied().unwrap_or(0);
    eprintln!("with one replica 100 ms slower: {counts:?}");
    assert!(slow <= 30, "the slow replica got {slow} of 600: {counts:?}");
    for i in [0, 2] {
        let got = counts.get(&Replicas::name(i)).copied().unwrap_or(0);
        assert!(got >= 200, "replica {i} got {got}: {counts:?}");
    }
}

#[tokio::test]
async fn replicas_are_probed_before_the_gateway_is_ready() {
    let replicas = Replicas::start().await;
    replicas.set_ready(0, false);
    let gateway = Running::start(replicas.gateway_config()).await;
    // No request has been served yet: the verdict comes from the start-up probe.
    let states = gateway.replicas();
    assert!(gateway.unhealthy(&address(&replicas, 0)), "{states:?}");
    assert!(gateway.healthy(&address(&replicas, 1)), "{states:?}");
    let (counts, failed) = spread(&gateway, "/kestra/ping", 100, 4).await;
    assert_eq!(failed, 0);
    assert_eq!(counts.get(&Replicas::name(0)), None, "{counts:?}");
}

#[tokio::test]
async fn readiness_503_takes_a_replica_out_and_200_brings_it_back() {
    let replicas = Replicas::start().await;
    let gateway = Running::start(replicas.gateway_config()).await;
    let third = address(&replicas, 2);
    replicas.set_ready(2, false);
    assert!(eventually(Duration::from_secs(5), || gateway.unhealthy(&third)).await);
    let (counts, failed) = spread(&gateway, "/kestra/ping", 200, 4).await;
    assert_eq!(failed, 0);
    assert_eq!(counts.get(&Replicas::name(2)), None, "{counts:?}");

    replicas.set_ready(2, true);
    assert!(eventually(Duration::from_secs(5), || gateway.healthy(&third)).await);
    let (counts, failed) = spread(&gateway, "/kestra/ping", 300, 4).await;
    assert_eq!(failed, 0);
    assert!(
        counts.get(&Replicas::name(2)).copied().unwrap_or(0) >= 30,
        "{counts:?}"
    );
}

/// One SSE stream: the replica it landed on, and whether it reached its `end` event.
async fn stream(url: String) -> (String, Result<(), String>) {
    let client = client();
    let mut response = client.get(&url).send().await.unwrap();
    let replica = response
        .headers()
        .get("x-replica")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let mut text = String::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(None) if text.contains("id: end") || text.contains("id:end") => {
                return (replica, Ok(()))
            }
            Ok(None) => return (replica, Err("ended without its end event".to_owned())),
            Err(err) => return (replica, Err(err.to_string())),
        }
    }
}

#[tokio::test]
async fn killing_a_replica_under_load_fails_no_get_and_other_streams_complete() {
    let mut replicas = Replicas::start().await;
    let mut config = replicas.gateway_config();
    config.upstream.connect_timeout = Duration::from_millis(300);
    let gateway = Running::start(config).await;
    // Streams of about 1.2 s: 60 events 20 ms apart.
    let streams: Vec<_> = (0..9)
        .map(|_| {
            tokio::spawn(stream(gateway.url(
                "/kestra/api/v1/main/executions/e1/follow?events=60&interval_ms=20",
            )))
        })
        .collect();
    let victim = Replicas::name(1);
    let gateway = Arc::new(gateway);
    let done = Arc::new(AtomicUsize::new(0));
    let load = {
        let (gateway, done) = (gateway.clone(), done.clone());
        tokio::spawn(async move { spread_counting(&gateway, "/kestra/ping", 3000, 8, done).await })
    };
    // Kill mid-load, with streams open on every replica.
    assert!(
        eventually(Duration::from_secs(5), || gateway
            .replicas()
            .iter()
            .all(|r| r.in_flight > 0))
        .await
    );
    assert!(
        eventually(Duration::from_secs(5), || done.load(Ordering::Relaxed)
            >= 500)
        .await
    );
    let before = done.load(Ordering::Relaxed);
    replicas.kill(1);
    let (counts, failed) = load.await.unwrap();
    assert_eq!(failed, 0, "GETs failed after the kill: {counts:?}");
    assert!(before < 2500, "the load ended before the kill: {before}");
    eprintln!("killed after {before} GETs: {counts:?}");
    let mut on_others = 0;
    for s in streams {
        let (replica, ended) = s.await.unwrap();
        eprintln!("stream on {replica}: {ended:?}");
        if replica == victim {
            // Ended (an error: the client's EventSource reconnects), never left hanging.
            assert!(
                ended.is_err(),
                "a stream on the killed replica ran to its end"
            );
            continue;
        }
        on_others += 1;
        assert_eq!(ended, Ok(()), "a stream on {replica} was cut");
    }
    assert!(on_others >= 3, "{on_others}");
}

#[tokio::test]
async fn cookie_affinity_stays_and_moves_with_a_fresh_cookie_when_unhealthy() {
    let replicas = Replicas::start().await;
    let mut config = replicas.gateway_config();
    config.balance.affinity = AffinityMode::Cookie;
    config.prefix.context_path = Some("/kestra".to_owned());
    config.forwarded.trusted_proxies = vec!["127.0.0.1/32".to_owned()];
    let gateway = Running::start(config).await;
    let client = client();
    let first = client
        .get(gateway.url("/kestra/ping"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    let set_cookie = first.headers()["set-cookie"].to_str().unwrap().to_owned();
    let home = first.headers()["x-replica"].to_str().unwrap().to_owned();
    assert!(
        set_cookie.starts_with("kestra_edge_replica="),
        "{set_cookie}"
    );
    assert!(
        set_cookie.contains("; Path=/kestra; HttpOnly; SameSite=Lax; Secure"),
        "{set_cookie}"
    );
    assert!(
        !set_cookie.contains(&home),
        "the cookie names no address: {set_cookie}"
    );
    let cookie = set_cookie.split(';').next().unwrap().to_owned();

    for _ in 0..30 {
        let response = client
            .get(gateway.url("/kestra/ping"))
            .header("cookie", format!("a=1; {cookie}"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.headers()["x-replica"], home.as_str());
        assert!(response.headers().get("set-cookie").is_none());
    }
    // A client over plain HTTP gets no `Secure`.
    let plain = client
        .get(gateway.url("/kestra/ping"))
        .send()
        .await
        .unwrap();
    let plain_cookie = plain.headers()["set-cookie"].to_str().unwrap();
    assert!(plain_cookie.ends_with("SameSite=Lax"), "{plain_cookie}");

    let i = (0..3).find(|&i| Replicas::name(i) == home).unwrap();
    replicas.set_ready(i, false);
    let home_address = address(&replicas, i);
    assert!(eventually(Duration::from_secs(5), || gateway.unhealthy(&home_address)).await);
    let moved = client
        .get(gateway.url("/kestra/ping"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), 200);
    assert_ne!(moved.headers()["x-replica"], home.as_str());
    let fresh = moved.headers()["set-cookie"].to_str().unwrap();
    assert!(fresh.starts_with("kestra_edge_replica="), "{fresh}");
    assert_ne!(fresh.split(';').next().unwrap(), cookie);
}

#[tokio::test]
async fn no_healthy_replica_is_503_with_retry_after_at_once() {
    let replicas = Replicas::start().await;
    let gateway = Running::start(replicas.gateway_config()).await;
    for i in 0..3 {
        replicas.set_ready(i, false);
    }
    assert!(
        eventually(Duration::from_secs(5), || gateway
            .replicas()
            .iter()
            .all(|r| !r.healthy))
        .await
    );
    let started = Instant::now();
    let response = client()
        .get(gateway.url("/kestra/ping"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_open_websocket_counts_as_load_on_its_replica_until_it_closes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let replicas = Replicas::start().await;
    let gateway = Running::start(replicas.gateway_config()).await;
    let loads = || -> Vec<u32> { gateway.replicas().iter().map(|r| r.in_flight).collect() };
    assert_eq!(loads().iter().sum::<u32>(), 0, "{:?}", gateway.replicas());

    let url = format!("ws://{}/kestra/api/v1/ws/echo", gateway.addr);
    let (mut socket, response) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert_eq!(response.status(), 101);
    socket.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::text("hello")
    );
    // The tunnel is open: its replica carries it as one request in flight, the others none.
    let mut open = loads();
    open.sort_unstable();
    assert_eq!(open, [0, 0, 1], "{:?}", gateway.replicas());

    // The closing handshake, then the client's side of the connection: both directions end.
    socket.close(None).await.unwrap();
    while let Some(Ok(_)) = socket.next().await {}
    drop(socket);
    assert!(
        eventually(Duration::from_secs(5), || loads().iter().all(|&l| l == 0)).await,
        "{:?}",
        gateway.replicas()
    );
}

/// A resolver the test edits: `kestra.test` is whatever the list holds.
#[derive(Clone, Default)]
struct TestResolver(Arc<Mutex<Vec<IpAddr>>>);

impl TestResolver {
    fn set(&self, hosts: &[[u8; 4]]) {
        *self.0.lock().unwrap() = hosts.iter().map(|h| IpAddr::from(*h)).collect();
    }
}

impl Resolve for TestResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Resolving<'a> {
        let found = if host == "kestra.test" {
            Ok(self
                .0
                .lock()
                .unwrap()
                .iter()
                .map(|ip| SocketAddr::new(*ip, port))
                .collect())
        } else {
            Err(io::Error::new(io::ErrorKind::NotFound, "no such host"))
        };
        Box::pin(async move { found })
    }
}

#[tokio::test]
async fn dns_adds_and_removes_replicas_and_removed_ones_drain() {
    let replicas = Replicas::start().await;
    let resolver = TestResolver::default();
    resolver.set(&HOSTS[..2]);
    let mut config = replicas.gateway_config();
    config.upstream.url = format!("http://kestra.test:{}", replicas.port);
    config.upstream.more.clear();
    config.balance.dns_refresh = Some(Duration::from_millis(30));
    config.balance.resolver = Some(Resolver(Arc::new(resolver.clone())));
    let gateway = Running::start(config).await;
    let addresses = |g: &Running| {
        let mut a: Vec<String> = g.replicas().into_iter().map(|r| r.address).collect();
        a.sort();
        a
    };
    assert_eq!(
        addresses(&gateway),
        [address(&replicas, 0), address(&replicas, 1)]
    );
    let (counts, failed) = spread(&gateway, "/kestra/ping", 100, 4).await;
    assert_eq!(failed, 0);
    assert_eq!(counts.get(&Replicas::name(2)), None, "{counts:?}");

    // Streams open on both, about 1 s long.
    let streams: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(stream(gateway.url(
                "/kestra/api/v1/main/executions/e1/follow?events=50&interval_ms=20",
            )))
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || gateway
            .replicas()
            .iter()
            .all(|r| r.in_flight > 0))
        .await
    );
    resolver.set(&HOSTS[1..]);
    let wanted = vec![address(&replicas, 1), address(&replicas, 2)];
    assert!(eventually(Duration::from_secs(5), || addresses(&gateway) == wanted).await);
    let (counts, failed) = spread(&gateway, "/kestra/ping", 200, 4).await;
    assert_eq!(failed, 0);
    assert_eq!(counts.get(&Replicas::name(0)), None, "{counts:?}");
    assert!(
        counts.get(&Replicas::name(2)).copied().unwrap_or(0) >= 20,
        "{counts:?}"
    );
    let mut drained = 0;
    for s in streams {
        let (replica, ended) = s.await.unwrap();
        assert_eq!(ended, Ok(()), "a stream on {replica} was cut");
        drained += usize::from(replica == Replicas::name(0));
    }
    assert!(drained >= 1, "no stream was on the removed replica");
}

#[tokio::test]
async fn an_unresolvable_name_is_a_warning_when_another_resolves() {
    let replicas = Replicas::start().await;
    let mut config = replicas.gateway_config();
    config.upstream.more = vec![format!("http://nowhere.test:{}", replicas.port)];
    config.balance.resolver = Some(Resolver(Arc::new(TestResolver::default())));
    let gateway = Running::start(config).await;
    assert_eq!(gateway.replicas().len(), 1);
    let (_, failed) = spread(&gateway, "/kestra/ping", 20, 2).await;
    assert_eq!(failed, 0);

    let mut config = replicas.gateway_config();
    config.upstream.url = format!("http://nowhere.test:{}", replicas.port);
    config.upstream.more.clear();
    config.balance.resolver = Some(Resolver(Arc::new(TestResolver::default())));
    let err = Gateway::bind(config).await.unwrap_err();
    assert!(err.to_string().contains("nowhere.test"), "{err}");
}
