#!/usr/bin/env bash
# `make bench`: the criterion benchmarks, then every service's HTTP / throughput benchmark
# (scripts/bench/<service>.sh), each against real Redis and Postgres on loopback. Results are
# printed and kept under .run/bench/; docs/benchmarks.md says how to read them.
#
#   scripts/bench/run-all.sh                 everything
#   scripts/bench/run-all.sh criterion       only the cargo benches
#   scripts/bench/run-all.sh campaign-api    only that service's script
#   BASE=<rev> scripts/bench/run-all.sh compare   the hot reads of <rev> against the working
#                                            tree (compare.sh; not part of "everything")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

out=.run/bench
mkdir -p "$out"
only=${1:-all}

if [[ $only == all || $only == criterion ]]; then
    echo "=== bench: criterion (cargo bench --workspace) ==="
    ${CARGO:-cargo} bench ${CARGO_FLAGS:-} --workspace 2>&1 | tee "$out/criterion.txt"
fi

shopt -s nullglob
for script in scripts/bench/*.sh; do
    name=$(basename "$script" .sh)
    [[ $name == run-all || $name == backends ]] && continue
    [[ $name == compare && $only != compare ]] && continue
    [[ $only == all || $only == "$name" ]] || continue
    echo "=== bench: $name ==="
    bash "$script" 2>&1 | tee "$out/$name.txt"
done
echo "=== bench: results in $out/ ==="
