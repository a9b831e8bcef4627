#!/bin/bash
# rings-bench (make vm-bench): the benchmark comparisons on real Xen, as
# counts and ratios (TCG times are not absolute).  Not part of vm-test.
#
#  A. notification coalescing: the same sharing + unsharing workload with
#     the watcher at batch 1 and at batch 32: notifications per record,
#     from Xen's own counters (GET_INFO)
#  B. OOM pause under invalidation load: the pager's per-event pause
#     (p50, max) with the watcher detached and with a batch-1 watcher
#     taking a notification per record on its own ring
set -uo pipefail
. /opt/xme/lib.sh

N=${XME_NSHARE:-32}
R=$XME_RUN/bench
pct() {     # pct FILE P: the P-th percentile of the numbers in FILE
    sort -n "$1" | awk -v p="$2" '{a[NR] = $1} END {i = int((NR - 1) * p / 100) + 1; print a[i] + 0}'
}

# round NAME BATCH: one guest, pager attached, watcher at BATCH (0: none);
# share, cap, write.  Sets NOTIF, PROD, PAUSES (file of paused_ms).
round() {
    local name=$1 batch=$2 w=
    boot_guest "$name"
    memshare enable "$D" >/dev/null 2>&1
    xen-mem-event pager --domain "$D" --step 4 --json > "$R-$name-pager.jsonl" 2>/dev/null &
    local p=$!
    if [ "$batch" != 0 ]; then
        xen-mem-event watch --domain "$D" --batch "$batch" --json > "$R-$name-watch.jsonl" 2>/dev/null &
        w=$!
        wait_for 20 ring_connected "$D" SHARING_INVALIDATE
    fi
    wait_for 20 ring_connected "$D" SHARING_OOM
    share_pages "$name" "$D" zero zero "$N"
    share_pages "$name" "$D" ident same "$N"
    cap_allowance "$D"
    memtest_check write-$name "$name" write 300
    sleep 2
    PROD=0 NOTIF=0
    if [ -n "$w" ]; then
        PROD=$(ring_field "$D" SHARING_INVALIDATE produced)
        NOTIF=$(ring_field "$D" SHARING_INVALIDATE notifications)
        stop_tool "$w"
    fi
    stop_tool "$p"
    grep -F '"kind":"oom"' "$R-$name-pager.jsonl" | sed -n 's/.*"paused_ms":\([0-9.]*\).*/\1/p' > "$R-$name.pauses"
    PAUSES=$R-$name.pauses
    guest_destroy "$name"
}

round b1 1;  p1=$PROD n1=$NOTIF; pz1=$PAUSES
round b32 32; p32=$PROD n32=$NOTIF
round alone 0; pza=$PAUSES
r1=$(awk -v n="$n1" -v p="$p1" 'BEGIN {printf "%.3f", p ? n / p : 0}')
r32=$(awk -v n="$n32" -v p="$p32" 'BEGIN {printf "%.3f", p ? n / p : 0}')
gain=$(awk -v a="$r1" -v b="$r32" 'BEGIN {printf "%.1f", b ? a / b : 0}')
if [ "$p1" -gt 0 ] && [ "$p32" -gt 0 ] && [ "$n32" -le $(( p32 / 32 + 1 )) ]; then
    result coalescing PASS "batch 1: $n1 notifications for $p1 records ($r1/record); batch 32: $n32 for $p32 ($r32/record): ${gain}x fewer kicks, <= 1 per batch"
else
    result coalescing FAIL "batch 1: $n1/$p1, batch 32: $n32/$p32"
fi
a50=$(pct "$pza" 50) amax=$(pct "$pza" 100) f50=$(pct "$pz1" 50) fmax=$(pct "$pz1" 100)
ratio=$(awk -v f="$f50" -v a="$a50" 'BEGIN {printf "%.2f", a ? f / a : 0}')
if [ -s "$pza" ] && [ -s "$pz1" ]; then
    result oom-pause PASS "OOM pause p50/max: alone ${a50}/${amax} ms ($(wc -l < "$pza") events), beside a batch-1 watcher ${f50}/${fmax} ms ($(wc -l < "$pz1") events): p50 ratio ${ratio}x (TCG: ratios only)"
else
    result oom-pause FAIL "no OOM events recorded"
fi
exit $fail
