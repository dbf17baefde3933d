#!/usr/bin/env bash
# Sets up the development stack and runs the benchmarks (the tidemark-bench crate):
# prints a table and writes BENCHMARKS.md. Run it on an otherwise idle machine.
# Extra arguments go to tidemark-bench, e.g. scripts/bench.sh --only throughput --repeat 5.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/dev-stack.sh up
cargo build --release -p tidemark-bridge -p tidemark-bench
exec target/release/tidemark-bench "$@"
