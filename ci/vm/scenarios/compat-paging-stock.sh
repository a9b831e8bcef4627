#!/bin/bash
# compat-paging-stock: Debian's stock 4.17 xenpaging never sets version (nor
# reason) in its responses, so Xen drops every one ('vm_event interface
# version mismatch') and a guest that touches a paged-out page hangs for
# good.  This scenario shows the bug on the stock binary; compat-paging
# shows the same steps working with xenpaging built from the patched tree
# (xen-patches/0006).
set -uo pipefail
. /opt/xme/lib.sh

G=pgstock
XENPAGING=/usr/lib/xen-4.17/bin/xenpaging
OUT_MB=${XME_PAGE_OUT_MB:-16}
tot_kb() { xl list "$1" 2>/dev/null | awk 'NR == 2 {print $3 * 1024}'; }

boot_guest "$G"
m0=$(xen_log | grep -c 'vm_event interface version mismatch')

pout=$XME_RUN/xenpaging-stock-$D.out
"$XENPAGING" -f "$XME_RUN/stock-$D.pf" -d "$D" > "$pout" 2>&1 &
xp=$!
sleep 3
before=$(tot_kb "$G")
if [ -z "$before" ]; then
    echo "not running before the page-out" >> "$XME_RUN/$G.died"
    result page-out FAIL "guest $G is gone"
    guest_gone "$G"
    kill -KILL "$xp" 2>/dev/null
    exit 1
fi
target=$(( before - OUT_MB * 1024 ))
xenstore-write "/local/domain/$D/memory/target-tot_pages" "$target"
if wait_for 60 sh -c "[ \$(xl list $D | awk 'NR == 2 {print \$3 * 1024}') -le $target ]"; then
    result page-out PASS "stock xenpaging paged ${before} kB -> $(tot_kb "$G") kB"
else
    result page-out FAIL "${before} kB -> $(tot_kb "$G") kB, target $target not reached in 60 s"
fi

# The guest touches its memory: the paged-out pages never come back.
line=$(guest_cmd "$G" verify 30) || line=""
m1=$(xen_log | grep -c 'vm_event interface version mismatch')
if [ -z "$line" ] && [ "$m1" -gt "$m0" ]; then
    result stock-hangs PASS "no answer in 30 s; Xen dropped $((m1 - m0)) responses (vm_event interface version mismatch)"
else
    result stock-hangs FAIL "guest answered '$line'; mismatch lines $m0 -> $m1"
fi

kill -KILL "$xp" 2>/dev/null
wait "$xp" 2>/dev/null
guest_destroy "$G"
exit $fail
