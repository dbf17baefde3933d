#!/usr/bin/env bash
# Sets up the development stack and runs the demo (examples/demo.rs): the bridge, a
# writer under load, and the changes arriving in Kafka. Extra arguments go to the demo,
# e.g. scripts/demo.sh --seconds 60.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
scripts/dev-stack.sh up
exec cargo run --release --example demo -- "$@"
