#!/usr/bin/env bash
# A real Prometheus against the kestra-edge binary's admin listener (--demo --admin-listen):
# requests go through the gateway, `promtool check metrics` checks a live scrape of /metrics,
# then Prometheus (its own temporary directory, 127.0.0.1 only, scraping every second) scrapes
# the admin listener and must answer a query for the request counter through its HTTP API with
# the number of requests sent.
#
#   scripts/prometheus-check.sh
#   KESTRA_EDGE_BIN=path/to/kestra-edge scripts/prometheus-check.sh
#
# Installs Debian's prometheus package (which has promtool) with apt-get when either is missing,
# without starting its service; builds the binary (cargo build -p kestra-edge-gateway) only when
# the default one is missing. Everything it starts listens on 127.0.0.1 and is stopped on exit.
# Prints one line per check, then `N passed, M failed`; exits 0 only when all pass.
set -euo pipefail
here=$PWD
cd "$(dirname "$0")/.."

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  echo "== apt-get install prometheus"
  apt-get update -q
  # RUNLEVEL=1: invoke-rc.d starts no prometheus service; this script runs its own.
  RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus
fi
prometheus --version 2>&1 | head -n 1

if [[ -n "${KESTRA_EDGE_BIN:-}" ]]; then
  bin=$KESTRA_EDGE_BIN
  [[ "$bin" == /* ]] || bin="$here/$bin"
else
  bin="${CARGO_TARGET_DIR:-target}/debug/kestra-edge"
  [[ -x "$bin" ]] || cargo build -p kestra-edge-gateway
fi
[[ -x "$bin" ]] || { echo "no kestra-edge binary at $bin" >&2; exit 1; }

tmp=$(mktemp -d /tmp/prometheus-check.XXXXXX)
pids=()
cleanup() {
  local pid
  disown -a 2>/dev/null || true # no "Terminated" job notices after the summary line
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for _ in $(seq 30); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
set -m # each background job gets its own process group: cleanup stops a job with its children

read -r gateway_port admin_port prometheus_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')

started=$SECONDS
passed=0
failed=0
pass() { echo "PASS $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1"; failed=$((failed + 1)); }
summary() { echo "$passed passed, $failed failed ($((SECONDS - started)) s)"; }

# start LOG COMMAND...: runs COMMAND in the background, records its pid in $last_pid.
start() {
  local log=$1; shift
  "$@" >"$log" 2>&1 </dev/null &
  last_pid=$!
  pids+=("$last_pid")
}
# wait_port PORT PID LOG: until PORT accepts (20 s at most), or PID exits.
wait_port() {
  local port=$1 pid=$2 log=$3
  for _ in $(seq 200); do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "process $pid exited before listening on $port:" >&2; tail -n 20 "$log" >&2; return 1
    fi
    timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on $port after 20 s:" >&2; tail -n 20 "$log" >&2; return 1
}
# get URL: the body of a GET (python3's standard library: no curl needed); fails on non-2xx.
get() {
  python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"
}

start "$tmp/gateway.log" "$bin" --demo --workers 1 \
  --listen "127.0.0.1:$gateway_port" --admin-listen "127.0.0.1:$admin_port"
gateway_pid=$last_pid
wait_port "$gateway_port" "$gateway_pid" "$tmp/gateway.log"
wait_port "$admin_port" "$gateway_pid" "$tmp/gateway.log"

requests=5
for _ in $(seq "$requests"); do get "http://127.0.0.1:$gateway_port/kestra/ping" >/dev/null; done

# 1. promtool on a live scrape.
get "http://127.0.0.1:$admin_port/metrics" >"$tmp/metrics.txt"
if promtool check metrics <"$tmp/metrics.txt" >"$tmp/promtool.txt" 2>&1; then
  pass "promtool check metrics: $(grep -c '^[a-z]' "$tmp/metrics.txt") samples, $(grep -c '^# TYPE' "$tmp/metrics.txt") families"
else
  fail "promtool check metrics:"; sed 's/^/  /' "$tmp/promtool.txt"
fi
line=$(grep '^kestra_edge_http_requests_total{method="GET",status="200"}' "$tmp/metrics.txt" || true)
if [[ "$line" == *" $requests" ]]; then pass "scrape: $line"; else fail "scrape: expected $requests GETs, got '${line}'"; fi
for path in livez readyz; do
  if body=$(get "http://127.0.0.1:$admin_port/$path"); then pass "/$path: 200 $body"; else fail "/$path did not answer 200"; fi
done

# 2. A real Prometheus scrapes the admin listener and answers a query for the counter.
cat >"$tmp/prometheus.yml" <<YAML
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: kestra-edge
    static_configs:
      - targets: ["127.0.0.1:$admin_port"]
YAML
promtool check config "$tmp/prometheus.yml" >/dev/null
start "$tmp/prometheus.log" prometheus --config.file="$tmp/prometheus.yml" \
  --storage.tsdb.path="$tmp/data" --web.listen-address="127.0.0.1:$prometheus_port"
prometheus_pid=$last_pid
wait_port "$prometheus_port" "$prometheus_pid" "$tmp/prometheus.log"
query='sum(kestra_edge_http_requests_total{job="kestra-edge",method="GET",status="200"})'
url="http://127.0.0.1:$prometheus_port/api/v1/query?query=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$query")"
value=
for _ in $(seq 300); do
  answer=$(get "$url" 2>/dev/null || true)
  value=$(python3 -c '
import json, sys
try:
    result = json.loads(sys.argv[1])["data"]["result"]
    print(result[0]["value"][1] if result else "")
except Exception:
    print("")' "$answer")
  [[ -n "$value" ]] && break
  sleep 0.1
done
if [[ "$value" == "$requests" ]]; then
  pass "Prometheus query $query = $value"
else
  fail "Prometheus query $query = '${value}' (expected $requests); last answer: ${answer:-none}"
  tail -n 5 "$tmp/prometheus.log" | sed 's/^/  /'
fi
up=$(get "http://127.0.0.1:$prometheus_port/api/v1/query?query=up" | python3 -c 'import json, sys; r = json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")')
if [[ "$up" == 1 ]]; then pass "Prometheus target up = 1"; else fail "Prometheus target up = '${up}'"; fi

summary
((failed == 0))
