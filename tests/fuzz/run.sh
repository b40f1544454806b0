#!/usr/bin/env bash
# Build the fuzz targets (cargo-fuzz, libFuzzer, AddressSanitizer) and run each for a
# bounded time, from the committed seeds. Prints one line per target (executions,
# seconds, crashes) and exits non-zero on the first crash, naming the input that caused
# it. Usage: run.sh TARGET_DIR SECONDS [TARGET...] (all targets when none are named).
#
# cargo-fuzz passes `-Z` flags (the sanitizer, libFuzzer's coverage passes) that only a
# nightly rustc takes; RUSTC_BOOTSTRAP=1 lets the stable toolchain take them, so no
# nightly is needed. The stable toolchain ships the AddressSanitizer runtime for
# x86_64 Linux.
set -euo pipefail
cd "$(dirname "$0")"
target_dir=$1
seconds=$2
shift 2
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list --fuzz-dir .)
fi
export RUSTC_BOOTSTRAP=1
fuzz_target_dir="$target_dir/fuzz"
work="$fuzz_target_dir/runs"
fuzz=(cargo fuzz)
opts=(--fuzz-dir . --target-dir "$fuzz_target_dir" --sanitizer address)

# Every target at once (one cargo invocation), before any clock starts.
"${fuzz[@]}" build "${opts[@]}"

total=0
for t in "${targets[@]}"; do
    # New inputs the fuzzer finds go to a corpus outside the repository; the seeds
    # stay as committed.
    corpus="$work/$t/corpus"
    artifacts="$work/$t/artifacts"
    # The target directory outlives the clone: a crash input an earlier run left is
    # not this run's finding (it was reported then), so each run starts with none.
    rm -rf "$artifacts"
    mkdir -p "$corpus" "$artifacts"
    log="$work/$t/log"
    status=0
    "${fuzz[@]}" run "${opts[@]}" "$t" "$corpus" "seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$artifacts/" \
        >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    crashes=$(find "$artifacts" -type f | wc -l)
    echo "fuzz $t: ${execs:-?} executions in ${seconds} s, $crashes crash(es)"
    if [ "$status" -ne 0 ] || [ "$crashes" -ne 0 ]; then
        echo "fuzz $t failed (exit $status); the fuzzer's output, from its report:" >&2
        grep -A 40 -m 1 -E '^==[0-9]+==|panicked|Failing input|SUMMARY' "$log" >&2 || tail -40 "$log" >&2
        find "$artifacts" -type f -printf '  input: %p\n' >&2
        exit 1
    fi
    total=$((total + ${execs:-0}))
done
echo "fuzz: ${#targets[@]} targets, $total executions, no crash"
