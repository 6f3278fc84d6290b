#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time on its kept corpus (fuzz/corpus/<target>),
# which grows with what the run finds; a crash stops the script with its input saved in
# fuzz/artifacts/<target>/. Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz
#   scripts/fuzz.sh [SECONDS_PER_TARGET]     (default 60)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
for target in prefix forwarded sse_boundary h1_response h1_request; do
  echo "== fuzz $target for ${seconds}s"
  # Exits non-zero on a crash, leaving the input in fuzz/artifacts/<target>/.
  cargo +nightly fuzz run -O "$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048
done
