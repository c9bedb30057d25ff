#!/usr/bin/env bash
# Benchmark of checkout-api (release build) on loopback, against private Redis and Postgres:
#   1. GET /healthz of the same binary (the HTTP stack's own ceiling);
#   2. GET /api/checkout/sessions/{id}: one warm session read (GETEX PX; the index ZADD script
#      at most once per tenth of the TTL), target >= 0.5x /healthz;
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
BASE="http://127.0.0.1:$APP_P"
bench_service_env checkout-api "$APP_P" checkout
bench_start_app "$WORK/app.log" "$BASE" env "${BENCH_ENV[@]}" "$TARGET_DIR/release/checkout-api"

BODY='{"userId":"bench","items":[{"sku":"tea","name":"Tea","unitAmountCents":1250,"quantity":2},{"sku":"mug","name":"Mug","unitAmountCents":500,"quantity":1}],"couponCode":"WELCOME10","deliveryDistanceKm":7}'
SESSION="$(curl -fs -H 'Content-Type: application/json' -d "$BODY" "$BASE/api/checkout/sessions" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
READ="$BASE/api/checkout/sessions/$SESSION"
cat >"$WORK/create.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$BODY'
LUA

WRK=(wrk -t"$THREADS")

log "warm-up"
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$READ" >/dev/null
log "wrk /healthz ($DURATION, $CONNECTIONS connections)"
read -r H_RPS H_P50 H_P99 H_ERR _ < <(bench_wrk "$BASE/healthz")
log "wrk GET session"
read -r R_RPS R_P50 R_P99 R_ERR _ < <(bench_wrk "$READ")
log "wrk POST session"
read -r C_RPS C_P50 C_P99 C_ERR _ < <(bench_wrk -s "$WORK/create.lua" "$BASE/api/checkout/sessions")
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
  ratio read / healthz      ${RATIO}   (target >= 0.50)
  ratio create / healthz    ${CREATE_RATIO}
  stats after the run       ${STATS}
REPORT
