//! The child processes of the harness: each serves on 127.0.0.1:0, prints
//! `listening ADDR`, and serves until its stdin closes (the parent exited or dropped it).
#![allow(clippy::print_stdout)]

use crate::BoxError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use kestra_edge::server::{IncomingBody, Server};
use kestra_edge_gateway::{Gateway, GatewayConfig};
use std::{
    convert::Infallible,
    io::{BufRead, Write},
    net::SocketAddr,
    num::NonZeroUsize,
    path::PathBuf,
    time::Duration,
};

/// The body of the minimal upstream's `…/large`: the 1 MiB GET workload.
pub const LARGE: usize = 1 << 20;

/// What a child process serves.
#[derive(Debug)]
pub enum Serve {
    /// The minimal upstream: `ok` on every path, 1 MiB on `…/large`; uploads read and
    /// dropped.
    Minimal,
    /// The Kestra stand-in (SSE follow streams, WebSocket echo).
    Standin,
    /// The kestra-edge gateway.
    Gateway(GatewayArgs),
}

/// The kestra-edge gateway the harness measures: context path /kestra (kept) in front of
/// `--upstream`.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// Repeatable: several replicas are balanced.
    #[arg(long, required = true)]
    upstream: Vec<String>,
    /// Serving threads [default: the gateway's, one per core].
    #[arg(long)]
    workers: Option<NonZeroUsize>,
    /// Serve HTTPS with this PEM certificate chain (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve the metrics on an admin listener (127.0.0.1:0), so the layer counts.
    #[arg(long)]
    admin: bool,
    /// Write the access log (text) to this file.
    #[arg(long)]
    access_log: Option<PathBuf>,
    /// Give every request an X-Request-Id.
    #[arg(long)]
    request_id: bool,
}

/// Serves `what` until stdin closes. A line on stdin that `answer` answers gets the answer
/// on stdout, one line; any other line stops the child too.
pub fn run(what: Serve, answer: fn(&str) -> Option<String>) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let stdin_closed = async {
            // The parent holds our stdin; when it exits or drops it, we stop.
            let _ = tokio::task::spawn_blocking(move || answer_stdin(answer)).await;
        };
        match what {
            Serve::Standin => {
                let standin = kestra_edge_standin::Standin::start(Default::default()).await?;
                announce(standin.addr());
                stdin_closed.await;
                drop(standin);
            }
            Serve::Gateway(args) => {
                let (gateway, wants_tls) = gateway(args).await?;
                if wants_tls != (gateway.scheme() == "https") {
                    return Err(format!("gateway serves {}", gateway.scheme()).into());
                }
                announce(gateway.local_addr()?);
                gateway.serve(stdin_closed).await?;
            }
            Serve::Minimal => {
                let server = Server::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                    .await?
                    .shutdown_grace(Duration::ZERO);
                announce(server.local_addr()?);
                let large = Bytes::from(vec![b'x'; LARGE]);
                let service = tower::service_fn(move |req: http::Request<IncomingBody>| {
                    let large = large.clone();
                    async move {
                        let body = if req.uri().path().ends_with("/large") {
                            large
                        } else {
                            Bytes::from_static(b"ok")
                        };
                        // Uploads are read to the end and dropped, frame by frame.
                        let mut upload = req.into_body();
                        while let Some(Ok(_)) = upload.frame().await {}
                        Ok::<_, Infallible>(http::Response::new(Full::new(body)))
                    }
                });
                server.serve(service, stdin_closed).await?;
            }
        }
        Ok::<_, BoxError>(())
    })
}

/// The gateway of `args`, bound, and whether it was asked to serve TLS.
async fn gateway(args: GatewayArgs) -> Result<(Gateway, bool), BoxError> {
    let GatewayArgs {
        upstream,
        workers,
        tls_cert,
        tls_key,
        admin,
        access_log,
        request_id,
    } = args;
    let mut upstream = upstream.into_iter();
    let mut config = GatewayConfig::for_upstream(upstream.next().unwrap_or_default());
    config.upstream.more = upstream.collect();
    config.listener.shutdown_grace = Duration::ZERO;
    // The SSE group opens thousands of streams from one loopback client.
    config.streams.sse_max_streams_per_client = 0;
    if let Some(workers) = workers {
        config.listener.workers = workers;
    }
    // The seed block's `location /kestra`, prefix kept.
    config.prefix.context_path = Some("/kestra".to_owned());
    let tls = tls_cert.zip(tls_key);
    let wants_tls = tls.is_some();
    if let Some((cert, key)) = tls {
        config.tls.cert_file = Some(cert);
        config.tls.key_file = Some(key);
    }
    if admin {
        config.telemetry.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    config.telemetry.request_id = request_id;
    let log = match &access_log {
        Some(path) => Some(kestra_edge_telemetry::AccessLog::to_writer(
            kestra_edge_telemetry::AccessLogFormat::Text,
            std::fs::File::create(path)?,
            kestra_edge_telemetry::DEFAULT_BUFFERED_BYTES,
        )),
        None => None,
    };
    Ok((Gateway::bind_with_log(config, log).await?, wants_tls))
}

/// Answers stdin's lines until one has no answer or stdin closes.
fn answer_stdin(answer: fn(&str) -> Option<String>) {
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    while matches!(stdin.read_line(&mut line), Ok(n) if n > 0) {
        let Some(reply) = answer(line.trim_end()) else {
            return;
        };
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{reply}").and_then(|()| stdout.flush());
        line.clear();
    }
}

fn announce(addr: SocketAddr) {
    println!("listening {addr}");
    let _ = std::io::stdout().flush();
}
