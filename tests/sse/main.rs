//! The SSE guard end to end: real SSE clients through the gateway's stack against the
//! stand-in's follow streams.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use futures_util::StreamExt;
use kestra_edge_gateway::GatewayConfig;
use kestra_edge_tests::{client, eventually, Stack};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const LIMIT: Duration = Duration::from_secs(10);
const FOLLOW: &str = "/kestra/api/v1/main/executions/e1/follow";

fn unix_micros() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

/// Reads a whole stream; the blocks between blank lines, each with its arrival time (µs).
async fn blocks(response: reqwest::Response) -> (Vec<(String, u128)>, Result<(), reqwest::Error>) {
    let mut stream = response.bytes_stream();
    let mut pending = String::new();
    let mut blocks = Vec::new();
    let result = tokio::time::timeout(LIMIT, async {
        while let Some(chunk) = stream.next().await {
            pending.push_str(std::str::from_utf8(&chunk?).unwrap());
            let now = unix_micros();
            while let Some(end) = pending.find("\n\n") {
                let block: String = pending.drain(..end + 2).collect();
                blocks.push((block.trim_end().to_owned(), now));
            }
        }
        Ok(())
    })
    .await
    .expect("the stream ends in time");
    (blocks, result)
}

async fn follow(stack: &Stack, query: &str) -> reqwest::Response {
    client()
        .get(stack.url(&format!("{FOLLOW}?{query}")))
        .header("accept", "text/event-stream")
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .unwrap()
}

fn sent_at(block: &str) -> u128 {
    let data = block
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap();
    let data: serde_json::Value = serde_json::from_str(data).unwrap();
    data["sent_at_us"].as_u64().unwrap().into()
}

#[tokio::test]
async fn events_arrive_one_by_one_with_sse_headers() {
    let stack = Stack::start().await;
    let response = follow(&stack, "events=4&interval_ms=100").await;
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert!(headers.get("content-length").is_none());
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    let (blocks, result) = blocks(response).await;
    result.unwrap();
    let ids: Vec<&str> = blocks
        .iter()
        .filter_map(|(b, _)| b.lines().find_map(|l| l.strip_prefix("id: ")))
        .collect();
    assert_eq!(
        ids,
        ["start", "progress", "progress", "progress", "progress", "end"]
    );
    for (block, received) in &blocks {
        let delay_ms = received.saturating_sub(sent_at(block)) / 1000;
        assert!(
            delay_ms < 50,
            "an event arrived {delay_ms} ms after it was sent"
        );
    }
}

#[tokio::test]
async fn compression_never_touches_event_streams() {
    let stack = Stack::start_with(|c| c.streams.compression = true).await;
    // An ordinary response is compressed…
    let echo = client()
        .get(stack.url("/kestra/api/v1/echo/compressible"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(echo.headers()["content-encoding"], "gzip");
    // …an event stream never is, and its events still arrive one by one.
    let response = follow(&stack, "events=2&interval_ms=100").await;
    assert!(response.headers().get("content-encoding").is_none());
    let (blocks, result) = blocks(response).await;
    result.unwrap();
    assert_eq!(blocks.len(), 4);
    for (block, received) in &blocks {
        assert!(received.saturating_sub(sent_at(block)) / 1000 < 50);
    }
}

#[tokio::test]
async fn heartbeats_fill_quiet_gaps_between_events() {
    let stack = Stack::start_with(|c| c.streams.sse_heartbeat = Duration::from_millis(100)).await;
    let (blocks, result) = blocks(follow(&stack, "events=2&interval_ms=450").await).await;
    result.unwrap();
    let heartbeats = blocks.iter().filter(|(b, _)| b == ":").count();
    assert!(
        heartbeats >= 6,
        "{heartbeats} heartbeats in 1.35 s of quiet"
    );
    // Every other block is a whole event: a heartbeat never split one.
    for (block, _) in blocks.iter().filter(|(b, _)| b != ":") {
        assert!(block.starts_with("id: "), "{block:?}");
        assert!(block.contains("\ndata: {"), "{block:?}");
    }
}

#[tokio::test]
async fn a_quiet_stream_outlives_the_read_timeout() {
    // Kestra sends no heartbeat: gaps longer than the read timeout must not cut the stream.
    let stack = Stack::start_with(|c| {
        c.upstream.read_timeout = Duration::from_millis(150);
        c.streams.sse_heartbeat = Duration::ZERO;
    })
    .await;
    let (blocks, result) = blocks(follow(&stack, "events=2&interval_ms=400").await).await;
    result.unwrap();
    assert_eq!(blocks.len(), 4, "{blocks:?}");
}

#[tokio::test]
async fn an_idle_stream_ends_cleanly() {
    let stack = Stack::start_with(|c| {
        c.streams.sse_heartbeat = Duration::from_millis(100);
        c.streams.sse_idle_timeout = Duration::from_millis(400);
    })
    .await;
    let started = Instant::now();
    let (blocks, result) = blocks(follow(&stack, "events=0&interval_ms=60000").await).await;
    result.expect("a clean end, not an aborted transfer");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(blocks[0].0.starts_with("id: start"));
    assert!(blocks[1..].iter().all(|(b, _)| b == ":"), "{blocks:?}");
    let stats = stack.standin.stats().clone();
    assert!(eventually(LIMIT, || stats.open_streams() == 0).await);
}

#[tokio::test]
async fn the_lifetime_cap_ends_with_a_retry() {
    let stack =
        Stack::start_with(|c| c.streams.sse_max_lifetime = Some(Duration::from_millis(300))).await;
    let (blocks, result) = blocks(follow(&stack, "events=0&interval_ms=50").await).await;
    result.unwrap();
    let (last, _) = blocks.last().unwrap();
    let retry: u64 = last.strip_prefix("retry: ").unwrap().parse().unwrap();
    assert!((1000..5000).contains(&retry), "{last}");
    assert!(blocks[..blocks.len() - 1]
        .iter()
        .all(|(b, _)| b.starts_with("id: ")));
}

#[tokio::test]
async fn a_client_that_goes_away_releases_the_upstream_stream() {
    let stack = Stack::start().await;
    let response = follow(&stack, "events=0&interval_ms=50").await;
    let mut stream = response.bytes_stream();
    stream.next().await.unwrap().unwrap();
    assert_eq!(stack.standin.stats().open_streams(), 1);
    drop(stream);
    let stats = stack.standin.stats().clone();
    let gone = Instant::now();
    assert!(eventually(LIMIT, || stats.open_streams() == 0).await);
    assert!(
        gone.elapsed() < Duration::from_secs(1),
        "took {:?}",
        gone.elapsed()
    );
    assert!(eventually(LIMIT, || stats.open_connections() == 0).await);
}

#[tokio::test]
async fn last_event_id_passes_untouched() {
    let stack = Stack::start().await;
    let echo: kestra_edge_standin::Echo = client()
        .get(stack.url("/kestra/api/v1/echo/follow"))
        .header("last-event-id", "progress")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo.header_values("last-event-id"), ["progress"]);
}

#[test]
fn gateway_defaults_guard_streams() {
    let config = GatewayConfig::for_upstream("http://127.0.0.1:9");
    assert_eq!(config.streams.sse_heartbeat, Duration::from_secs(15));
    assert_eq!(config.streams.sse_idle_timeout, Duration::from_secs(3600));
    assert_eq!(config.streams.sse_max_lifetime, None);
}
