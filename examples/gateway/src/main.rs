//! `kestra-edge`: the reverse proxy in front of Kestra. `kestra-edge --help` lists the flags.

use clap::Parser;
use kestra_edge_gateway::{Args, EgressListener, Gateway, GatewayConfig, GatewayError};
use std::{net::SocketAddr, process::ExitCode};
use tracing_subscriber::EnvFilter;

/// jemalloc, with a background thread that gives freed pages back to the system about a
/// second after they were freed (`dirty_decay_ms:1000,muzzy_decay_ms:0`, set where it is
/// built: `.cargo/config.toml`). After a thousand SSE streams close, the process returns to
/// the memory it had before they opened; glibc's malloc kept the pages (README,
/// Performance). `_RJEM_MALLOC_CONF` changes these settings at run time.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> ExitCode {
    // `kestra-edge doctor …`: a subcommand of its own, leaving the gateway's flags as they are.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == "doctor")
    {
        let args = kestra_edge_gateway::doctor::DoctorArgs::parse_from(
            std::iter::once(std::ffi::OsString::from("kestra-edge doctor"))
                .chain(std::env::args_os().skip(2)),
        );
        return kestra_edge_gateway::doctor::run(args).await;
    }
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
    // One access log for both listeners (the lines of each are whole).
    let access_log = config
        .telemetry
        .access_log
        .format()
        .map(kestra_edge_telemetry::AccessLog::stdout);
    let egress = match EgressListener::bind(&config).await {
        Ok(egress) => egress.map(|egress| egress.with_access_log(access_log.clone())),
        Err(err) => {
            tracing::error!("{err}");
            return exit_code(&err);
        }
    };
    if let Some(egress) = &egress {
        egress.log_ready();
        #[cfg(unix)]
        kestra_edge_gateway::reload_egress_on_sighup(egress.credentials());
    }
    let egress = match egress {
        // --egress-listen without --upstream: the forward proxy alone.
        Some(egress) if config.egress.alone => return serve_egress_alone(egress).await,
        egress => egress,
    };
    let gateway = match Gateway::bind_with_log(config.clone(), access_log).await {
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
    if let (Some(egress), Some(metrics)) = (&egress, gateway.metrics()) {
        egress.report_to(metrics);
    }
    let addr = match gateway.local_addr() {
        Ok(addr) => addr,
        Err(err) => {
            tracing::error!("{err}");
            return ExitCode::FAILURE;
        }
    };
    let upstream = gateway
        .standin()
        .map_or_else(|| config.upstream.url.clone(), |s| s.url());
    let scheme = gateway.scheme();
    tracing::info!(listen = %addr, %scheme, %upstream, "kestra-edge ready");
    if let Some(admin) = gateway.admin_addr() {
        tracing::info!(listen = %admin, "admin listener: /metrics, /livez, /readyz");
    }
    if let Some(redirect) = gateway.redirect_addr() {
        tracing::info!(listen = %redirect, "redirecting plain HTTP to HTTPS");
    }
    if let Some(generated) = gateway.self_signed() {
        tracing::info!(
            sha256 = %generated.fingerprint,
            "serving a self-signed certificate for localhost"
        );
    }
    #[cfg(unix)]
    reload_on_sighup(gateway.cert_reloader(), gateway.kestra_credentials());
    if gateway.standin().is_some() {
        print_demo(
            addr,
            scheme,
            gateway.self_signed().map(|s| s.fingerprint.as_str()),
        );
    }
    // One signal stops both listeners.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let until_stopped = || {
        let mut stopped = stopped.clone();
        async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }
    };
    let egress = egress.map(|egress| tokio::spawn(egress.serve(until_stopped())));
    let served = gateway.serve(until_stopped()).await;
    if let Some(egress) = egress {
        match egress.await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::warn!(error = %err, "egress listener failed"),
            Err(err) => tracing::warn!(error = %err, "egress listener panicked"),
        }
    }
    match served {
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

/// Exit 2 for a configuration the user must fix, like clap's own usage errors.
fn exit_code(err: &GatewayError) -> ExitCode {
    match err {
        GatewayError::Config(_) => ExitCode::from(2),
        GatewayError::Io(_) => ExitCode::FAILURE,
    }
}

/// Serves the egress forward proxy alone (no `--upstream`) until SIGINT or SIGTERM.
async fn serve_egress_alone(egress: EgressListener) -> ExitCode {
    tracing::info!("no --upstream: serving the egress forward proxy alone");
    match egress.serve(shutdown_signal()).await {
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

/// Reloads the certificate files and Kestra's credentials on each SIGHUP (they are also
/// watched on disk).
#[cfg(unix)]
fn reload_on_sighup(
    reloader: Option<std::sync::Arc<kestra_edge::tls::CertReloader>>,
    credentials: Option<kestra_edge::auth::KestraCredentials>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGHUP");
            return;
        }
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match &reloader {
                Some(reloader) => reloader.reload_and_log("SIGHUP"),
                None => tracing::info!("SIGHUP: no certificate files to reload"),
            }
            if let Some(credentials) = &credentials {
                match credentials.reload() {
                    Ok(()) => tracing::info!(
                        path = %credentials.path().display(),
                        trigger = "SIGHUP",
                        "Kestra credentials reloaded"
                    ),
                    Err(err) => tracing::error!(
                        trigger = "SIGHUP",
                        "refused the new Kestra credentials, still using the last good ones: {err}"
                    ),
                }
            }
        }
    });
}

#[allow(clippy::print_stdout)]
fn print_demo(addr: SocketAddr, scheme: &str, fingerprint: Option<&str>) {
    let (host, curl) = match fingerprint {
        // The certificate names localhost; -k because nothing trusts a self-signed one.
        Some(_) => (format!("localhost:{}", addr.port()), "curl -k --http2"),
        None => (addr.to_string(), "curl"),
    };
    let base = format!("{scheme}://{host}/kestra");
    if let Some(fingerprint) = fingerprint {
        println!("\nself-signed certificate for localhost, SHA-256 {fingerprint}");
    }
    println!(
        "\nkestra-edge demo: a Kestra stand-in behind the gateway at {base}/\n\n\
         Try:\n  \
         {curl} -i {base}/ping\n  \
         {curl} -i {base}/\n  \
         {curl} -s {base}/api/v1/echo/hello?a=1 -d 'some body'\n  \
         {curl} -N {base}/api/v1/main/executions/demo-1/follow\n  \
         {curl} -N '{base}/api/v1/main/logs/demo-1/follow?events=5&interval_ms=1000'\n  \
         {curl} -s -o /dev/null -w '%{{size_download}} bytes\\n' '{base}/api/v1/download?bytes=104857600'\n\n\
         Ctrl-C stops it.\n"
    );
}
