//! `kestra-edge-bench`: measures the same workloads, in one run, straight against the
//! upstream (`direct`), through kestra-edge and, when `nginx` is installed, through nginx
//! configured as Kestra's documentation says (`nginx`) and with upstream keep-alive
//! (`nginx-keepalive`). Prints markdown tables and writes JSON.
//!
//! When installed, HAProxy (`haproxy`, HTTP mode, `http-reuse always`) and Caddy (`caddy`,
//! `reverse_proxy` with `flush_interval -1`) are measured too, on the rows issue 7 compares
//! against: small GET at 32 and 256 connections, 1 MiB GET, and SSE. Every proxy gets the
//! same number of worker threads (`--proxy-threads`).
//!
//! The TLS group (`--only tls`) serves one certificate generated at start from kestra-edge
//! and from nginx (`nginx-tls`), and measures HTTP/1.1 over TLS, HTTP/2 over TLS (`h2load`)
//! and full TLS handshakes, with direct access over plain TCP as the reference.
//!
//! Every server runs in a process of its own (the upstreams and the gateway are this binary
//! in a serving mode; the gateway is the `kestra-edge` binary's own
//! [`Gateway`](kestra_edge_gateway::Gateway)), so the load generator in this process competes
//! with them only for CPU. Everything binds to 127.0.0.1; every measurement is bounded by
//! `--duration` plus fixed timeouts.
//!
//! The small-GET rows of kestra-edge (and of `kestra-edge-before`) also give the heap
//! allocations per request of the gateway's whole process (hyper and tokio included), from
//! a short run of its own on `kestra-edge-bench-counting` after the main rounds (`--help`
//! says how).
#![allow(clippy::print_stdout)]

mod allocs;
mod balance;
mod caddy;
mod h2load;
mod haproxy;
mod load;
mod report;
mod soak;
mod sse;
mod targets;
mod telemetry;
mod tls;
mod ws;

use clap::{Parser, Subcommand};
use kestra_edge_bench::serve::{self, GatewayArgs, Serve};
use report::{HttpRow, Report, SseRow, WsRow};
use std::{
    net::SocketAddr,
    num::NonZeroUsize,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};
use targets::{BoxError, NginxConfig, NginxTls, Sizing, Target};

/// The `kestra-edge` binary's allocator (examples/gateway/src/main.rs), so that the gateway
/// measured here (`serve-gateway`) runs as the shipped one does. Its settings come from
/// `.cargo/config.toml`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    about = "Load harness: direct access, kestra-edge, nginx, HAProxy and Caddy, side by side",
    after_help = allocs::HELP
)]
struct Cli {
    #[command(subcommand)]
    mode: Option<Mode>,
    /// How long each workload runs on each target.
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up before each HTTP and WebSocket measurement.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Where the JSON results go.
    #[arg(long, default_value = "bench-results/load.json")]
    json: PathBuf,
    /// The nginx binary [default: `nginx` on the PATH, or /usr/sbin/nginx].
    #[arg(long)]
    nginx: Option<PathBuf>,
    /// Leave nginx out even when it is installed.
    #[arg(long)]
    no_nginx: bool,
    /// The haproxy binary [default: `haproxy` on the PATH, or /usr/sbin/haproxy].
    #[arg(long)]
    haproxy: Option<PathBuf>,
    /// Leave HAProxy out even when it is installed.
    #[arg(long)]
    no_haproxy: bool,
    /// The caddy binary [default: `caddy` on the PATH].
    #[arg(long)]
    caddy: Option<PathBuf>,
    /// Leave Caddy out even when it is installed.
    #[arg(long)]
    no_caddy: bool,
    /// Worker threads of every proxy: kestra-edge `--workers`, nginx `worker_processes`,
    /// HAProxy `nbthread`, Caddy `GOMAXPROCS`.
    #[arg(long, default_value = "1")]
    proxy_threads: NonZeroUsize,
    /// Run only these workload groups [default: all].
    #[arg(long, value_enum, value_delimiter = ',')]
    only: Vec<Group>,
    /// Concurrent streams of the large SSE workloads, one row each (`1000,10000`). Each stream
    /// holds two descriptors in the proxy's process: the open-files limit is raised to match
    /// as far as the hard limit allows.
    #[arg(long, default_value = "1000", value_delimiter = ',')]
    sse_streams: Vec<usize>,
    /// Rounds of each HTTP and SSE workload: the targets take their turns forward in the
    /// first round, backward in the second, and so on; the report keeps each target's best
    /// round (HTTP: most requests per second; SSE, of the rounds with the most streams open
    /// together: lowest delay p99 and highest memory per stream, each round through proxies
    /// started afresh). Three is what the performance targets are judged on.
    #[arg(long, default_value = "1")]
    repeat: NonZeroUsize,
    /// Another kestra-edge-bench binary (a build of an earlier commit): its gateway is
    /// measured too, as `kestra-edge-before`, next to this build's, in the same run (HTTP
    /// and SSE groups).
    #[arg(long)]
    baseline: Option<PathBuf>,
}

/// A group of workloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Group {
    Http,
    Sse,
    Ws,
    /// kestra-edge and nginx terminating TLS (HTTP/1.1, HTTP/2, handshakes).
    Tls,
    /// Small GETs through three upstream replicas, and through one in the same run.
    Balance,
    /// Small GETs through kestra-edge without and with its metrics, access log and request
    /// ids, in the same run.
    Telemetry,
}

#[derive(Debug, Subcommand)]
// The subcommands read `serve-upstream`, `serve-gateway`, `serve-standin`.
#[allow(clippy::enum_variant_names)]
enum Mode {
    /// Serve the minimal upstream and print `listening ADDR`.
    ServeUpstream,
    /// Serve the kestra-edge gateway (context path /kestra, kept) in front of `--upstream`
    /// and print `listening ADDR`.
    ServeGateway(GatewayArgs),
    /// Serve the Kestra stand-in (SSE follow streams, WebSocket echo) and print
    /// `listening ADDR`.
    ServeStandin,
    /// A long mixed load (GET, POST, SSE, WebSocket) through kestra-edge: exits non-zero on
    /// any error or when the gateway's memory grows (`scripts/soak.sh`).
    Soak {
        /// How long the soak runs.
        #[arg(long = "for", default_value = "5m", value_parser = humantime::parse_duration)]
        length: Duration,
        /// How often the gateway's memory is sampled.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        sample: Duration,
    },
}

fn main() -> Result<(), BoxError> {
    let cli = Cli::parse();
    // The children stop at any line on stdin: they answer none.
    match cli.mode {
        Some(Mode::ServeUpstream) => serve::run(Serve::Minimal, |_| None),
        Some(Mode::ServeGateway(args)) => serve::run(Serve::Gateway(args), |_| None),
        Some(Mode::ServeStandin) => serve::run(Serve::Standin, |_| None),
        Some(Mode::Soak { length, sample }) => {
            if soak::run(length, sample)? {
                Ok(())
            } else {
                Err("soak failed".into())
            }
        }
        None => run(&cli),
    }
}

/// An HTTP workload, whether the peer proxies (HAProxy, Caddy) are measured on it too, and
/// whether the gateways' allocations per request are counted on it.
#[derive(Debug, Clone, Copy)]
struct HttpCase {
    workload: load::Workload,
    peers: bool,
    allocs: bool,
}

const HTTP_CASES: [HttpCase; 7] = [
    HttpCase {
        workload: load::Workload {
            name: "small GET",
            path: "/kestra/api/v1/small",
            connections: 1,
            kind: load::Kind::KeepAlive,
        },
        peers: false,
        allocs: true,
    },
    HttpCase {
        workload: load::Workload {
            name: "small GET",
            path: "/kestra/api/v1/small",
            connections: 32,
            kind: load::Kind::KeepAlive,
        },
        peers: true,
        allocs: true,
    },
    HttpCase {
        workload: load::Workload {
            name: "small GET",
            path: "/kestra/api/v1/small",
            connections: 256,
            kind: load::Kind::KeepAlive,
        },
        peers: true,
        allocs: true,
    },
    HttpCase {
        workload: load::Workload {
            name: "1 MiB GET",
            path: "/kestra/api/v1/large",
            connections: 1,
            kind: load::Kind::KeepAlive,
        },
        peers: true,
        allocs: false,
    },
    HttpCase {
        workload: load::Workload {
            name: "1 MiB GET",
            path: "/kestra/api/v1/large",
            connections: 4,
            kind: load::Kind::KeepAlive,
        },
        peers: true,
        allocs: false,
    },
    HttpCase {
        workload: load::Workload {
            name: "100 MiB POST",
            path: "/kestra/api/v1/upload",
            connections: 1,
            kind: load::Kind::Upload { bytes: 100 << 20 },
        },
        peers: false,
        allocs: false,
    },
    HttpCase {
        workload: load::Workload {
            name: "churn GET",
            path: "/kestra/api/v1/small",
            connections: 32,
            kind: load::Kind::Churn,
        },
        peers: false,
        allocs: false,
    },
];

/// The proxy programs found, and how every proxy is sized.
#[derive(Debug)]
struct Proxies {
    nginx: Option<PathBuf>,
    haproxy: Option<PathBuf>,
    caddy: Option<PathBuf>,
    baseline: Option<PathBuf>,
    sizing: Sizing,
}

impl Proxies {
    /// `serve-gateway` in front of `upstream` with `--proxy-threads` workers, and `extra`.
    fn gateway(&self, upstream: SocketAddr, extra: &[&str]) -> Result<Target, BoxError> {
        self.gateway_of("kestra-edge", &std::env::current_exe()?, upstream, extra)
    }

    /// The same, served by the kestra-edge-bench binary `exe`.
    fn gateway_of(
        &self,
        name: &'static str,
        exe: &Path,
        upstream: SocketAddr,
        extra: &[&str],
    ) -> Result<Target, BoxError> {
        let url = format!("http://{upstream}");
        let workers = self.sizing.threads.to_string();
        let mut args = vec!["serve-gateway", "--upstream", &url, "--workers", &workers];
        args.extend_from_slice(extra);
        Target::spawn_bench(name, exe, &args)
    }

    /// The proxies in front of `upstream` measured on every workload (kestra-edge, then
    /// nginx as documented and with keep-alive), and the peers (HAProxy, Caddy).
    fn start(&self, upstream: SocketAddr) -> Result<(Vec<Target>, Vec<Target>), BoxError> {
        let mut proxies = vec![self.gateway(upstream, &[])?];
        if let Some(baseline) = &self.baseline {
            proxies.push(self.gateway_of("kestra-edge-before", baseline, upstream, &[])?);
        }
        if let Some(nginx) = &self.nginx {
            for config in [NginxConfig::Seed, NginxConfig::Keepalive] {
                proxies.push(Target::nginx(nginx, &config, upstream, self.sizing)?);
            }
        }
        let mut peers = Vec::new();
        if let Some(haproxy) = &self.haproxy {
            peers.push(haproxy::start(haproxy, upstream, self.sizing)?);
        }
        if let Some(caddy) = &self.caddy {
            peers.push(caddy::start(caddy, upstream, self.sizing)?);
        }
        Ok((proxies, peers))
    }

    /// Lists every proxy this run starts, with its version and thread setting.
    fn describe(&self, report: &mut Report, tls: bool) {
        let n = self.sizing.threads;
        report.add_proxy(
            "kestra-edge",
            env!("CARGO_PKG_VERSION").to_owned(),
            format!("`--workers {n}`"),
        );
        if let Some(baseline) = &self.baseline {
            report.add_proxy(
                "kestra-edge-before",
                baseline.display().to_string(),
                format!("`--workers {n}`"),
            );
        }
        if let Some(nginx) = &self.nginx {
            // `nginx version: nginx/1.22.1`
            let line = targets::first_output_line(nginx, &["-v"]);
            let version = line.rsplit_once('/').map_or(line.as_str(), |(_, v)| v);
            let mut names = vec![NginxConfig::Seed.name(), NginxConfig::Keepalive.name()];
            if tls {
                names.push(report::NGINX_TLS);
            }
            for name in names {
                report.add_proxy(name, version.to_owned(), format!("`worker_processes {n}`"));
            }
        }
        if let Some(haproxy) = &self.haproxy {
            report.add_proxy(
                haproxy::NAME,
                haproxy::version(haproxy),
                format!("`nbthread {n}`"),
            );
        }
        if let Some(caddy) = &self.caddy {
            report.add_proxy(
                caddy::NAME,
                caddy::version(caddy),
                format!("`GOMAXPROCS={n}`"),
            );
        }
    }
}

/// A program given on the command line, else found on the PATH, unless left out.
fn program(
    name: &str,
    given: Option<&PathBuf>,
    left_out: bool,
    find: fn() -> Option<PathBuf>,
) -> Option<PathBuf> {
    let found = if left_out {
        None
    } else {
        given.cloned().or_else(find)
    };
    match &found {
        Some(path) => eprintln!("{name}: {}", path.display()),
        None if left_out => eprintln!("{name}: left out"),
        None => eprintln!("{name}: not found, no {name} rows"),
    }
    found
}

fn run(cli: &Cli) -> Result<(), BoxError> {
    let most_streams = cli.sse_streams.iter().copied().max().unwrap_or(0);
    // A proxy holds a client and an upstream descriptor per stream.
    let open_files = targets::raise_open_files((2 * most_streams as u64 + 1024).max(16384));
    let proxies = Proxies {
        nginx: program(
            "nginx",
            cli.nginx.as_ref(),
            cli.no_nginx,
            targets::find_nginx,
        ),
        haproxy: program(
            "haproxy",
            cli.haproxy.as_ref(),
            cli.no_haproxy,
            haproxy::find,
        ),
        caddy: program("caddy", cli.caddy.as_ref(), cli.no_caddy, caddy::find),
        baseline: cli.baseline.clone(),
        sizing: Sizing {
            threads: cli.proxy_threads,
            connections: most_streams.max(256),
            open_files,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut report = Report::new(cli.duration, cli.proxy_threads.get(), open_files);

    let wanted = |group| cli.only.is_empty() || cli.only.contains(&group);
    proxies.describe(&mut report, wanted(Group::Tls));

    // HTTP workloads against the minimal upstream.
    if wanted(Group::Http) {
        http_workloads(cli, &runtime, &proxies, &mut report)?;
    }
    if wanted(Group::Sse) || wanted(Group::Ws) {
        standin_workloads(cli, &runtime, &proxies, &mut report, wanted)?;
    }
    if wanted(Group::Tls) {
        tls_workloads(cli, &runtime, &proxies, &mut report)?;
    }
    if wanted(Group::Balance) {
        balance::run(cli, &runtime, &proxies, &mut report)?;
    }
    if wanted(Group::Telemetry) {
        telemetry::run(cli, &runtime, &proxies, &mut report)?;
    }
    report.print();
    if let Some(dir) = cli.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&cli.json, serde_json::to_vec_pretty(&report)?)?;
    eprintln!("JSON written to {}", cli.json.display());
    Ok(())
}

fn http_workloads(
    cli: &Cli,
    runtime: &tokio::runtime::Runtime,
    proxies: &Proxies,
    report: &mut Report,
) -> Result<(), BoxError> {
    let upstream = Target::spawn_self("direct", &["serve-upstream"])?;
    let upstream_addr = upstream.addr;
    let (proxies_http, peers) = proxies.start(upstream_addr)?;
    let mut targets = vec![upstream];
    targets.extend(proxies_http);
    for HttpCase {
        workload,
        peers: with_peers,
        ..
    } in HTTP_CASES
    {
        let peers = peers.iter().filter(|_| with_peers);
        let order: Vec<&Target> = targets.iter().chain(peers).collect();
        let best = best_of_rounds(cli, runtime, &order, workload, report);
        report.http.extend(best.into_iter().flatten());
    }
    // After the main rounds, so that none of them ran beside the counting gateway.
    let counted: Vec<load::Workload> = HTTP_CASES
        .iter()
        .filter(|case| case.allocs)
        .map(|case| case.workload)
        .collect();
    allocs::run(runtime, proxies, upstream_addr, &counted, report);
    Ok(())
}

/// Runs `workload` against each of `order` in turns, so all see the same machine state;
/// with `--repeat`, round after round in alternating order, so that none is always first or
/// last. Each target's best round (most requests per second), in the order given.
pub(crate) fn best_of_rounds(
    cli: &Cli,
    runtime: &tokio::runtime::Runtime,
    order: &[&Target],
    workload: load::Workload,
    report: &mut Report,
) -> Vec<Option<HttpRow>> {
    let mut best: Vec<Option<HttpRow>> = order.iter().map(|_| None).collect();
    for round in 0..cli.repeat.get() {
        let mut turns: Vec<usize> = (0..order.len()).collect();
        if round % 2 == 1 {
            turns.reverse();
        }
        for i in turns {
            let target = order[i];
            let _ = runtime.block_on(load::run(target.addr, workload, cli.warmup, None));
            let cpu = CpuMeter::start(target);
            let load = runtime.block_on(load::run(target.addr, workload, cli.duration, None));
            let (proxy_cpu, generator_cpu) = cpu.stop(target, load.elapsed);
            report.saw_threads(target.name, target.os_threads());
            let row = HttpRow::new(workload, target.name, &load, proxy_cpu, generator_cpu);
            eprintln!("{} (round {})", row.summary(), round + 1);
            if best[i]
                .as_ref()
                .is_none_or(|kept| row.requests_per_sec() > kept.requests_per_sec())
            {
                best[i] = Some(row);
            }
        }
    }
    best
}

/// One workload of the TLS group.
#[derive(Debug, Clone, Copy)]
enum TlsWorkload {
    /// HTTP/1.1 from this process's client (`load`), with ALPN `http/1.1`.
    Http1(load::Workload),
    /// HTTP/2 from `h2load`: `connections` with `streams` requests in flight on each.
    Http2 {
        workload: load::Workload,
        streams: usize,
    },
}

const TLS_WORKLOADS: [TlsWorkload; 4] = [
    TlsWorkload::Http1(load::Workload {
        name: "TLS small GET HTTP/1.1",
        path: "/kestra/api/v1/small",
        connections: 32,
        kind: load::Kind::KeepAlive,
    }),
    TlsWorkload::Http1(load::Workload {
        name: "TLS small GET HTTP/1.1",
        path: "/kestra/api/v1/small",
        connections: 256,
        kind: load::Kind::KeepAlive,
    }),
    TlsWorkload::Http2 {
        workload: load::Workload {
            name: "TLS small GET HTTP/2 (16 streams/conn)",
            path: "/kestra/api/v1/small",
            connections: 8,
            kind: load::Kind::KeepAlive,
        },
        streams: 16,
    },
    // One request per connection, no resumption: req/s = full handshakes/s.
    TlsWorkload::Http1(load::Workload {
        name: "TLS handshake (1 req/conn)",
        path: "/kestra/api/v1/small",
        connections: 32,
        kind: load::Kind::Churn,
    }),
];

/// kestra-edge and nginx serving one certificate generated now, in front of the minimal
/// upstream; the upstream itself over plain TCP as the reference.
fn tls_workloads(
    cli: &Cli,
    runtime: &tokio::runtime::Runtime,
    proxies: &Proxies,
    report: &mut Report,
) -> Result<(), BoxError> {
    let h2load = targets::find_program("h2load");
    if h2load.is_none() {
        eprintln!("h2load: not found (apt-get install nghttp2-client), no HTTP/2 rows");
    }
    let certs = tls::CertFiles::generate()?;
    let client = certs.http1_client()?;
    let upstream = Target::spawn_self("direct", &["serve-upstream"])?;
    let upstream_addr = upstream.addr;
    let cert = certs.cert.to_string_lossy();
    let key = certs.key.to_string_lossy();
    let edge = proxies.gateway(upstream_addr, &["--tls-cert", &cert, "--tls-key", &key])?;
    // (target, its name in the rows, whether it speaks TLS)
    let mut targets = vec![
        (upstream, report::DIRECT_PLAIN, false),
        (edge, "kestra-edge", true),
    ];
    if let Some(nginx) = &proxies.nginx {
        let config = NginxConfig::Tls(NginxTls::new(nginx, &certs.cert, &certs.key)?);
        targets.push((
            Target::nginx(nginx, &config, upstream_addr, proxies.sizing)?,
            config.name(),
            true,
        ));
    }
    for workload in TLS_WORKLOADS {
        for (target, name, speaks_tls) in &targets {
            let row = match workload {
                TlsWorkload::Http1(workload) => {
                    let tls = speaks_tls.then_some(&client);
                    let _ = runtime.block_on(load::run(target.addr, workload, cli.warmup, tls));
                    let cpu = CpuMeter::start(target);
                    let load =
                        runtime.block_on(load::run(target.addr, workload, cli.duration, tls));
                    let (proxy_cpu, generator_cpu) = cpu.stop(target, load.elapsed);
                    report.saw_threads(name, target.os_threads());
                    HttpRow::new(workload, name, &load, proxy_cpu, generator_cpu)
                }
                TlsWorkload::Http2 { workload, streams } => {
                    let Some(h2load) = &h2load else { continue };
                    let scheme = if *speaks_tls { "https" } else { "http" };
                    let url = format!("{scheme}://{}{}", target.addr, workload.path);
                    let c = workload.connections;
                    let _ = h2load::run(h2load, &url, c, streams, cli.warmup);
                    let cpu = CpuMeter::start(target);
                    let run = h2load::run(h2load, &url, c, streams, cli.duration)?;
                    let (proxy_cpu, _) = cpu.stop(target, run.load.elapsed);
                    report.saw_threads(name, target.os_threads());
                    HttpRow::new(workload, name, &run.load, proxy_cpu, run.generator_cores)
                }
            };
            eprintln!("{}", row.summary());
            report.tls.push(row);
        }
    }
    Ok(())
}

/// SSE and WebSocket against the stand-in, through fresh proxies: the memory per stream is
/// measured first, on processes that have not served anything yet. HAProxy and Caddy are
/// measured on the SSE rows only. With `--repeat`, the SSE rows run round after round, each
/// round through proxies started afresh and with the targets' turns in alternating order;
/// each row keeps its best round (see [`SseRow::keep_best`]).
fn standin_workloads(
    cli: &Cli,
    runtime: &tokio::runtime::Runtime,
    proxies: &Proxies,
    report: &mut Report,
    wanted: impl Fn(Group) -> bool,
) -> Result<(), BoxError> {
    let standin = Target::spawn_self("direct", &["serve-standin"])?;
    let standin_addr = standin.addr;
    let mut targets = vec![standin];
    let sse_cases: Vec<(usize, Duration)> = cli
        .sse_streams
        .iter()
        .map(|&streams| (streams, Duration::from_millis(1000)))
        .chain([(1, Duration::from_millis(20))])
        .filter(|_| wanted(Group::Sse))
        .collect();
    let mut rows: Vec<SseRow> = Vec::new();
    let rounds = if sse_cases.is_empty() {
        1
    } else {
        cli.repeat.get()
    };
    for round in 0..rounds {
        // Fresh proxies each round: the memory figures are read on processes that have
        // served nothing but the rows before them in this round.
        targets.truncate(1);
        let (proxies_standin, peers) = proxies.start(standin_addr)?;
        targets.extend(proxies_standin);
        let round_targets: Vec<&Target> = targets.iter().chain(&peers).collect();
        for &(streams, interval) in &sse_cases {
            let mut turns: Vec<&Target> = round_targets.clone();
            if round % 2 == 1 {
                turns.reverse();
            }
            for target in turns {
                // Memory per stream means something only with many streams open.
                let proxy = (target.name != "direct" && streams >= 100).then_some(target);
                let run = runtime.block_on(sse::run(
                    target.addr,
                    streams,
                    interval,
                    cli.duration,
                    proxy,
                ));
                report.saw_threads(target.name, target.os_threads());
                let row = SseRow::new(streams, interval, target.name, &run);
                eprintln!("{} (round {})", row.summary(), round + 1);
                match rows.iter_mut().find(|r| r.is_for(streams, target.name)) {
                    Some(kept) => kept.keep_best(&row),
                    None => rows.push(row),
                }
            }
        }
    }
    // The report's order: each case, then the targets as listed (direct first).
    report.sse.extend(rows);
    for connections in [1, 32].into_iter().filter(|_| wanted(Group::Ws)) {
        for target in &targets {
            let _ = runtime.block_on(ws::run(target.addr, connections, cli.warmup));
            let run = runtime.block_on(ws::run(target.addr, connections, cli.duration));
            report.saw_threads(target.name, target.os_threads());
            let row = WsRow::new(connections, target.name, &run);
            eprintln!("{}", row.summary());
            report.ws.push(row);
        }
    }
    Ok(())
}

/// CPU time of the target's processes and of this load generator over one measurement.
struct CpuMeter {
    target: Duration,
    generator: Duration,
    started: Instant,
}

impl CpuMeter {
    fn start(target: &Target) -> Self {
        Self {
            target: target.cpu_time(),
            generator: targets::cpu_time(std::process::id()),
            started: Instant::now(),
        }
    }

    /// (the target's CPU time, the generator's CPU use as a share of one core)
    fn stop(self, target: &Target, elapsed: Duration) -> (Option<Duration>, f64) {
        let generator = targets::cpu_time(std::process::id()).saturating_sub(self.generator);
        let wall = elapsed.max(self.started.elapsed()).as_secs_f64();
        let target_cpu =
            (target.name != "direct").then(|| target.cpu_time().saturating_sub(self.target));
        (target_cpu, generator.as_secs_f64() / wall)
    }
}
