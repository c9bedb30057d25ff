#!/usr/bin/env bash
# Benchmark of checkout-api (release build) on loopback, against private Redis and Postgres:
#   1. GET /healthz of the same binary (the HTTP stack's own ceiling);
#   2. GET /api/checkout/sessions/{id}: one warm session read (GETEX PX; the index ZADD script
#      at most once per tenth of the TTL), target >= 0.5x /healthz; seed 002 claims 1-5 ms;
#   3. POST /api/checkout/sessions: create with a coupon and a delivery distance (validation,
#      cached coupon + band lookups, one Lua script: SET NX PX + ZADD + HINCRBY).
# All with wrk, same connections and duration, one after the other in one run.
# Knobs: DURATION (default 10s), CONNECTIONS (64), THREADS (2), RATE_LIMIT (on | off).
# CPU per request by process and a perf profile of the read: checkout-api-profile.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
# shellcheck source=backends.sh
source "$(dirname "${BASH_SOURCE[0]}")/backends.sh"

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
RATE_LIMIT="${RATE_LIMIT:-on}"
RL_ENABLED=true
[[ "$RATE_LIMIT" == off ]] && RL_ENABLED=false
TOKEN="bench-admin-token"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"

command -v wrk >/dev/null || die "wrk is not installed (apt-get install wrk)"

log "building checkout-api (release)"
(cd "$REPO_ROOT" && cargo build --release -p checkout-api --quiet)

bench_backends checkout checkout

log "starting checkout-api on $APP_P"
APP__HTTP__PORT="$APP_P" APP__REDIS__URL="redis://127.0.0.1:$REDIS_P" \
    APP__DATABASE__URL="postgres://postgres@127.0.0.1:$PG_P/checkout" \
    APP__AUTH__ADMIN_TOKEN="$TOKEN" APP__TELEMETRY__FILTER=warn APP__DEMO__SEED=true \
    APP__RATE_LIMIT__ENABLED="$RL_ENABLED" APP__RATE_LIMIT__POLICIES__API__LIMIT=1000000 APP__RATE_LIMIT__POLICIES__API__WINDOW_SECS=1 \
    "$TARGET_DIR/release/checkout-api" >"$WORK/app.log" 2>&1 &
# shellcheck disable=SC2034 # read by bench_cleanup (backends.sh)
APP_PID=$!
BASE="http://127.0.0.1:$APP_P"
for _ in $(seq 100); do
    curl -fs "$BASE/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fs "$BASE/readyz" >/dev/null || { cat "$WORK/app.log"; die "checkout-api did not become ready"; }

BODY='{"userId":"bench","items":[{"sku":"tea","name":"Tea","unitAmountCents":1250,"quantity":2},{"sku":"mug","name":"Mug","unitAmountCents":500,"quantity":1}],"couponCode":"WELCOME10","deliveryDistanceKm":7}'
SESSION="$(curl -fs -H 'Content-Type: application/json' -d "$BODY" "$BASE/api/checkout/sessions" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
READ="$BASE/api/checkout/sessions/$SESSION"
cat >"$WORK/create.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$BODY'
LUA

# wrk summary → "rps p99_ms non2xx"
run_wrk() {
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" | tee -a "$WORK/wrk.txt" | python3 -c '
import re, sys
text = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
def pct(p):
    m = re.search(p + r"%\s+([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
p50, p99 = pct("50"), pct("99")
print(f"{rps:.0f} {p50:.2f} {p99:.2f} {errors.group(1) if errors else 0}")'
}

log "warm-up"
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$READ" >/dev/null
log "wrk /healthz ($DURATION, $CONNECTIONS connections)"
read -r H_RPS H_P50 H_P99 H_ERR < <(run_wrk "$BASE/healthz")
log "wrk GET session"
read -r R_RPS R_P50 R_P99 R_ERR < <(run_wrk "$READ")
log "wrk POST session"
read -r C_RPS C_P50 C_P99 C_ERR < <(run_wrk -s "$WORK/create.lua" "$BASE/api/checkout/sessions")
RATIO="$(python3 -c "print(f'{$R_RPS / $H_RPS:.2f}')")"
CREATE_RATIO="$(python3 -c "print(f'{$C_RPS / $H_RPS:.2f}')")"
STATS="$(curl -fs -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    -d '{"action":"get_stats"}' "$BASE/api/redis/cleanup" \
    | python3 -c '
import json, sys
s = json.load(sys.stdin)["stats"]
created, mean = s["totalCreated"], s["averageCreateMs"]
print(f"{created} created, mean create handling {mean:.3f} ms before the store call")')"

cat <<REPORT

checkout-api benchmark ($(nproc) cores, wrk -t$THREADS -c$CONNECTIONS -d$DURATION, loopback, release build, rate limit $RATE_LIMIT)
  /healthz                  ${H_RPS} req/s   p50 ${H_P50} ms   p99 ${H_P99} ms   non-2xx ${H_ERR}
  GET  session (warm)       ${R_RPS} req/s   p50 ${R_P50} ms   p99 ${R_P99} ms   non-2xx ${R_ERR}
  POST session (create)     ${C_RPS} req/s   p50 ${C_P50} ms   p99 ${C_P99} ms   non-2xx ${C_ERR}
  ratio read / healthz      ${RATIO}   (target >= 0.50; seed 002 claims 1-5 ms per session retrieval)
  ratio create / healthz    ${CREATE_RATIO}
  stats after the run       ${STATS}
REPORT
