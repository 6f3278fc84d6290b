//! `kestra-edge`: the reverse proxy in front of Kestra. `kestra-edge --help` lists the flags.

use clap::Parser;
use kestra_edge_gateway::{Args, Gateway, GatewayConfig, GatewayError};
use std::{net::SocketAddr, process::ExitCode};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let config = match GatewayConfig::from_args(Args::parse()) {
        Ok(config) => config,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::from(2);
        }
    };
    let gateway = match Gateway::bind(config.clone()).await {
        Ok(gateway) => gateway,
        Err(err) => {
            tracing::error!("{err}");
            // Exit 2 for a configuration the user must fix, like clap's own usage errors.
            return match err {
                GatewayError::Config(_) => ExitCode::from(2),
                GatewayError::Io(_) => ExitCode::FAILURE,
            };
        }
    };
    let addr = match gateway.local_addr() {
        Ok(addr) => addr,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let upstream = gateway
        .standin()
        .map_or_else(|| config.upstream.clone(), |s| s.url());
    tracing::info!(listen = %addr, %upstream, "kestra-edge ready");
    if gateway.standin().is_some() {
        print_demo(addr);
    }
    match gateway.serve(shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

#[allow(clippy::print_stdout)]
fn print_demo(addr: SocketAddr) {
    println!(
        "\nkestra-edge demo: a Kestra stand-in behind the gateway at http://{addr}/kestra/\n\n\
         Try:\n  \
         curl -i http://{addr}/kestra/ping\n  \
         curl -i http://{addr}/kestra/\n  \
         curl -s http://{addr}/kestra/api/v1/echo/hello?a=1 -d 'some body'\n  \
         curl -N http://{addr}/kestra/api/v1/main/executions/demo-1/follow\n  \
         curl -N 'http://{addr}/kestra/api/v1/main/logs/demo-1/follow?events=5&interval_ms=1000'\n  \
         curl -s -o /dev/null -w '%{{size_download}} bytes\\n' 'http://{addr}/kestra/api/v1/download?bytes=104857600'\n\n\
         Ctrl-C stops it.\n"
    );
}
