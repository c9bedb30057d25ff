#!/usr/bin/env bash
# usage-meter benchmark: usage events consumed per second by ONE consumer (batch sizes 1000, 100,
# 1) against redis-benchmark XADD throughput on the same private redis-server, and quota-check
# latency (p50/p99) under wrk load next to /healthz on the same server. Everything runs in one
# release binary (services/usage-meter/examples/bench.rs) that starts its own Redis and Postgres
# on free loopback ports and runs redis-benchmark and wrk itself, so the ratios come from one run.
#
# Env: CARGO_TARGET_DIR (as for every cargo command), BENCH_EVENTS (default 200000),
# BENCH_WRK_SECS (default 10), BENCH_WRK_CONNECTIONS (default 32).
# Output: stdout and target/bench/usage-meter.txt (last line: one JSON object with the figures).
set -euo pipefail
cd "$(dirname "$0")/../.."
for tool in redis-server redis-benchmark wrk; do
    command -v "$tool" >/dev/null || { echo "usage-meter bench needs $tool (make deps / apt-get install redis-tools wrk)" >&2; exit 1; }
done
mkdir -p target/bench
cargo build --release -q -p usage-meter --example bench
"${CARGO_TARGET_DIR:-target}/release/examples/bench" | tee target/bench/usage-meter.txt
