#!/bin/bash
# rings-parked: an OOM request that cannot be posted parks the vCPU (no busy
# loop, one log line), and only the ring's owner acts on it.
#
#  1. boot the guest, share identical pages; attach our pager: a second
#     dom0 caller without the owner token gets ESTALE for UNREGISTER and
#     RESUME, and the pager's ring is untouched; detach the pager
#  2. register SHARING_OOM with xme-ring and write an impossible req_cons:
#     the ring is broken (RESUME gives EIO)
#  3. cap the allowance; the guest writes its shared pages: its vCPU's
#     request cannot be posted, so the vCPU is parked (GET_INFO
#     parked_vcpus 1) within seconds, and its run time stays flat (no
#     re-fault loop); Xen logs the parking once
#  4. our pager takes the ring over: the parked vCPU is released, faults
#     onto the new ring and is answered; the guest finishes its writes
#     and verifies its memory; nothing is left paused or parked
set -uo pipefail
. /opt/xme/lib.sh

G=parked
N=${XME_NSHARE:-8}
R=$XME_RUN/parked
XR() { LD_LIBRARY_PATH=/usr/local/lib/xme/lib /usr/local/lib/xme/bin/xme-ring "$@"; }
parked_count() { XR "$1" info oom 2>/dev/null | sed -n 's/.*parked=\([0-9]*\).*/\1/p'; }
# Seconds of run time of vCPU 0 of domain $1 (xl vcpu-list's Time(s)).
vcpu_time() { xl vcpu-list "$1" 2>/dev/null | awk 'NR==2 {print $6}'; }

boot_guest "$G"
memshare enable "$D" >/dev/null 2>&1 || { result share-enable FAIL "xen-memshare enable $D"; guest_destroy "$G"; exit 1; }
share_both "$G" "$D" "$N" share

# ------------------------------------------------------------ 1. owner only
xen-mem-event pager --domain "$D" --step 4 --json > "$R-pager1.jsonl" 2> "$R-pager1.err" &
P=$!
if wait_for 20 ring_connected "$D" SHARING_OOM; then
    out=$(XR "$D" stale oom 2>&1)
    if [ $? = 0 ] && ring_connected "$D" SHARING_OOM; then
        result stale-token PASS "$(echo "$out" | tr '\n' ';') pager's ring still connected"
    else
        result stale-token FAIL "$(echo "$out" | tr '\n' ';') connected=$(ring_field "$D" SHARING_OOM connected)"
    fi
else
    result stale-token FAIL "pager did not attach: $(cat "$R-pager1.err")"
fi
stop_tool "$P"
[ "$STOP_RC" = 0 ] || result pager-detach FAIL "pager exited $STOP_RC: $(tail -n 2 "$R-pager1.err")"
wait_for 10 ring_absent "$D" SHARING_OOM

# ------------------------------------------------------------ 2. break
out=$(XR "$D" break-oom 2>&1)
if [ $? = 0 ]; then
    result break PASS "SHARING_OOM registered and broken: $out"
else
    result break FAIL "$out"
fi

# ------------------------------------------------------------ 3. park
before=$(xen_log | grep -c 'parked until it has room')
overalloc0=$(xen_log | grep -c 'Over-allocation')
cap_allowance "$D"
(memtest_check write-after-takeover "$G" write 300 > "$R-write.result") &
WP=$!
if wait_for 20 sh -c "[ \"\$(LD_LIBRARY_PATH=/usr/local/lib/xme/lib /usr/local/lib/xme/bin/xme-ring $D info oom | sed -n 's/.*parked=\([0-9]*\).*/\1/p')\" = 1 ]"; then
    sleep 1
    t1=$(vcpu_time "$D"); sleep 5; t2=$(vcpu_time "$D")
    info=$(XR "$D" info oom)
    after=$(xen_log | grep -c 'parked until it has room')
    overalloc=$(( $(xen_log | grep -c 'Over-allocation') - overalloc0 ))
    if awk -v a="$t1" -v b="$t2" 'BEGIN { exit !(b - a < 0.5) }' && [ $((after - before)) = 1 ]; then
        result parked PASS "vCPU parked ($info); its run time ${t1}s -> ${t2}s over 5 s; $((after - before)) log line, $overalloc over-allocation lines"
    else
        result parked FAIL "run time ${t1}s -> ${t2}s over 5 s (want < 0.5 s more), parking log lines $((after - before)) (want 1), $overalloc over-allocation lines; $info"
    fi
else
    result parked FAIL "no parked vCPU within 20 s: $(XR "$D" info oom 2>&1)"
fi

# ------------------------------------------------------------ 4. recover
xen-mem-event pager --domain "$D" --step 4 --takeover --json > "$R-pager2.jsonl" 2> "$R-pager2.err" &
P=$!
wait "$WP"
cat "$R-write.result"
grep -q 'XME-RESULT.* FAIL' "$R-write.result" && fail=1
ooms=$(jcount "$R-pager2.jsonl" oom '"answered":true')
info=$(XR "$D" info oom)
case "$info" in
paused=0\ parked=0\ *)
    if [ "$ooms" -gt 0 ]; then
        result takeover-releases PASS "new pager answered $ooms OOM events after the takeover; $info"
    else
        result takeover-releases FAIL "no OOM event answered by the new pager; $info"
    fi ;;
*) result takeover-releases FAIL "$info; answered $ooms" ;;
esac
memtest_check verify "$G" verify 120
stop_tool "$P"
if [ "$STOP_RC" = 0 ]; then
    result pager-detach PASS "pager exited 0 on SIGINT"
else
    result pager-detach FAIL "pager exited $STOP_RC: $(tail -n 2 "$R-pager2.err")"
fi
guest_destroy "$G"
exit "${fail:-0}"
