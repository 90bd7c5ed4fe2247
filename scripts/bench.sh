#!/usr/bin/env bash
# Runs the whole benchmark suite in a release build and prints the table of BENCHMARKS.md; the
# same report is kept in target/bench-report.md. Arguments go to the suite, e.g.
#   scripts/bench.sh --embedded-rows 1m,3m,10m
#   scripts/bench.sh --parts extract,embedded --repeat 5
#   scripts/bench.sh --help
# The machine should be quiet: the figures are throughputs on shared cores.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "bench: load average $(cut -d' ' -f1-3 /proc/loadavg), $(nproc) cores" >&2
exec cargo bench --bench suite -- --out target/bench-report.md "$@"
