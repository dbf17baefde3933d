#!/usr/bin/env bash
# Fuzzes the parsers of outside input with cargo-fuzz (libFuzzer), each target for a
# bounded time: the pgoutput decoder, a COPY text line, the value codec and what the
# client reads from a Kafka record (fuzz/fuzz_targets/). Not part of CI.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]    (default 60 s, every target)
#
# Installs cargo-fuzz when it is missing. Builds without a sanitizer, so stable Rust is
# enough (AddressSanitizer needs nightly; safe Rust does not need it to find a panic),
# with debug assertions and overflow checks on. What the fuzzer learns is kept in
# fuzz/corpus/<target> (git-ignored) and the hand-made seeds are in fuzz/seeds/<target>.
# Exits non-zero when a target crashes, naming the input libFuzzer saved in
# fuzz/artifacts/<target>/; replay it with `cargo fuzz run --sanitizer none <target> <file>`
# in fuzz/, and add it as a regression test beside the parser.
set -euo pipefail

secs=${1:-60}
shift || true
if ! [[ $secs =~ ^[0-9]+$ ]] || [ "$secs" -lt 1 ]; then
    echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2
    exit 2
fi

cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build --sanitizer none

failed=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    log="artifacts/$t/last-run.log"
    echo "== $t: ${secs}s"
    # Only the first corpus directory is written to; the seeds stay as they are.
    if cargo fuzz run --sanitizer none "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^Done [0-9]+ runs|stat::number_of_executed_units|stat::average_exec_per_sec' "$log" |
            sed "s/^/   /"
    else
        failed+=("$t")
        echo "!! $t crashed; log: fuzz/$log" >&2
        grep -E 'panicked at|^SUMMARY|Test unit written to|^Base64' "$log" | sed 's/^/   /' >&2
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/<target>/crash-*)" >&2
    exit 1
fi
echo "no crash in ${targets[*]} (${secs}s each)"
