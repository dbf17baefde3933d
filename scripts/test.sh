#!/usr/bin/env bash
# Sets up the development stack and runs every check and test: formatting, clippy,
# unit tests, doctests and the end-to-end tests against the real PostgreSQL and broker.
# CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/dev-stack.sh up
# The broker holds only test data; start it empty so every run sees the same broker.
scripts/dev-stack.sh broker-reset
scripts/dev-stack.sh drop-test-slots

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== build (release)"
cargo build --release --workspace --bins --examples
echo "== tests (release; end-to-end tests print their figures)"
# One test at a time: the race and crash tests load both cores by themselves, and
# tests that stop a broker of their own reuse fixed ports.
cargo test --release --workspace -- --nocapture --test-threads "${TIDEMARK_TEST_THREADS:-1}"
echo "== all tests passed"
