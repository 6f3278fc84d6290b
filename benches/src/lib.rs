//! What the binaries of `kestra-edge-bench` share: the child processes the harness starts
//! (the minimal upstream, the Kestra stand-in, the kestra-edge gateway), served by
//! `kestra-edge-bench` itself and, for the gateway, by `kestra-edge-bench-counting`, which
//! runs the same code under a counting allocator; and the line in which that one reports
//! its counter.

pub mod allocation_count;
pub mod serve;

/// Any error of a measurement or of a child process.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
