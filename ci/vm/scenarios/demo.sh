#!/bin/bash
# demo (make run): a guest with both consumers attached, each its own
# process on its own ring; sharing, OOM and invalidation happen while their
# live output streams to the console; then a summary.
set -uo pipefail
. /opt/xme/lib.sh

G=demo
N=${XME_NSHARE:-24}
say() { echo; echo "=== $* ==="; }

say "booting the test guest (PVH, HAP) under the patched Xen"
boot_guest "$G"
memshare enable "$D" >/dev/null

say "attaching the OOM pager and the invalidate watcher to d$D (two processes, two rings)"
R=$XME_RUN/demo
xen-mem-event pager --domain "$G" --step 4 > "$R-pager.log" 2>&1 &
P=$!
xen-mem-event watch --domain "$G" --batch 8 --interval 2 > "$R-watch.log" 2>&1 &
W=$!
tail -n +1 -f "$R-pager.log" 2>/dev/null | sed -u 's/^/[pager]   /' &
T1=$!
tail -n +1 -f "$R-watch.log" 2>/dev/null | sed -u 's/^/[watcher] /' &
T2=$!
wait_for 20 ring_connected "$D" SHARING_OOM && wait_for 20 ring_connected "$D" SHARING_INVALIDATE
xen-mem-event status

say "sharing identical pages with Debian's xen-memshare (nominate, check contents, share)"
share_pages "$G" "$D" zero zero "$N"
share_pages "$G" "$D" ident same "$N"
sleep 3

say "capping d$D's allowance at what it owns: every unshare now needs the pager"
cap_allowance "$D"

say "the guest writes every shared page (vCPU pauses on each failed unshare)"
memtest_check write "$G" write 300
memtest_check verify "$G" verify 120
sleep 3

say "ring status"
st=$(xen-mem-event status 2>&1) && [ "$(echo "$st" | grep -c "^ *$D ")" = 2 ] &&
    result status PASS "both rings of d$D listed" || result status FAIL "$st"
echo "$st"

say "detaching (Ctrl-C: answer what is pending, unregister, unmap)"
stop_tool "$P"; prc=$STOP_RC
stop_tool "$W"; wrc=$STOP_RC
sleep 1
kill "$T1" "$T2" 2>/dev/null
[ "$prc" = 0 ] && [ "$wrc" = 0 ] && result detach PASS "both tools exited 0" || result detach FAIL "pager $prc watcher $wrc"

say "summary"
grep -E 'pager (stopped|done)' "$R-pager.log" | sed 's/^/  /'
grep -E 'watcher (stopped|done)' "$R-watch.log" | sed 's/^/  /'
echo "  OOM events answered: $(grep -c 'answered$' "$R-pager.log")"
guest_destroy "$G"
exit $fail
