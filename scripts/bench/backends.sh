#!/usr/bin/env bash
# Sourced by scripts/bench/<service>.sh: a scratch directory with a private redis-server and
# Postgres on free loopback ports, and the service's process, all removed on exit.
#
#   bench_backends NAME DATABASE    sets WORK, REDIS_P, PG_P, APP_P, PG_BIN; creates DATABASE.
#                                   Postgres runs with fsync=off: these runs measure the service,
#                                   not the disk (webhook-ingest, whose durable write is the
#                                   point, starts its own).
#   APP_PID=$!                      after starting the service, so the exit trap stops it.
#   bench_service_env SERVICE PORT DATABASE [REDIS_DB]
#                                   BENCH_ENV: the settings campaign-api and checkout-api run
#                                   with under bench (private backends, demo seed, warn logs,
#                                   api rate limit raised to 1 000 000 a second).
#   bench_start_app LOG URL CMD…    starts CMD in the background (its pid in APP_PID and
#                                   BENCH_PIDS, both stopped on exit), waits for URL/readyz.
#   bench_layout split|shared       pins the backends; sets APP_PREFIX (taskset or nothing) for
#                                   the service and WRK (wrk under taskset, its threads).
#   bench_wrk ARGS…                 one wrk run of ${WRK[@]} -c$CONNECTIONS -d$DURATION; prints
#                                   "req/s p50_ms p99_ms non2xx steal%".
#   bench_pin_backends CPUS         pins redis-server and Postgres (every thread, and the
#                                   backends Postgres forks later) to CPUS, a taskset list.
#   steal_mark; …; steal_since      percent of CPU time the hypervisor gave other guests meanwhile
#                                   ("steal" in /proc/stat; 0 on bare metal).

bench_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

bench_cleanup() {
    local pid
    for pid in ${APP_PID:-} ${BENCH_PIDS[@]+"${BENCH_PIDS[@]}"}; do
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    done
    as_pg_user "$PG_BIN/pg_ctl" -D "$WORK/pg" -m immediate stop >/dev/null 2>&1 || true
    if [[ -f "$WORK/redis.pid" ]]; then kill "$(cat "$WORK/redis.pid")" 2>/dev/null || true; fi
    rm -rf "$WORK"
}

bench_pin_backends() {
    local cpus=$1 postmaster
    postmaster="$(head -1 "$WORK/pg/postmaster.pid")"
    for pid in "$(cat "$WORK/redis.pid")" "$postmaster" $(pgrep -P "$postmaster"); do
        taskset -a -p -c "$cpus" "$pid" >/dev/null
    done
}

# A run with more than 1% steal says more about the host than the service: a vCPU the
# hypervisor stalls holds every request queued on it, and 1% of a run is the whole p99.
steal_mark() {
    local _cpu u n s i w q sq st _rest
    read -r _cpu u n s i w q sq st _rest </proc/stat
    STEAL_AT=$st
    TOTAL_AT=$((u + n + s + i + w + q + sq + st))
}

steal_since() {
    local _cpu u n s i w q sq st _rest
    read -r _cpu u n s i w q sq st _rest </proc/stat
    python3 -c "print(f'{100 * ($st - $STEAL_AT) / max($((u + n + s + i + w + q + sq + st)) - $TOTAL_AT, 1):.1f}')"
}

bench_backends() {
    local name=$1 database=$2
    PG_BIN="$(pg_bin_dir)" || die "Postgres binaries not found: run \`make deps\`"
    WORK="$(mktemp -d "/var/tmp/$name-bench.XXXXXX")"
    chmod 755 "$WORK"
    REDIS_P="$(bench_free_port)"
    PG_P="$(bench_free_port)"
    APP_P="$(bench_free_port)"
    APP_PID=""
    trap bench_cleanup EXIT

    log "private redis-server on $REDIS_P, postgres on $PG_P"
    redis-server --port "$REDIS_P" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
        --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log" --dir "$WORK"
    mkdir -p "$WORK/pg"
    if is_root; then chown postgres: "$WORK/pg"; fi
    as_pg_user "$PG_BIN/initdb" -D "$WORK/pg" -U postgres -A trust -E UTF8 --no-sync >/dev/null
    as_pg_user "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg/log" -w \
        -o "-p $PG_P -k $WORK/pg -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
    "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_P" -U postgres -c "CREATE DATABASE $database" >/dev/null
}

bench_service_env() {
    local service=$1 port=$2 database=$3 redis_db=${4:-0}
    BENCH_ENV=(
        "APP__HTTP__PORT=$port" "APP__REDIS__URL=redis://127.0.0.1:$REDIS_P/$redis_db"
        "APP__DATABASE__URL=postgres://postgres@127.0.0.1:$PG_P/$database"
        "APP__AUTH__ADMIN_TOKEN=${TOKEN:-bench-admin-token}" APP__DEMO__SEED=true
        APP__TELEMETRY__FILTER=warn "APP__RATE_LIMIT__ENABLED=${RL_ENABLED:-true}"
        APP__RATE_LIMIT__POLICIES__API__LIMIT=1000000 APP__RATE_LIMIT__POLICIES__API__WINDOW_SECS=1
    )
    # campaign-api's lease: see campaign-api.sh (LEASE). The demo organisation is limited by its
    # tier: as high as the policy (60 000 000 per minute = 1 000 000 per 1 s window).
    [[ $service == campaign-api ]] && BENCH_ENV+=("APP__RATE_LIMIT__POLICIES__API__LEASE=${LEASE:-1000}"
        APP__RATE_LIMIT__TIERS__STARTER=60000000)
    return 0
}

bench_start_app() {
    local log=$1 url=$2
    shift 2
    "$@" >>"$log" 2>&1 &
    APP_PID=$!
    BENCH_PIDS+=("$APP_PID")
    for _ in $(seq 100); do
        curl -fs "$url/readyz" >/dev/null 2>&1 && return
        sleep 0.1
    done
    cat "$log"
    die "$* did not become ready"
}

bench_layout() {
    local cpus server client
    cpus=$(nproc)
    server="0-$((cpus / 2 - 1))"
    client="$((cpus / 2))-$((cpus - 1))"
    if [[ $1 == split ]]; then
        bench_pin_backends "$server"
        APP_PREFIX=(taskset -c "$server")
        WRK=(taskset -c "$client" wrk -t"$((cpus - cpus / 2))")
        LAYOUT_NOTE="service, Redis, Postgres on CPUs $server; wrk -t$((cpus - cpus / 2)) on CPUs $client"
    else
        bench_pin_backends "0-$((cpus - 1))"
        APP_PREFIX=()
        WRK=(wrk -t"${THREADS:-2}")
        LAYOUT_NOTE="everything on CPUs 0-$((cpus - 1)); wrk -t${THREADS:-2}"
    fi
}

bench_wrk() {
    steal_mark
    "${WRK[@]}" -c"${CONNECTIONS:-64}" -d"${DURATION:-10s}" --latency "$@" | tee -a "$WORK/wrk.txt" | python3 -c '
import re, sys
text = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
def pct(p):
    m = re.search(p + r"%\s+([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
p50, p99 = pct("50"), pct("99")
print(f"{rps:.0f} {p50:.2f} {p99:.2f} {errors.group(1) if errors else 0}", end=" ")'
    steal_since
}
