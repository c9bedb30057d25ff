#!/usr/bin/env bash
# Benchmark of webhook-ingest: signed, unique payment_intent.succeeded deliveries (verify, one
# group-committed ledger insert, answer; the relay appends to the stream after) against the same binary's
# /healthz and against a Node handler writing the same durable row (scripts/bench/node-webhook/:
# stripe constructEvent, Redis dedup GET, one INSERT … ON CONFLICT per event on a pg Pool of 16,
# XADD + marker), in one run, under wrk on loopback, both against the same Redis and Postgres.
# Then the time from each 200 to the event's stream entry (node-webhook/ack-latency.js: paced
# deliveries, XREAD BLOCK on the stream). Starts its own Redis and Postgres on free ports in a
# scratch directory and removes everything on exit.
#
# Environment (all optional):
#   DURATION=10s  CONNECTIONS=32  THREADS=2   wrk settings (same for every run)
#   WARMUP=2s                                 webhooks sent to each handler before its measured run
#                                             (ids of the last quarter of the deliveries, kept apart)
#   DELIVERIES=200000                         pre-signed unique deliveries (more than the runs send)
#   NODE_PEER=1                               0 = skip the Node handler's runs (A/B of two builds)
#   NODE_WORKERS=1                            Node cluster workers (the pool of 16 is shared out)
#   ACK_COUNT=200  ACK_RATE=50                the paced ack→stream run (deliveries, per second)
#   SKIP_BUILD=1                              use the release binaries already built
#   SERVICE_BIN=path                          run this webhook-ingest binary instead (A/B of builds)
#   PG_SYNC_COMMIT=on                         off = ablation: Postgres commits without waiting for fsync
#   LEDGER_ROWS=50000                         earlier events in the ledger before the runs (then
#                                             VACUUM ANALYZE + CHECKPOINT): the steady state of a
#                                             ledger with history and statistics; 0 = start empty
#   RATE_LIMIT_LEASE=0                        tokens per limiter round trip (0 = one EVALSHA per request)
#   LEDGER_BATCH_MAX_ROWS, LEDGER_BATCH_LINGER_MS, LEDGER_BATCH_COMMITTERS   group commit (default: config)
#   CARGO_TARGET_DIR                          where cargo builds (default: <repo>/target)
# Prints wrk's output for every run and a summary; exits non-zero when a run failed, when a
# handler answered 2xx for more events than it stored, or when an acknowledged event never
# reached the stream.
set -euo pipefail

# shellcheck source=../common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-2}"
DELIVERIES="${DELIVERIES:-200000}"
WARMUP="${WARMUP:-2s}"
NODE_PEER="${NODE_PEER:-1}"
NODE_WORKERS="${NODE_WORKERS:-1}"
ACK_COUNT="${ACK_COUNT:-200}"
ACK_RATE="${ACK_RATE:-50}"
# Lines [WARM_FIRST, DELIVERIES) of the pre-signed deliveries are for warm-ups, the rest for the
# measured runs, so no measured request repeats an id a warm-up stored.
WARM_FIRST=$((DELIVERIES * 3 / 4))
NODE_SRC="$REPO_ROOT/scripts/bench/node-webhook"
NODE_DIR="$RUN_DIR/bench/node-webhook"
# Stream keys (crates/platform-redis/src/keys.rs): webhook-ingest's default prefix, and the Node
# handler's own, so each stream holds only its handler's entries.
INGEST_STREAM='platform:v1:stream:{streams}:stripe-events'
NODE_PREFIX='bench-node'
NODE_STREAM="$NODE_PREFIX:v1:stream:{streams}:stripe-events"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
SECRET="whsec_bench"
PG_SYNC_COMMIT="${PG_SYNC_COMMIT:-on}"
RATE_LIMIT_LEASE="${RATE_LIMIT_LEASE:-0}"
LEDGER_ROWS="${LEDGER_ROWS:-50000}"

command -v wrk >/dev/null 2>&1 || { log "installing wrk"; apt-get install -y wrk >/dev/null; }
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    log "node or npm missing: scripts/deps.sh --bench"
    bash "$REPO_ROOT/scripts/deps.sh" --bench || die "the Node handler needs node and npm"
fi
PG_BIN="$(pg_bin_dir)" || die "Postgres binaries not found: run \`make deps\`"

free_tcp_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

WORK="$(mktemp -d /var/tmp/webhook-bench.XXXXXX)"
chmod 755 "$WORK"
REDIS_PORT="$(free_tcp_port)"
PG_PORT="$(free_tcp_port)"
HTTP_PORT="$(free_tcp_port)"
NODE_PORT="$(free_tcp_port)"
SERVICE_PID=""
NODE_PID=""
# Every step tolerates failure (under `set -e` a failing step would end the trap early and leave
# Redis and Postgres running), and the script keeps its own exit status, not a killed child's.
cleanup() {
    local status=$?
    if [[ -n "$SERVICE_PID" ]]; then kill "$SERVICE_PID" 2>/dev/null && wait "$SERVICE_PID" 2>/dev/null || true; fi
    if [[ -n "$NODE_PID" ]]; then kill "$NODE_PID" 2>/dev/null && wait "$NODE_PID" 2>/dev/null || true; fi
    if [[ -f "$WORK/redis.pid" ]]; then kill "$(cat "$WORK/redis.pid")" 2>/dev/null || true; fi
    if [[ -f "$WORK/pg/postmaster.pid" ]]; then
        as_pg_user "$PG_BIN/pg_ctl" -D "$WORK/pg" stop -m fast >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT

# --- build -------------------------------------------------------------------------------------
if [[ -z "${SKIP_BUILD:-}" ]]; then
    log "building webhook-ingest (release) and the delivery signer"
    (cd "$REPO_ROOT" && cargo build --release -p webhook-ingest --bin webhook-ingest --example bench_deliveries)
fi
BIN="${SERVICE_BIN:-$TARGET_DIR/release/webhook-ingest}"
SIGNER="$TARGET_DIR/release/examples/bench_deliveries"

# The npm packages of the Node handler and the ack→stream client (pinned by package-lock.json)
# live under .run/, not in the repository; reinstalled only when the lock file changed.
mkdir -p "$NODE_DIR"
if [[ ! -d "$NODE_DIR/node_modules" ]] || ! cmp -s "$NODE_SRC/package-lock.json" "$NODE_DIR/package-lock.json"; then
    log "installing the Node handler's packages into $NODE_DIR (npm ci)"
    cp "$NODE_SRC/package.json" "$NODE_SRC/package-lock.json" "$NODE_DIR/"
    (cd "$NODE_DIR" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error) ||
        die "npm ci failed in $NODE_DIR"
fi
node_run() { NODE_PATH="$NODE_DIR/node_modules" node "$@"; }

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
psql_db() { "$PG_BIN/psql" -X -q -tA -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$@"; }
psql_hooks() { psql_db webhooks "$@"; }
[[ -n "$pg_stats_opt" ]] && psql_hooks -c "CREATE EXTENSION pg_stat_statements" >/dev/null
if [[ "$NODE_PEER" == 1 ]]; then
    # The Node handler's table is webhook-ingest's own (its migrations), in a database beside it.
    psql_db postgres -c "CREATE DATABASE webhooks_node"
    for migration in "$REPO_ROOT"/services/webhook-ingest/migrations/*.sql; do
        psql_db webhooks_node -v ON_ERROR_STOP=1 -f "$migration" >/dev/null 2>"$WORK/migrate.err" ||
            die "migration $(basename "$migration") failed: $(cat "$WORK/migrate.err")"
    done
    if [[ -n "$pg_stats_opt" ]]; then psql_db webhooks_node -c "CREATE EXTENSION pg_stat_statements" >/dev/null; fi
fi

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

if [[ "$NODE_PEER" == 1 ]]; then
    log "starting the Node handler on 127.0.0.1:$NODE_PORT ($NODE_WORKERS process(es), pg pool 16)"
    PORT="$NODE_PORT" \
        REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
        DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/webhooks_node" \
        WEBHOOK_SECRET="$SECRET" \
        KEY_PREFIX="$NODE_PREFIX" \
        PG_POOL_MAX=16 \
        STREAM_MAX_LEN=1000000 \
        TOLERANCE_SECS=86400 \
        NODE_WORKERS="$NODE_WORKERS" \
        NODE_ENV=production \
        NODE_PATH="$NODE_DIR/node_modules" \
        node "$NODE_SRC/handler.js" >"$WORK/node.log" 2>&1 &
    NODE_PID=$! # node itself (not a subshell), so the CPU figures and the exit trap reach it
    for _ in $(seq 1 100); do
        curl -fsS "http://127.0.0.1:$NODE_PORT/healthz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -fsS "http://127.0.0.1:$NODE_PORT/healthz" >/dev/null || die "Node handler not ready: $(tail -5 "$WORK/node.log")"
fi

# A fresh, empty ledger is not what a service meets after its first minute (indexes of a real
# size, statistics from ANALYZE), so both ledgers start with the same history.
fill_ledger() {
    psql_db "$1" -v raw="$(cat "$WORK/deliveries.template")" >/dev/null <<SQL
INSERT INTO webhook_events
        (event_id, event_type, created, livemode, api_version, object_id, customer_id, status, stream_id,
         streamed_at, raw)
        SELECT 'evt_history_' || g, 'payment_intent.succeeded', 1700000000 + g, false, '2024-06-20',
               'pi_history_' || g, 'cus_history_' || (g % 997), 'streamed', '1700000000000-' || g, now(),
               replace(:'raw', '__EVENT_ID__', 'evt_history_' || g)
        FROM generate_series(1, $LEDGER_ROWS) g;
SQL
    psql_db "$1" -c "VACUUM ANALYZE webhook_events" -c "CHECKPOINT" >/dev/null
}
if [[ "$LEDGER_ROWS" -gt 0 ]]; then
    log "filling the ledger with $LEDGER_ROWS earlier events (VACUUM ANALYZE, CHECKPOINT)"
    fill_ledger webhooks
    if [[ "$NODE_PEER" == 1 ]]; then fill_ledger webhooks_node; fi
fi

# CPU ticks (utime + stime, USER_HZ) of a handler (with its child processes), redis-server, this
# run's Postgres (postmaster and its children) and the whole machine, so the summary can say
# where each webhook's CPU goes.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
tree_ticks() {
    local total=0 pid
    for pid in "$1" $(pgrep -P "$1" 2>/dev/null || true); do total=$((total + $(cpu_ticks "$pid"))); done
    echo "$total"
}
cpu_snapshot() {
    echo "$(tree_ticks "$1") $(cpu_ticks "$(cat "$WORK/redis.pid")") $(tree_ticks "$(head -1 "$WORK/pg/postmaster.pid")") $(awk '/^cpu / {print $2+$3+$4+$5+$6+$7+$8, $5+$6}' /proc/stat)"
}

metric() { curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" | awk -v m="$1" '$1 ~ "^"m"(\\{|$)" {s+=$2} END {print s+0}'; }
bench_rows() { psql_db "$1" -c "SELECT count(*) FROM webhook_events WHERE event_id LIKE 'evt_bench_%'"; }

# wrk's summary: requests, seconds, non-2xx, 2xx per second; a percentile in ms.
requests() { awk '/requests in/ {print $1}' "$1"; }
seconds() { awk '/requests in/ {sub(/s,?$/, "", $4); print $4}' "$1"; }
non2xx() { awk '/Non-2xx/ {n = $NF} END {print n + 0}' "$1"; }
ok_per_sec() { awk -v r="$(requests "$1")" -v n="$(non2xx "$1")" -v s="$(seconds "$1")" 'BEGIN {printf "%.0f", (r - n) / s}'; }
pct() { awk -v p="$2" '$1 == p {print $2}' "$1"; }
pct_ms() {
    pct "$1" "$2" | awk '{v = $1; u = $1; sub(/[a-z]+$/, "", v); sub(/^[0-9.]+/, "", u)
        printf "%.2f", v * (u == "us" ? 0.001 : u == "s" ? 1000 : u == "m" ? 60000 : 1)}'
}

# webhook_warmup LABEL PORT DATABASE: WARMUP of webhooks on the warm-up ids, then a CHECKPOINT.
webhook_warmup() {
    local label=$1 port=$2 db=$3
    log "$label: warm-up ($WARMUP of webhooks)"
    BENCH_DELIVERIES="$WORK/deliveries" BENCH_THREADS="$THREADS" BENCH_FIRST="$WARM_FIRST" \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" -s "$REPO_ROOT/scripts/bench/webhook-ingest.lua" \
        "http://127.0.0.1:$port/api/webhooks/stripe" >"$WORK/$label.warmup.txt"
    psql_db "$db" -c "CHECKPOINT" >/dev/null
}

# webhook_run LABEL PORT PID DATABASE: the measured run on the ids warm-ups do not use, with wrk's
# output in $WORK/LABEL.txt and "rows before, rows after, CPU before, CPU after" in
# $WORK/LABEL.stats.
webhook_run() {
    local label=$1 port=$2 pid=$3 db=$4 rows_before cpu_before cpu_after
    # Per-command Redis time, per-statement Postgres time and WAL: this run only.
    redis-cli -p "$REDIS_PORT" CONFIG RESETSTAT >/dev/null
    if [[ -n "$pg_stats_opt" ]]; then psql_db "$db" -c "SELECT pg_stat_statements_reset()" >/dev/null; fi
    psql_db "$db" -c "SELECT pg_stat_reset_shared('wal')" >/dev/null 2>&1 || true
    rows_before="$(bench_rows "$db")"
    cpu_before="$(cpu_snapshot "$pid")"
    log "$label: POST /api/webhooks/stripe: wrk -t$THREADS -c$CONNECTIONS -d$DURATION (unique signed deliveries)"
    BENCH_DELIVERIES="$WORK/deliveries" BENCH_THREADS="$THREADS" BENCH_END="$WARM_FIRST" \
        wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -s "$REPO_ROOT/scripts/bench/webhook-ingest.lua" \
        "http://127.0.0.1:$port/api/webhooks/stripe" | tee "$WORK/$label.txt"
    cpu_after="$(cpu_snapshot "$pid")"
    sleep 0.5 # requests wrk abandoned at the end of the run finish
    echo "$rows_before $(bench_rows "$db") $cpu_before $cpu_after" >"$WORK/$label.stats"
}

# webhook_details LABEL DATABASE: Redis commandstats, pg_stat_statements and WAL per webhook of
# the run just made, into $WORK/LABEL.details (printed in the summary).
webhook_details() {
    local label=$1 db=$2 n
    n="$(awk '{print $2 - $1}' "$WORK/$label.stats")"
    {
        echo "Redis per webhook (INFO commandstats: calls, usec inside Redis):"
        redis-cli -p "$REDIS_PORT" INFO commandstats | tr -d '\r' | awk -F'[:=,]' -v n="$n" \
            '/^cmdstat_/ && !/^cmdstat_config/ && n > 0 {printf "  %-12s %5.2f calls %7.1f us (%.1f us/call)\n", substr($1, 9), $3 / n, $5 / n, $7}'
        if [[ -n "$pg_stats_opt" ]]; then
            echo "Postgres per webhook (pg_stat_statements: calls, rows, execution ms per 1000 webhooks):"
            psql_db "$db" -F ' | ' -c "SELECT round(calls::numeric / greatest($n, 1), 3), round(rows::numeric / greatest($n, 1), 2),
                round((total_exec_time * 1000 / greatest($n, 1))::numeric, 1), left(regexp_replace(query, '\s+', ' ', 'g'), 60)
                FROM pg_stat_statements WHERE calls > 10 AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                ORDER BY total_exec_time DESC LIMIT 6" | sed 's/^/  /'
        fi
        psql_db "$db" -F ' ' -c "SELECT 'Postgres WAL per webhook: ' || round(wal_records::numeric / greatest($n, 1), 1) || ' records, '
            || round(wal_bytes / greatest($n, 1)) || ' bytes, ' || round(wal_fpi::numeric / greatest($n, 1), 2) || ' full-page images; '
            || wal_sync || ' flushes (' || round($n::numeric / greatest(wal_sync, 1), 1) || ' webhooks each)' FROM pg_stat_wal" 2>/dev/null || true
    } >"$WORK/$label.details"
}

# ack_latency LABEL PORT STREAM: the paced ack→stream run; its last line into $WORK/LABEL.ack.
ack_latency() {
    local label=$1 port=$2 stream=$3
    log "$label: ack→stream, $ACK_COUNT deliveries at $ACK_RATE/s"
    TARGET="http://127.0.0.1:$port/api/webhooks/stripe" \
        REDIS_URL="redis://127.0.0.1:$REDIS_PORT" \
        STREAM_KEY="$stream" \
        TEMPLATE="$WORK/deliveries.template" \
        SECRET="$SECRET" COUNT="$ACK_COUNT" RATE="$ACK_RATE" LABEL="$label" \
        node_run "$NODE_SRC/ack-latency.js" | tee "$WORK/$label.ack.out" || true
    grep '^ack_to_stream ' "$WORK/$label.ack.out" >"$WORK/$label.ack" || echo "ack_to_stream label=$label failed" >"$WORK/$label.ack"
}

# --- runs --------------------------------------------------------------------------------------
log "warm-up (2 s of /healthz)"
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:$HTTP_PORT/healthz" >/dev/null

log "/healthz: wrk -t$THREADS -c$CONNECTIONS -d$DURATION"
health_cpu_before="$(cpu_snapshot "$SERVICE_PID")"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$HTTP_PORT/healthz" | tee "$WORK/healthz.txt"
health_cpu_after="$(cpu_snapshot "$SERVICE_PID")"

webhook_warmup ingest "$HTTP_PORT" webhooks
recorded_before="$(metric webhook_recorded_total)"
webhook_run ingest "$HTTP_PORT" "$SERVICE_PID" webhooks
recorded="$(( $(metric webhook_recorded_total) - recorded_before ))"
webhook_details ingest webhooks
duplicates="$(metric webhook_duplicates_total)"
rejected="$(metric webhook_rejected_total)"
# The relay appends after the answer: let it finish before counting the stream.
sleep 2
stream_len="$(redis-cli -p "$REDIS_PORT" XLEN "$INGEST_STREAM" 2>/dev/null || echo '?')"
ledger_received="$(psql_hooks -c "SELECT count(*) FROM webhook_events WHERE status = 'received'")"
ack_latency webhook-ingest "$HTTP_PORT" "$INGEST_STREAM"

if [[ "$NODE_PEER" == 1 ]]; then
    webhook_warmup node "$NODE_PORT" webhooks_node
    webhook_run node "$NODE_PORT" "$NODE_PID" webhooks_node
    webhook_details node webhooks_node
    node_stream_len="$(redis-cli -p "$REDIS_PORT" XLEN "$NODE_STREAM" 2>/dev/null || echo '?')"
    ack_latency node "$NODE_PORT" "$NODE_STREAM"
fi

# --- summary -----------------------------------------------------------------------------------
failed=0
rps() { awk '/^Requests\/sec:/ {print $2}' "$1"; }
secs="${DURATION%s}"
health_rps="$(rps "$WORK/healthz.txt")"
hook_rps="$(rps "$WORK/ingest.txt")"
# stored_line LABEL NAME: the row check of one handler's measured run (2xx answers ≤ rows stored).
stored_line() {
    local ok rows
    ok="$(( $(requests "$WORK/$1.txt") - $(non2xx "$WORK/$1.txt") ))"
    rows="$(awk '{print $2 - $1}' "$WORK/$1.stats")"
    if ((rows < ok)); then
        echo "$2: FAILED: $ok answered 2xx but only $rows rows stored"
        return 1
    fi
    echo "$2: $rows rows stored in the run for $ok answered 2xx ($(non2xx "$WORK/$1.txt") non-2xx)"
}
cpu_line() {
    awk -v n="$(awk '{print $2 - $1}' "$WORK/$1.stats")" -v cores="$(nproc)" -v hz="$(getconf CLK_TCK)" -v name="$2" '{
        us = 1e6 / hz / (n ? n : 1)
        printf "CPU per stored webhook, %s: handler %.0f us, redis %.0f us, postgres %.0f us; machine busy %.0f%% of %d cores\n",
            name, ($8 - $3) * us, ($9 - $4) * us, ($10 - $5) * us, 100 * (1 - ($12 - $7) / ($11 - $6)), cores }' "$WORK/$1.stats"
}
# ack_field LABEL KEY: one value of the ack→stream line.
ack_field() { tr ' ' '\n' <"$WORK/$1.ack" | awk -F= -v k="$2" '$1 == k {print $2}'; }
ack_line() {
    if [[ -z "$(ack_field "$1" p50_ms)" ]]; then
        echo "ack→stream, $2: FAILED (see $2's output above)"
        return 1
    fi
    printf 'ack→stream, %s: p50 %s ms, p90 %s ms, p99 %s ms (min %s, max %s); %s of %s answered 200, %s never reached the stream; request p50 %s, p99 %s ms\n' \
        "$2" "$(ack_field "$1" p50_ms)" "$(ack_field "$1" p90_ms)" "$(ack_field "$1" p99_ms)" "$(ack_field "$1" min_ms)" \
        "$(ack_field "$1" max_ms)" \
        "$(ack_field "$1" ok)" "$(ack_field "$1" sent)" "$(ack_field "$1" missing)" "$(ack_field "$1" http_p50_ms)" "$(ack_field "$1" http_p99_ms)"
    [[ "$(ack_field "$1" missing)" == 0 && "$(ack_field "$1" ok)" == "$(ack_field "$1" sent)" ]]
}

echo
echo "== webhook-ingest benchmark ($(nproc) cores, load avg $(cut -d' ' -f1-3 /proc/loadavg)) =="
printf '%-36s %10s %10s %10s %10s\n' endpoint "req/s" "2xx/s" p50 p99
printf '%-36s %10s %10s %10s %10s\n' "GET /healthz" "$health_rps" "$(ok_per_sec "$WORK/healthz.txt")" "$(pct "$WORK/healthz.txt" 50%)" "$(pct "$WORK/healthz.txt" 99%)"
printf '%-36s %10s %10s %10s %10s\n' "POST webhook (webhook-ingest)" "$hook_rps" "$(ok_per_sec "$WORK/ingest.txt")" "$(pct "$WORK/ingest.txt" 50%)" "$(pct "$WORK/ingest.txt" 99%)"
if [[ "$NODE_PEER" == 1 ]]; then
    printf '%-36s %10s %10s %10s %10s\n' "POST webhook (Node handler)" "$(rps "$WORK/node.txt")" "$(ok_per_sec "$WORK/node.txt")" "$(pct "$WORK/node.txt" 50%)" "$(pct "$WORK/node.txt" 99%)"
fi
echo "verified+recorded webhooks/s: $(awk -v n="$recorded" -v s="$secs" 'BEGIN {printf "%.0f", n / s}') ($recorded recorded in $DURATION; duplicates $duplicates, rejected $rejected, non-2xx $(non2xx "$WORK/ingest.txt"))"
echo "stream length $stream_len, ledger rows to stream $ledger_received (both count the warm-up too; equal when the relay kept up)"
stored_line ingest webhook-ingest || failed=1
batch_rows() { echo "$(metric "webhook_ledger_$1_batch_rows_sum") $(metric "webhook_ledger_$1_batch_rows_count")" | awk '{printf "%.1f", $2 ? $1 / $2 : 0}'; }
echo "ledger rows per insert statement (one commit each): $(batch_rows insert)"
echo "relay lag (commit -> stream entry), mean: $(echo "$(metric outbox_relay_lag_seconds_sum) $(metric outbox_relay_lag_seconds_count)" | awk '{printf "%.2f ms", $2 ? $1 * 1000 / $2 : 0}')"
cpu_line ingest webhook-ingest
health_requests="$(requests "$WORK/healthz.txt")"
echo "$health_cpu_before $health_cpu_after" | awk -v n="$health_requests" -v hz="$(getconf CLK_TCK)" '{
    printf "CPU per /healthz request: service %.1f us; the rest of the machine (wrk, other load) %.1f us\n",
        ($6 - $1) * 1e6 / hz / n, (($9 - $4) - ($10 - $5) - ($6 - $1)) * 1e6 / hz / n }'
cat "$WORK/ingest.details"
echo "ratio webhook/healthz: $(awk -v a="$hook_rps" -v b="$health_rps" 'BEGIN {printf "%.3f", a / b}') (target >= 0.3)"
ack_line webhook-ingest webhook-ingest || failed=1
ingest_p99="$(pct_ms "$WORK/ingest.txt" 99%)"
echo "webhook-ingest p99 at $CONNECTIONS connections: $ingest_p99 ms (target < 50 ms: $(awk -v p="$ingest_p99" 'BEGIN {print (p < 50 ? "met" : "NOT met")}'))"
if [[ "$NODE_PEER" == 1 ]]; then
    echo
    echo "-- Node handler (scripts/bench/node-webhook/handler.js, $NODE_WORKERS process(es), pg pool 16; Node $(node --version)) --"
    stored_line node "Node handler" || failed=1
    echo "Node stream length $node_stream_len (warm-up included)"
    cpu_line node "Node handler"
    cat "$WORK/node.details"
    ack_line node "Node handler" || failed=1
    { grep -v '^$' "$WORK/node.log" || true; } | tail -3 | sed 's/^/node log: /'
    echo
    ratio="$(awk -v a="$(ok_per_sec "$WORK/ingest.txt")" -v b="$(ok_per_sec "$WORK/node.txt")" 'BEGIN {printf "%.2f", b ? a / b : 0}')"
    echo "ratio webhook-ingest / Node handler (2xx/s, each answered only once its row is durable): ${ratio}x (target >= 1.5: $(awk -v r="$ratio" 'BEGIN {print (r >= 1.5 ? "met" : "NOT met")}'))"
fi
exit "$failed"
