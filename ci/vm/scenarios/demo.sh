#!/bin/bash
# demo (make run): the sharing daemon and the OOM pager live, each its own
# process on its own rings; their output streams to the console.
#
#  1. three guests whose memtest regions hold the same zero and ident
#     pages (and unique ones)
#  2. one sharing daemon for the three (xen-mem-event share): its status
#     lines show the pages it shares and the MiB saved rising, checked
#     against Xen's own counter
#  3. the OOM pager attaches to guest 1; guest 1's allowance is capped and
#     it writes all its shared pages: its vCPU pauses on each failed
#     unshare and the pager answers, while the daemon applies the UNSHARED
#     records of guest 1's SHARING_INVALIDATE ring and re-shares
#  4. the ring status table, Ctrl-C to both, their summaries
set -uo pipefail
. /opt/xme/lib.sh

MT=-z,4,-i,4,-u,4,-p,0
NAMES=(demo1 demo2 demo3)
DOMS=()
R=$XME_RUN/demo
say() { echo; echo "=== $* ==="; }

say "booting three test guests (PVH, HAP) under the patched Xen"
for g in "${NAMES[@]}"; do
    boot_guest "$g" "$MT"
    DOMS+=("$D")
done
echo "free memory: $(free_mib) MiB"

say "one sharing daemon for the three guests (scan, nominate, compare, share; a SHARING_INVALIDATE ring each)"
xen-mem-event share --domain demo1 --domain demo2 --domain demo3 --interval 2 \
    --pages-per-sec 200000 --pass-interval 0.1 > "$R-share.log" 2>&1 &
S=$!
tail -n +1 -f "$R-share.log" 2>/dev/null | sed -u 's/^/[share] /' &
T1=$!
# Settled: Xen's pages freed unchanged over 6 s, at most 5 minutes.
last=-1
for _ in $(seq 1 50); do
    sleep 6
    read -r freed _ < <(sharing_info)
    [ "$freed" = "$last" ] && break
    last=$freed
done
echo "free memory: $(free_mib) MiB; Xen: ${freed:-0} pages freed by sharing ($((${freed:-0} / 256)) MiB)"
if [ "${freed:-0}" -gt 0 ]; then
    result share PASS "$freed pages freed by the daemon"
else
    result share FAIL "nothing shared"
fi

say "the OOM pager on demo1 (its own process, its own SHARING_OOM ring)"
D1=${DOMS[0]}
xen-mem-event pager --domain "$D1" --step 64 > "$R-pager.log" 2>&1 &
P=$!
tail -n +1 -f "$R-pager.log" 2>/dev/null | sed -u 's/^/[pager] /' &
T2=$!
wait_for 20 ring_connected "$D1" SHARING_OOM
xen-mem-event status

say "capping demo1's allowance at what it owns: every unshare now needs the pager"
cap_allowance "$D1"

say "demo1 writes all its zero and ident pages (vCPU pauses on each failed unshare; the daemon applies the invalidations)"
memtest_check write demo1 write 300
sleep 6

say "ring status"
st=$(xen-mem-event status 2>&1)
if [ "$(echo "$st" | grep -c "^ *$D1 ")" = 2 ]; then
    result status PASS "both rings of d$D1 listed, one per consumer"
else
    result status FAIL "$st"
fi
echo "$st"

say "stopping (Ctrl-C: unregister every ring, unmap)"
stop_tool "$P"; prc=$STOP_RC
stop_tool "$S"; src=$STOP_RC
sleep 1
kill "$T1" "$T2" 2>/dev/null
if [ "$prc" = 0 ] && [ "$src" = 0 ]; then
    result detach PASS "pager and daemon exited 0"
else
    result detach FAIL "pager $prc daemon $src"
fi

say "summary"
grep -E '^share (stopped|done)' "$R-share.log" | sed 's/^/  /'
grep -E 'pager (stopped|done)' "$R-pager.log" | sed 's/^/  /'
for g in "${NAMES[@]}"; do
    memtest_check "verify-$g" "$g" verify 120
    guest_destroy "$g"
done
exit $fail
