#!/usr/bin/env bash
# Real third-party tools against the kestra-edge binary (--demo: the stand-in behind it),
# all on 127.0.0.1: curl --path-as-is, slowhttptest (slowloris and slow body), h2load
# (h2c and over TLS), openssl s_client and curl --http2 against --tls-self-signed, and
# python h11/h2 (scripts/real_tools.py). Exits non-zero when a check failed.
# Needs: apt-get install curl openssl slowhttptest nghttp2-client; pip install h11 h2
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p kestra-edge-gateway
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
target/release/kestra-edge --demo --listen "127.0.0.1:$port" --header-timeout 2s \
  --body-timeout 2s --max-body 1MiB --shutdown-grace 1s &
gateway=$!
trap 'kill $gateway 2>/dev/null; wait $gateway 2>/dev/null' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "$base/kestra/ping" && break; sleep 0.1; done

failed=0
expect() { # NAME EXPECTED ACTUAL
  if [[ "$2" == "$3" ]]; then echo "ok   $1 ($3)"; else echo "FAIL $1: expected $2, got $3"; failed=1; fi
}
status() { curl -s -o /dev/null -w '%{http_code}' --path-as-is "$@"; }

echo "== curl --path-as-is"
expect "dot-dot out of the context path" 400 "$(status "$base/kestra/../etc/passwd")"
expect "encoded dot-dot" 400 "$(status "$base/kestra/%2e%2e/%2e%2e/etc/passwd")"
expect "dot-dot inside the context path" 400 "$(status "$base/kestra/api/v1/../../../x")"
expect "outside the context path" 404 "$(status "$base/kestrax/ui/")"
expect "a path under the context path" 200 "$(status "$base/kestra/ping")"
head -c 2097152 /dev/zero > /tmp/kestra-edge-2mib
expect "2 MiB upload over --max-body 1MiB" 413 \
  "$(status -X POST --data-binary @/tmp/kestra-edge-2mib "$base/kestra/api/v1/upload")"
chunked=$(status -X POST -H 'Transfer-Encoding: chunked' --data-binary @/tmp/kestra-edge-2mib \
  "$base/kestra/api/v1/upload" || true)
if [[ "$chunked" == 413 || "$chunked" == 000 ]]; then
  echo "ok   chunked 2 MiB upload cut at --max-body ($chunked)"
else
  echo "FAIL chunked 2 MiB upload: $chunked"; failed=1
fi
rm -f /tmp/kestra-edge-2mib

echo "== h2load (h2c, prior knowledge)"
out=$(h2load -n 20000 -c 16 -m 8 "$base/kestra/ping")
echo "$out" | grep -E '^(finished|requests|status codes)'
echo "$out" | grep -q 'requests: 20000 total, 20000 started, 20000 done, 20000 succeeded, 0 failed, 0 errored' \
  || { echo "FAIL h2load"; failed=1; }

echo "== slowhttptest"
for mode in -H -B; do
  # 300 slow connections for 20 s, each sending a piece every 5 s (past the 2 s header and
  # body timeouts); a probe request checks the service every 2 s.
  out=$(slowhttptest "$mode" -c 300 -r 100 -i 5 -s 8192 -t POST -l 20 -p 2 \
    -u "$base/kestra/api/v1/upload" 2>&1 || true)
  summary=$(echo "$out" | grep -E 'service available|Exit status' | tail -2 | tr -s ' \n' ' ')
  echo "slowhttptest $mode: $summary"
  # While the slow clients hold their connections, real requests still get through.
  expect "a request during slowhttptest $mode" 200 "$(status "$base/kestra/ping")"
  echo "$out" | grep -q 'service available:.*NO' && { echo "FAIL service unavailable under $mode"; failed=1; }
done

echo "== TLS: a second gateway with --tls-self-signed and --redirect-http"
tls_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redirect_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
tls_base="https://localhost:$tls_port"
target/release/kestra-edge --demo --tls-self-signed --listen "127.0.0.1:$tls_port" \
  --redirect-http "127.0.0.1:$redirect_port" --shutdown-grace 1s &
tls_gateway=$!
trap 'kill $gateway $tls_gateway 2>/dev/null; wait $gateway $tls_gateway 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sk -o /dev/null "$tls_base/kestra/ping" && break; sleep 0.1; done
s_client() { timeout 10 openssl s_client -connect "127.0.0.1:$tls_port" -servername localhost "$@" </dev/null 2>&1 || true; }
for version in tls1_2 tls1_3; do
  out=$(s_client -"$version" -alpn h2,http/1.1)
  expect "openssl s_client -$version: ALPN" "ALPN protocol: h2" "$(echo "$out" | grep -o 'ALPN protocol: .*' | head -1)"
  echo "     $(echo "$out" | grep -E '^New, ' | head -1)"
done
expect "openssl s_client -alpn http/1.1" "ALPN protocol: http/1.1" \
  "$(s_client -alpn http/1.1 | grep -o 'ALPN protocol: .*' | head -1)"
for version in tls1 tls1_1; do
  # SECLEVEL=0 lets OpenSSL 3 offer the old version at all; the server must refuse it.
  out=$(s_client -"$version" -cipher 'DEFAULT@SECLEVEL=0')
  if echo "$out" | grep -qE 'alert (handshake failure|protocol version)'; then
    echo "ok   openssl s_client -$version refused ($(echo "$out" | grep -oE 'alert [a-z ]+' | head -1))"
  else
    echo "FAIL openssl s_client -$version was not refused"; echo "$out" | head -20; failed=1
  fi
done
expect "curl --http2 over TLS" "2 200" "$(curl -sk --http2 -o /dev/null -w '%{http_version} %{http_code}' "$tls_base/kestra/ping")"
expect "curl --http1.1 over TLS" "1.1 200" "$(curl -sk --http1.1 -o /dev/null -w '%{http_version} %{http_code}' "$tls_base/kestra/ping")"
expect "curl: https in X-Forwarded-Proto" '"https"' \
  "$(curl -sk --http2 "$tls_base/kestra/api/v1/echo/x" | python3 -c 'import json,sys; h=dict(json.load(sys.stdin)["headers"]); print(json.dumps(h["x-forwarded-proto"]))')"
expect "plain HTTP on the TLS port" 400 "$(status "http://127.0.0.1:$tls_port/kestra/ping")"
expect "redirect listener" "308 https://localhost:$tls_port/kestra/ui/?a=1%2F2" \
  "$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' -H 'Host: localhost' "http://127.0.0.1:$redirect_port/kestra/ui/?a=1%2F2")"
out=$(h2load -n 20000 -c 16 -m 8 "$tls_base/kestra/ping")
echo "$out" | grep -E '^(finished|requests|status codes|TLS Protocol|Application protocol)'
echo "$out" | grep -q 'requests: 20000 total, 20000 started, 20000 done, 20000 succeeded, 0 failed, 0 errored' \
  || { echo "FAIL h2load over TLS"; failed=1; }
echo "$out" | grep -q 'Application protocol: h2' || { echo "FAIL h2load did not negotiate h2"; failed=1; }

echo "== python h11/h2"
python3 scripts/real_tools.py 127.0.0.1 "$port" || failed=1

exit $failed
