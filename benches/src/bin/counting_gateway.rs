//! `kestra-edge-bench-counting`: the gateway of `kestra-edge-bench serve-gateway`, the same
//! code and command line, under a counting allocator. Writing `count` to its stdin reads its
//! counter: it answers `allocations N bytes M` on stdout, the heap allocations (and
//! reallocations) of the whole process so far: hyper, tokio, the gateway's layers alike.
//! Closing stdin stops it.
//!
//! A binary of its own so that `kestra-edge-bench`'s gateway, whose CPU time the harness
//! measures, pays no atomic increment per allocation. The harness starts it after its main
//! rounds, for the `allocs/req` column.

use clap::Parser;
use kestra_edge_bench::{
    allocation_count::{AllocationCount, COMMAND},
    serve::{self, GatewayArgs, Serve},
    BoxError,
};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use std::alloc::System;

/// Counts every allocation of the process (stats_alloc wraps the system allocator).
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[derive(Debug, Parser)]
#[command(about = "The kestra-edge-bench gateway under a counting allocator (`count` on stdin)")]
enum Cli {
    /// Serve the kestra-edge gateway (context path /kestra, kept) in front of `--upstream`,
    /// print `listening ADDR`, and answer `count` on stdin with `allocations N bytes M`.
    ServeGateway(GatewayArgs),
}

fn main() -> Result<(), BoxError> {
    let Cli::ServeGateway(args) = Cli::parse();
    serve::run(Serve::Gateway(args), answer)
}

fn answer(line: &str) -> Option<String> {
    (line == COMMAND).then(|| AllocationCount::from(GLOBAL.stats()).to_line())
}
