//! Leaks: thousands of exchanges that clients abandon at random points (mid-download,
//! mid-upload, mid-SSE, mid-tunnel, mid-head), after which the process's file descriptors,
//! the gateway's connections and tunnels, and the stand-in's connections, streams and
//! WebSockets must all return to where they started.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use kestra_edge_tests::{eventually, open_fds, Stack};
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_tungstenite::tungstenite::Message;

const EXCHANGES: usize = 2000;
const CONCURRENCY: usize = 32;

/// A small deterministic generator (xorshift), so that a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[derive(Debug, Clone, Copy)]
enum Abort {
    MidDownload,
    MidUpload,
    MidSse,
    MidTunnel,
    MidHead,
    Complete,
}

const KINDS: [Abort; 6] = [
    Abort::MidDownload,
    Abort::MidUpload,
    Abort::MidSse,
    Abort::MidTunnel,
    Abort::MidHead,
    Abort::Complete,
];

async fn run(stack: &Stack, client: &reqwest::Client, kind: Abort, seed: u64) {
    let base = stack.url("/kestra/api/v1");
    match kind {
        Abort::MidDownload => {
            let mut response = client
                .get(format!("{base}/download?bytes={}", 4 << 20))
                .send()
                .await
                .unwrap();
            // Take 1 to 8 chunks of a 4 MiB body, then go away.
            for _ in 0..=(seed % 8) {
                if response.chunk().await.unwrap().is_none() {
                    break;
                }
            }
        }
        Abort::MidUpload => {
            let chunks = seed % 8;
            let stream = futures_util::stream::iter(0..=chunks).map(move |i| {
                if i == chunks {
                    Err(std::io::Error::other("client gave up"))
                } else {
                    Ok(Bytes::from(vec![b'u'; 32 * 1024]))
                }
            });
            let result = client
                .post(format!("{base}/upload"))
                .body(reqwest::Body::wrap_stream(stream))
                .send()
                .await;
            assert!(result.is_err(), "an aborted upload succeeded");
        }
        Abort::MidSse => {
            let mut response = client
                .get(format!(
                    "{base}/main/executions/e{seed}/follow?events=0&interval_ms=5"
                ))
                .send()
                .await
                .unwrap();
            for _ in 0..=(seed % 3) {
                let _ = response.chunk().await.unwrap();
            }
        }
        Abort::MidTunnel => {
            let url = format!("ws://{}/kestra/api/v1/ws/echo", stack.gateway.addr);
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            ws.send(Message::text(format!("hello {seed}")))
                .await
                .unwrap();
            if seed % 2 == 0 {
                let echoed = ws.next().await.unwrap().unwrap();
                assert_eq!(echoed, Message::text(format!("hello {seed}")));
            }
            // Dropped without a close frame: the TCP connection just goes away.
        }
        Abort::MidHead => {
            let mut stream = TcpStream::connect(stack.gateway.addr).await.unwrap();
            let head = b"GET /kestra/ping HTTP/1.1\r\nHost: t\r\nX-Cut: ";
            let cut = usize::try_from(seed).unwrap() % head.len();
            stream.write_all(&head[..cut]).await.unwrap();
        }
        Abort::Complete => {
            let response = client.get(stack.url("/kestra/ping")).send().await.unwrap();
            assert_eq!(response.text().await.unwrap(), "pong");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_client_aborts_leave_no_descriptor_connection_or_stream_behind() {
    let stack = Stack::start_with(|c| {
        c.prefix.context_path = Some("/kestra".to_owned());
        // Idle pooled upstream connections close quickly, so "back to baseline" means zero.
        c.upstream.idle_timeout = Duration::from_millis(200);
        c.listener.header_timeout = Duration::from_millis(500);
    })
    .await;
    let settled = |stack: &Stack| {
        stack.gateway.connections.open() == 0
            && stack.gateway.tunnels.open() == 0
            && stack.standin.stats().open_streams() == 0
            && stack.standin.stats().open_websockets() == 0
            && stack.standin.stats().open_connections() == 0
    };
    // Warm up once, so lazily opened descriptors (timers, resolvers) are in the baseline.
    let client = reqwest::Client::builder().build().unwrap();
    run(&stack, &client, Abort::Complete, 0).await;
    drop(client);
    assert!(eventually(Duration::from_secs(5), || settled(&stack)).await);
    let baseline = open_fds();

    let next = Arc::new(AtomicUsize::new(0));
    let counts: Arc<[AtomicUsize; 6]> = Arc::new(Default::default());
    let stack = Arc::new(stack);
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|w| {
            let (stack, next, counts) = (stack.clone(), next.clone(), counts.clone());
            tokio::spawn(async move {
                // Each worker has its own pooled client: aborted bodies must not poison it.
                let client = reqwest::Client::builder().build().unwrap();
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w as u64 + 1));
                while next.fetch_add(1, Ordering::Relaxed) < EXCHANGES {
                    let seed = rng.next();
                    let kind = usize::try_from(seed % KINDS.len() as u64).unwrap();
                    counts[kind].fetch_add(1, Ordering::Relaxed);
                    run(&stack, &client, KINDS[kind], seed >> 8).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let counts: Vec<_> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    assert_eq!(counts.iter().sum::<usize>(), EXCHANGES);
    assert!(counts.iter().all(|&n| n > 200), "{counts:?}");

    let stack = Arc::try_unwrap(stack).ok().unwrap();
    let back = eventually(Duration::from_secs(10), || {
        settled(&stack) && open_fds() <= baseline
    })
    .await;
    assert!(
        back,
        "after {EXCHANGES} exchanges ({counts:?}): fds {} (baseline {baseline}), gateway \
         connections {}, tunnels {}, upstream connections {}, streams {}, websockets {}",
        open_fds(),
        stack.gateway.connections.open(),
        stack.gateway.tunnels.open(),
        stack.standin.stats().open_connections(),
        stack.standin.stats().open_streams(),
        stack.standin.stats().open_websockets(),
    );
}
