//! The counter of `kestra-edge-bench-counting`, and the line that carries it: the harness
//! writes [`COMMAND`] to the counting gateway's stdin, which answers
//! `allocations N bytes M` on its stdout.

use stats_alloc::Stats;

/// The line that asks the counting gateway for its counter.
pub const COMMAND: &str = "count";

/// Heap allocations a whole process made since it started (or between two readings, with
/// [`AllocationCount::since`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocationCount {
    /// Allocations and reallocations.
    pub allocations: u64,
    /// Bytes they asked for (reallocations: their growth).
    pub bytes: u64,
}

impl AllocationCount {
    /// The answer line: `allocations N bytes M`.
    pub fn to_line(self) -> String {
        format!("allocations {} bytes {}", self.allocations, self.bytes)
    }

    /// Reads an answer line.
    pub fn parse(line: &str) -> Option<Self> {
        let rest = line.trim().strip_prefix("allocations ")?;
        let (allocations, bytes) = rest.split_once(" bytes ")?;
        Some(Self {
            allocations: allocations.parse().ok()?,
            bytes: bytes.parse().ok()?,
        })
    }

    /// What was counted between `before` and this reading.
    pub fn since(self, before: Self) -> Self {
        Self {
            allocations: self.allocations.saturating_sub(before.allocations),
            bytes: self.bytes.saturating_sub(before.bytes),
        }
    }
}

/// Counted as `tests/allocs` counts, so that the figures compare.
impl From<Stats> for AllocationCount {
    fn from(stats: Stats) -> Self {
        let allocations = stats.allocations + stats.reallocations;
        let bytes = stats.bytes_allocated + stats.bytes_reallocated.max(0).unsigned_abs();
        Self {
            allocations: allocations as u64,
            bytes: bytes as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_reads_back() {
        let count = AllocationCount {
            allocations: 123_456,
            bytes: 7_890_123,
        };
        assert_eq!(AllocationCount::parse(&count.to_line()), Some(count));
        assert_eq!(
            AllocationCount::parse("allocations 3 bytes 4\n"),
            Some(AllocationCount {
                allocations: 3,
                bytes: 4
            })
        );
    }

    #[test]
    fn other_lines_are_not_counts() {
        for line in [
            "",
            "listening 127.0.0.1:1",
            "allocations 3",
            "allocations x bytes 4",
            "allocations 3 bytes -4",
        ] {
            assert_eq!(AllocationCount::parse(line), None, "{line:?}");
        }
    }
}
