#!/bin/bash
# compat-sharing-ring: with NO SHARING_OOM ring registered, an unshare that
# finds no memory still goes to the LEGACY sharing vm_event ring, exactly as
# in unpatched Xen; once a SHARING_OOM ring is registered, it takes the
# event instead (precedence), while the legacy helper stays attached.
#
#  1. boot the guest; enable sharing; start xme-legacy-share (ci/dom0/
#     xme-legacy-share.c: xc_memshr_ring_enable, ring page at
#     HVM_PARAM_SHARING_RING_PFN initialised by the helper, raise maxmem by
#     one page per request, answer, xc_memshr_domain_resume)
#  2. share zero and ident pages (Debian's xen-memshare), cap the allowance
#     at what the guest owns (paused)
#  3. the guest writes every shared page: one legacy request per copy,
#     vCPU paused until the helper answers; the guest verifies PASS
#  4. 'xen-mem-event status' shows no rings: nothing was registered
#  5. contrast: our OOM pager registers while the legacy helper is still
#     attached; share again, cap, write: the events go to the SHARING_OOM
#     ring, the legacy helper's count does not move
#  6. both detach cleanly; Xen never logged 'ENOMEM and no helper' for the
#     guest, nor any hypervisor error
set -uo pipefail
. /opt/xme/lib.sh

G=legshr
N=${XME_NSHARE:-24}
R=$XME_RUN/legshr
# legacy_events: requests the legacy helper has received so far.
legacy_events() { grep -c '^event ' "$R-legacy.out" 2>/dev/null || true; }

boot_guest "$G"
# Earlier scenarios (compat-paging-stock) leave mismatch lines behind.
mismatch0=$(xen_log | grep -c 'vm_event interface version mismatch' || true)
memshare enable "$D" >/dev/null 2>&1 || { result share-enable FAIL "xen-memshare enable $D"; guest_destroy "$G"; exit 1; }

# ------------------------------------------------------------ 1. legacy helper
xme-legacy-share "$D" > "$R-legacy.out" 2> "$R-legacy.err" &
L=$!
if wait_for 15 grep -q '^attached ' "$R-legacy.out" && kill -0 "$L" 2>/dev/null; then
    result legacy-attach PASS "$(head -n 1 "$R-legacy.out")"
else
    result legacy-attach FAIL "$(cat "$R-legacy.out" "$R-legacy.err" | tr '\n' ' ')"
    guest_destroy "$G"
    exit 1
fi

# ------------------------------------------------------------ 2. share + cap
share_both "$G" "$D" "$N" share
copies=$SHARED_ALL pages=$((NOMINATED_ALL - SHARED_ALL))
cap_allowance "$D"

# ------------------------------------------------------------ 3. write: legacy ring
memtest_check write-legacy "$G" write 300
memtest_check verify-legacy "$G" verify 120
ev1=$(legacy_events)
paused1=$(grep '^event ' "$R-legacy.out" | grep -c 'flags=0x1 ' || true)
bad_reason=$(grep '^event ' "$R-legacy.out" | grep -vc 'reason=2 ' || true)
# One request per copy; making a page private again (its last gfn) takes
# the domain one page over its allowance without allocating, which costs
# at most one more request per page made private (as on our OOM ring).
if [ "$ev1" -ge "$copies" ] && [ "$ev1" -le $((copies + pages)) ] && [ "$paused1" = "$ev1" ] && [ "$bad_reason" = 0 ]; then
    result legacy-events PASS "$ev1 requests on the legacy sharing ring for $copies copies, all reason=2 (MEM_SHARING) flags=0x1 (vCPU paused); e.g. $(grep -m1 '^event ' "$R-legacy.out")"
else
    result legacy-events FAIL "requests $ev1 (want $copies..$((copies + pages))), vCPU-paused $paused1, other reasons $bad_reason"
fi

# ------------------------------------------------------------ 4. no rings
st=$(xen-mem-event status --domain "$D" --json 2>&1)
st_rc=$?
if [ $st_rc = 0 ] && ! printf '%s\n' "$st" | grep -q '"kind":"ring"'; then
    result no-rings PASS "xen-mem-event status --domain $D: no rings registered ($(xen-mem-event status --domain "$D" 2>&1 | head -n 1))"
else
    result no-rings FAIL "rc=$st_rc: $st"
fi

# ------------------------------------------------------------ 5. contrast: SHARING_OOM takes precedence
P=
xen-mem-event pager --domain "$D" --step 4 --json > "$R-pager.jsonl" 2> "$R-pager.err" &
P=$!
if wait_for 20 ring_connected "$D" SHARING_OOM; then
    result pager-attach PASS "SHARING_OOM registered next to the legacy helper"
else
    result pager-attach FAIL "$(cat "$R-pager.err" | tr '\n' ' ')"
fi
share_both "$G" "$D" "$N" share-again
copies2=$SHARED_ALL pages2=$((NOMINATED_ALL - SHARED_ALL))
ev_before=$(legacy_events)
cap_allowance "$D"
memtest_check write-oom-ring "$G" write 300
ooms=$(jcount "$R-pager.jsonl" oom '"answered":true')
ev_after=$(legacy_events)
paused=$(ring_field "$D" SHARING_OOM paused_vcpus)
if [ "$ooms" -ge "$copies2" ] && [ "$ooms" -le $((copies2 + pages2)) ] && [ "$ev_after" = "$ev_before" ] && [ "$paused" = 0 ]; then
    result oom-ring-precedence PASS "SHARING_OOM: $ooms events answered for $copies2 copies; legacy ring: $ev_before -> $ev_after requests; 0 vCPUs paused"
else
    result oom-ring-precedence FAIL "SHARING_OOM answered $ooms (want $copies2..$((copies2 + pages2))), legacy requests $ev_before -> $ev_after (want unchanged), paused vCPUs '$paused'"
fi

# ------------------------------------------------------------ 6. detach + hypervisor log
stop_tool "$P"; prc=$STOP_RC
stop_tool "$L" TERM; lrc=$STOP_RC
if [ "$prc" = 0 ] && [ "$lrc" = 0 ] && grep -q "^done events=$ev_after " "$R-legacy.out" && wait_for 10 ring_absent "$D" SHARING_OOM; then
    result detach PASS "legacy: $(tail -n 1 "$R-legacy.out"); pager: $(grep '"kind":"summary"' "$R-pager.jsonl")"
else
    result detach FAIL "pager rc=$prc legacy rc=$lrc; $(tail -n 2 "$R-legacy.out" "$R-legacy.err" "$R-pager.err" | tr '\n' ' ')"
fi
memtest_check verify-final "$G" verify 120
nohelper=$(xen_log | grep -c " d$D attempt to unshare.*ENOMEM and no helper" || true)
mismatch=$(( $(xen_log | grep -c 'vm_event interface version mismatch' || true) - mismatch0 ))
errs=$(xen_console_errors)
if [ "$nohelper" = 0 ] && [ "$mismatch" = 0 ] && [ -z "$errs" ]; then
    result xen-log PASS "no 'ENOMEM and no helper' for d$D, no version mismatch, no hypervisor error; over-allocation lines: $(xen_log | grep -c "Over-allocation for d$D" || true)"
else
    result xen-log FAIL "'ENOMEM and no helper' x$nohelper, version mismatch x$mismatch; $(echo "$errs" | head -n 3 | tr '\n' ' ')"
fi
guest_destroy "$G"
exit $fail
