#!/usr/bin/env bash
# A real browser against the kestra-edge binary (--demo): headless chromium opens 12 Kestra-like
# EventSources at once on one origin. Over TLS + HTTP/2 (--tls-self-signed) all 12 must stream;
# over plain HTTP/1.1 the browser's 6-connections-per-origin limit must leave exactly 6 streaming
# (the stall Kestra's UI hits without HTTP/2, and proof the check can fail). The browser is driven
# through chromedriver's W3C WebDriver API by scripts/browser_check.py (Python standard library).
#
#   scripts/browser-check.sh
#   KESTRA_EDGE_BIN=path/to/kestra-edge BROWSER_CHECK_SCREENSHOT=/tmp/browser-check.png scripts/browser-check.sh
#
# Installs chromium and chromium-driver with apt-get when missing; builds the binary
# (cargo build -p kestra-edge-gateway) only when the default one is missing. Everything it starts
# listens on 127.0.0.1 and is stopped on exit. Prints one line per case, then `N passed, M failed`;
# exits 0 only when both cases pass.
set -euo pipefail
here=$PWD
cd "$(dirname "$0")/.."

if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
  echo "== apt-get install chromium chromium-driver"
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
fi

if [[ -n "${KESTRA_EDGE_BIN:-}" ]]; then
  bin=$KESTRA_EDGE_BIN
  [[ "$bin" == /* ]] || bin="$here/$bin"
else
  bin="${CARGO_TARGET_DIR:-target}/debug/kestra-edge"
  [[ -x "$bin" ]] || cargo build -p kestra-edge-gateway
fi
[[ -x "$bin" ]] || { echo "no kestra-edge binary at $bin" >&2; exit 1; }

tmp=$(mktemp -d /tmp/browser-check.XXXXXX)
pids=()
cleanup() {
  local pid
  disown -a 2>/dev/null || true # no "Terminated" job notices after the summary line
  # Each background job below is its own process group (set -m), so chromedriver's chromium
  # goes down with it.
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for _ in $(seq 30); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  # A chromium process that left its group still names our fresh profile directory ([-] keeps
  # grep from matching itself).
  for pid in $(grep -ls -- "[-]-user-data-dir=$tmp/profile" /proc/[0-9]*/cmdline | cut -d/ -f3); do
    kill -KILL "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
set -m # each background job gets its own process group: cleanup stops a job with its children

read -r tls_port plain_port driver_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')

started=$SECONDS
cases=()
broken=()

# start NAME LOG COMMAND...: runs COMMAND in the background, records its pid in $last_pid.
start() {
  local log=$2; shift 2
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

h2_name="HTTP/2 over TLS (--tls-self-signed)"
h1_name="HTTP/1.1 without TLS"
help=$("$bin" --help 2>&1 || true) # not piped into grep -q: SIGPIPE would fail the pipeline
if grep -q -- --tls-self-signed <<<"$help"; then
  start tls "$tmp/gateway-tls.log" "$bin" --demo --tls-self-signed \
    --listen "127.0.0.1:$tls_port" --workers 1
  tls_pid=$last_pid
else
  tls_pid=
  broken+=(--broken "$h2_name" "$bin has no --tls-self-signed flag")
fi
start plain "$tmp/gateway-plain.log" "$bin" --demo --listen "127.0.0.1:$plain_port" --workers 1
plain_pid=$last_pid
start driver "$tmp/chromedriver.log" /usr/bin/chromedriver --port="$driver_port"
driver_pid=$last_pid

if [[ -n "$tls_pid" ]]; then
  if wait_port "$tls_port" "$tls_pid" "$tmp/gateway-tls.log"; then
    cases+=(--case "$h2_name" "https://localhost:$tls_port/kestra" 12 h2)
  else
    broken+=(--broken "$h2_name" "the TLS gateway did not start")
  fi
fi
if wait_port "$plain_port" "$plain_pid" "$tmp/gateway-plain.log"; then
  cases+=(--case "$h1_name" "http://127.0.0.1:$plain_port/kestra" 6 http/1.1)
else
  broken+=(--broken "$h1_name" "the plain gateway did not start")
fi
wait_port "$driver_port" "$driver_pid" "$tmp/chromedriver.log" || true # browser_check.py reports it

echo "gateways and chromedriver up after $((SECONDS - started)) s"

screenshot=()
[[ -n "${BROWSER_CHECK_SCREENSHOT:-}" ]] && screenshot=(--screenshot "$BROWSER_CHECK_SCREENSHOT")
# In the background, so that a SIGINT/SIGTERM stops it at once (through the traps and cleanup).
timeout 90 python3 scripts/browser_check.py --webdriver "http://127.0.0.1:$driver_port" \
  --user-data-dir "$tmp/profile" "${broken[@]}" "${cases[@]}" "${screenshot[@]}" </dev/null &
check_pid=$!
pids+=("$check_pid")
status=0
wait "$check_pid" || status=$?
if ((status == 124)); then
  echo "FAIL the browser check did not finish within 90 s"
  echo "0 passed, 2 failed"
fi
exit "$status"
