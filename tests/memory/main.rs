//! Gateway memory stays bounded while 100 MB bodies stream through it both ways, and while
//! an SSE client stops reading from a stream the upstream pushes as fast as it can.
//!
//! Its own test binary, its tests one at a time: a peak-RSS check must not see other tests'
//! allocations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use bytes::Bytes;
use futures_util::StreamExt;
use kestra_edge_tests::{client, Stack};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::Mutex,
};

/// One measurement at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// Peak resident set of this process, in KiB (Linux `VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mb_each_way_with_bounded_memory() {
    const LEN: usize = 100 << 20;
    // Gateway, stand-in and both clients live in this process: if any hop buffered a whole
    // body, the peak would grow by at least 100 MiB.
    const BOUND_KIB: u64 = 48 << 10;
    let _serial = SERIAL.lock().await;
    let stack = Stack::start().await;
    let baseline = peak_rss_kib();

    let chunk = Bytes::from(vec![7u8; 1 << 20]);
    let body = futures_util::stream::iter(
        (0..LEN >> 20).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    );
    let response = client()
        .post(stack.url("/kestra/api/v1/upload"))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    let uploaded: serde_json::Value = response.json().await.unwrap();
    assert_eq!(uploaded["length"], LEN as u64);

    let response = client()
        .get(stack.url(&format!("/kestra/api/v1/download?bytes={LEN}")))
        .send()
        .await
        .unwrap();
    let mut received = 0;
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        received += chunk.unwrap().len();
    }
    assert_eq!(received, LEN);

    let growth = peak_rss_kib().saturating_sub(baseline);
    assert!(
        growth < BOUND_KIB,
        "peak RSS grew by {growth} KiB moving 200 MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_sse_reader_holds_back_the_upstream() {
    // 64 KiB events pushed without pause: unbounded buffering would grow by hundreds of MiB
    // during the stall.
    const BOUND_KIB: u64 = 32 << 10;
    let _serial = SERIAL.lock().await;
    let stack = Stack::start().await;
    let baseline = peak_rss_kib();
    let mut stream = tokio::net::TcpStream::connect(stack.gateway.addr)
        .await
        .unwrap();
    stream
        .write_all(
            b"GET /kestra/api/v1/main/logs/l1/follow?events=0&interval_ms=0&pad=65536 HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut received = 0;
    while received < (1 << 20) {
        received += stream.read(&mut buf).await.unwrap();
    }
    // The stall is the scenario itself: the client reads nothing for 1.5 s.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let growth = peak_rss_kib().saturating_sub(baseline);
    // The stream is alive and flows again once the client reads.
    let mut after = 0;
    while after < (4 << 20) {
        after += stream.read(&mut buf).await.unwrap();
    }
    assert!(
        growth < BOUND_KIB,
        "peak RSS grew by {growth} KiB while the reader stalled"
    );
    assert_eq!(stack.standin.stats().open_streams(), 1);
}
