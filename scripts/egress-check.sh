#!/usr/bin/env bash
# Real clients through the kestra-edge egress forward proxy (--egress-listen), as Kestra would use it:
# curl -x with --proxy-user, and the JDK's own HttpClient (scripts/EgressCheck.java) when `java` is on
# the PATH. An HTTPS destination (a second kestra-edge --demo with a certificate from a CA made here)
# is reached through CONNECT with TLS verified by the client against that CA; a plain-HTTP one (the
# demo stand-in) through absolute-form requests. The destinations are on loopback, so the proxy runs
# with --egress-allow-private, and one case checks that without it they are refused.
#
#   scripts/egress-check.sh
#   KESTRA_EDGE_BIN=path/to/kestra-edge scripts/egress-check.sh
#
# Builds the binary (cargo build -p kestra-edge-gateway) only when the default one is missing.
# Everything listens on 127.0.0.1 and is stopped on exit. Prints one line per case, then
# `N passed, M failed`; exits 0 only when every case passes.
set -euo pipefail
here=$PWD
cd "$(dirname "$0")/.."
scripts=$PWD/scripts

if [[ -n "${KESTRA_EDGE_BIN:-}" ]]; then
  bin=$KESTRA_EDGE_BIN
  [[ "$bin" == /* ]] || bin="$here/$bin"
else
  bin="${CARGO_TARGET_DIR:-target}/debug/kestra-edge"
  [[ -x "$bin" ]] || cargo build -p kestra-edge-gateway
fi
[[ -x "$bin" ]] || { echo "no kestra-edge binary at $bin" >&2; exit 1; }

tmp=$(mktemp -d /tmp/egress-check.XXXXXX)
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

passed=0
failed=0
check() { # name, ok (0/1), detail
  if [[ $2 == 1 ]]; then
    echo "PASS $1"
    passed=$((passed + 1))
  else
    echo "FAIL $1: $3"
    failed=$((failed + 1))
  fi
}

# Waits for `needle ... field=VALUE` in a log and prints VALUE.
log_field() { # log, needle, field
  local value=""
  for _ in $(seq 100); do
    value=$(grep -a "$2" "$1" 2>/dev/null | sed -n "s/.* $3=\([^ ]*\).*/\1/p" | head -n1 || true)
    [[ -n "$value" ]] && break
    sleep 0.1
  done
  [[ -n "$value" ]] || { echo "no '$2' line in $1:" >&2; cat "$1" >&2; exit 1; }
  echo "$value"
}

# A CA and a certificate for localhost, as a company's internal PKI would issue.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=egress-check CA" \
  -keyout "$tmp/ca.key" -out "$tmp/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
  -keyout "$tmp/leaf.key" -out "$tmp/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\n' > "$tmp/san.ext"
openssl x509 -req -in "$tmp/leaf.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
  -days 2 -extfile "$tmp/san.ext" -out "$tmp/leaf.pem" 2>/dev/null
password=$(openssl rand -hex 16)
printf '# egress-check\nkestra:%s\n' "$password" > "$tmp/users"

# The HTTPS destination (stands for api.kestra.io).
RUST_LOG=info "$bin" --demo --listen 127.0.0.1:0 --tls-cert "$tmp/leaf.pem" --tls-key "$tmp/leaf.key" \
  >/dev/null 2>"$tmp/https.log" &
pids+=($!)
https_addr=$(log_field "$tmp/https.log" "kestra-edge ready" listen)
https_url="https://localhost:${https_addr##*:}/kestra/ping"

# The forward proxy, beside a plain demo gateway whose stand-in is the plain-HTTP destination.
RUST_LOG=info "$bin" --demo --listen 127.0.0.1:0 --egress-listen 127.0.0.1:0 \
  --egress-credentials-file "$tmp/users" --egress-allow localhost --egress-allow 127.0.0.1 \
  --egress-allow-private --admin-listen 127.0.0.1:0 >/dev/null 2>"$tmp/egress.log" &
pids+=($!)
proxy=$(log_field "$tmp/egress.log" "egress forward proxy ready" listen)
standin=$(log_field "$tmp/egress.log" "kestra-edge ready" upstream)
proxy_admin=$(log_field "$tmp/egress.log" "admin listener" listen)
http_url="$standin/kestra/api/v1/echo/egress-check"

# A guarded proxy: the same allow-list without --egress-allow-private.
RUST_LOG=info "$bin" --egress-listen 127.0.0.1:0 --egress-credentials-file "$tmp/users" \
  --egress-allow localhost --egress-allow 127.0.0.1 --admin-listen 127.0.0.1:0 \
  >/dev/null 2>"$tmp/guarded.log" &
pids+=($!)
guarded=$(log_field "$tmp/guarded.log" "egress forward proxy ready" listen)
guarded_admin=$(log_field "$tmp/guarded.log" "admin listener" listen)

echo "== curl through http://$proxy (HTTPS destination $https_url, plain $http_url)"
body=$(curl -sS --max-time 10 --cacert "$tmp/ca.pem" -x "http://$proxy" --proxy-user "kestra:$password" "$https_url" 2>&1 || true)
check "curl: HTTPS through CONNECT, TLS verified against the CA" "$([[ $body == pong ]] && echo 1 || echo 0)" "got '$body'"
body=$(curl -sS --max-time 10 -x "http://$proxy" --proxy-user "kestra:$password" "$https_url" 2>&1 || true)
check "curl: the same without the CA fails verification (TLS is end to end)" "$([[ $body == *certificate* ]] && echo 1 || echo 0)" "got '$body'"

code=$(curl -s -o /dev/null -w '%{http_connect}' --max-time 10 --cacert "$tmp/ca.pem" -x "http://$proxy" "$https_url" || true)
check "curl: CONNECT without credentials is 407" "$([[ $code == 407 ]] && echo 1 || echo 0)" "got $code"
code=$(curl -s -o /dev/null -w '%{http_connect}' --max-time 10 --cacert "$tmp/ca.pem" -x "http://$proxy" --proxy-user "kestra:wrong" "$https_url" || true)
check "curl: CONNECT with a wrong password is 407" "$([[ $code == 407 ]] && echo 1 || echo 0)" "got $code"
challenge=$(curl -s -o /dev/null -D - --max-time 10 -x "http://$proxy" "http://localhost:1/" | tr -d '\r' | grep -i '^proxy-authenticate:' || true)
check "curl: 407 carries Proxy-Authenticate: Basic realm=\"kestra-edge\"" "$([[ ${challenge,,} == 'proxy-authenticate: basic realm="kestra-edge"' ]] && echo 1 || echo 0)" "got '$challenge'"
code=$(curl -s -o /dev/null -w '%{http_connect}' --max-time 10 -x "http://$proxy" --proxy-user "kestra:$password" "https://example.invalid/" || true)
check "curl: a host not allowed is 403" "$([[ $code == 403 ]] && echo 1 || echo 0)" "got $code"
code=$(curl -s -o /dev/null -w '%{http_connect}' --max-time 10 --cacert "$tmp/ca.pem" -x "http://$guarded" --proxy-user "kestra:$password" "$https_url" || true)
check "curl: loopback without --egress-allow-private is 403" "$([[ $code == 403 ]] && echo 1 || echo 0)" "got $code"
echo_json=$(curl -sS --max-time 10 -x "http://$proxy" --proxy-user "kestra:$password" "$http_url" 2>&1 || true)
ok=0
if [[ "$echo_json" == *'"uri":"/kestra/api/v1/echo/egress-check"'* && "${echo_json,,}" != *proxy-authorization* ]]; then ok=1; fi
check "curl: plain HTTP absolute-form reaches the destination without Proxy-Authorization" "$ok" "$echo_json"
if grep -aq "$password" "$tmp/egress.log" "$tmp/guarded.log"; then ok=0; else ok=1; fi
check "the password never appears in the proxy's log" "$ok" "found in a log"

if command -v java >/dev/null; then
  echo "== the JDK's HttpClient ($(java -version 2>&1 | head -n1))"
  keytool -importcert -noprompt -alias egress-check -file "$tmp/ca.pem" -keystore "$tmp/trust.p12" \
    -storetype PKCS12 -storepass changeit >/dev/null 2>&1
  set +e
  java -Djavax.net.ssl.trustStore="$tmp/trust.p12" -Djavax.net.ssl.trustStorePassword=changeit \
    -Djavax.net.ssl.trustStoreType=PKCS12 -Djdk.http.auth.tunneling.disabledSchemes= \
    "$scripts/EgressCheck.java" "${proxy%:*}" "${proxy##*:}" "$https_url" "$http_url" kestra "$password" \
    >"$tmp/java.out" 2>&1
  java_rc=$?
  set -e
  while IFS= read -r line; do
    case "$line" in
      PASS\ *) echo "$line"; passed=$((passed + 1)) ;;
      FAIL\ *) echo "$line"; failed=$((failed + 1)) ;;
      *) echo "   $line" ;;
    esac
  done <"$tmp/java.out"
  if [[ $java_rc != 0 ]] && ! grep -q '^FAIL ' "$tmp/java.out"; then
    echo "FAIL java: EgressCheck.java exited $java_rc"
    failed=$((failed + 1))
  fi
else
  echo "== no java on the PATH: the JDK check is skipped"
fi

echo "== the egress metrics on the admin listeners (http://$proxy_admin beside the gateway, http://$guarded_admin alone)"
curl -sS --max-time 10 "http://$proxy_admin/metrics" >"$tmp/beside.prom"
curl -sS --max-time 10 "http://$guarded_admin/metrics" >"$tmp/alone.prom"
# The value of one sample, 0 when absent.
value() { awk -v s="$2" '$1 == s { print $2; found = 1 } END { if (!found) print 0 }' "$1"; }
at_least() { # file, series, minimum
  local got
  got=$(value "$1" "$2")
  check "$(basename "$1" .prom): $2 >= $3" "$(awk -v g="$got" -v m="$3" 'BEGIN { print (g >= m) ? 1 : 0 }')" "got $got"
}
at_least "$tmp/beside.prom" 'kestra_edge_egress_requests_total{outcome="tunnel"}' 1
at_least "$tmp/beside.prom" 'kestra_edge_egress_requests_total{outcome="forwarded"}' 1
at_least "$tmp/beside.prom" 'kestra_edge_egress_requests_total{outcome="auth_required"}' 3
at_least "$tmp/beside.prom" 'kestra_edge_egress_requests_total{outcome="forbidden"}' 1
at_least "$tmp/alone.prom" 'kestra_edge_egress_requests_total{outcome="private"}' 1
# A tunnel's end on the proxy's side lags its client's exit a little: scrape again for up to 5 s.
for _ in $(seq 50); do
  [[ $(value "$tmp/beside.prom" kestra_edge_egress_tunnels_open) == 0 ]] && break
  sleep 0.1
  curl -sS --max-time 10 "http://$proxy_admin/metrics" >"$tmp/beside.prom"
done
check "beside: kestra_edge_egress_tunnels_open is 0 once every client is gone" \
  "$([[ $(value "$tmp/beside.prom" kestra_edge_egress_tunnels_open) == 0 ]] && echo 1 || echo 0)" \
  "got $(value "$tmp/beside.prom" kestra_edge_egress_tunnels_open)"
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "http://$guarded_admin/readyz" || true)
check "alone: /readyz is 200 (no upstream to be unhealthy)" "$([[ $code == 200 ]] && echo 1 || echo 0)" "got $code"
if command -v promtool >/dev/null; then
  for scrape in beside alone; do
    out=$(promtool check metrics <"$tmp/$scrape.prom" 2>&1) && ok=1 || ok=0
    check "promtool check metrics: the $scrape scrape" "$ok" "$out"
  done
else
  echo "== no promtool on the PATH: the metrics format check is skipped"
fi

echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
