#!/usr/bin/env bash
# Before/after: the two hot reads of a base revision against the working tree, in one run.
#   BASE=<git revision> bash scripts/bench/compare.sh      (or BASE=… BENCH=compare make bench)
# Builds campaign-api and checkout-api (release) twice: the base in a git worktree under
# .run/bench/base-src with its own target dir (.run/bench/base-target, seeded from the working
# tree's release dir the first time, so only the workspace's crates compile), and the working
# tree in $CARGO_TARGET_DIR (default target/). Both pairs of binaries then run side by side
# against one private Redis and Postgres (a database and a Redis db each), and the rounds
# interleave them (base first in odd rounds, candidate first in even ones, so a drift in the
# host's load falls on both alike). A round of one build is, with wrk as campaign-api.sh and
# checkout-api.sh run it:
#   campaign-api  /healthz, then GET /api/public/campaigns/demo/active
#   checkout-api  /healthz, then GET /api/checkout/sessions/{id} (one warm session)
# The table gives medians over the rounds; every run's figures and CPU steal are printed above it.
# Knobs: BASE (required), ROUNDS (3), DURATION (10s), CONNECTIONS (64), LAYOUT (split: service
#   and backends on the first half of the CPUs, wrk on the other; shared: all on all, wrk
#   -t$THREADS), THREADS (2), LEASE (1000, campaign-api's api lease), RATE_LIMIT (on | off).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
# shellcheck source=backends.sh
source "$(dirname "${BASH_SOURCE[0]}")/backends.sh"

[[ -n "${BASE:-}" ]] || die "set BASE to the git revision to compare against (BASE=main bash $0)"
DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-3}"
LAYOUT="${LAYOUT:-split}"
RL_ENABLED=true
[[ "${RATE_LIMIT:-on}" == off ]] && RL_ENABLED=false
TOKEN="bench-admin-token"
command -v wrk >/dev/null || die "wrk is not installed (apt-get install wrk)"
[[ "$(nproc)" -ge 2 ]] || LAYOUT=shared

BENCH_DIR="$RUN_DIR/bench"
BASE_SRC="$BENCH_DIR/base-src"
BASE_TARGET="$BENCH_DIR/base-target"
CAND_TARGET="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
BASE_REV="$(git -C "$REPO_ROOT" rev-parse --verify "$BASE^{commit}")" || die "no revision $BASE"
CAND_REV="$(git -C "$REPO_ROOT" rev-parse --short HEAD)"
git -C "$REPO_ROOT" diff --quiet HEAD || CAND_REV+=" + uncommitted changes"
mkdir -p "$BENCH_DIR"

if [[ -e "$BASE_SRC/.git" ]]; then
    git -C "$BASE_SRC" checkout --quiet --detach "$BASE_REV"
else
    git -C "$REPO_ROOT" worktree prune
    git -C "$REPO_ROOT" worktree add --quiet --detach "$BASE_SRC" "$BASE_REV"
fi
if [[ ! -d "$BASE_TARGET/release" && -d "$CAND_TARGET/release" ]]; then
    log "seeding $BASE_TARGET from $CAND_TARGET/release (dependencies compiled once)"
    mkdir -p "$BASE_TARGET"
    cp -a "$CAND_TARGET/release" "$BASE_TARGET/release"
fi
log "building base $BASE (${BASE_REV:0:9}, release)"
(cd "$BASE_SRC" && CARGO_TARGET_DIR="$BASE_TARGET" cargo build --release --quiet -p campaign-api -p checkout-api)
log "building candidate: the working tree ($CAND_REV, release)"
(cd "$REPO_ROOT" && CARGO_TARGET_DIR="$CAND_TARGET" cargo build --release --quiet -p campaign-api -p checkout-api)

bench_backends compare campaign_base
# A database and a Redis db per build: the two never read each other's rows or keys.
for database in campaign_cand checkout_base checkout_cand; do
    "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_P" -U postgres -c "CREATE DATABASE $database" >/dev/null
done
# Copies, so that a build during the run cannot swap a binary under it.
mkdir -p "$WORK/base" "$WORK/cand"
for service in campaign-api checkout-api; do
    cp "$BASE_TARGET/release/$service" "$WORK/base/"
    cp "$CAND_TARGET/release/$service" "$WORK/cand/"
done
bench_layout "$LAYOUT"
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

declare -A URL
redis_db=0
for side in base cand; do
    for service in campaign-api checkout-api; do
        port="$(bench_free_port)"
        URL[$side/$service]="http://127.0.0.1:$port"
        log "starting $side $service on $port"
        bench_service_env "$service" "$port" "${service%%-api}_$side" "$redis_db"
        bench_start_app "$WORK/$side-$service.log" "${URL[$side/$service]}" \
            env "${BENCH_ENV[@]}" ${APP_PREFIX[@]+"${APP_PREFIX[@]}"} "$WORK/$side/$service"
        redis_db=$((redis_db + 1))
    done
    BODY='{"userId":"bench","items":[{"sku":"tea","name":"Tea","unitAmountCents":1250,"quantity":2}],"couponCode":"WELCOME10","deliveryDistanceKm":7}'
    session="$(curl -fs -H 'Content-Type: application/json' -d "$BODY" "${URL[$side/checkout-api]}/api/checkout/sessions" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
    URL[$side/campaign]="${URL[$side/campaign-api]}/api/public/campaigns/demo/active"
    URL[$side/checkout]="${URL[$side/checkout-api]}/api/checkout/sessions/$session"
    for path in campaign checkout; do
        "${WRK[@]}" -c"$CONNECTIONS" -d2s "${URL[$side/$path]}" >/dev/null # warm-up
    done
done

# One line per run: round side path req/s p50 p99 non2xx steal
RESULTS="$WORK/results.txt"
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
    order="base cand"
    ((round % 2 == 0)) && order="cand base"
    for side in $order; do
        for path in campaign checkout; do
            log "round $round/$ROUNDS: $side $path (/healthz, then the read)"
            echo "$round $side $path-healthz $(bench_wrk "${URL[$side/$path-api]}/healthz")" >>"$RESULTS"
            echo "$round $side $path $(bench_wrk "${URL[$side/$path]}")" >>"$RESULTS"
        done
    done
done

echo
echo "compare: base $BASE (${BASE_REV:0:9}) vs candidate $CAND_REV; $(nproc) cores, $LAYOUT_NOTE;"
echo "wrk -c$CONNECTIONS -d$DURATION per run, $ROUNDS interleaved rounds, release builds, rate limit ${RATE_LIMIT:-on}, campaign lease ${LEASE:-1000};"
echo "load average before $LOAD_BEFORE, after $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$RESULTS" <<'PY'
import statistics, sys
from collections import defaultdict

runs = defaultdict(list)  # (side, path) -> [(rps, p99, non2xx, steal)]
print("\nruns (round side path: req/s, p50 ms, p99 ms, non-2xx, steal %):")
for line in open(sys.argv[1]):
    rnd, side, path, rps, p50, p99, errors, steal = line.split()
    runs[side, path].append((float(rps), float(p99), int(errors), float(steal)))
    print(f"  {rnd} {side:4} {path:16} {float(rps):8.0f} {p50:>7} {p99:>7} {errors:>6} {steal:>5}")

def med(side, path, i):
    return statistics.median(run[i] for run in runs[side, path])

names = {"campaign": "campaign-api GET /api/public/campaigns/demo/active",
         "campaign-healthz": "campaign-api GET /healthz",
         "checkout": "checkout-api GET /api/checkout/sessions/{id}",
         "checkout-healthz": "checkout-api GET /healthz"}
print("\n| path | base req/s, p99 | candidate req/s, p99 | candidate/base | read/healthz base → candidate |")
print("|---|---|---|---|---|")
for path in ["campaign", "campaign-healthz", "checkout", "checkout-healthz"]:
    b, c = (med(s, path, 0) for s in ("base", "cand"))
    bp, cp = (med(s, path, 1) for s in ("base", "cand"))
    ratio = "—"
    if not path.endswith("healthz"):
        rb, rc = (b / med("base", path + "-healthz", 0), c / med("cand", path + "-healthz", 0))
        ratio = f"{rb:.2f} → {rc:.2f}"
    print(f"| {names[path]} | {b:,.0f}, {bp:.2f} ms | {c:,.0f}, {cp:.2f} ms | {c / b:.2f} | {ratio} |")
steals = [run[3] for key in runs for run in runs[key]]
errors = sum(run[2] for key in runs for run in runs[key])
print(f"\nmedians of {len(runs['base', 'campaign'])} rounds; CPU steal per run: median "
      f"{statistics.median(steals):.1f} %, max {max(steals):.1f} % (above 1 % a run measures the host too)")
if errors:
    print(f"WARNING: {errors} non-2xx answers: the figures are not valid")
PY
