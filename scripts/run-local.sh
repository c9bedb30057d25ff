#!/usr/bin/env bash
# `make run`: start Redis, Postgres and the five services as local background processes,
# wait until each answers GET /readyz, print their URLs, and return. Stop with `make stop`.
#
# Environment (all optional; config/local.env may set them too, the environment wins):
#   REDIS_PORT=6379        Redis on 127.0.0.1 (an already running Redis there is reused)
#   PG_PORT=5432           Postgres on 127.0.0.1 (our own cluster, not the system one)
#   ADMIN_TOKEN=dev-admin-token
#   PROFILE=debug|release  which cargo profile to build and run
#   CARGO=cargo CARGO_FLAGS=   cargo program and extra flags for `cargo build`
#   READY_TIMEOUT=60       seconds to wait for all services' /readyz
#   RUST_LOG=info  APP__TELEMETRY__FORMAT=pretty
#   SKIP_BUILD=1           run the binaries already in target/ without building
#   STRIPE_SECRET_KEY, SIMPRO_*  passed through to the services when set (else fakes start)
#   FAKE_SIMPRO_PORT=8095 FAKE_STRIPE_PORT=8096
set -euo pipefail

# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

PROFILE="${PROFILE:-debug}"
CARGO="${CARGO:-cargo}"
CARGO_FLAGS="${CARGO_FLAGS:-}"
READY_TIMEOUT="${READY_TIMEOUT:-60}"
export RUST_LOG="${RUST_LOG:-info}"
export APP__TELEMETRY__FORMAT="${APP__TELEMETRY__FORMAT:-pretty}"

case "$PROFILE" in
    debug | dev) PROFILE=debug; profile_flag=() ;;
    release) profile_flag=(--release) ;;
    *) die "PROFILE must be debug or release, not '$PROFILE'" ;;
esac

mkdir -p "$LOG_DIR" "$PID_DIR" "$RUN_DIR/redis"
# Readable by the unprivileged Postgres user (see pg_base_dir), whatever the umask.
chmod 755 "$RUN_DIR" "$LOG_DIR"

# --- 0. packages -------------------------------------------------------------------------------
bash "$REPO_ROOT/scripts/deps.sh"

# --- 1. Redis ----------------------------------------------------------------------------------
REDIS_PIDFILE="$RUN_DIR/redis/redis.pid"
redis_note=""
if redis_ping "$REDIS_PORT"; then
    if pid_alive "$(read_pidfile "$REDIS_PIDFILE")"; then
        redis_note="already running (ours)"
    else
        redis_note="already running (not started by us; reused, \`make stop\` leaves it alone)"
    fi
    log "Redis on 127.0.0.1:$REDIS_PORT $redis_note"
else
    if port_in_use "$REDIS_PORT"; then
        die "port $REDIS_PORT is taken by something that is not Redis; set REDIS_PORT=<free port>"
    fi
    log "starting redis-server on 127.0.0.1:$REDIS_PORT (AOF on, data in ${RUN_DIR}/redis)"
    rm -f "$REDIS_PIDFILE"
    /usr/bin/redis-server \
        --bind 127.0.0.1 --port "$REDIS_PORT" --protected-mode yes \
        --dir "$RUN_DIR/redis" --appendonly yes --appendfsync everysec \
        --daemonize yes --pidfile "$REDIS_PIDFILE" --logfile "$LOG_DIR/redis.log"
    for _ in $(seq 1 100); do
        redis_ping "$REDIS_PORT" && break
        sleep 0.1
    done
    if ! redis_ping "$REDIS_PORT"; then
        tail -n 20 "$LOG_DIR/redis.log" >&2 || true
        die "redis-server did not answer PING on port $REDIS_PORT within 10 s (log: $LOG_DIR/redis.log)"
    fi
    redis_note="started"
fi

# --- 2. Postgres -------------------------------------------------------------------------------
PG_BIN="$(pg_bin_dir)" || die "Postgres binaries not found under /usr/lib/postgresql/*/bin: run \`make deps\`"
PG_USER="$(pg_user)"
if is_root && ! id postgres >/dev/null 2>&1; then
    die "running as root but there is no 'postgres' system user (Debian's postgresql package creates it): run \`make deps\`"
fi
PG_BASE="$(pg_base_dir)"
PGDATA_DIR="$PG_BASE/postgres"
PG_LOG="$PG_BASE/logs/postgres.log"
if [[ "$PG_BASE" != "$RUN_DIR" ]]; then
    log "the '$PG_USER' user cannot traverse $RUN_DIR; Postgres data goes to $PGDATA_DIR instead"
fi
printf '%s\n' "$PG_BASE" >"$RUN_DIR/pg-base"
mkdir -p "$PG_BASE/logs"
chmod 755 "$PG_BASE" "$PG_BASE/logs"

if [[ ! -f "$PGDATA_DIR/PG_VERSION" ]]; then
    log "initdb: new Postgres cluster in $PGDATA_DIR (user $PG_USER, superuser 'postgres', trust auth on loopback)"
    mkdir -p "$PGDATA_DIR"
    chmod 700 "$PGDATA_DIR"
    if is_root; then chown postgres: "$PGDATA_DIR"; fi
    as_pg_user "$PG_BIN/initdb" -D "$PGDATA_DIR" -U postgres -A trust -E UTF8 --no-sync \
        >"$PG_BASE/logs/initdb.log" 2>&1 ||
        { tail -n 20 "$PG_BASE/logs/initdb.log" >&2; die "initdb failed (log: $PG_BASE/logs/initdb.log)"; }
fi

touch "$PG_LOG"
if is_root; then chown postgres: "$PG_LOG"; fi

if as_pg_user "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; then
    running_port="$(sed -n 4p "$PGDATA_DIR/postmaster.pid" 2>/dev/null || true)"
    if [[ -n "$running_port" && "$running_port" != "$PG_PORT" ]]; then
        die "our Postgres is already running on port $running_port, not PG_PORT=$PG_PORT: \`make stop\` first"
    fi
    pg_note="already running (ours)"
    log "Postgres on 127.0.0.1:$PG_PORT $pg_note"
else
    if port_in_use "$PG_PORT"; then
        die "port $PG_PORT is taken (the system Postgres cluster?); set PG_PORT=<free port>, e.g. PG_PORT=5433 make run"
    fi
    log "starting Postgres on 127.0.0.1:$PG_PORT (data in $PGDATA_DIR, log $PG_LOG)"
    as_pg_user "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -w -t 60 \
        -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PGDATA_DIR" start >/dev/null ||
        { tail -n 20 "$PG_LOG" >&2; die "Postgres did not start (log: $PG_LOG)"; }
    pg_note="started"
fi

psql_q() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -tAc "$1"; }
for db in "${DATABASES[@]}"; do
    if [[ "$(psql_q "SELECT 1 FROM pg_database WHERE datname = '$db'")" != "1" ]]; then
        log "creating database $db"
        psql_q "CREATE DATABASE \"$db\""
    fi
done

# Migrations and demo data: each service applies its own at start, after the databases above
# exist.

# --- 3. build ----------------------------------------------------------------------------------
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    build_cmd=("$CARGO" build)
    # shellcheck disable=SC2206 # CARGO_FLAGS is a list of flags on purpose
    build_cmd+=($CARGO_FLAGS --workspace --bins "${profile_flag[@]}")
    log "building services: ${build_cmd[*]}"
    (cd "$REPO_ROOT" && "${build_cmd[@]}") || die "cargo build failed (see above); Redis and Postgres are left running (\`make stop\`)"
fi
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
BIN_DIR="$TARGET_DIR/$PROFILE"

# --- 4. fakes of external APIs ----------------------------------------------------------------
# The local fake simPRO (crates/platform-testing, binary fake-simpro) stands in for the accounting
# API when no real tenant is configured (APP__SIMPRO__BASE_URL); the local fake Stripe (binary
# fake-stripe) stands in for Stripe when no secret key is configured (APP__STRIPE__SECRET_KEY or
# STRIPE_SECRET_KEY). Both are stopped first so a rerun gets fresh ones.
FAKE_SIMPRO_PORT="${FAKE_SIMPRO_PORT:-8095}"
FAKE_STRIPE_PORT="${FAKE_STRIPE_PORT:-8096}"
if [[ -z "${APP__STRIPE__SECRET_KEY:-}" && -n "${STRIPE_SECRET_KEY:-}" ]]; then
    export APP__STRIPE__SECRET_KEY="$STRIPE_SECRET_KEY"
fi
if [[ -z "${APP__SIMPRO__BASE_URL:-}" || -z "${APP__STRIPE__SECRET_KEY:-}" ]]; then
    bash "$REPO_ROOT/scripts/stop-local.sh" --fakes-only --quiet
fi
if [[ -z "${APP__SIMPRO__BASE_URL:-}" ]]; then
    port_in_use "$FAKE_SIMPRO_PORT" && die "port $FAKE_SIMPRO_PORT for fake-simpro is taken (set FAKE_SIMPRO_PORT)"
    (exec nohup "$BIN_DIR/fake-simpro" --port "$FAKE_SIMPRO_PORT" --invoices 5000 --customers 1234 \
        --latency-ms 5 --token dev-simpro-token >>"$LOG_DIR/fake-simpro.log" 2>&1 </dev/null) &
    echo $! >"$PID_DIR/fake-simpro.pid"
    export APP__SIMPRO__BASE_URL="http://127.0.0.1:$FAKE_SIMPRO_PORT"
    export APP__SIMPRO__TOKEN=dev-simpro-token
    log "fake simPRO on $APP__SIMPRO__BASE_URL (5000 invoices over 1234 customers)"
fi
if [[ -z "${APP__STRIPE__SECRET_KEY:-}" ]]; then
    port_in_use "$FAKE_STRIPE_PORT" && die "port $FAKE_STRIPE_PORT for fake-stripe is taken (set FAKE_STRIPE_PORT)"
    (exec nohup "$BIN_DIR/fake-stripe" --port "$FAKE_STRIPE_PORT" --secret-key sk_test_fake_stripe \
        >>"$LOG_DIR/fake-stripe.log" 2>&1 </dev/null) &
    echo $! >"$PID_DIR/fake-stripe.pid"
    export APP__STRIPE__SECRET_KEY=sk_test_fake_stripe
    export APP__STRIPE__API_BASE_URL="http://127.0.0.1:$FAKE_STRIPE_PORT"
    log "fake Stripe on $APP__STRIPE__API_BASE_URL (checkout URLs point at its /c/pay/<session> page, which pays and redirects back)"
fi

# --- 5. services -------------------------------------------------------------------------------
# A service still running from an earlier `make run` is restarted so the new build runs.
bash "$REPO_ROOT/scripts/stop-local.sh" --services-only --quiet

export APP__HTTP__HOST=127.0.0.1
export APP__REDIS__URL="redis://127.0.0.1:$REDIS_PORT"
export APP__AUTH__ADMIN_TOKEN="$ADMIN_TOKEN"

for name in "${SERVICES[@]}"; do
    bin="$BIN_DIR/$name"
    [[ -x "$bin" ]] || die "$bin not found: build failed or SKIP_BUILD=1 without a build"
    port="${SERVICE_PORT[$name]}"
    db="${SERVICE_DB[$name]}"
    logfile="$LOG_DIR/$name.log"
    if port_in_use "$port"; then
        die "port $port for $name is already taken by another process"
    fi
    db_env=(-u APP__DATABASE__URL)
    if [[ "$db" != - ]]; then
        db_env=("APP__DATABASE__URL=postgres://postgres@127.0.0.1:$PG_PORT/$db")
    fi
    if [[ "$name" == campaign-api ]]; then
        # The `demo` organisation with active campaigns (DESIGN: local defaults).
        db_env+=("APP__DEMO__SEED=${DEMO_SEED:-true}")
    fi
    if [[ "$name" == checkout-api ]]; then
        # The demo product catalog (tea, mug, tee, plan-basic, plan-pro): every price comes from it.
        db_env+=("APP__DEMO__SEED=${DEMO_SEED:-true}")
    fi
    printf '\n=== %s: %s started on port %s ===\n' "$(date -u +%FT%TZ)" "$name" "$port" >>"$logfile"
    (cd "$REPO_ROOT" && exec nohup env "${db_env[@]}" APP__HTTP__PORT="$port" "$bin" >>"$logfile" 2>&1 </dev/null) &
    echo $! >"$PID_DIR/$name.pid"
done

# --- 6. wait for /readyz -----------------------------------------------------------------------
log "waiting up to ${READY_TIMEOUT}s for GET /readyz on each service"
deadline=$((SECONDS + READY_TIMEOUT))
pending=("${SERVICES[@]}")
failed=()
while ((${#pending[@]} > 0)); do
    still=()
    for name in "${pending[@]}"; do
        pid="$(read_pidfile "$PID_DIR/$name.pid")"
        if curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:${SERVICE_PORT[$name]}/readyz" 2>/dev/null; then
            log "$name ready"
        elif ! pid_alive "$pid"; then
            wait "$pid" 2>/dev/null && status=0 || status=$?
            warn "$name exited (status $status) before it was ready"
            rm -f "$PID_DIR/$name.pid"
            failed+=("$name")
        else
            still+=("$name")
        fi
    done
    pending=("${still[@]+"${still[@]}"}")
    ((${#pending[@]} == 0)) && break
    if ((SECONDS >= deadline)); then
        for name in "${pending[@]}"; do
            warn "$name did not answer GET /readyz within ${READY_TIMEOUT}s"
            failed+=("$name")
        done
        break
    fi
    sleep 0.5
done

if ((${#failed[@]} > 0)); then
    for name in "${failed[@]}"; do
        printf '\n--- last lines of %s ---\n' "$LOG_DIR/$name.log" >&2
        # Only this start's lines (the log is appended to across runs).
        awk '/^=== .* started on port / {n = 0; delete buf} {buf[n++] = $0}
             END {for (i = (n > 40 ? n - 40 : 0); i < n; i++) print buf[i]}' \
            "$LOG_DIR/$name.log" >&2 || true
    done
    printf '\n' >&2
    die "not ready: ${failed[*]}. Whatever did start is still running: \`make stop\` stops it."
fi

# --- 7. summary --------------------------------------------------------------------------------
rel() { printf '%s' "${1#"$REPO_ROOT"/}"; }

# The demo organisation's usage dashboard: campaign-api mints a short-lived tenant token, which
# goes in the link's fragment (#token=…): browsers never send the fragment to the server.
mint_url="http://127.0.0.1:${SERVICE_PORT[campaign-api]}/api/admin/organisations/demo/tokens"
dashboard_line="no demo organisation (DEMO_SEED=false?): mint a token with POST $mint_url"
if minted="$(curl -fsS --max-time 5 -X POST -H "Authorization: Bearer $ADMIN_TOKEN" "$mint_url" 2>/dev/null)"; then
    json_field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" <<<"$minted"; }
    token="$(json_field token)"
    org_id="$(json_field orgId)"
    expires_at="$(json_field expiresAt)"
    if [[ -n "$token" && -n "$org_id" ]]; then
        dashboard_line="http://127.0.0.1:${SERVICE_PORT[usage-meter]}/dashboard/$org_id#token=$token"
        dashboard_line+=$'\n'"             (demo organisation; the token expires at $expires_at; a new one: POST $mint_url)"
    fi
fi
echo
printf '%-26s %-40s %s\n' SERVICE URL LOG
for name in "${SERVICES[@]}"; do
    printf '%-26s %-40s %s\n' "$name" "http://127.0.0.1:${SERVICE_PORT[$name]}" "$(rel "$LOG_DIR/$name.log")"
done
printf '%-26s %-40s %s\n' redis "redis://127.0.0.1:$REDIS_PORT" "$(rel "$LOG_DIR/redis.log")"
printf '%-26s %-40s %s\n' postgres "postgres://postgres@127.0.0.1:$PG_PORT" "$(rel "$PG_LOG")"
if [[ -f "$PID_DIR/fake-stripe.pid" ]]; then
    printf '%-26s %-40s %s\n' fake-stripe "http://127.0.0.1:$FAKE_STRIPE_PORT" "$(rel "$LOG_DIR/fake-stripe.log")"
fi
echo
echo "Redis:       $redis_note; Postgres: $pg_note (data: $(rel "$PGDATA_DIR"))"
echo "Databases:   ${DATABASES[*]} (e.g. postgres://postgres@127.0.0.1:$PG_PORT/campaign)"
echo "Admin token: $ADMIN_TOKEN   (Authorization: Bearer $ADMIN_TOKEN)"
echo "Dashboard:   $dashboard_line"
echo "Try:         curl http://127.0.0.1:${SERVICE_PORT[campaign-api]}/readyz"
echo "Logs:        make logs      Stop everything: make stop"
