#!/usr/bin/env bash
# CONNECT tunnel throughput and new-tunnel rate: kestra-edge's egress listener against squid, in
# the same run, with the same Python client (scripts/egress_bench.py) and the same loopback
# destination. Both proxies without authentication, both allowing only 127.0.0.1 (kestra-edge with
# --egress-allow-private, since the destination is loopback), squid with caching and logs off.
#
#   KESTRA_EDGE_BIN=target/release/kestra-edge scripts/egress-bench.sh [SECONDS [ROUNDS]]
#
# Use a release binary for figures (the default, target/debug/kestra-edge, only checks the
# harness). Each case runs ROUNDS times (default 3), the order of the two proxies swapped every
# round; the summary is a Markdown table of medians with the ratio kestra-edge / squid, and the CPU
# (user + system, read from /proc) each proxy spent per GiB moved or per 1000 tunnels.
# Throughput: curl (-p -x, one process per tunnel) downloads from the `--demo` Kestra stand-in
# (Rust) for SECONDS. New tunnels: one Python asyncio client (scripts/egress_bench.py) opens a
# tunnel, echoes one byte through it and closes it, in a loop; its destination is Python too, so
# on a small machine the client can be the limit for both proxies (the rate ratio then tends to 1):
# the CPU column says what each proxy costs regardless. Compare the two proxies of one run, not
# runs on different machines.
# kestra-edge runs its default worker threads (one per CPU), squid its default single worker.
# Installs squid with apt-get when missing.
set -euo pipefail
here=$PWD
cd "$(dirname "$0")/.."
scripts=$PWD/scripts
seconds=${1:-5}
rounds=${2:-3}

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
# The throughput source: the Kestra stand-in of `--demo` (Rust), whose download route streams
# as many bytes as asked; reached directly, not through the demo gateway in front of it.
RUST_LOG=info "$bin" --demo --listen 127.0.0.1:0 >/dev/null 2>"$tmp/demo.log" &
pids+=($!)
standin=""
for _ in $(seq 100); do
  standin=$(sed 's/\x1b\[[0-9;]*m//g' "$tmp/demo.log" | sed -n 's/.*kestra-edge ready.* upstream=\([^ ]*\).*/\1/p' | head -n1)
  [[ -n "$standin" ]] && break
  sleep 0.1
done
[[ -n "$standin" ]] || { echo "the demo stand-in did not start:" >&2; cat "$tmp/demo.log" >&2; exit 1; }
download="$standin/kestra/api/v1/download?bytes=1099511627776"

# MiB/s through `proxy_port` for `seconds`, summed over `streams` curl processes, each
# downloading through its own CONNECT tunnel (curl -p) until --max-time ends it.
curl_throughput() { # proxy_port seconds streams
  local i total=0 size
  for i in $(seq "$3"); do
    curl -s -p -x "http://127.0.0.1:$1" -o /dev/null --max-time "$2" -w '%{size_download}\n' \
      "$download" >"$tmp/curl.$i" &
  done
  wait $(jobs -p | tail -n "$3")
  for i in $(seq "$3"); do
    size=$(cat "$tmp/curl.$i")
    total=$((total + ${size%.*}))
  done
  python3 -c "import json,sys; print(json.dumps({'mib_per_s': round($total / $2 / 1048576, 1), 'streams': $3}))"
}
edge=$(free_port)
RUST_LOG=warn "$bin" --egress-listen "127.0.0.1:$edge" --egress-allow 127.0.0.1 --egress-allow-private \
  --egress-max-tunnels 100000 2>"$tmp/edge.log" &
edge_pid=$!
pids+=($edge_pid)
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
squid_pid=$!
pids+=($squid_pid)
wait_port "$dest"
wait_port "$edge"
wait_port "$squid_port"

# CPU seconds (user + system, every thread) a process has used so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / hz }' "/proc/$1/stat"; }

echo "kestra-edge: $bin ($("$bin" --version 2>/dev/null || echo '?')); $(squid -v | head -n1)"
echo "${seconds}s per case, $rounds rounds (the order of the two proxies swapped every round); $(nproc) CPUs"
printf 'round\tcase\tn\tproxy\tvalue\tcpu_s\tunits\n' >"$tmp/results.tsv"
for round in $(seq "$rounds"); do
  if ((round % 2)); then order=("kestra-edge $edge $edge_pid" "squid $squid_port $squid_pid")
  else order=("squid $squid_port $squid_pid" "kestra-edge $edge $edge_pid"); fi
  for case in "throughput 1" "throughput 8" "tunnels 1" "tunnels 32"; do
    for proxy in "${order[@]}"; do
      set -- $case $proxy
      before=$(cpu "$5")
      if [[ $1 == throughput ]]; then
        json=$(curl_throughput "$4" "$seconds" "$2")
      else
        json=$(python3 "$scripts/egress_bench.py" "$1" 127.0.0.1 "$4" "$dest" "$seconds" "$2")
      fi
      after=$(cpu "$5")
      printf '%-2s %-11s %-10s x%-3s %s\n' "$round" "$3" "$1" "$2" "$json"
      python3 - "$round" "$1" "$2" "$3" "$json" "$before" "$after" "$seconds" >>"$tmp/results.tsv" <<'PY'
import json, sys
round_, case, n, proxy, doc, before, after, seconds = sys.argv[1:]
doc = json.loads(doc)
if case == "throughput":
    value = doc["mib_per_s"]
    units = value * float(seconds) / 1024  # GiB moved
else:
    value = doc["tunnels_per_s"]
    units = value * float(seconds) / 1000  # thousands of tunnels
    if doc["errors"]:
        print(f"{proxy}: {doc['errors']} failed tunnels", file=sys.stderr)
print(f"{round_}\t{case}\t{n}\t{proxy}\t{value}\t{float(after) - float(before):.3f}\t{units}")
PY
    done
  done
done

echo
python3 - "$tmp/results.tsv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
cases = []
for r in rows:
    if (r["case"], r["n"]) not in cases:
        cases.append((r["case"], r["n"]))
print("| case | kestra-edge (median) | squid (median) | kestra-edge ÷ squid | CPU per unit, kestra-edge ÷ squid |")
print("|---|---:|---:|---:|---:|")
for case, n in cases:
    got = {}
    for proxy in ("kestra-edge", "squid"):
        mine = [r for r in rows if (r["case"], r["n"], r["proxy"]) == (case, n, proxy)]
        value = statistics.median(float(r["value"]) for r in mine)
        cost = statistics.median(float(r["cpu_s"]) / float(r["units"]) for r in mine if float(r["units"]) > 0)
        got[proxy] = (value, cost, [float(r["value"]) for r in mine])
    (ev, ec, eall), (sv, sc, sall) = got["kestra-edge"], got["squid"]
    if case == "throughput":
        label, unit, cunit = f"CONNECT throughput, {n} tunnel(s)", "MiB/s", "CPU s per GiB"
    else:
        label, unit, cunit = f"new tunnels, {n} at a time", "tunnels/s", "CPU s per 1000 tunnels"
    print(f"| {label} | {ev:,.0f} {unit} | {sv:,.0f} {unit} | {ev / sv:.2f}× | {ec:.3f} ÷ {sc:.3f} {cunit} = {ec / sc:.2f}× |")
    print(f"<!-- rounds: kestra-edge {eall}, squid {sall} -->")
PY
