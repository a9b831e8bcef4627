#!/bin/bash
# rings-many: many consumers at once, each on its own ring, all making
# progress concurrently (the case that motivated per-type rings).
#
#   guest A (memtest): xenpaging (fixed, legacy PAGING ring), our OOM pager
#                      (SHARING_OOM ring), our invalidate watcher
#                      (SHARING_INVALIDATE ring)
#   guest B (memtest): Debian's xen-access cpuid (legacy MONITOR ring)
#
#  1. boot A and B; on A enable sharing, attach the pager and the watcher
#  2. share A's zero/ident pages (MERGED records)
#  3. start xenpaging on A and lower A's paging target: it pages out
#     OUT_MB (part of it is memtest's buffer, which the guest verifies)
#  4. cap A's allowance (paused) at what it owns + HEADROOM_KIB
#  5. concurrently: B 'cpuid CPUIDS' with xen-access; once its events flow,
#     A 'write' (unshares -> OOM events -> pager, UNSHARED records ->
#     watcher, page-ins of paged-out buffer pages -> xenpaging), then
#     A 'verify'
#  6. checks: each of the four consumers made progress *within the window
#     of A's write* (counts taken at its start and end), both guests
#     verify, no vCPU left paused, all four consumers exit cleanly on
#     SIGINT/SIGTERM (xenpaging pages everything back in), no hypervisor
#     error
#
# What page-in needs (why the pager step is not 4 KiB here):
#   a page-in (xc_mem_paging_load -> p2m_mem_paging_prep) allocates a page
#   for the guest against the SAME allowance (max_pages) that unsharing
#   uses.  When it fails with ENOMEM, xenpaging sleeps 1 s and retries the
#   same gfn for ever, in its only thread that could evict: nothing then
#   frees memory, and no OOM event is raised for a page-in, so the OOM pager
#   cannot help either: the vCPU stays paused on the paging ring for good.
#   With 'pager --step 4' (one page per event) every answered OOM event
#   leaves the allowance exactly full (the retried unshare takes the page),
#   so the next page-in that comes before xenpaging's next eviction pass
#   (it evicts back to its target at most every 100 ms) deadlocks.  The
#   pager's step must therefore leave room for page-ins: PAGER_STEP_KIB.
#   The initial HEADROOM_KIB absorbs page-ins that come before the first
#   OOM event.  Before xenpaging is told to stop (it pages everything back
#   in), the allowance is given back.
set -uo pipefail
. /opt/xme/lib.sh

GA=manya
GB=manyb
N=${XME_NSHARE:-24}
OUT_MB=${XME_PAGE_OUT_MB:-4}          # how much xenpaging pages out of A
HEADROOM_KIB=${XME_HEADROOM_KIB:-64}  # allowance above what A owns at the cap
PAGER_STEP_KIB=${XME_PAGER_STEP_KIB:-256}
CPUIDS=${XME_CPUIDS:-2000}              # B's CPUIDs: long enough to span A's write
XENPAGING=${XME_XENPAGING:-/usr/local/lib/xme/bin/xenpaging}
R=$XME_RUN/many
tot_kib() { xme-mem "$1" info | awk '{print $1}'; }
max_kib() { xme-mem "$1" info | awk '{print $2}'; }
xp_out() { grep -c 'evict_page > gfn' "$R-xenpaging.out" 2>/dev/null || true; }
xp_in() { grep -c 'populate_page < gfn' "$R-xenpaging.out" 2>/dev/null || true; }
xp_enomem() { grep -c 'ENOMEM while preparing' "$R-xenpaging.out" 2>/dev/null || true; }
XP='' P='' W='' XA=''
cleanup() {
    local p
    for p in $XA $P $W; do kill -INT "$p" 2>/dev/null; done
    [ -n "$XP" ] && kill -TERM "$XP" 2>/dev/null
    sleep 1
    guest_destroy "$GA"
    guest_destroy "$GB"
}
diag() {    # diag WHY: what a stuck guest A looks like
    xme_log "DIAG ($1): xl list: $(xl list "$GA" 2>/dev/null | tail -n 1)"
    xme_log "DIAG: A tot/max KiB: $(xme-mem "$DA" info 2>&1)"
    xme_log "DIAG: xenpaging out=$(xp_out) in=$(xp_in) enomem=$(xp_enomem); tail:"
    tail -n 5 "$R-xenpaging.out" | sed 's/^/    xp| /'
    xl vcpu-list "$GA" 2>&1 | sed 's/^/    vcpu| /'
    xen-mem-event status --domain "$DA" 2>&1 | sed 's/^/    status| /'
    tail -n 3 "$R-pager.jsonl" | sed 's/^/    pager| /'
    xen_log | tail -n 12 | sed 's/^/    xen| /'
}

# Earlier scenarios (compat-paging-stock) leave mismatch lines behind.
mm0=$(xen_log | grep -c 'vm_event interface version mismatch' || true)

# ------------------------------------------------------------ 1. boot + attach
# A: no periodic verify (-p 0): page-ins happen only when the test asks.
if ! guest_create "$GA" "-z,4,-i,4,-u,8,-p,0"; then
    result guest-boot FAIL "$GA: no MEMTEST READY after 4 attempts"
    exit 1
fi
DA=$GUEST_DOMID
if ! guest_create "$GB"; then
    result guest-boot FAIL "$GB: no MEMTEST READY after 4 attempts"
    guest_destroy "$GA"
    exit 1
fi
DB=$GUEST_DOMID
result guest-boot PASS "A=$GA domid $DA, B=$GB domid $DB"
memshare enable "$DA" >/dev/null 2>&1 || { result share-enable FAIL "xen-memshare enable $DA"; cleanup; exit 1; }

attach_both "$DA" "$R" 16 "$PAGER_STEP_KIB" || { cleanup; exit 1; }

# ------------------------------------------------------------ 2. share
share_both "$GA" "$DA" "$N" share
shared=$SHARED_ALL nominated=$NOMINATED_ALL

# ------------------------------------------------------------ 3. page out
# xenpaging starts after the sharing: a gfn it has paged out (or is paging
# out) cannot be nominated.  It sweeps gfns upwards from the middle of the
# guest's memory, where (PVH, 128 MiB) memtest's buffer partly lies.
"$XENPAGING" -v -f "$R-$DA.pf" -d "$DA" > "$R-xenpaging.out" 2>&1 &
XP=$!
sleep 2
if ! kill -0 "$XP" 2>/dev/null; then
    result xenpaging-start FAIL "$(tail -n 3 "$R-xenpaging.out" | tr '\n' ' ')"
    sed 's/^/    xp| /' "$R-xenpaging.out" | head -n 40
    xen_log | tail -n 20 | sed 's/^/    xen| /'
    XP=''
    cleanup
    exit 1
fi
before=$(tot_kib "$DA")
target=$(( before - OUT_MB * 1024 ))
t0=$(now_ms)
xenstore-write "/local/domain/$DA/memory/target-tot_pages" "$target"
wait_for 60 sh -c "[ \$(xme-mem $DA info | cut -d' ' -f1) -le $target ]"
now=$(tot_kib "$DA")
sleep 1
paged=$(xp_out)
if [ "$now" -le "$target" ] && [ "$paged" -gt 0 ]; then
    result page-out PASS "xenpaging paged out $paged pages: $before -> $now KiB (target $target) in $(( $(now_ms) - t0 )) ms"
else
    result page-out FAIL "$before -> $now KiB (target $target), $paged pages paged out; $(tail -n 2 "$R-xenpaging.out" | tr '\n' ' ')"
fi
# Which of them are memtest's (zero and ident gfns are reported in full,
# unique ones only as a 64-page sample)?
declare -A buf=()
for r in zero ident unique; do
    while read -r g; do buf[$g]=$r; done < <(guest_gfns "$GA" $r)
done
inbuf=0
while read -r g; do [ -n "${buf[$g]:-}" ] && inbuf=$((inbuf + 1)); done \
    < <(sed -n 's/.*evict_page > gfn \([0-9a-f]*\) .*/\1/p' "$R-xenpaging.out")
xme_log "paged out: $paged pages from gfn 0x$(sed -n 's/.*evict_page > gfn \([0-9a-f]*\) .*/\1/p' "$R-xenpaging.out" | head -n 1), $inbuf of them known to be memtest's buffer"

# ------------------------------------------------------------ 4. cap
xl pause "$DA"
read -r tot max < <(xme-mem "$DA" cap "$HEADROOM_KIB")
xl unpause "$DA"
xme_log "A's allowance capped at $max KiB (owns $tot KiB, headroom $HEADROOM_KIB KiB; pager step $PAGER_STEP_KIB KiB)"

# ------------------------------------------------------------ 5. concurrently
# B: xen-access on the monitor ring while the guest executes CPUIDs.
# Its stdout (one line per event, line-buffered so that counts are live)
# apart from its stderr ('Got event from Xen' per notification): in one
# file the two interleave mid-line and break event lines.
stdbuf -oL "$XEN_BIN/xen-access" "$DB" cpuid > "$R-xen-access.out" 2> "$R-xen-access.err" &
XA=$!
xa_events() { grep -c 'CPUID executed' "$R-xen-access.out" 2>/dev/null || true; }
(
    sleep 1
    t=$(now_ms)
    guest_cmd "$GB" "cpuid $CPUIDS" 300 > "$R-b-cpuid"
    echo "$(( $(now_ms) - t ))" > "$R-b-cpuid-ms"
    guest_cmd "$GB" verify 120 > "$R-b-verify"
) &
BJ=$!
# A's write starts once B's CPUID events flow, so that all four consumers
# have work at the same time.
wait_for 60 sh -c "[ \$(grep -c 'CPUID executed' '$R-xen-access.out') -gt 0 ]" \
    || xme_log "no CPUID event from B yet; A's write starts anyway"
# Watchdog for A: a page-in that finds no memory never recovers by itself
# (see the top): show the state, then give memory so that the run goes on.
rm -f "$R-a-done" "$R-diag"
(
    while [ ! -e "$R-a-done" ]; do
        if [ "$(xp_enomem)" -gt 0 ]; then
            sleep 5
            diag "xenpaging: page-in ENOMEM" > "$R-diag" 2>&1
            xme-mem "$DA" cap 16384 >/dev/null
            break
        fi
        sleep 1
    done
) &
WJ=$!
# Progress counters of the four consumers.
counters() {
    echo "$(xp_in) $(jcount "$R-pager.jsonl" oom '"answered":true') $(jcount "$R-watch.jsonl" invalidate '"reason":"unshared"') $(xa_events)"
}
read -r c0_in c0_oom c0_uns c0_xa <<< "$(counters)"
t=$(now_ms)
wline=$(guest_cmd "$GA" write 240) || wline="(no answer)"
wms=$(( $(now_ms) - t ))
sleep 0.2   # the watcher's batch timer: records of the last unshares
read -r c1_in c1_oom c1_uns c1_xa <<< "$(counters)"
in0=$c0_in in1=$c1_in
vline=$(guest_cmd "$GA" verify 240) || vline="(no answer)"
read -r in2 vms <<< "$(xp_in) $(( $(now_ms) - t ))"
touch "$R-a-done"
wait "$WJ"
[ -s "$R-diag" ] && cat "$R-diag"
wait "$BJ"
stop_tool "$XA"; xarc=$STOP_RC
XA=''
bline=$(tail -n 1 "$R-b-cpuid"); bverify=$(tail -n 1 "$R-b-verify")
: "${bline:=(no answer)}" "${bverify:=(no answer)}"

# ------------------------------------------------------------ 6. checks
d_in=$((c1_in - c0_in)) d_oom=$((c1_oom - c0_oom)) d_uns=$((c1_uns - c0_uns)) d_xa=$((c1_xa - c0_xa))
if [ $d_in -gt 0 ] && [ $d_oom -gt 0 ] && [ $d_uns -gt 0 ] && [ $d_xa -gt 0 ]; then
    result concurrent PASS "within A's write (${wms} ms): xenpaging paged in $d_in, pager answered $d_oom OOM, watcher got $d_uns UNSHARED, xen-access handled $d_xa CPUID of B"
else
    result concurrent FAIL "within A's write (${wms} ms): page-ins $d_in, OOM answered $d_oom, UNSHARED $d_uns, B CPUID events $d_xa (each must be > 0)"
fi
case "$wline" in
"MEMTEST PASS "*) result a-write PASS "${wline#MEMTEST } (${wms} ms, $((in1 - in0)) page-ins)" ;;
*) result a-write FAIL "$wline" ;;
esac
case "$vline" in
"MEMTEST PASS "*) result a-verify PASS "${vline#MEMTEST } ($((vms - wms)) ms, $((in2 - in1)) page-ins)" ;;
*) result a-verify FAIL "$vline" ;;
esac
enomem=$(xp_enomem)
if [ $((in2 - in0)) -gt 0 ] && [ "$enomem" = 0 ]; then
    result xenpaging-progress PASS "paged out $paged (known to be memtest's: $inbuf), paged in $((in1 - in0)) during write, $((in2 - in1)) during verify; no page-in ENOMEM"
else
    result xenpaging-progress FAIL "paged out $paged, paged in $((in2 - in0)) during write+verify, page-in ENOMEM x$enomem"
fi
ooms=$(jcount "$R-pager.jsonl" oom '"answered":true')
paused=$(ring_field "$DA" SHARING_OOM paused_vcpus)
if [ "$ooms" -ge 1 ] && [ "$paused" = 0 ]; then
    result pager-progress PASS "$ooms OOM events answered, 0 vCPUs paused on A's OOM ring; e.g. $(grep -m1 '"kind":"oom"' "$R-pager.jsonl")"
else
    result pager-progress FAIL "OOM events answered $ooms, paused vCPUs '$paused'"
fi
wait_for 10 sh -c "[ \$(grep -c '\"reason\":\"unshared\"' '$R-watch.jsonl') -ge $nominated ]"
merged=$(jcount "$R-watch.jsonl" invalidate '"reason":"merged"')
unshared=$(jcount "$R-watch.jsonl" invalidate '"reason":"unshared"')
lost=$(ring_field "$DA" SHARING_INVALIDATE lost)
if [ "$merged" = "$shared" ] && [ "$unshared" = "$nominated" ] && [ "$lost" = 0 ]; then
    result watcher-progress PASS "$merged MERGED, $unshared UNSHARED records, 0 lost"
else
    result watcher-progress FAIL "MERGED $merged (want $shared), UNSHARED $unshared (want $nominated), lost '$lost'"
fi
n=$(grep -c 'CPUID executed' "$R-xen-access.out" || true)
if [ "$n" -ge "$CPUIDS" ]; then
    result xen-access-progress PASS "B: $n CPUID events in $(cat "$R-b-cpuid-ms" 2>/dev/null) ms; guest: '$bline'"
else
    result xen-access-progress FAIL "B: $n CPUID events, guest '$bline'; $(tail -n 3 "$R-xen-access.out" "$R-xen-access.err" | tr '\n' ' ')"
fi
case "$bverify" in
"MEMTEST PASS "*) result b-verify PASS "${bverify#MEMTEST }" ;;
*) result b-verify FAIL "$bverify" ;;
esac

# ------------------------------------------------------------ 7. detach
# Give A its allowance back first: xenpaging pages everything back in on
# SIGTERM, and each page-in needs a page of allowance.
xme-mem "$DA" cap 65536 >/dev/null
stop_tool "$P"; prc=$STOP_RC; P=
stop_tool "$W"; wrc=$STOP_RC; W=
stop_xenpaging "$XP"; xrc=$XP_RC xms=$XP_MS
XP=
left=$(( $(xp_out) - $(xp_in) ))
if [ "$xarc" = 0 ] && [ "$prc" = 0 ] && [ "$wrc" = 0 ] && [ "$xrc" = 0 ] && [ "$left" -le 0 ] \
   && wait_for 10 ring_absent "$DA" SHARING_OOM && ring_absent "$DA" SHARING_INVALIDATE; then
    result detach PASS "xen-access rc=0, pager rc=0, watcher rc=0, xenpaging rc=0 in $xms ms (paged in all: $(xp_out) out, $(xp_in) in); pager: $(grep '"kind":"summary"' "$R-pager.jsonl")"
else
    result detach FAIL "xen-access rc=$xarc pager rc=$prc watcher rc=$wrc xenpaging rc=$xrc (still out: $left); $(tail -n 2 "$R-xenpaging.out" "$R-pager.err" "$R-watch.err" | tr '\n' ' ')"
fi
line=$(guest_cmd "$GA" verify 120) || line="(no answer)"
case "$line" in
"MEMTEST PASS "*) result a-verify-final PASS "${line#MEMTEST } (A at $(tot_kib "$DA") KiB)" ;;
*) result a-verify-final FAIL "$line" ;;
esac
mismatch=$(( $(xen_log | grep -c 'vm_event interface version mismatch' || true) - mm0 ))
errs=$(xen_console_errors)
if [ "$mismatch" = 0 ] && [ -z "$errs" ]; then
    result xen-log PASS "no hypervisor error, no vm_event version mismatch"
else
    result xen-log FAIL "version mismatch x$mismatch; $(echo "$errs" | head -n 3 | tr '\n' ' ')"
fi
guest_destroy "$GA"
guest_destroy "$GB"
rm -f "$R-$DA.pf"
exit $fail
