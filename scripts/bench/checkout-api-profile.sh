#!/usr/bin/env bash
# Where the CPU of a checkout-api session read goes: runs /healthz and the warm session read
# (as scripts/bench/checkout-api.sh does) and reports, per phase, requests/s and CPU µs per
# request of checkout-api, redis-server and wrk (from /proc utime+stime), Redis `INFO
# commandstats` of the read phase, and optionally a `perf record` of checkout-api during it.
# Knobs: DURATION (10s), CONNECTIONS (64), THREADS (2), PERF (on | off), PERF_OUT (perf.data
# path, default .run/bench/checkout-api.perf.data). Uses the release binary already built.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
# shellcheck source=backends.sh
source "$(dirname "${BASH_SOURCE[0]}")/backends.sh"

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
PERF="${PERF:-on}"
PERF_OUT="${PERF_OUT:-$REPO_ROOT/.run/bench/checkout-api.perf.data}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
BIN="${BIN:-$TARGET_DIR/release/checkout-api}"
[[ -x "$BIN" ]] || die "no release binary: run scripts/bench/checkout-api.sh first"

bench_backends checkout checkout
# shellcheck disable=SC2153 # REDIS_P, PG_P, APP_P: set by bench_backends
APP__HTTP__PORT="$APP_P" APP__REDIS__URL="redis://127.0.0.1:$REDIS_P" \
    APP__DATABASE__URL="postgres://postgres@127.0.0.1:$PG_P/checkout" \
    APP__AUTH__ADMIN_TOKEN="bench-admin-token" APP__TELEMETRY__FILTER=warn APP__DEMO__SEED=true \
    APP__RATE_LIMIT__POLICIES__API__LIMIT=1000000 APP__RATE_LIMIT__POLICIES__API__WINDOW_SECS=1 \
    "$BIN" >"$WORK/app.log" 2>&1 &
# shellcheck disable=SC2034 # read by bench_cleanup (backends.sh)
APP_PID=$!
BASE="http://127.0.0.1:$APP_P"
for _ in $(seq 100); do
    curl -fs "$BASE/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
REDIS_PID="$(cat "$WORK/redis.pid")"
BODY='{"userId":"bench","items":[{"sku":"tea","name":"Tea","unitAmountCents":1250,"quantity":2},{"sku":"mug","name":"Mug","unitAmountCents":500,"quantity":1}],"couponCode":"WELCOME10","deliveryDistanceKm":7}'
SESSION="$(curl -fs -H 'Content-Type: application/json' -d "$BODY" "$BASE/api/checkout/sessions" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
READ="$BASE/api/checkout/sessions/$SESSION"
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$READ" >/dev/null

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ="$(getconf CLK_TCK)"

# phase NAME URL [perf]
phase() {
    local name=$1 url=$2 record=${3:-}
    local a0 r0 a1 r1 perf_pid=""
    redis-cli -p "$REDIS_P" CONFIG RESETSTAT >/dev/null
    a0="$(ticks "$APP_PID")"; r0="$(ticks "$REDIS_PID")"
    if [[ -n "$record" && "$PERF" == on ]]; then
        mkdir -p "$(dirname "$PERF_OUT")"
        perf record -F 499 -g -o "$PERF_OUT" -p "$APP_PID" -- sleep "${DURATION%s}" \
            >/dev/null 2>&1 &
        perf_pid=$!
    fi
    /usr/bin/time -f '%U %S' -o "$WORK/wrk.time" \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" "$url" >"$WORK/wrk.out"
    a1="$(ticks "$APP_PID")"; r1="$(ticks "$REDIS_PID")"
    if [[ -n "$perf_pid" ]]; then wait "$perf_pid" || true; fi
    python3 - "$name" "$HZ" "$a0" "$a1" "$r0" "$r1" "$WORK/wrk.out" "$WORK/wrk.time" <<'PY'
import re, sys
name, hz, a0, a1, r0, r1, out, tm = sys.argv[1:]
hz = float(hz)
text = open(out).read()
n = int(re.search(r"(\d+) requests in", text).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
u, s = map(float, open(tm).read().split()[-2:])
us = lambda t: t * 1e6 / n
app = us((int(a1) - int(a0)) / hz)
redis = us((int(r1) - int(r0)) / hz)
wrk = us(u + s)
print(f"  {name:<22} {rps:>8.0f} req/s   CPU us/request: app {app:5.1f}  redis {redis:5.1f}  "
      f"wrk {wrk:5.1f}  total {app + redis + wrk:5.1f}")
PY
}

echo "checkout-api CPU profile ($(nproc) cores, wrk -t$THREADS -c$CONNECTIONS -d$DURATION, load $(cut -d' ' -f1-3 /proc/loadavg))"
phase "/healthz" "$BASE/healthz"
phase "GET session (warm)" "$READ" perf
echo "  redis commandstats of the read phase:"
redis-cli -p "$REDIS_P" INFO commandstats | grep '^cmdstat' | sed 's/^/    /'
