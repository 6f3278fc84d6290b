//! The `allocs/req` column: heap allocations per small GET of the kestra-edge gateway
//! (and of `kestra-edge-before`), counted by `kestra-edge-bench-counting`, the same
//! gateway under a counting allocator, in a short run of its own after the main rounds, so
//! that no other figure is measured under that allocator.
//!
//! The count is the whole gateway process's (hyper, tokio and kestra-edge's layers alike),
//! as `tests/allocs` counts it; the requests are the ones the client saw answered.

use crate::{
    load,
    report::Report,
    targets::{BoxError, Target},
    Proxies,
};
use kestra_edge_bench::allocation_count::{AllocationCount, COMMAND};
use serde::Serialize;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

/// What `--help` says about the column.
pub(crate) const HELP: &str = "\
allocs/req, alloc bytes/req (small-GET rows of kestra-edge and kestra-edge-before): heap
allocations (and reallocations) of the gateway's whole process per request, hyper's, tokio's
and kestra-edge's own alike, as tests/allocs counts them, and the bytes they asked for. They
come from a short run of their own after the main rounds: kestra-edge-bench-counting (the same
gateway under a counting allocator, built beside kestra-edge-bench and looked for beside it
and beside --baseline) in front of the same upstream, a warm-up, then a fixed number of
keep-alive GETs, counted by the client. No other figure is measured under that allocator.
`-` for the other targets, and when the counting binary is missing (the reason is printed
under the table).";

/// The counting binary, looked for beside each kestra-edge-bench binary.
const BINARY: &str = "kestra-edge-bench-counting";

/// Requests before the first reading: every connection open, the upstream pool and the
/// buffers warm.
const WARMUP_REQUESTS: u64 = 2_000;

/// Requests between the two readings; opening and closing the client's connections is
/// counted in them too, so there are many more requests than connections.
const REQUESTS: u64 = 20_000;

/// What one gateway allocated per request on one workload.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Allocations {
    /// Allocations and reallocations of the gateway's process, per request answered.
    pub(crate) per_request: f64,
    /// The bytes they asked for, per request answered.
    pub(crate) bytes_per_request: f64,
    /// Requests answered between the two readings (counted by the client).
    requests: u64,
    /// Requests that failed meanwhile (their allocations are counted too).
    errors: u64,
}

/// Counts, for each gateway build, the allocations per request of each of `workloads`,
/// through its counting binary in front of `upstream`; says in the report why a build has
/// no figure.
pub(crate) fn run(
    runtime: &tokio::runtime::Runtime,
    proxies: &Proxies,
    upstream: SocketAddr,
    workloads: &[load::Workload],
    report: &mut Report,
) {
    let harness = std::env::current_exe().map_err(|e| format!("no path to this binary: {e}"));
    let mut builds = vec![("kestra-edge", harness)];
    if let Some(baseline) = &proxies.baseline {
        builds.push(("kestra-edge-before", Ok(baseline.clone())));
    }
    for (name, exe) in builds {
        let counted = exe.and_then(|exe| counting_binary(&exe)).and_then(|binary| {
            if let Some(warning) = &binary.warning {
                say(report, name, warning);
            }
            let mut gateway = proxies
                .gateway_of(name, &binary.path, upstream, &[])
                .map_err(|e| format!("{} did not start: {e}", binary.path.display()))?;
            for &workload in workloads {
                let allocations =
                    measure(runtime, &mut gateway, workload).map_err(|e| e.to_string())?;
                eprintln!(
                    "{:>12} c={:<3} {:<15} {:.1} allocations, {:.0} bytes per request ({} requests)",
                    workload.name,
                    workload.connections,
                    name,
                    allocations.per_request,
                    allocations.bytes_per_request,
                    allocations.requests,
                );
                report.set_allocations(workload, name, allocations);
            }
            Ok(())
        });
        if let Err(why) = counted {
            say(report, name, &why);
        }
    }
}

/// Tells on stderr, and under the table, why `name`'s figures are missing or doubtful.
fn say(report: &mut Report, name: &str, why: &str) {
    let note = format!("allocs/req of {name}: {why}");
    eprintln!("{note}");
    report.note_allocations(note);
}

/// A counting binary, and a doubt about it.
struct CountingBinary {
    path: PathBuf,
    warning: Option<String>,
}

/// The counting binary beside the kestra-edge-bench binary `exe`, or why there is none.
fn counting_binary(exe: &Path) -> Result<CountingBinary, String> {
    let path = exe.with_file_name(BINARY);
    if !path.is_file() {
        return Err(format!(
            "no {} (`cargo build --release -p kestra-edge-bench` builds it beside kestra-edge-bench)",
            path.display()
        ));
    }
    // `cargo run --bin kestra-edge-bench` rebuilds the harness alone, and the counting
    // binary then holds an older gateway than the one measured above.
    let warning = changed_between(&path, exe).map(|source| {
        format!(
            "{} changed after {} was built, before {} was: rebuild both \
             (`cargo build --release -p kestra-edge-bench`)",
            source.display(),
            path.display(),
            exe.display()
        )
    });
    Ok(CountingBinary { path, warning })
}

/// A source file of `binary`, from the dep-info cargo writes beside it (`binary.d`), that
/// changed after `binary` was built and before `exe` was.
fn changed_between(binary: &Path, exe: &Path) -> Option<PathBuf> {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let (built, exe_built) = (modified(binary)?, modified(exe)?);
    let mut dep_info = binary.as_os_str().to_owned();
    dep_info.push(".d");
    let dep_info = std::fs::read_to_string(dep_info).ok()?;
    // Make's syntax, `target: source source…`, with spaces in paths escaped as `\ `.
    let (_, sources) = dep_info.lines().next()?.split_once(": ")?;
    sources
        .replace("\\ ", "\0")
        .split_whitespace()
        .map(|source| PathBuf::from(source.replace('\0', " ")))
        .find(|source| modified(source).is_some_and(|m| built < m && m <= exe_built))
}

/// Warms `gateway` up, reads its counter, sends the measured requests, reads it again.
fn measure(
    runtime: &tokio::runtime::Runtime,
    gateway: &mut Target,
    workload: load::Workload,
) -> Result<Allocations, BoxError> {
    let _ = runtime.block_on(load::run_requests(gateway.addr, workload, WARMUP_REQUESTS));
    let before = read(gateway)?;
    let load = runtime.block_on(load::run_requests(gateway.addr, workload, REQUESTS));
    let counted = read(gateway)?.since(before);
    if load.requests == 0 {
        return Err(format!("no request answered ({} errors)", load.errors).into());
    }
    let requests = load.requests as f64;
    Ok(Allocations {
        per_request: counted.allocations as f64 / requests,
        bytes_per_request: counted.bytes as f64 / requests,
        requests: load.requests,
        errors: load.errors,
    })
}

/// The counter of a counting gateway.
fn read(gateway: &mut Target) -> Result<AllocationCount, BoxError> {
    let line = gateway.ask(COMMAND)?;
    AllocationCount::parse(&line)
        .ok_or_else(|| format!("{} answered {line:?} to {COMMAND:?}", gateway.name).into())
}
