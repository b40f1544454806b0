#!/usr/bin/env bash
# What share of an http step's CPU the security budgets, pins, taint and redaction take
# (issue 18: "the new budgets cost the step path less than 5% of CPU"). They cannot be
# switched off to compare, so this samples the bench's in-process http step (concurrency
# 32, `BENCH_ONLY=api BENCH_API_PATHS=direct`) with `perf record` and sums the samples
# whose function belongs to each part, over the second half of the run (the first half
# holds start-up compiles). Compiler samples are left out of the total.
#
# Usage: budget-share.sh BENCH_BINARY [REQUESTS]   (FLOW8_WASM_DIR as for `just bench`)
# Inlined code counts toward its caller, so a small check inlined into the step path is
# not seen; `memchr::memmem` counts toward redaction although other code uses it too.
set -euo pipefail
bin="$1"
requests="${2:-40000}"
command -v perf >/dev/null || { echo "perf is not installed (Debian: linux-perf)"; exit 1; }
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
BENCH_ONLY=api BENCH_API_PATHS=direct BENCH_API_REQUESTS="$requests" \
    perf record -q -F 999 -o "$dir/perf.data" "$bin" --bench > "$dir/run.log" 2>&1
grep -E '^\| step in process' "$dir/run.log" || { cat "$dir/run.log"; exit 1; }
perf report -i "$dir/perf.data" --no-children --sort symbol --stdio --time 50%-100% 2>/dev/null \
    | grep -E '^ +[0-9.]+%' \
    | awk '
    {
        pct = $1; sub(/%/, "", pct); pct += 0
        sym = $0; sub(/^ +[0-9.]+% +\[[^]]*\] +/, "", sym)
        if (sym ~ /regalloc2|cranelift|wasmparser|wasmtime_environ::compil|winch/) { compile += pct; next }
        total += pct
        if (sym ~ /policy::redact::|memchr::memmem|memchr::arch::all::twoway/) redaction += pct
        else if (sym ~ /runtime::policy::|catalogue::pins::|runtime::taint::|::pins$/) policy += pct
        else if (sym ~ /runtime::fair::|workspace_quota::|schema_budget::|sandbox::Limiter|StoreResourceLimiter/) budgets += pct
    }
    END {
        printf "| part | share of the step'"'"'s CPU |\n| --- | ---: |\n"
        printf "| redaction and response scans (items 8, 9) | %.2f %% |\n", 100 * redaction / total
        printf "| step policy: pins, taint, methods, headers (items 6, 7) | %.2f %% |\n", 100 * policy / total
        printf "| fair share, memory and table limits, workspace quota, schema budget (items 1-5) | %.2f %% |\n", 100 * budgets / total
        printf "| all of them | %.2f %% (target < 5 %%) |\n", 100 * (redaction + policy + budgets) / total
        printf "(compiler samples left out: %.1f %% of the half sampled)\n", compile
    }'
