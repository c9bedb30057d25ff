#!/usr/bin/env bash
# Benchmark of the customer-count-refresher walk:
#   1 000 000 invoices (4 000 pages of 250) from the fake simPRO with 20 ms latency per page;
#   wall time against the ideal pages x latency / concurrency (target <= 1.3x), peak RSS of the
#   walker (target < 100 MiB) and the speed-up over a sequential walk, all in one run.
#
# The fake runs as its own process (fake-simpro, crates/platform-testing) so the walker's RSS is
# measured alone (VmHWM of the walk_bench process). Knobs (environment):
#   INVOICES=1000000 CUSTOMERS=250000 LATENCY_MS=20 CONCURRENCY=16 SEQUENTIAL=yes
#   COLUMNS=ID,Customer (simPRO's columns parameter, as the service sends it; "-" = all fields)
#   CARGO_TARGET_DIR (default: <repo>/target)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO_ROOT"
INVOICES="${INVOICES:-1000000}"
CUSTOMERS="${CUSTOMERS:-250000}"
LATENCY_MS="${LATENCY_MS:-20}"
CONCURRENCY="${CONCURRENCY:-16}"
SEQUENTIAL="${SEQUENTIAL:-yes}"
COLUMNS="${COLUMNS:-ID,Customer}"
TOKEN="bench-simpro-token"
TARGET="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"

cargo build --release -q -p platform-testing --bin fake-simpro
cargo build --release -q -p customer-count-refresher --example walk_bench

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
"$TARGET/release/fake-simpro" --port "$PORT" --invoices "$INVOICES" --customers "$CUSTOMERS" \
    --latency-ms "$LATENCY_MS" --token "$TOKEN" --threads 2 >/dev/null &
FAKE_PID=$!
trap 'kill "$FAKE_PID" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then break; fi
    sleep 0.1
done

echo "== customer-count-refresher walk: $INVOICES invoices, $CUSTOMERS customers, ${LATENCY_MS} ms/page, concurrency $CONCURRENCY, columns $COLUMNS"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
"$TARGET/release/examples/walk_bench" "http://127.0.0.1:$PORT" "$TOKEN" "$CONCURRENCY" "$LATENCY_MS" "$SEQUENTIAL" "$COLUMNS" \
    | tee "${BENCH_OUT:-/dev/null}"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
