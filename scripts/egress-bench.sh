#!/usr/bin/env bash
# CONNECT tunnel throughput and new-tunnel rate: kestra-edge's egress listener against squid, in
# the same run, with the same Python client (scripts/egress_bench.py) and the same loopback
# destination. Both proxies without authentication, both allowing only 127.0.0.1 (kestra-edge with
# --egress-allow-private, since the destination is loopback), squid with caching and logs off.
#
#   KESTRA_EDGE_BIN=target/release/kestra-edge scripts/egress-bench.sh [SECONDS]
#
# Use a release binary for figures (the default, target/debug/kestra-edge, only checks the
# harness). The client is one Python process, so on a small machine it can be the bottleneck for
# both proxies: compare the two lines of one run, not runs on different machines. Installs squid
# with apt-get when missing.
set -euo pipefail
here=$PWD
cd "$(dirname "$0")/.."
scripts=$PWD/scripts
seconds=${1:-5}

if [[ -n "${KESTRA_EDGE_BIN:-}" ]]; then
  bin=$KESTRA_EDGE_BIN
  [[ "$bin" == /* ]] || bin="$here/$bin"
else
  bin="${CARGO_TARGET_DIR:-target}/debug/kestra-edge"
  [[ -x "$bin" ]] || cargo build -p kestra-edge-gateway
fi
command -v squid >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q squid; }

tmp=$(mktemp -d /tmp/egress-bench.XXXXXX)
chmod 777 "$tmp" # squid drops to its own user
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing on port $1" >&2; exit 1; }

dest=$(free_port)
python3 "$scripts/egress_bench.py" serve "$dest" &
pids+=($!)
edge=$(free_port)
RUST_LOG=warn "$bin" --egress-listen "127.0.0.1:$edge" --egress-allow 127.0.0.1 --egress-allow-private \
  --egress-max-tunnels 100000 2>"$tmp/edge.log" &
pids+=($!)
squid_port=$(free_port)
cat >"$tmp/squid.conf" <<CONF
http_port 127.0.0.1:$squid_port
acl dest dst 127.0.0.1
http_access allow CONNECT dest
http_access allow dest
http_access deny all
cache deny all
cache_mem 8 MB
access_log none
cache_log $tmp/cache.log
pid_filename $tmp/squid.pid
coredump_dir $tmp
shutdown_lifetime 0 seconds
CONF
squid -N -f "$tmp/squid.conf" &
pids+=($!)
wait_port "$dest"
wait_port "$edge"
wait_port "$squid_port"

echo "kestra-edge: $bin ($("$bin" --version 2>/dev/null || echo '?')); $(squid -v | head -n1); ${seconds}s per case"
for case in "throughput 1" "throughput 8" "tunnels 1" "tunnels 32"; do
  set -- $case
  for proxy in "kestra-edge $edge" "squid $squid_port"; do
    set -- $case $proxy
    printf '%-11s %-10s x%-3s %s\n' "$3" "$1" "$2" \
      "$(python3 "$scripts/egress_bench.py" "$1" 127.0.0.1 "$4" "$dest" "$seconds" "$2")"
  done
done
