#!/usr/bin/env bash
# `make stop`: stop what `make run` started: the five services (SIGTERM, then SIGKILL after
# STOP_TIMEOUT seconds, default 15), Redis (only if we started it: .run/redis/redis.pid) and our
# Postgres cluster (pg_ctl stop -m fast, as the user that owns it). Data is kept; `make clean`
# removes it.
#
#   --services-only   leave Redis and Postgres running (used by run-local.sh to restart services)
#   --fakes-only      stop only the fakes of external APIs (fake-simpro, fake-stripe)
#   --quiet           say nothing when there is nothing to stop
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

services_only=0
fakes_only=0
quiet=0
for arg in "$@"; do
    case "$arg" in
        --services-only) services_only=1 ;;
        --fakes-only) fakes_only=1 ;;
        --quiet) quiet=1 ;;
        *) die "unknown argument: $arg" ;;
    esac
done
STOP_TIMEOUT="${STOP_TIMEOUT:-15}"

say() { ((quiet)) || log "$@"; }

# Send SIGTERM to $1 (named $2), wait up to STOP_TIMEOUT s, then SIGKILL.
stop_pid() {
    local pid="$1" what="$2" waited=0
    kill -TERM "$pid" 2>/dev/null || return 0
    while pid_alive "$pid"; do
        if ((waited >= STOP_TIMEOUT * 10)); then
            warn "$what (pid $pid) still running after ${STOP_TIMEOUT}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
    log "stopped $what (pid $pid)"
}

# The pid still belongs to the program we started (not a recycled pid): its command line
# names it.
pid_is() {
    local pid="$1" name="$2" cmdline
    cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
    [[ "$cmdline" == *"$name"* ]]
}

# --- services ----------------------------------------------------------------------------------
if ((fakes_only)); then
    targets=(fake-simpro fake-stripe)
elif ((services_only)); then
    targets=("${SERVICES[@]}")
else
    targets=("${SERVICES[@]}" fake-simpro fake-stripe)
fi
for name in "${targets[@]}"; do
    pidfile="$PID_DIR/$name.pid"
    [[ -f "$pidfile" ]] || continue
    pid="$(read_pidfile "$pidfile")"
    if pid_alive "$pid" && pid_is "$pid" "$name"; then
        stop_pid "$pid" "$name"
    else
        say "$name was not running"
    fi
    rm -f "$pidfile"
done
((services_only || fakes_only)) && exit 0

# --- Redis -------------------------------------------------------------------------------------
REDIS_PIDFILE="$RUN_DIR/redis/redis.pid"
if [[ -f "$REDIS_PIDFILE" ]]; then
    pid="$(read_pidfile "$REDIS_PIDFILE")"
    if pid_alive "$pid" && pid_is "$pid" redis-server; then
        # SIGTERM: Redis flushes the AOF and exits cleanly.
        stop_pid "$pid" "redis-server"
    else
        say "redis-server was not running"
    fi
    rm -f "$REDIS_PIDFILE"
else
    say "Redis: not started by us, left alone"
fi

# --- Postgres ----------------------------------------------------------------------------------
PG_BASE="$(pg_base_dir)"
PGDATA_DIR="$PG_BASE/postgres"
if [[ -f "$PGDATA_DIR/PG_VERSION" ]]; then
    PG_BIN="$(pg_bin_dir)" || die "Postgres binaries not found under /usr/lib/postgresql/*/bin"
    owner="$(stat -c %U "$PGDATA_DIR")"
    as_owner=()
    if is_root && [[ "$owner" != root ]]; then
        as_owner=(runuser -u "$owner" --)
    fi
    if "${as_owner[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; then
        "${as_owner[@]}" "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 60 stop >/dev/null
        log "stopped Postgres ($PGDATA_DIR)"
    else
        say "Postgres was not running"
    fi
else
    say "Postgres: no local cluster"
fi
