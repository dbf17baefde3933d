#!/usr/bin/env bash
# Sets up the development stack and runs the benchmarks (the tidemark-bench crate):
# prints a table and writes BENCHMARKS.md. Run it on an otherwise idle machine, with
# no other client of the development broker: it starts the broker empty.
# Extra arguments go to tidemark-bench, e.g. scripts/bench.sh --only throughput --repeat 5.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/dev-stack.sh up
scripts/dev-stack.sh bench-deps
# An empty broker, so that every run measures the same broker.
scripts/dev-stack.sh broker-reset
scripts/dev-stack.sh drop-test-slots
cargo build --release -p tidemark-bridge -p tidemark-bench -p tidemark-examples --bins --examples
# The broker, named in the report's machine line.
TIDEMARK_BENCH_BROKER="$(scripts/dev-stack.sh broker-name)" exec target/release/tidemark-bench "$@"
