//! WebSocket: echo round trips through the stand-in's `/kestra/api/v1/ws/echo`.

use crate::load::new_histogram;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The longest one round trip may take before it counts as an error.
const ROUND_TRIP_TIMEOUT: Duration = Duration::from_secs(10);

/// What one WebSocket run measured.
#[derive(Debug)]
pub(crate) struct WsRun {
    pub(crate) messages: u64,
    pub(crate) errors: u64,
    pub(crate) elapsed: Duration,
    /// Round trip of each echoed message, µs.
    pub(crate) rtt: Histogram<u64>,
}

/// `connections` WebSockets, each sending a 64-byte text message and waiting for its echo,
/// back to back until `duration` has passed.
pub(crate) async fn run(addr: SocketAddr, connections: usize, duration: Duration) -> WsRun {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        tasks.spawn(echo_client(addr, deadline));
    }
    let mut total = WsRun {
        messages: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        rtt: new_histogram(),
    };
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(run) => {
                total.messages += run.messages;
                total.errors += run.errors;
                let _ = total.rtt.add(&run.rtt);
            }
            Err(_) => total.errors += 1,
        }
    }
    total.elapsed = started.elapsed();
    total
}

async fn echo_client(addr: SocketAddr, deadline: Instant) -> WsRun {
    let mut run = WsRun {
        messages: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        rtt: new_histogram(),
    };
    let payload = "k".repeat(64);
    while Instant::now() < deadline {
        let url = format!("ws://{addr}/kestra/api/v1/ws/echo");
        let connected = tokio::time::timeout(ROUND_TRIP_TIMEOUT, async {
            let stream = TcpStream::connect(addr).await.ok()?;
            stream.set_nodelay(true).ok()?;
            tokio_tungstenite::client_async(url, stream).await.ok()
        })
        .await;
        let Ok(Some((mut socket, _))) = connected else {
            run.errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while Instant::now() < deadline {
            let start = Instant::now();
            let round_trip = async {
                socket.send(Message::text(payload.clone())).await.ok()?;
                loop {
                    match socket.next().await? {
                        Ok(Message::Text(text)) => {
                            return (text.len() == payload.len()).then_some(())
                        }
                        Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                        _ => return None,
                    }
                }
            };
            match tokio::time::timeout(ROUND_TRIP_TIMEOUT, round_trip).await {
                Ok(Some(())) => {
                    run.messages += 1;
                    let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
                    let _ = run.rtt.record(micros.max(1));
                }
                _ => {
                    run.errors += 1;
                    break;
                }
            }
        }
        let _ = socket.close(None).await;
    }
    run
}
