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
# A run whose guest dies or goes silent (no bad data, no hypervisor error)
# is run once more with a new guest (retry_if_guest_died in lib.sh).
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
xp_in() { grep -c 'populate_page < gfn' "$1" 2>/dev/null || true; }
# paged_cmd COMMAND: guest_cmd with 180 s (every paged-out page it touches is
# a round trip through xenpaging), its time in ms appended to the answer;
# nothing is sent once the guest has died or gone silent (guest_cmd notes
# that): it would only wait for nothing.
paged_cmd() {
    local t0 line
    if [ -s "$XME_RUN/$G.died" ]; then
        echo "(not sent: the guest died or went silent before)"
        return
    fi
    t0=$(now_ms)
    line=$(guest_cmd "$G" "$1" 180) || { echo "(no answer)"; return; }
    echo "$line ($(( $(now_ms) - t0 )) ms)"
}
# xp_tail FILE: xenpaging's last lines but its per-page ones (-v).
xp_tail() { grep -vE 'evict_page >|populate_page <' "$1" | tail -n 5 | tr '\n' ' '; }

paging_run() {
    boot_guest "$G"

    # Earlier scenarios (compat-paging-stock) leave mismatch lines behind.
    m0=$(xen_log | grep -c 'vm_event interface version mismatch')
    pf=$XME_RUN/paging-$D.pf
    pout=$XME_RUN/xenpaging-$D.out
    "$XENPAGING" -v -f "$pf" -d "$D" > "$pout" 2>&1 &
    xp=$!
    sleep 3
    if ! kill -0 "$xp" 2>/dev/null; then
        wait "$xp"
        result xenpaging-start FAIL "exited with $?: $(xp_tail "$pout")"
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
        result page-out PASS \
            "${before} kB -> ${now} kB (target $target) in $(( $(now_ms) - t0 )) ms"
    else
        result page-out FAIL "${before} kB -> ${now:-?} kB, target $target not reached in 60 s"
    fi

    line=$(paged_cmd verify)
    case "$line" in
    "MEMTEST PASS "*) result verify-paged PASS "${line#MEMTEST }" ;;
    *) result verify-paged FAIL "$line"
       st=$(kill -0 "$xp" 2>/dev/null && echo alive || echo gone)
       xme_log "xenpaging (pid $xp, $st), paged in $(xp_in "$pout"): $(xp_tail "$pout")" ;;
    esac
    line=$(paged_cmd write)
    case "$line" in
    "MEMTEST PASS "*) result write-paged PASS "${line#MEMTEST }" ;;
    *) result write-paged FAIL "$line" ;;
    esac
    # The guest's own accesses, not xenpaging's exit, paged memory back in.
    pin=$(xp_in "$pout")
    if [ "$pin" -gt 0 ]; then
        result guest-page-ins PASS "$pin pages paged in on the guest's accesses"
    else
        result guest-page-ins FAIL "no page-in before xenpaging was stopped"
    fi

    stop_xenpaging "$xp"
    if [ "$XP_RC" = 0 ]; then
        result xenpaging-exit PASS "exited 0 in $XP_MS ms, guest at $(tot_kb "$G") kB"
    else
        result xenpaging-exit FAIL "rc=$XP_RC: $(xp_tail "$pout")"
    fi
    m1=$(xen_log | grep -c 'vm_event interface version mismatch')
    if grep -q 'version mismatch' "$pout" || [ "$m1" != "$m0" ]; then
        result responses FAIL "Xen dropped responses: vm_event interface version mismatch"
    else
        result responses PASS "no version mismatch"
    fi

    line=$(paged_cmd verify)
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
}

retry_if_guest_died "$G" paging_run
