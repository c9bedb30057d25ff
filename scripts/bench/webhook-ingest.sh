#!/usr/bin/env bash
# Benchmark of webhook-ingest: signed, unique payment_intent.succeeded deliveries (verify, Redis
# claim, Postgres ledger insert, XADD + done marker, ledger update) against the same binary's
# /healthz, in one run, under wrk on loopback. Starts its own Redis and Postgres on free ports in
# a scratch directory and removes everything on exit.
#
# Environment (all optional):
#   DURATION=10s  CONNECTIONS=32  THREADS=2   wrk settings (same for both endpoints)
#   DELIVERIES=200000                         pre-signed unique deliveries (more than the run sends)
#   SKIP_BUILD=1                              use the release binaries already built
#   SERVICE_BIN=path                          run this webhook-ingest binary instead (A/B of builds)
#   PG_SYNC_COMMIT=on                         off = ablation: Postgres commits without waiting for fsync
#   LEDGER_ROWS=50000                         earlier events in the ledger before the runs (then
#                                             VACUUM ANALYZE + CHECKPOINT): the steady state of a
#                                             ledger with history and statistics; 0 = start empty
#   RATE_LIMIT_LEASE=0                        tokens per limiter round trip (0 = one EVALSHA per request)
#   LEDGER_BATCH_MAX_ROWS, LEDGER_BATCH_LINGER_MS, LEDGER_BATCH_COMMITTERS   group commit (default: config)
#   CARGO_TARGET_DIR                          where cargo builds (default: <repo>/target)
# Prints wrk's output for both endpoints and a summary; exits non-zero when a run failed.
set -euo pipefail

# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-2}"
DELIVERIES="${DELIVERIES:-200000}"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
SECRET="whsec_bench"
PG_SYNC_COMMIT="${PG_SYNC_COMMIT:-on}"
RATE_LIMIT_LEASE="${RATE_LIMIT_LEASE:-0}"
LEDGER_ROWS="${LEDGER_ROWS:-50000}"

command -v wrk >/dev/null 2>&1 || { log "installing wrk"; apt-get install -y wrk >/dev/null; }
PG_BIN="$(pg_bin_dir)" || die "Postgres binaries not found: run \`make deps\`"

free_tcp_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

WORK="$(mktemp -d /var/tmp/webhook-bench.XXXXXX)"
chmod 755 "$WORK"
REDIS_PORT="$(free_tcp_port)"
PG_PORT="$(free_tcp_port)"
HTTP_PORT="$(free_tcp_port)"
SERVICE_PID=""
cleanup() {
    [[ -n "$SERVICE_PID" ]] && kill "$SERVICE_PID" 2>/dev/null && wait "$SERVICE_PID" 2>/dev/null
    [[ -f "$WORK/redis.pid" ]] && kill "$(cat "$WORK/redis.pid")" 2>/dev/null
    [[ -f "$WORK/pg/postmaster.pid" ]] && as_pg_user "$PG_BIN/pg_ctl" -D "$WORK/pg" stop -m fast >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- build -------------------------------------------------------------------------------------
if [[ -z "${SKIP_BUILD:-}" ]]; then
    log "building webhook-ingest (release) and the delivery signer"
    (cd "$REPO_ROOT" && cargo build --release -p webhook-ingest --bin webhook-ingest --example bench_deliveries)
fi
BIN="${SERVICE_BIN:-$TARGET_DIR/release/webhook-ingest}"
SIGNER="$TARGET_DIR/release/examples/bench_deliveries"

# --- Redis and Postgres ------------------------------------------------------------------------
log "starting redis-server on 127.0.0.1:$REDIS_PORT"
/usr/bin/redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --daemonize yes --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log" --dir "$WORK"
for _ in $(seq 1 100); do redis_ping "$REDIS_PORT" && break; sleep 0.1; done
redis_ping "$REDIS_PORT" || die "redis-server did not start"

# pg_stat_statements (when installed) splits the Postgres time by statement in the summary.
pg_stats_opt=""
pg_lib="$("$PG_BIN/pg_config" --pkglibdir 2>/dev/null || echo "$(dirname "$PG_BIN")/lib")"
[[ -f "$pg_lib/pg_stat_statements.so" ]] && pg_stats_opt="-c shared_preload_libraries=pg_stat_statements"
log "starting Postgres on 127.0.0.1:$PG_PORT (fsync on, synchronous_commit=$PG_SYNC_COMMIT)"
mkdir -p "$WORK/pg"
chmod 700 "$WORK/pg"
if is_root; then chown postgres: "$WORK/pg"; fi
as_pg_user "$PG_BIN/initdb" -D "$WORK/pg" -U postgres -A trust -E UTF8 >"$WORK/initdb.log" 2>&1 ||
    die "initdb failed: $(tail -5 "$WORK/initdb.log")"
touch "$WORK/pg.log"
if is_root; then chown postgres: "$WORK/pg.log"; fi
as_pg_user "$PG_BIN/pg_ctl" -D "$WORK/pg" -l "$WORK/pg.log" -w -t 60 \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $WORK/pg -c synchronous_commit=$PG_SYNC_COMMIT $pg_stats_opt" start >/dev/null ||
    die "Postgres did not start: $(tail -5 "$WORK/pg.log")"
"$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -c "CREATE DATABASE webhooks"
psql_hooks() { "$PG_BIN/psql" -X -q -tA -h 127.0.0.1 -p "$PG_PORT" -U postgres -d webhooks "$@"; }
[[ -n "$pg_stats_opt" ]] && psql_hooks -c "CREATE EXTENSION pg_stat_statements" >/dev/null

# --- deliveries and service --------------------------------------------------------------------
log "pre-signing $DELIVERIES unique deliveries"
"$SIGNER" "$WORK/deliveries" "$DELIVERIES" "$SECRET" "$(date +%s)"

log "starting webhook-ingest on 127.0.0.1:$HTTP_PORT"
batch_env=()
[[ -n "${LEDGER_BATCH_MAX_ROWS:-}" ]] && batch_env+=("APP__WEBHOOK__LEDGER_BATCH_MAX_ROWS=$LEDGER_BATCH_MAX_ROWS")
[[ -n "${LEDGER_BATCH_LINGER_MS:-}" ]] && batch_env+=("APP__WEBHOOK__LEDGER_BATCH_LINGER_MS=$LEDGER_BATCH_LINGER_MS")
[[ -n "${LEDGER_BATCH_COMMITTERS:-}" ]] && batch_env+=("APP__WEBHOOK__LEDGER_BATCH_COMMITTERS=$LEDGER_BATCH_COMMITTERS")
# The webhook policy stays on the path (one Redis round trip per request, or per lease with
# RATE_LIMIT_LEASE) with a limit the run
# cannot reach; the signature tolerance covers the run (deliveries are signed once, up front).
APP__HTTP__PORT="$HTTP_PORT" \
    APP__REDIS__URL="redis://127.0.0.1:$REDIS_PORT" \
    APP__REDIS__POOL_SIZE=8 \
    APP__DATABASE__URL="postgres://postgres@127.0.0.1:$PG_PORT/webhooks" \
    APP__DATABASE__MAX_CONNECTIONS=16 \
    APP__WEBHOOK__SECRETS="$SECRET" \
    APP__WEBHOOK__TOLERANCE_SECS=86400 \
    APP__WEBHOOK__STREAM_MAX_LEN=1000000 \
    APP__RATE_LIMIT__POLICIES__WEBHOOK__LIMIT=1000000 \
    APP__RATE_LIMIT__POLICIES__WEBHOOK__WINDOW_SECS=1 \
    APP__RATE_LIMIT__POLICIES__WEBHOOK__LEASE="$RATE_LIMIT_LEASE" \
    APP__TELEMETRY__FILTER=warn \
    env "${batch_env[@]}" "$BIN" >"$WORK/service.log" 2>&1 &
SERVICE_PID=$!
for _ in $(seq 1 100); do
    curl -fsS "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "http://127.0.0.1:$HTTP_PORT/readyz" >/dev/null || die "service not ready: $(tail -5 "$WORK/service.log")"

# A fresh, empty ledger is not what a service meets after its first minute: Postgres caches a
# prepared statement's generic plan, and one planned on an empty, never-analysed table is a
# sequential scan (the ledger check's `event_id = ANY($1)`) that stays cached until the next
# ANALYZE (autovacuum: at most a minute after the first 50 rows). A 10 s run on an empty table
# measured that scan over a growing table (docs/services/webhook-ingest.md, benchmark).
if [[ "$LEDGER_ROWS" -gt 0 ]]; then
    log "filling the ledger with $LEDGER_ROWS earlier events (VACUUM ANALYZE, CHECKPOINT)"
    psql_hooks -v raw="$(cat "$WORK/deliveries.template")" >/dev/null <<SQL
INSERT INTO webhook_events
        (event_id, event_type, created, livemode, api_version, object_id, customer_id, status, stream_id,
         streamed_at, raw)
        SELECT 'evt_history_' || g, 'payment_intent.succeeded', 1700000000 + g, false, '2024-06-20',
               'pi_history_' || g, 'cus_history_' || (g % 997), 'streamed', '1700000000000-' || g, now(),
               replace(:'raw', '__EVENT_ID__', 'evt_history_' || g)
        FROM generate_series(1, $LEDGER_ROWS) g;
SQL
    psql_hooks -c "VACUUM ANALYZE webhook_events" -c "CHECKPOINT" >/dev/null
fi

# CPU ticks (utime + stime, USER_HZ) of the service, redis-server, this run's Postgres (postmaster
# and its children) and the whole machine, so the summary can say where each webhook's CPU goes.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
cpu_snapshot() {
    local pg=0 pid
    local postmaster
    postmaster="$(head -1 "$WORK/pg/postmaster.pid")"
    for pid in "$postmaster" $(pgrep -P "$postmaster" 2>/dev/null || true); do pg=$((pg + $(cpu_ticks "$pid"))); done
    echo "$(cpu_ticks "$SERVICE_PID") $(cpu_ticks "$(cat "$WORK/redis.pid")") $pg $(awk '/^cpu / {print $2+$3+$4+$5+$6+$7+$8, $5+$6}' /proc/stat)"
}

metric() { curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" | awk -v m="$1" '$1 ~ "^"m"(\\{|$)" {s+=$2} END {print s+0}'; }

# --- runs --------------------------------------------------------------------------------------
log "warm-up (2 s of /healthz)"
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null

log "/healthz: wrk -t$THREADS -c$CONNECTIONS -d$DURATION"
health_cpu_before="$(cpu_snapshot)"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$HTTP_PORT/healthz" | tee "$WORK/healthz.txt"
health_cpu_after="$(cpu_snapshot)"

# Per-command Redis time and per-statement Postgres time and WAL, for the webhook run only.
redis-cli -p "$REDIS_PORT" CONFIG RESETSTAT >/dev/null
[[ -n "$pg_stats_opt" ]] && psql_hooks -c "SELECT pg_stat_statements_reset()" >/dev/null
psql_hooks -c "SELECT pg_stat_reset_shared('wal')" >/dev/null 2>&1 || true
streamed_before="$(metric webhook_streamed_total)"
cpu_before="$(cpu_snapshot)"
log "POST /api/webhooks/stripe: wrk -t$THREADS -c$CONNECTIONS -d$DURATION (unique signed deliveries)"
BENCH_DELIVERIES="$WORK/deliveries" BENCH_THREADS="$THREADS" \
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
    -s "$REPO_ROOT/scripts/bench/webhook-ingest.lua" \
    "http://127.0.0.1:$HTTP_PORT/api/webhooks/stripe" | tee "$WORK/webhook.txt"
cpu_after="$(cpu_snapshot)"
streamed="$(( $(metric webhook_streamed_total) - streamed_before ))"
duplicates="$(metric webhook_duplicates_total)"
rejected="$(metric webhook_rejected_total)"
stream_len="$(redis-cli -p "$REDIS_PORT" XLEN 'platform:v1:stream:{streams}:stripe-events' 2>/dev/null || echo '?')"
ledger_streamed="$("$PG_BIN/psql" -X -tA -h 127.0.0.1 -p "$PG_PORT" -U postgres -d webhooks \
    -c "SELECT count(*) FROM webhook_events WHERE status = 'streamed'")"

# --- summary -----------------------------------------------------------------------------------
rps() { awk '/^Requests\/sec:/ {print $2}' "$1"; }
pct() { awk -v p="$2" '$1 == p {print $2}' "$1"; }
non2xx() { awk '/Non-2xx/ {print $NF}' "$1"; }
secs="${DURATION%s}"
health_rps="$(rps "$WORK/healthz.txt")"
hook_rps="$(rps "$WORK/webhook.txt")"
echo
echo "== webhook-ingest benchmark ($(nproc) cores, load avg $(cut -d' ' -f1-3 /proc/loadavg)) =="
printf '%-28s %12s %10s %10s\n' endpoint "req/s" p50 p99
printf '%-28s %12s %10s %10s\n' "GET /healthz" "$health_rps" "$(pct "$WORK/healthz.txt" 50%)" "$(pct "$WORK/healthz.txt" 99%)"
printf '%-28s %12s %10s %10s\n' "POST /api/webhooks/stripe" "$hook_rps" "$(pct "$WORK/webhook.txt" 50%)" "$(pct "$WORK/webhook.txt" 99%)"
echo "verified+streamed webhooks/s: $(awk -v n="$streamed" -v s="$secs" 'BEGIN {printf "%.0f", n / s}') ($streamed streamed in $DURATION; duplicates $duplicates, rejected $rejected, non-2xx $(non2xx "$WORK/webhook.txt"))"
echo "stream length $stream_len, ledger rows streamed $ledger_streamed (of which $LEDGER_ROWS filled in before the runs)"
batch_rows() { echo "$(metric "webhook_ledger_$1_batch_rows_sum") $(metric "webhook_ledger_$1_batch_rows_count")" | awk '{printf "%.1f", $2 ? $1 / $2 : 0}'; }
echo "ledger rows per statement: checks $(batch_rows touch), inserts (one commit each) $(batch_rows insert)"
echo "$cpu_before $cpu_after" | awk -v n="$streamed" -v cores="$(nproc)" -v hz="$(getconf CLK_TCK)" '{
    us = 1e6 / hz / (n ? n : 1)
    printf "CPU per webhook: service %.0f us, redis %.0f us, postgres %.0f us; machine busy %.0f%% of %d cores\n",
        ($6 - $1) * us, ($7 - $2) * us, ($8 - $3) * us, 100 * (1 - ($10 - $5) / ($9 - $4)), cores }'
health_requests="$(awk '/requests in/ {print $1}' "$WORK/healthz.txt")"
echo "$health_cpu_before $health_cpu_after" | awk -v n="$health_requests" -v hz="$(getconf CLK_TCK)" '{
    printf "CPU per /healthz request: service %.1f us; the rest of the machine (wrk, other load) %.1f us\n",
        ($6 - $1) * 1e6 / hz / n, (($9 - $4) - ($10 - $5) - ($6 - $1)) * 1e6 / hz / n }'
echo "Redis per webhook (INFO commandstats: calls, usec inside Redis):"
redis-cli -p "$REDIS_PORT" INFO commandstats | tr -d '\r' | awk -F'[:=,]' -v n="$streamed" \
    '/^cmdstat_/ && n > 0 {printf "  %-12s %5.2f calls %7.1f us (%.1f us/call)\n", substr($1, 9), $3 / n, $5 / n, $7}'
if [[ -n "$pg_stats_opt" ]]; then
    echo "Postgres per webhook (pg_stat_statements: calls, rows, execution ms per 1000 webhooks):"
    psql_hooks -F ' | ' -c "SELECT round(calls::numeric / greatest($streamed, 1), 3), round(rows::numeric / greatest($streamed, 1), 2),
        round((total_exec_time * 1000 / greatest($streamed, 1))::numeric, 1), left(regexp_replace(query, '\s+', ' ', 'g'), 60)
        FROM pg_stat_statements WHERE calls > 10 ORDER BY total_exec_time DESC LIMIT 6" | sed 's/^/  /'
fi
psql_hooks -F ' ' -c "SELECT 'Postgres WAL per webhook: ' || round(wal_records::numeric / greatest($streamed, 1), 1) || ' records, '
    || round(wal_bytes / greatest($streamed, 1)) || ' bytes, ' || round(wal_fpi::numeric / greatest($streamed, 1), 2) || ' full-page images; '
    || wal_sync || ' flushes (' || round($streamed::numeric / greatest(wal_sync, 1), 1) || ' webhooks each)' FROM pg_stat_wal" 2>/dev/null || true
echo "ratio webhook/healthz: $(awk -v a="$hook_rps" -v b="$health_rps" 'BEGIN {printf "%.3f", a / b}') (target >= 0.3)"
