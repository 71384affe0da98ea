#!/usr/bin/env bash
# Coverage-guided fuzzing of every target for a bounded time each, on the stable toolchain
# (RUSTC_BOOTSTRAP=1 lets it build what cargo-fuzz needs), then the grown corpus minimised back
# into fuzz/corpus/<target> so it can be committed. Crashes land in fuzz/artifacts/<target>.
#
#   fuzz/run.sh                 # every target, 300 s each
#   SECONDS_EACH=3600 fuzz/run.sh token mime
#
# Prints one line per target (executions, corpus before -> after, crashes) for fuzz/README.md.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

SECONDS_EACH="${SECONDS_EACH:-300}"
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=(token mime jmap_request signer_frames)
fi
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_FUZZ_TARGET_DIR:-$HOME/.cache/keypost/fuzz-target}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: installing cargo-fuzz" >&2
    cargo install --locked cargo-fuzz
fi

summary=()
for t in "${TARGETS[@]}"; do
    corpus="corpus/$t"
    grown="$(mktemp -d)"
    before=$(find "$corpus" -type f | wc -l)
    log="$(mktemp)"
    # The committed corpus seeds the run; what it grows goes to a scratch directory first.
    status=0
    cargo fuzz run "$t" "$grown" "$corpus" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' || echo "?")
    crashes=$(find "artifacts/$t" -type f 2>/dev/null | wc -l)
    # Merge the seed and the grown inputs, keeping only those that add coverage.
    minimised="$(mktemp -d)"
    cargo fuzz run "$t" "$minimised" "$corpus" "$grown" -- -merge=1 >/dev/null 2>&1 || true
    if [ "$(find "$minimised" -type f | wc -l)" -gt 0 ]; then
        rm -rf "$corpus"
        mkdir -p "$corpus"
        cp "$minimised"/* "$corpus"/
    fi
    after=$(find "$corpus" -type f | wc -l)
    line="$t: ${SECONDS_EACH}s, $execs executions, corpus $before -> $after, crashes $crashes (exit $status)"
    echo "$line"
    summary+=("$line")
    if [ "$status" -ne 0 ]; then
        tail -40 "$log" >&2
    fi
    rm -rf "$grown" "$minimised" "$log"
done
printf '%s\n' "${summary[@]}"
