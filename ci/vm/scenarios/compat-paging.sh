#!/bin/bash
# compat-paging: the legacy paging ring with xenpaging built from the patched
# tree (/usr/local/lib/xme/bin/xenpaging; Debian's 4.17 xenpaging never sets
# rsp->version, so Xen drops its responses and the guest hangs for good).
#
#  1. boot the test guest, start xenpaging on it
#  2. lower its paging target (xenstore memory/target-tot_pages, in kB):
#     xenpaging pages out until the guest is at the target
#  3. the guest verifies and rewrites its memory: paged-out pages come back
#  4. SIGTERM: xenpaging pages everything back in and exits 0
#  5. a final verify
set -uo pipefail
. /opt/xme/lib.sh

G=paging
XENPAGING=${XME_XENPAGING:-/usr/local/lib/xme/bin/xenpaging}
OUT_MB=${XME_PAGE_OUT_MB:-16}        # how much to page out
tot_kb() { xl list "$1" 2>/dev/null | awk 'NR == 2 {print $3 * 1024}'; }

if [ ! -x "$XENPAGING" ]; then
    result setup FAIL "$XENPAGING missing (ci/build-vm-xen.sh stages it)"
    exit 1
fi
boot_guest "$G"

# Earlier scenarios (compat-paging-stock) leave mismatch lines behind.
m0=$(xen_log | grep -c 'vm_event interface version mismatch')
pf=$XME_RUN/paging-$D.pf
pout=$XME_RUN/xenpaging-$D.out
"$XENPAGING" -f "$pf" -d "$D" > "$pout" 2>&1 &
xp=$!
sleep 3
if ! kill -0 "$xp" 2>/dev/null; then
    wait "$xp"
    result xenpaging-start FAIL "exited with $?: $(tail -n 3 "$pout" | tr '\n' ' ')"
    guest_destroy "$G"
    exit 1
fi
result xenpaging-start PASS "pid $xp"

before=$(tot_kb "$G")
target=$(( before - OUT_MB * 1024 ))
t0=$(now_ms)
xenstore-write "/local/domain/$D/memory/target-tot_pages" "$target"
ok=0
for _ in $(seq 1 120); do
    now=$(tot_kb "$G")
    [ -n "$now" ] && [ "$now" -le "$target" ] && { ok=1; break; }
    sleep 0.5
done
if [ $ok = 1 ]; then
    result page-out PASS "${before} kB -> ${now} kB (target $target) in $(( $(now_ms) - t0 )) ms"
else
    result page-out FAIL "${before} kB -> ${now:-?} kB, target $target not reached in 60 s"
fi

line=$(guest_cmd "$G" verify 120) || line="(no answer)"
case "$line" in
"MEMTEST PASS "*) result verify-paged PASS "${line#MEMTEST }" ;;
*) result verify-paged FAIL "$line"
   xme_log "xenpaging (pid $xp, $(kill -0 "$xp" 2>/dev/null && echo alive || echo gone)): $(tail -n 5 "$pout" | tr '\n' ' ')" ;;
esac
line=$(guest_cmd "$G" write 120) || line="(no answer)"
case "$line" in
"MEMTEST PASS "*) result write-paged PASS "${line#MEMTEST }" ;;
*) result write-paged FAIL "$line" ;;
esac

stop_xenpaging "$xp"
if [ "$XP_RC" = 0 ]; then
    result xenpaging-exit PASS "exited 0 in $XP_MS ms, guest at $(tot_kb "$G") kB"
else
    result xenpaging-exit FAIL "rc=$XP_RC: $(tail -n 3 "$pout" | tr '\n' ' ')"
fi
m1=$(xen_log | grep -c 'vm_event interface version mismatch')
if grep -q 'version mismatch' "$pout" || [ "$m1" != "$m0" ]; then
    result responses FAIL "Xen dropped responses: vm_event interface version mismatch"
else
    result responses PASS "no version mismatch"
fi

line=$(guest_cmd "$G" verify 120) || line="(no answer)"
case "$line" in
"MEMTEST PASS "*) result verify-final PASS "${line#MEMTEST }" ;;
*) result verify-final FAIL "$line" ;;
esac
if grep -q '^MEMTEST FAIL' "$(guest_log "$G")"; then
    result periodic FAIL "$(grep -m1 '^MEMTEST BAD' "$(guest_log "$G")")"
else
    result periodic PASS "$(grep -c '^MEMTEST PASS' "$(guest_log "$G")") rounds passed"
fi
guest_destroy "$G"
rm -f "$pf"
exit $fail
