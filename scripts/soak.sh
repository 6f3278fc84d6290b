#!/usr/bin/env bash
# Five-minute mixed soak (GET, 1 MiB POST, SSE to the end, WebSocket echo) through the
# kestra-edge gateway in front of the stand-in, all on 127.0.0.1. Exits non-zero on any
# error or when the gateway's memory grows past its warm-up level.
#   scripts/soak.sh [DURATION]      (default 5m; e.g. scripts/soak.sh 30m)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p kestra-edge-bench
exec target/release/kestra-edge-bench soak --for "${1:-5m}" --sample 10s
