# shellcheck shell=bash disable=SC2034  # variables here are used by the scripts that source it
# Shared by scripts/run-local.sh and scripts/stop-local.sh (sourced, not run).
#
# Everything lives under $RUN_DIR (default: <repo>/.run, git-ignored):
#   .run/redis/            Redis data (AOF), redis.pid (only when we started Redis)
#   .run/postgres/         Postgres cluster (or /var/tmp/platform-dev-<hash>/postgres, see pg_base_dir)
#   .run/logs/<name>.log   service, Redis and Postgres logs
#   .run/pids/<name>.pid   service pids

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${RUN_DIR:-$REPO_ROOT/.run}"
LOG_DIR="$RUN_DIR/logs"
PID_DIR="$RUN_DIR/pids"

# Optional local overrides (ports, token, ...). Values already in the environment win.
if [[ -f "$REPO_ROOT/config/local.env" ]]; then
    # shellcheck source=../config/local.env
    source "$REPO_ROOT/config/local.env"
fi

REDIS_PORT="${REDIS_PORT:-6379}"
PG_PORT="${PG_PORT:-5432}"
ADMIN_TOKEN="${ADMIN_TOKEN:-dev-admin-token}"

# service name, HTTP port, database (- for none). The one place this table is spelled.
SERVICES=(campaign-api checkout-api webhook-ingest usage-meter customer-count-refresher)
declare -A SERVICE_PORT=(
    [campaign-api]=8081 [checkout-api]=8082 [webhook-ingest]=8083
    [usage-meter]=8084 [customer-count-refresher]=8085
)
declare -A SERVICE_DB=(
    [campaign-api]=campaign [checkout-api]=checkout [webhook-ingest]=webhooks
    [usage-meter]=usage [customer-count-refresher]=-
)
DATABASES=(campaign checkout webhooks usage)

log() { printf '==> %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# True when a process with this pid exists and has not exited (a zombie waiting to be reaped by
# an init that reaps slowly counts as gone).
pid_alive() {
    [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null || return 1
    [[ "$(awk '/^State:/ {print $2}' "/proc/$1/status" 2>/dev/null)" != Z ]]
}

read_pidfile() {
    if [[ -f "$1" ]]; then tr -dc '0-9' <"$1"; fi
}

# Redis answers PING on 127.0.0.1:$1.
redis_ping() {
    local port="$1" reply
    if command -v redis-cli >/dev/null 2>&1; then
        reply="$(redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null || true)"
    else
        reply="$(
            exec 3<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null || exit 0
            printf 'PING\r\n' >&3
            timeout 2 head -c 7 <&3 || true
        )"
        reply="${reply//[$'\r\n+']/}"
    fi
    [[ "$reply" == "PONG" ]]
}

# Something accepts TCP connections on 127.0.0.1:$1.
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Newest /usr/lib/postgresql/<major>/bin holding initdb, pg_ctl and postgres.
pg_bin_dir() {
    local dir best="" best_major=0 major
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x "$dir/initdb" && -x "$dir/pg_ctl" && -x "$dir/postgres" ]] || continue
        major="$(basename "$(dirname "$dir")")"
        major="${major%%.*}"
        [[ "$major" =~ ^[0-9]+$ ]] || continue
        if ((major > best_major)); then
            best_major="$major"
            best="$dir"
        fi
    done
    [[ -n "$best" ]] && printf '%s\n' "$best"
}

# The user Postgres runs as: Postgres refuses root, so root uses the `postgres` system user that
# Debian's package creates; anyone else runs it as themselves.
pg_user() {
    if is_root; then echo postgres; else id -un; fi
}

# Run a command as the Postgres user.
as_pg_user() {
    if is_root; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Where the cluster lives: .run/ when the Postgres user can reach it, else a per-repo directory
# under /var/tmp (for a repo under a path that user cannot traverse, e.g. /root). The choice is
# recorded in .run/pg-base so stop-local.sh finds the same place.
pg_base_dir() {
    if [[ -f "$RUN_DIR/pg-base" ]]; then
        cat "$RUN_DIR/pg-base"
        return
    fi
    local base="$RUN_DIR"
    if is_root && ! runuser -u postgres -- test -x "$RUN_DIR" 2>/dev/null; then
        local hash
        hash="$(printf '%s' "$REPO_ROOT" | sha256sum | cut -c1-12)"
        base="/var/tmp/platform-dev-$hash"
    fi
    printf '%s\n' "$base"
}
