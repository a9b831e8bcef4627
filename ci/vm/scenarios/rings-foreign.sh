#!/bin/bash
# rings-foreign: an OOM that no vCPU of the guest waits for.  A writable
# mapping of a shared page from dom0 makes Xen unshare it in dom0's context;
# with no memory left, Xen sends a *foreign* request to the guest's
# SHARING_OOM ring (no vCPU paused, nothing to answer) and the mapping fails
# with ENOMEM.
#
#  1. boot the guest (no periodic verify); attach the pager and the watcher
#  2. share N zero pages into one
#  3. cap the guest's allowance at what it owns
#  4. dom0 maps a shared gfn writable (xme-wmap): ENOMEM; the pager reports a
#     foreign request for that gfn and raises the allowance once; no vCPU of
#     the guest is paused, the guest runs, Xen counts no bad response
#  5. the same mapping again: it works (the page is unshared: an UNSHARED
#     record for that gfn); the guest verifies its memory (the mapping never
#     wrote)
#  6. both tools detach cleanly
set -uo pipefail
. /opt/xme/lib.sh

G=foreign
N=${XME_NSHARE:-8}
R=$XME_RUN/foreign

boot_guest "$G" "-z,4,-i,4,-u,8,-p,0"
memshare enable "$D" >/dev/null 2>&1 || { result share-enable FAIL "xen-memshare enable $D"; guest_destroy "$G"; exit 1; }
attach_both "$D" "$R" 1 4

# ------------------------------------------------------------ 2. share
share_pages "$G" "$D" zero zero "$N"
if [ "$SHARED" = $((N - 1)) ]; then
    result share PASS "$SHARED gfns merged into 1 shared page"
else
    result share FAIL "shared $SHARED, want $((N - 1))"
fi
# The last of them: shared, and not the page the others were merged into.
gfn=$(guest_gfns "$G" zero "$N" | tail -n 1)

# ------------------------------------------------------------ 3. cap
cap_allowance "$D"
max0=$(xme-mem "$D" info | awk '{print $2}')

# ------------------------------------------------------------ 4. foreign OOM
out=$(xme-wmap "$D" "$gfn" 2>&1); rc=$?
wait_for 10 sh -c "grep -q '\"kind\":\"foreign\"' '$R-pager.jsonl'"
fline=$(grep -m1 '"kind":"foreign"' "$R-pager.jsonl")
max1=$(xme-mem "$D" info | awk '{print $2}')
fgfn=$(printf '%s' "$fline" | sed -n 's/.*"gfn":\([0-9]*\).*/\1/p')
if [ $rc = 1 ] && [ "${out#error 12 }" != "$out" ]; then
    result map-enomem PASS "first writable mapping of shared gfn $gfn from dom0: $out"
else
    result map-enomem FAIL "first writable mapping of gfn $gfn: '$out' (rc $rc), want ENOMEM"
fi
if [ -n "$fgfn" ] && [ "$fgfn" = $((16#$gfn)) ] && [ "$max1" = $((max0 + 4)) ] \
   && printf '%s' "$fline" | grep -q '"action":"maxmem '; then
    result foreign-event PASS "pager: $fline; allowance $max0 -> $max1 KiB"
else
    result foreign-event FAIL "pager line '$fline' (want gfn $((16#$gfn))), allowance $max0 -> $max1 KiB"
fi
paused=$(ring_field "$D" SHARING_OOM paused_vcpus)
bad=$(ring_field "$D" SHARING_OOM bad_responses)
st=$(guest_state "$G")
if [ "$paused" = 0 ] && [ "$bad" = 0 ] && [ -n "$st" ] && [ "${st#*p}" = "$st" ]; then
    result guest-not-paused PASS "0 vCPUs paused by the ring, 0 bad responses, guest state '$st'"
else
    result guest-not-paused FAIL "paused vCPUs '$paused', bad responses '$bad', guest state '$st'"
fi

# ------------------------------------------------------------ 5. retry
out=$(xme-wmap "$D" "$gfn" 2>&1); rc=$?
wait_for 10 sh -c "grep '\"reason\":\"unshared\"' '$R-watch.jsonl' | grep -q '\"gfn\":$((16#$gfn))[,}]'"
rec=$(grep '"reason":"unshared"' "$R-watch.jsonl" | grep "\"gfn\":$((16#$gfn))[,}]" | head -n 1)
if [ $rc = 0 ] && [ "$out" = mapped ] && [ -n "$rec" ]; then
    result map-retry PASS "second mapping: $out; watcher: $rec"
else
    result map-retry FAIL "second mapping: '$out' (rc $rc); UNSHARED record for gfn $gfn: '$rec'"
fi
memtest_check verify "$G" verify 120

# ------------------------------------------------------------ 6. detach
stop_tool "$P"; prc=$STOP_RC
stop_tool "$W"; wrc=$STOP_RC
summary=$(grep '"kind":"summary"' "$R-pager.jsonl")
if [ "$prc" = 0 ] && [ "$wrc" = 0 ] && printf '%s' "$summary" | grep -q '"foreign":1[,}]' \
   && wait_for 10 ring_absent "$D" SHARING_OOM && ring_absent "$D" SHARING_INVALIDATE; then
    result detach PASS "pager rc=0, watcher rc=0; $summary"
else
    result detach FAIL "pager rc=$prc watcher rc=$wrc; $summary; $(cat "$R-pager.err" "$R-watch.err" | tr '\n' ' ')"
fi
guest_destroy "$G"
exit $fail
