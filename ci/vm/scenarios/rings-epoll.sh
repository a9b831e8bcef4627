#!/bin/bash
# rings-epoll: the library's event-loop example (examples/epoll, staged as
# xme-epoll) serves both rings of one guest from one thread on real Xen.
#
#  1. boot the guest, share identical pages, start xme-epoll on it
#  2. cap the allowance; the guest writes its shared pages: OOM requests
#     answered (allowance raised a step each), MERGED/UNSHARED records
#     counted, on the same epoll loop; the guest verifies
#  3. SIGINT: a one-line summary with both rings' counts, exit 0, no ring
#     left registered
set -uo pipefail
. /opt/xme/lib.sh

G=epoll
N=${XME_NSHARE:-8}
R=$XME_RUN/epoll

boot_guest "$G"
memshare enable "$D" >/dev/null 2>&1 || { result share-enable FAIL "xen-memshare enable $D"; guest_destroy "$G"; exit 1; }
xme-epoll --domain "$D" --step 64 > "$R.out" 2> "$R.err" &
E=$!
if wait_for 20 ring_connected "$D" SHARING_OOM && wait_for 20 ring_connected "$D" SHARING_INVALIDATE; then
    result attach PASS "$(head -n 1 "$R.out")"
else
    result attach FAIL "$(cat "$R.out" "$R.err" | tr '\n' ' ')"
fi
share_both "$G" "$D" "$N" share
cap_allowance "$D"
memtest_check write-through-oom "$G" write 300
memtest_check verify "$G" verify 120

stop_tool "$E"
summary=$(tail -n 1 "$R.out")
answered=$(echo "$summary" | sed -n 's/.*SHARING_OOM: \([0-9]*\) answered.*/\1/p')
records=$(echo "$summary" | sed -n 's/.*SHARING_INVALIDATE: \([0-9]*\) records.*/\1/p')
if [ "$STOP_RC" = 0 ] && [ "${answered:-0}" -gt 0 ] && [ "${records:-0}" -gt 0 ] &&
   wait_for 10 ring_absent "$D" SHARING_OOM && ring_absent "$D" SHARING_INVALIDATE; then
    result one-loop PASS "$summary"
else
    result one-loop FAIL "rc=$STOP_RC: $summary; $(tail -n 3 "$R.err" | tr '\n' ' ')"
fi
guest_destroy "$G"
exit "${fail:-0}"
