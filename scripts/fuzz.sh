#!/usr/bin/env bash
# The hostile-consumer fuzzer: a libFuzzer target over the hypervisor's ring
# core (build/xen/xen/common/mem_event_ring.c, compiled unchanged with the
# harness's stand-in headers), see xen-mem-event-harness/fuzz/ring_fuzz.c.
#
#   scripts/fuzz.sh               fuzz for FUZZ_S seconds (default 600), then
#                                 merge what was found into the repo corpus
#                                 (minimised with -merge=1)
#   scripts/fuzz.sh --smoke [N]   run the repo corpus, then fuzz for N seconds
#                                 (default 30) in a scratch directory; the
#                                 repo corpus is left alone (make test)
#
# Single process (no -jobs/-workers).  Prints one summary line: executions,
# exec/s, libFuzzer's coverage (cov: edges, ft: features), the corpus, and
# the line/branch coverage of mem_event_ring.c reached by the corpus.
# Exits non-zero on any crash, leak, timeout or invariant violation; the
# input is saved under build/fuzz/artifacts/.
#
# FUZZ_CORE=file.c compiles that file instead of the ring core (used to check
# that the target catches an injected bug); FUZZ_TRACE=1 makes the target
# print every operation (to replay an artifact: build/fuzz/ring_fuzz FILE).
set -euo pipefail

TOP=$(cd "$(dirname "$0")/.." && pwd)
XEN_TREE=${XEN_TREE:-$TOP/build/xen}
OUT=$TOP/build/fuzz
SRC=$TOP/xen-mem-event-harness/fuzz
CORPUS=$SRC/corpus
CORE=${FUZZ_CORE:-$XEN_TREE/xen/common/mem_event_ring.c}
CC=${FUZZ_CC:-clang-14}
MAX_LEN=${FUZZ_MAX_LEN:-2048}

mode=fuzz
secs=${FUZZ_S:-600}
case "${1:-}" in
    --smoke) mode=smoke; secs=${2:-30} ;;
    "") ;;
    *) echo "usage: $0 [--smoke [SECONDS]]" >&2; exit 2 ;;
esac

if [ ! -f "$CORE" ]; then
    echo "fuzz: $CORE not found: run 'make xen-src' first" >&2
    exit 1
fi
command -v "$CC" >/dev/null || { echo "fuzz: $CC not found (make deps)" >&2; exit 1; }

mkdir -p "$OUT/artifacts" "$CORPUS"

CFLAGS=(-std=gnu99 -g -O1 -fno-omit-frame-pointer -fno-strict-aliasing
        -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers
        -Werror -D__XEN_TOOLS__
        -I "$TOP/xen-mem-event-harness/c/include" -I "$XEN_TREE/xen/include")

# The fuzzer: ASan + UBSan, every report fatal.
"$CC" "${CFLAGS[@]}" -fsanitize=fuzzer,address,undefined \
    -fno-sanitize-recover=all \
    "$SRC/ring_fuzz.c" "$CORE" -o "$OUT/ring_fuzz"
# Source coverage of the corpus (no sanitizers; libFuzzer only runs it).
"$CC" "${CFLAGS[@]}" -fsanitize=fuzzer -fprofile-instr-generate \
    -fcoverage-mapping "$SRC/ring_fuzz.c" "$CORE" -o "$OUT/ring_fuzz_cov"

work=$OUT/corpus-new
rm -rf "$work"
mkdir -p "$work"
log=$OUT/fuzz.log

export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

echo "fuzz: $mode, $secs s, corpus $(ls "$CORPUS" | wc -l) files, log $log"
set +e
"$OUT/ring_fuzz" "$work" "$CORPUS" \
    -max_total_time="$secs" -max_len="$MAX_LEN" -timeout=10 \
    -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$OUT/artifacts/" >"$log" 2>&1
rc=$?
set -e

if [ $rc -ne 0 ] || grep -qE '^(==[0-9]+==ERROR|SUMMARY: |ring_fuzz: invariant)' "$log"; then
    echo "fuzz: FAILED (libFuzzer exit $rc); last lines of $log:" >&2
    grep -E 'invariant|ERROR|SUMMARY|runtime error|Test unit written|artifact' "$log" \
        | tail -n 20 >&2 || true
    [ $rc -ne 0 ] || rc=1
    exit $rc
fi

# The last status line: "#N DONE cov: C ft: F corp: A/B ... exec/s: E ...".
done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)
[ -n "$done_line" ] || done_line=$(grep -E '^#[0-9]+[[:space:]]' "$log" | tail -n 1)
field() { sed -nE "s/.* $1 ([^ ]+).*/\\1/p" <<<"$done_line"; }
execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log")
eps=$(sed -nE 's/^stat::average_exec_per_sec: *([0-9]+).*/\1/p' "$log")
cov=$(field cov:)
ft=$(field ft:)

# make fuzz keeps what it found: the repo corpus, minimised again.
if [ "$mode" = fuzz ]; then
    merged=$OUT/corpus-merged
    rm -rf "$merged"
    mkdir -p "$merged"
    "$OUT/ring_fuzz" -merge=1 -max_len="$MAX_LEN" "$merged" "$CORPUS" "$work" \
        >"$OUT/merge.log" 2>&1 || { echo "fuzz: merge failed, see $OUT/merge.log" >&2; exit 1; }
    find "$CORPUS" -maxdepth 1 -type f -delete
    find "$merged" -maxdepth 1 -type f -exec cp -t "$CORPUS" {} +
    rm -rf "$merged"
fi
files=$(find "$CORPUS" -type f | wc -l)
kib=$(( ($(find "$CORPUS" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}') + 1023) / 1024 ))

# Line/branch/function coverage of the ring core reached by the corpus.
prof=$OUT/cov
rm -rf "$prof"
mkdir -p "$prof"
LLVM_PROFILE_FILE="$prof/%p.profraw" "$OUT/ring_fuzz_cov" -runs=0 \
    -max_len="$MAX_LEN" "$CORPUS" "$work" >"$OUT/cov.log" 2>&1
llvm-profdata-14 merge -sparse "$prof"/*.profraw -o "$prof/all.profdata"
core_cov=$(llvm-cov-14 report "$OUT/ring_fuzz_cov" -instr-profile="$prof/all.profdata" \
    "$CORE" | awk '$1 ~ /mem_event_ring\.c$|^TOTAL$/ && !done {
        printf "regions %s, functions %s, lines %s, branches %s", $4, $7, $10, $13; done=1 }')

echo "fuzz: $mode ok: ${execs:-?} executions in $secs s (${eps:-?} exec/s), cov: $cov ft: $ft, corpus $files files / $kib KiB, mem_event_ring.c $core_cov"
