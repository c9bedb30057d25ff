#!/usr/bin/env bash
# Sourced by scripts/bench/<service>.sh: a scratch directory with a private redis-server and
# Postgres on free loopback ports, and the service's process, all removed on exit.
#
#   bench_backends NAME DATABASE    sets WORK, REDIS_P, PG_P, APP_P, PG_BIN; creates DATABASE.
#                                   Postgres runs with fsync=off: these runs measure the service,
#                                   not the disk (webhook-ingest, whose durable write is the
#                                   point, starts its own).
#   APP_PID=$!                      after starting the service, so the exit trap stops it.
#   bench_pin_backends CPUS         pins redis-server and Postgres (every thread, and the
#                                   backends Postgres forks later) to CPUS, a taskset list.
#   steal_mark; …; steal_since      percent of CPU time the hypervisor gave other guests meanwhile
#                                   ("steal" in /proc/stat; 0 on bare metal).

bench_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

bench_cleanup() {
    if [[ -n "${APP_PID:-}" ]]; then
        kill "$APP_PID" 2>/dev/null && wait "$APP_PID" 2>/dev/null || true
    fi
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
