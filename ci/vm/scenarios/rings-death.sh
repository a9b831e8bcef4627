#!/bin/bash
# rings-death: consumers that die, and domains that die under consumers.
#
#  1. a pager whose policy cannot free memory keeps the faulting vCPU
#     paused (retrying with backoff: the guest is not crashed)
#  2. kill -9 that pager while the vCPU is paused on it: the ring stays
#     registered, its consumer gone; a new pager registers without
#     --takeover (Xen sees the closed event channel and hands the ring
#     over), the paused vCPU is released, faults again onto the new ring,
#     is answered, and the guest completes its writes and verifies
#  3. domain destruction with both consumers attached: the tools exit 0
#     saying the domain was destroyed, free memory returns to its value
#     before the guest existed, the hypervisor logs no error
set -uo pipefail
. /opt/xme/lib.sh

G=death
N=${XME_NSHARE:-12}
free_mb() { xl info | awk '$1 == "free_memory" {print $3}'; }

free0=$(free_mb)
boot_guest "$G"
memshare enable "$D" >/dev/null 2>&1 || { result share-enable FAIL "xen-memshare enable $D"; guest_destroy "$G"; exit 1; }
share_pages "$G" "$D" zero zero "$N"
shared=$SHARED
[ "$shared" -ge 2 ] || result share FAIL "only $shared pages shared"

R=$XME_RUN/death
# ------------------------------------------------------------ 1. stuck pager
xen-mem-event pager --domain "$D" --exec false --json > "$R-pager1.jsonl" 2> "$R-pager1.err" &
P1=$!
wait_for 20 ring_connected "$D" SHARING_OOM || result attach FAIL "$(cat "$R-pager1.err")"
cap_allowance "$D"

# The guest's write now blocks on the first unshare: do not wait for it.
log=$(guest_log "$G")
seq=$(( $(cat "$XME_RUN/$G.seq" 2>/dev/null || echo 0) + 1 ))
echo "$seq" > "$XME_RUN/$G.seq"
printf 'write\n' > "$(xenstore-read "/local/domain/$D/console/tty")"
if wait_for 30 sh -c "[ \"\$(xen-mem-event status --domain $D --json | grep SHARING_OOM | sed -n 's/.*\"paused_vcpus\":\([0-9]*\).*/\1/p')\" = 1 ]" \
   && wait_for 10 sh -c "[ \$(grep -c '\"kind\":\"retry\"' '$R-pager1.jsonl') -ge 2 ]"; then
    result stuck PASS "vCPU paused, pager retrying: $(grep '"kind":"retry"' "$R-pager1.jsonl" | tail -n 1)"
else
    result stuck FAIL "paused '$(ring_field "$D" SHARING_OOM paused_vcpus)', retries $(jcount "$R-pager1.jsonl" retry)"
fi
st=$(guest_state "$G")
case "$st" in
*c*|'') result not-crashed FAIL "guest state '$st'" ;;
*) result not-crashed PASS "guest state '$st' while its vCPU waits" ;;
esac

# ------------------------------------------------------------ 2. kill -9
kill -9 "$P1"; wait "$P1" 2>/dev/null
sleep 1
if [ "$(ring_field "$D" SHARING_OOM paused_vcpus)" = 1 ] && [ "$(ring_field "$D" SHARING_OOM consumer_gone)" = true ]; then
    result killed PASS "ring still registered, consumer gone, 1 vCPU paused"
else
    result killed FAIL "$(xen-mem-event status --domain "$D" --json 2>&1 | tr '\n' ' ')"
fi
xen-mem-event pager --domain "$D" --step 4 --json > "$R-pager2.jsonl" 2> "$R-pager2.err" &
P2=$!
if wait_for 20 ring_connected "$D" SHARING_OOM; then
    result new-pager PASS "registered without --takeover"
else
    result new-pager FAIL "$(cat "$R-pager2.err")"
fi
if wait_log "$log" "seq=$seq( |\$)" 300 "$G"; then
    line=$(tr -d '\r' < "$log" | grep -E "seq=$seq( |\$)" | tail -n 1)
    case "$line" in
    "MEMTEST PASS "*) result guest-continues PASS "${line#MEMTEST }; new pager answered $(jcount "$R-pager2.jsonl" oom) events" ;;
    *) result guest-continues FAIL "$line" ;;
    esac
else
    result guest-continues FAIL "no answer to 'write'; paused $(ring_field "$D" SHARING_OOM paused_vcpus)"
fi
paused=$(ring_field "$D" SHARING_OOM paused_vcpus)
[ "$paused" = 0 ] && result none-paused PASS "0 vCPUs paused" || result none-paused FAIL "paused '$paused'"

# ------------------------------------------------------------ 3. destroy
xen-mem-event watch --domain "$D" --json > "$R-watch.jsonl" 2> "$R-watch.err" &
W=$!
wait_for 20 ring_connected "$D" SHARING_INVALIDATE || result attach-watch FAIL "$(cat "$R-watch.err")"
xl destroy "$D"
ok=1
for pid in $P2 $W; do
    for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then ok=0; kill -9 "$pid"; fi
    wait "$pid"; rc=$?
    [ $rc = 0 ] || ok=0
done
ended_p=$(jfield "$R-pager2.jsonl" summary ended)
ended_w=$(jfield "$R-watch.jsonl" summary ended)
if [ $ok = 1 ] && [ "$ended_p" = "domain destroyed" ] && [ "$ended_w" = "domain destroyed" ]; then
    result tools-exit PASS "pager and watcher exited 0: domain destroyed"
else
    result tools-exit FAIL "pager '$ended_p' watcher '$ended_w' ok=$ok; $(cat "$R-pager2.err" "$R-watch.err" | tr '\n' ' ')"
fi
wait_for 30 sh -c "! xl list $D >/dev/null 2>&1"
sleep 2
free1=$(free_mb)
if [ "$free1" = "$free0" ]; then
    result memory-returned PASS "free memory ${free0} MB before the guest, ${free1} MB after"
else
    result memory-returned FAIL "free memory ${free0} MB before the guest, ${free1} MB after"
fi
errs=$(xen_console_errors)
[ -z "$errs" ] && result xen-quiet PASS "no hypervisor error" || result xen-quiet FAIL "$errs"
exit $fail
