//! `soak`: a long mixed load through the kestra-edge gateway (its own process, in front of
//! the stand-in): small and 64 KiB GETs, 1 MiB uploads, SSE streams that run to their end,
//! and WebSocket sessions. Every answer is checked; the gateway's memory is sampled. It
//! fails (non-zero exit) on any error, or when memory grew past the warm-up's level.

use crate::targets::{BoxError, Target};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use tokio_tungstenite::tungstenite::Message;

const KINDS: [&str; 4] = ["GET", "POST", "SSE", "WebSocket"];
const UPLOAD: usize = 1 << 20;
const SSE_EVENTS: usize = 20;

#[derive(Default)]
struct Tally {
    ok: [AtomicU64; 4],
    errors: [AtomicU64; 4],
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn record(&self, kind: usize, result: Result<(), BoxError>) {
        match result {
            Ok(()) => self.ok[kind].fetch_add(1, Ordering::Relaxed),
            Err(err) => {
                let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
                first.get_or_insert_with(|| format!("{}: {err}", KINDS[kind]));
                self.errors[kind].fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    fn counts(&self, which: &[AtomicU64; 4]) -> [u64; 4] {
        std::array::from_fn(|i| which[i].load(Ordering::Relaxed))
    }
}

async fn get(client: &reqwest::Client, base: &str, n: u64) -> Result<(), BoxError> {
    if n % 2 == 0 {
        let text = client
            .get(format!("{base}/kestra/ping"))
            .send()
            .await?
            .text()
            .await?;
        if text != "pong" {
            return Err(format!("ping answered {text:?}").into());
        }
    } else {
        let response = client
            .get(format!("{base}/kestra/api/v1/download?bytes=65536"))
            .send()
            .await?
            .error_for_status()?;
        let body = response.bytes().await?;
        if body.len() != 65536 {
            return Err(format!("download of {} bytes", body.len()).into());
        }
    }
    Ok(())
}

async fn post(client: &reqwest::Client, base: &str, body: Bytes) -> Result<(), BoxError> {
    let response = client
        .post(format!("{base}/kestra/api/v1/upload"))
        .body(body)
        .send()
        .await?
        .error_for_status()?;
    let json: serde_json::Value = response.json().await?;
    if json["length"] != UPLOAD {
        return Err(format!("upload answered {json}").into());
    }
    Ok(())
}

async fn sse(client: &reqwest::Client, base: &str, n: u64) -> Result<(), BoxError> {
    let response = client
        .get(format!(
            "{base}/kestra/api/v1/main/executions/soak{n}/follow?events={SSE_EVENTS}&interval_ms=100"
        ))
        .send()
        .await?
        .error_for_status()?;
    let body = response.text().await?;
    // start, the progress events, end; heartbeats (`:`) are not events.
    let events = body.matches("\nevent: execution\n").count();
    if events != SSE_EVENTS + 2 || !body.contains("id: end\n") {
        return Err(format!("stream of {events} events").into());
    }
    Ok(())
}

async fn websocket(addr: std::net::SocketAddr, n: u64) -> Result<(), BoxError> {
    let url = format!("ws://{addr}/kestra/api/v1/ws/echo");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
    for i in 0..100 {
        let text = format!("soak {n} {i}");
        ws.send(Message::text(text.clone())).await?;
        match ws.next().await {
            Some(Ok(Message::Text(echoed))) if echoed.as_str() == text => {}
            other => return Err(format!("echo answered {other:?}").into()),
        }
    }
    ws.close(None).await?;
    Ok(())
}

/// Runs the soak for `duration`, printing a line every `sample`; whether it passed.
pub(crate) fn run(duration: Duration, sample: Duration) -> Result<bool, BoxError> {
    let standin = Target::spawn_self("direct", &["serve-standin"])?;
    let url = format!("http://{}", standin.addr);
    let gateway = Target::spawn_self("kestra-edge", &["serve-gateway", "--upstream", &url])?;
    let base = format!("http://{}", gateway.addr);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + duration;
    let upload = Bytes::from(kestra_edge_standin::download_pattern(UPLOAD).collect::<Vec<_>>());

    let mut tasks = Vec::new();
    // (kind, concurrent loops)
    for (kind, loops) in [(0usize, 8u64), (1, 2), (2, 20), (3, 4)] {
        for l in 0..loops {
            let (tally, base, upload) = (tally.clone(), base.clone(), upload.clone());
            let addr = gateway.addr;
            tasks.push(runtime.spawn(async move {
                let client = reqwest::Client::new();
                let mut n = l * 1_000_000;
                while Instant::now() < deadline {
                    n += 1;
                    let result = match kind {
                        0 => get(&client, &base, n).await,
                        1 => post(&client, &base, upload.clone()).await,
                        2 => sse(&client, &base, n).await,
                        _ => websocket(addr, n).await,
                    };
                    tally.record(kind, result);
                }
            }));
        }
    }

    let started = Instant::now();
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    while Instant::now() < deadline {
        std::thread::sleep(sample.min(deadline.saturating_duration_since(Instant::now())));
        let rss = gateway.rss_kib();
        samples.push((started.elapsed(), rss));
        let ok = tally.counts(&tally.ok);
        let errors = tally.counts(&tally.errors);
        eprintln!(
            "{:>6.0} s  gateway RSS {rss:>7} KiB  ok GET {} POST {} SSE {} WS {}  errors {}",
            started.elapsed().as_secs_f64(),
            ok[0],
            ok[1],
            ok[2],
            ok[3],
            errors.iter().sum::<u64>()
        );
    }
    runtime.block_on(async {
        for task in tasks {
            let _ = task.await;
        }
    });

    let ok = tally.counts(&tally.ok);
    let errors = tally.counts(&tally.errors);
    let total_errors: u64 = errors.iter().sum();
    // Memory after the first fifth of the run is the warmed-up level; the end must not be
    // more than 10% + 2 MiB above the largest sample of that warm-up.
    let warm = duration / 5;
    let warm_level = samples
        .iter()
        .filter(|(at, _)| *at <= warm)
        .map(|(_, rss)| *rss)
        .max()
        .unwrap_or(0);
    let last = samples.last().map_or(0, |(_, rss)| *rss);
    let peak = samples.iter().map(|(_, rss)| *rss).max().unwrap_or(0);
    let bound = warm_level + warm_level / 10 + 2048;
    let flat = last <= bound;

    println!(
        "## Soak: {} through kestra-edge\n",
        humantime::format_duration(duration)
    );
    println!(
        "| | GET | POST 1 MiB | SSE ({} events) | WebSocket (100 echoes) |",
        SSE_EVENTS + 2
    );
    println!("|---|---:|---:|---:|---:|");
    println!(
        "| completed | {} | {} | {} | {} |",
        ok[0], ok[1], ok[2], ok[3]
    );
    println!(
        "| errors | {} | {} | {} | {} |",
        errors[0], errors[1], errors[2], errors[3]
    );
    println!();
    println!(
        "Gateway RSS: {warm_level} KiB after warm-up ({}), {last} KiB at the end, peak {peak} KiB \
         (bound {bound} KiB): {}",
        humantime::format_duration(warm),
        if flat { "flat" } else { "GREW" }
    );
    if let Some(first) = tally
        .first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
    {
        println!("First error: {first}");
    }
    Ok(total_errors == 0 && flat && ok.iter().all(|&n| n > 0))
}
