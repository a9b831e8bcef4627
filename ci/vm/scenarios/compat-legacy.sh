#!/bin/bash
# compat-legacy: Debian's unpatched tools on the (patched) hypervisor.
#
#  1. boot the test guest (memtest: zero, ident and unique regions)
#  2. share pages of its zero region with each other, and of its ident region
#     with each other, with Debian's xen-memshare, following the protocol:
#     nominate every page, THEN check its contents through a read-only
#     foreign mapping (xme-peek), THEN share it with the region's source
#     page.  A page the guest wrote after its nomination keeps its content
#     but loses its handle, so the share fails cleanly: never shared stale.
#  3. the guest verifies all its memory while pages are shared
#  4. 'xen-memshare audit' is clean (debug hypervisor)
#  5. a handle taken before the guest writes the page is rejected afterwards
#  6. the guest writes every shared page (unshare on write) and verifies
#  7. xen-access <domid> cpuid sees the guest's CPUID instructions
#  8. a final verify; the guest is destroyed
set -uo pipefail
. /opt/xme/lib.sh

G=legacy
# Pages to share per region.  Each xen-memshare call is a process start
# (~0.2 s under TCG): keep this small.
NSHARE=${XME_NSHARE:-24}
SRC=

# ---------------------------------------------------------------- 1. boot
boot_guest "$G"

# ---------------------------------------------------------------- 2. share
if ! out=$(memshare enable "$D" 2>&1); then
    result share-enable FAIL "xen-memshare enable $D: $out"
    guest_destroy "$G"
    exit 1
fi
result share-enable PASS "domid=$D"

read -r freed0 used0 < <(sharing_info)

# share_region REGION MODE: nominate up to NSHARE gfns of REGION, check
# their contents (MODE zero|same), share the checked ones with the first.
# Sets SHARED, CHECKED, SRC, SRC_H.
share_region() {
    local region=$1 mode=$2 gfns g h t0 rej
    declare -gA H=()
    mapfile -t gfns < <(guest_gfns "$G" "$region" "$NSHARE")
    SHARED=0 CHECKED=0 NOMINATED=0
    [ "${#gfns[@]}" -ge 2 ] || { xme_log "$region: only ${#gfns[@]} gfns reported"; return 1; }
    t0=$(now_ms)
    for g in "${gfns[@]}"; do
        h=$(nominate "$D" "$g") || { xme_log "nominate $g failed"; continue; }
        H[$g]=$h
    done
    SRC=${gfns[0]} SRC_H=${H[${gfns[0]}]:-}
    [ -n "$SRC_H" ] || { xme_log "$region: source gfn $SRC not nominated"; return 1; }
    # Contents check after nomination (the guest may have written meanwhile).
    if [ "$mode" = zero ]; then
        mapfile -t ok < <(xme-peek "$D" zero "${!H[@]}")
    else
        mapfile -t ok < <(xme-peek "$D" same "$SRC" "${!H[@]}")
    fi
    CHECKED=${#ok[@]}
    for g in "${ok[@]}"; do
        [ "$g" = "$SRC" ] && continue
        if out=$(memshare share "$D" "0x$g" "${H[$g]}" "$D" "0x$SRC" "$SRC_H" 2>&1); then
            SHARED=$((SHARED + 1))
        else
            xme_log "share $g -> $SRC: $out"
        fi
    done
    NOMINATED=${#H[@]}
    rej=$(( NOMINATED - CHECKED ))
    xme_log "$region: nominated ${#H[@]}, contents ok $CHECKED (rejected $rej), shared $SHARED in $(( $(now_ms) - t0 )) ms"
}

# Every page of the guest's zero/ident regions is private, unmapped by
# anyone else and not written by the guest while it idles: all of them must
# nominate, pass the contents check and share.
share_region zero zero
z="$SHARED/$CHECKED/$NOMINATED"; z_ok=$(( SHARED == NSHARE - 1 ))
zsrc=$SRC
share_region ident same
i="$SHARED/$CHECKED/$NOMINATED"; i_ok=$(( SHARED == NSHARE - 1 ))
read -r freed1 used1 < <(sharing_info)
want=$(( 2 * NSHARE - 2 ))
if [ $z_ok = 1 ] && [ $i_ok = 1 ] && [ $((freed1 - freed0)) = "$want" ] && [ $((used1 - used0)) = 2 ]; then
    result share PASS "shared/checked/nominated zero=$z ident=$i freed_pages=$freed1 shared_frames=$used1"
else
    result share FAIL "shared/checked/nominated zero=$z ident=$i (want $((NSHARE - 1))/$NSHARE/$NSHARE) freed_pages $freed0->$freed1 (want +$want) shared_frames $used0->$used1 (want +2)"
fi

# The contents check must refuse pages that differ: a unique page is
# neither zero nor equal to an ident page.
mapfile -t uniq < <(guest_gfns "$G" unique 8)
if [ "${#uniq[@]}" -gt 0 ]; then
    z=$(xme-peek "$D" zero "${uniq[@]}" | wc -l)
    s=0
    [ -n "$SRC" ] && s=$(xme-peek "$D" same "$SRC" "${uniq[@]}" | wc -l)
    [ -n "$zsrc" ] && s=$(( s + $(xme-peek "$D" same "$zsrc" "${uniq[@]}" | wc -l) ))
    if [ "$z" = 0 ] && [ "$s" = 0 ]; then
        result check-rejects-unique PASS "${#uniq[@]} unique pages refused"
    else
        result check-rejects-unique FAIL "unique pages accepted: zero=$z same=$s"
    fi
else
    result check-rejects-unique FAIL "guest reported no unique gfns"
fi

# ---------------------------------------------------------------- 3. verify
line=$(guest_cmd "$G" verify 60) || line="(no answer)"
case "$line" in
"MEMTEST PASS "*) result verify-shared PASS "${line#MEMTEST }" ;;
*) result verify-shared FAIL "$line" ;;
esac

# ---------------------------------------------------------------- 4. audit
out=$(memshare audit 2>&1)
case "$out" in
*"Audit returned 0 errors."*) result audit PASS "$out" ;;
*) result audit FAIL "$(echo "$out" | tr '\n' ' ')" ;;
esac

# ---------------------------------------------------------------- 5+6. write
# A handle taken now must be stale once the guest has written the page.
mapfile -t spare < <(guest_gfns "$G" zero $((NSHARE + 2)) | tail -n 2)
stale_ok=skip
if [ "${#spare[@]}" = 2 ]; then
    ha=$(nominate "$D" "${spare[0]}") && hb=$(nominate "$D" "${spare[1]}") || stale_ok=nominate-failed
fi
line=$(guest_cmd "$G" write 120) || line="(no answer)"
case "$line" in
"MEMTEST PASS "*) result unshare-write PASS "${line#MEMTEST }" ;;
*) result unshare-write FAIL "$line" ;;
esac
if [ "$stale_ok" = skip ] && [ -n "${ha:-}" ]; then
    if out=$(memshare share "$D" "0x${spare[1]}" "$hb" "$D" "0x${spare[0]}" "$ha" 2>&1); then
        result stale-handle FAIL "share with pre-write handles succeeded"
    else
        result stale-handle PASS "rejected: $out"
    fi
else
    result stale-handle FAIL "could not set up ($stale_ok, ${#spare[@]} spare gfns)"
fi
read -r freed2 used2 < <(sharing_info)
if [ "$freed2" -le $((freed1 - want)) ]; then
    result unshare-count PASS "freed_pages $freed1->$freed2 shared_frames $used1->$used2"
else
    result unshare-count FAIL "freed_pages $freed1->$freed2 (want <= $((freed1 - want)))"
fi

# ---------------------------------------------------------------- 7. xen-access
xa_out=$XME_RUN/xen-access.out
# stdout (one line per event) apart from stderr ('Got event from Xen',
# unbuffered): in one file the two interleave mid-line at stdout's 4 KiB
# flushes and break event lines.
timeout -s INT -k 5 60 "$XEN_BIN/xen-access" "$D" cpuid > "$xa_out" 2> "$xa_out.err" &
xa=$!
sleep 3
line=$(guest_cmd "$G" "cpuid 100" 60) || line="(no answer)"
sleep 1
kill -INT "$xa" 2>/dev/null
wait "$xa"
xa_rc=$?
n=$(grep -c 'CPUID executed' "$xa_out" || true)
if [ "$n" -ge 100 ] && [ "$xa_rc" = 0 ]; then
    result xen-access-cpuid PASS "events=$n guest='$line'"
else
    result xen-access-cpuid FAIL "events=$n rc=$xa_rc guest='$line'; $(tail -n 3 "$xa_out" "$xa_out.err" | tr '\n' ' ')"
fi

# ---------------------------------------------------------------- 8. final
line=$(guest_cmd "$G" verify 60) || line="(no answer)"
case "$line" in
"MEMTEST PASS "*) result verify-final PASS "${line#MEMTEST }" ;;
*) result verify-final FAIL "$line" ;;
esac
if grep -q '^MEMTEST FAIL' "$(guest_log "$G")"; then
    result periodic FAIL "$(grep -c '^MEMTEST FAIL' "$(guest_log "$G")") failed rounds: $(grep -m1 '^MEMTEST BAD' "$(guest_log "$G")")"
else
    result periodic PASS "$(grep -c '^MEMTEST PASS' "$(guest_log "$G")") rounds passed"
fi

guest_destroy "$G"
exit $fail
