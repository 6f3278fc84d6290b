//! `kestra-edge-bench`: measures the same workloads, in one run, straight against the
//! upstream (direct) and through kestra-edge, and prints a markdown table (plus JSON).
//!
//! The upstream and the gateway each run in a child process of their own (this binary, in
//! `serve-upstream` and `serve-gateway` mode; the gateway is the `kestra-edge` binary's own
//! [`Gateway`]), so the load generator in this process competes with them only for CPU, as
//! nginx would. Everything binds to 127.0.0.1; every run is bounded by `--duration`.
#![allow(clippy::print_stdout)]

use bytes::Bytes;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use kestra_edge::server::Server;
use kestra_edge_gateway::{Gateway, GatewayConfig};
use serde::Serialize;
use std::{
    convert::Infallible,
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};
use tokio::net::TcpStream;

#[derive(Debug, Parser)]
#[command(about = "Load harness: direct access vs kestra-edge, side by side")]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// How long each workload runs on each target.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up before each measurement.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench-results/load.json")]
    json: std::path::PathBuf,
}

#[derive(Debug, Subcommand)]
// The subcommands read `serve-upstream`, `serve-gateway`, `serve-standin`.
#[allow(clippy::enum_variant_names)]
enum Mode {
    /// Serve the minimal upstream and print `listening ADDR`.
    ServeUpstream,
    /// Serve the kestra-edge gateway in front of `--upstream` and print `listening ADDR`.
    ServeGateway {
        #[arg(long)]
        upstream: String,
    },
    /// Serve the Kestra stand-in (SSE follow streams) and print `listening ADDR`.
    ServeStandin,
}

/// The body of the large-GET workload.
const LARGE: usize = 1 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cli = Cli::parse();
    match cli.mode {
        Some(Mode::ServeUpstream) => serve(Upstream::Minimal),
        Some(Mode::ServeGateway { upstream }) => serve(Upstream::Gateway(upstream)),
        Some(Mode::ServeStandin) => serve(Upstream::Standin),
        None => run(&cli),
    }
}

/// What a child process serves.
enum Upstream {
    Minimal,
    Standin,
    Gateway(String),
}

/// Child mode: serve on 127.0.0.1:0 until stdin closes.
fn serve(upstream: Upstream) -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let stdin_closed = async {
            // The parent holds our stdin; when it exits or drops it, we stop.
            let _ = tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new()))
                .await;
        };
        match upstream {
            Upstream::Standin => {
                let standin = kestra_edge_standin::Standin::start(Default::default()).await?;
                announce(standin.addr());
                stdin_closed.await;
                drop(standin);
            }
            Upstream::Gateway(upstream) => {
                let mut config = GatewayConfig::for_upstream(upstream);
                config.shutdown_grace = Duration::ZERO;
                let gateway = Gateway::bind(config).await?;
                announce(gateway.local_addr()?);
                gateway.serve(stdin_closed).await?;
            }
            Upstream::Minimal => {
                let server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                    .await?
                    .shutdown_grace(Duration::ZERO);
                announce(server.local_addr()?);
                let large = Bytes::from(vec![b'x'; LARGE]);
                let service = tower::service_fn(move |req: http::Request<Incoming>| {
                    let body = if req.uri().path() == "/large" {
                        large.clone()
                    } else {
                        Bytes::from_static(b"ok")
                    };
                    async move { Ok::<_, Infallible>(http::Response::new(Full::new(body))) }
                });
                server.serve(service, stdin_closed).await?;
            }
        }
        Ok(())
    })
}

fn announce(addr: SocketAddr) {
    println!("listening {addr}");
    let _ = std::io::stdout().flush();
}

/// A child server process; killed when dropped.
struct ChildServer {
    child: Child,
    addr: SocketAddr,
}

impl ChildServer {
    fn spawn(args: &[&str]) -> Result<Self, Box<dyn std::error::Error>> {
        let mut child = Command::new(std::env::current_exe()?)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .env("RUST_LOG", "warn")
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .ok_or_else(|| format!("unexpected child output {line:?}"))?
            .parse()?;
        Ok(Self { child, addr })
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, Clone, Copy)]
struct Workload {
    name: &'static str,
    path: &'static str,
    connections: usize,
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        name: "small GET",
        path: "/small",
        connections: 1,
    },
    Workload {
        name: "small GET",
        path: "/small",
        connections: 32,
    },
    Workload {
        name: "small GET",
        path: "/small",
        connections: 256,
    },
    Workload {
        name: "1 MiB GET",
        path: "/large",
        connections: 4,
    },
];

#[derive(Debug, Serialize)]
struct Measurement {
    workload: String,
    connections: usize,
    target: &'static str,
    requests: u64,
    errors: u64,
    requests_per_sec: f64,
    mib_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
}

fn run(cli: &Cli) -> Result<(), Box<dyn std::error::Error>> {
    let upstream = ChildServer::spawn(&["serve-upstream"])?;
    let upstream_url = format!("http://{}", upstream.addr);
    let gateway = ChildServer::spawn(&["serve-gateway", "--upstream", &upstream_url])?;
    let targets = [("direct", upstream.addr), ("kestra-edge", gateway.addr)];

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut results = Vec::new();
    for workload in WORKLOADS {
        // Targets alternate within a workload so both see the same machine state.
        for (target, addr) in targets {
            let _ = runtime.block_on(load(addr, workload, cli.warmup));
            let m = runtime.block_on(load(addr, workload, cli.duration));
            eprintln!(
                "{:>10} c={:<3} {:<12} {:>9.0} req/s  p99 {:>6} µs  errors {}",
                workload.name,
                workload.connections,
                target,
                m.0,
                m.2.value_at_quantile(0.99),
                m.3
            );
            results.push(measurement(workload, target, &m, cli.duration));
        }
    }

    print_table(&results);

    let standin = ChildServer::spawn(&["serve-standin"])?;
    let standin_url = format!("http://{}", standin.addr);
    let sse_gateway = ChildServer::spawn(&["serve-gateway", "--upstream", &standin_url])?;
    let mut sse_results = Vec::new();
    for streams in SSE_STREAMS {
        for (target, addr) in [("direct", standin.addr), ("kestra-edge", sse_gateway.addr)] {
            let delays = runtime.block_on(sse_delays(addr, streams, cli.duration));
            eprintln!(
                "  SSE streams={streams:<4} {target:<12} events {:>7}  p50 {:>5} µs  p99 {:>5} µs",
                delays.len(),
                delays.value_at_quantile(0.5),
                delays.value_at_quantile(0.99)
            );
            sse_results.push(SseMeasurement {
                streams,
                target,
                events: delays.len(),
                p50_us: delays.value_at_quantile(0.5),
                p99_us: delays.value_at_quantile(0.99),
            });
        }
    }
    print_sse_table(&sse_results);
    if let Some(dir) = cli.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let json = serde_json::json!({ "http": results, "sse": sse_results });
    std::fs::write(&cli.json, serde_json::to_vec_pretty(&json)?)?;
    eprintln!("JSON written to {}", cli.json.display());
    Ok(())
}

/// (requests/s, bytes/s, latency histogram in µs, errors)
type Load = (f64, f64, Histogram<u64>, u64);

fn measurement(
    workload: Workload,
    target: &'static str,
    m: &Load,
    duration: Duration,
) -> Measurement {
    let (rps, bytes_per_sec, histogram, errors) = m;
    Measurement {
        workload: workload.name.to_owned(),
        connections: workload.connections,
        target,
        requests: (rps * duration.as_secs_f64()) as u64,
        errors: *errors,
        requests_per_sec: *rps,
        mib_per_sec: bytes_per_sec / f64::from(1 << 20),
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
    }
}

/// Keep-alive load: `connections` clients, each sending requests back to back for `duration`.
async fn load(addr: SocketAddr, workload: Workload, duration: Duration) -> Load {
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workload.connections {
        tasks.spawn(connection(addr, workload.path, deadline));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()));
    let (mut requests, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    while let Some(Ok((h, b, e))) = tasks.join_next().await {
        requests += h.len();
        let _ = histogram.add(&h);
        bytes += b;
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    (
        requests as f64 / elapsed,
        bytes as f64 / elapsed,
        histogram,
        errors,
    )
}

/// One keep-alive client connection; reconnects after an error.
async fn connection(
    addr: SocketAddr,
    path: &'static str,
    deadline: Instant,
) -> (Histogram<u64>, u64, u64) {
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!());
    let (mut bytes, mut errors) = (0u64, 0u64);
    'connect: while Instant::now() < deadline {
        let Ok(stream) = TcpStream::connect(addr).await else {
            errors += 1;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let Ok((mut sender, conn)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            errors += 1;
            continue;
        };
        tokio::spawn(conn);
        while Instant::now() < deadline {
            let request = http::Request::get(path)
                .header(http::header::HOST, "bench.local")
                .body(Empty::<Bytes>::new())
                .unwrap_or_else(|_| unreachable!());
            let start = Instant::now();
            let Ok(response) = sender.send_request(request).await else {
                errors += 1;
                continue 'connect;
            };
            let ok = response.status().is_success();
            match response.into_body().collect().await {
                Ok(body) if ok => bytes += body.to_bytes().len() as u64,
                _ => {
                    errors += 1;
                    continue 'connect;
                }
            }
            let micros = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
            let _ = histogram.record(micros.max(1));
        }
    }
    (histogram, bytes, errors)
}

fn print_table(results: &[Measurement]) {
    println!("| workload | conns | target | req/s | MiB/s | p50 µs | p99 µs | p99.9 µs | errors | vs direct |");
    println!("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for pair in results.chunks(2) {
        let direct = pair[0].requests_per_sec;
        for m in pair {
            println!(
                "| {} | {} | {} | {:.0} | {:.1} | {} | {} | {} | {} | {:.2}× |",
                m.workload,
                m.connections,
                m.target,
                m.requests_per_sec,
                m.mib_per_sec,
                m.p50_us,
                m.p99_us,
                m.p999_us,
                m.errors,
                m.requests_per_sec / direct
            );
        }
    }
}

/// Concurrent follow streams in the SSE workload.
const SSE_STREAMS: [usize; 2] = [1, 100];
/// Gap between two events of one stream.
const SSE_INTERVAL_MS: u64 = 20;

#[derive(Debug, Serialize)]
struct SseMeasurement {
    streams: usize,
    target: &'static str,
    events: u64,
    p50_us: u64,
    p99_us: u64,
}

/// Delay from the stand-in's `sent_at_us` stamp to the event's arrival, over `streams`
/// concurrent follow streams for `duration` (both ends read the same clock).
async fn sse_delays(addr: SocketAddr, streams: usize, duration: Duration) -> Histogram<u64> {
    let events = duration.as_millis() as u64 / SSE_INTERVAL_MS;
    let mut tasks = tokio::task::JoinSet::new();
    for stream in 0..streams {
        let path = format!(
            "/kestra/api/v1/main/executions/bench-{stream}/follow?events={events}&interval_ms={SSE_INTERVAL_MS}"
        );
        tasks.spawn(sse_stream(addr, path));
    }
    let mut histogram = new_histogram();
    while let Some(Ok(h)) = tasks.join_next().await {
        let _ = histogram.add(&h);
    }
    histogram
}

async fn sse_stream(addr: SocketAddr, path: String) -> Histogram<u64> {
    let mut histogram = new_histogram();
    let Ok(stream) = TcpStream::connect(addr).await else {
        return histogram;
    };
    let _ = stream.set_nodelay(true);
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return histogram;
    };
    tokio::spawn(conn);
    let Ok(request) = http::Request::get(path)
        .header(http::header::HOST, "bench.local")
        .body(Empty::<Bytes>::new())
    else {
        return histogram;
    };
    let Ok(response) = sender.send_request(request).await else {
        return histogram;
    };
    let mut body = response.into_body();
    const STAMP: &str = "\"sent_at_us\":";
    while let Some(Ok(frame)) = body.frame().await {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let text = String::from_utf8_lossy(&data);
        for stamp in text.split(STAMP).skip(1) {
            let digits: String = stamp.chars().take_while(char::is_ascii_digit).collect();
            if let Ok(sent) = digits.parse::<u64>() {
                let _ = histogram.record(now.saturating_sub(sent).max(1));
            }
        }
    }
    histogram
}

fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| unreachable!())
}

fn print_sse_table(results: &[SseMeasurement]) {
    println!();
    println!("| SSE streams | target | events | delay p50 µs | delay p99 µs | added p50 µs | added p99 µs |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for pair in results.chunks(2) {
        let direct = &pair[0];
        for m in pair {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                m.streams,
                m.target,
                m.events,
                m.p50_us,
                m.p99_us,
                m.p50_us as i64 - direct.p50_us as i64,
                m.p99_us as i64 - direct.p99_us as i64,
            );
        }
    }
}
