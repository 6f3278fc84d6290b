//! The telemetry group (`--only telemetry`): small GETs through kestra-edge as the other
//! groups run it (no admin listener, no access log, no request ids), with the metrics of
//! `--admin-listen` on, with the access log (text, to a file) too, and with request ids too,
//! in turns within one run, so that what each costs shows as a ratio.

use crate::{
    best_of_rounds, load,
    report::{HttpRow, Report},
    targets::{BoxError, Target},
    Cli, Proxies,
};

const METRICS: &str = "kestra-edge + metrics";
const LOGGED: &str = "kestra-edge + metrics + access log";
const IDS: &str = "kestra-edge + metrics + access log + request ids";

const WORKLOADS: [load::Workload; 2] = [
    load::Workload {
        name: "small GET, telemetry",
        path: "/kestra/api/v1/small",
        connections: 32,
        kind: load::Kind::KeepAlive,
    },
    load::Workload {
        name: "small GET, telemetry",
        path: "/kestra/api/v1/small",
        connections: 256,
        kind: load::Kind::KeepAlive,
    },
];

pub(crate) fn run(
    cli: &Cli,
    runtime: &tokio::runtime::Runtime,
    proxies: &Proxies,
    report: &mut Report,
) -> Result<(), BoxError> {
    let upstream = Target::spawn_self("direct", &["serve-upstream"])?;
    let log = std::env::temp_dir().join(format!("kestra-edge-bench-{}.log", std::process::id()));
    let log_arg = log.to_string_lossy().into_owned();
    let plain = proxies.gateway(upstream.addr, &[])?;
    let mut metrics = proxies.gateway(upstream.addr, &["--admin"])?;
    metrics.name = METRICS;
    let mut logged = proxies.gateway(upstream.addr, &["--admin", "--access-log", &log_arg])?;
    logged.name = LOGGED;
    let mut ids = proxies.gateway(
        upstream.addr,
        &["--admin", "--access-log", &log_arg, "--request-id"],
    )?;
    ids.name = IDS;
    let order = [&plain, &metrics, &logged, &ids];
    for workload in WORKLOADS {
        let best = best_of_rounds(cli, runtime, &order, workload, report);
        let rps: Vec<f64> = best
            .iter()
            .map(|row| row.as_ref().map_or(0.0, HttpRow::requests_per_sec))
            .collect();
        for (name, value) in [(METRICS, rps[1]), (LOGGED, rps[2]), (IDS, rps[3])] {
            eprintln!(
                "telemetry c={}: {name} / kestra-edge = {:.3} (cost {:.1}%)",
                workload.connections,
                value / rps[0],
                (1.0 - value / rps[0]) * 100.0
            );
        }
        report.http.extend(best.into_iter().flatten());
    }
    drop((plain, metrics, logged, ids));
    let _ = std::fs::remove_file(&log);
    Ok(())
}
