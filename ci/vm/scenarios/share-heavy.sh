#!/bin/bash
# share-heavy: a heavily shared page (its rmap a hash table, 256 gfns or
# more) merged away as the client of a share, then unshared gfn by gfn.
#
#  1. boot the guest; merge H zero gfns into one page (check contents,
#     then nominate and share); its reverse map becomes a hash table at
#     256 gfns
#  2. nominate one more zero gfn and share the heavy page INTO it with
#     Debian's xen-memshare (the heavy page is the client): every gfn of
#     the heavy page moves to the new page, the heavy page is freed.  Xen's share_pages() asserted on
#     an empty list head here, which a hash-table rmap never is (a debug
#     hypervisor panicked); the VM run fails on any hypervisor error
#  3. Xen's sharing counts: one more page saved, no more shared frames;
#     the heavy page's handle is refused from then on
#  4. the guest writes every page (each unshare takes a gfn off the page,
#     the rmap turns back into a list on the way) and verifies its memory
set -uo pipefail
. /opt/xme/lib.sh

G=heavy
H=${XME_NHEAVY:-264}

boot_guest "$G"
memshare enable "$D" >/dev/null 2>&1 || { result share-enable FAIL "xen-memshare enable $D"; guest_destroy "$G"; exit 1; }

# ------------------------------------------------------------ 1. heavy page
# Hundreds of xen-memshare processes take minutes under TCG: the bulk is
# one xme-mem process, after the same contents check.
mapfile -t gfns < <(guest_gfns "$G" zero "$H")
mapfile -t ok < <(xme-peek "$D" zero "${gfns[@]}")
heavy_gfn=${gfns[0]} heavy_h= shared=0
if [ "${#ok[@]}" = "$H" ] && [ "${ok[0]}" = "$heavy_gfn" ]; then
    read -r heavy_h shared < <(xme-mem "$D" share "${ok[@]}")
fi
if [ "${shared:-0}" = $((H - 1)) ] && [ -n "$heavy_h" ]; then
    result heavy-page PASS "$H gfns merged into one page (gfn $heavy_gfn, handle $heavy_h)"
else
    result heavy-page FAIL "of $H zero gfns (${#ok[@]} checked zero) merged ${shared:-0} into gfn $heavy_gfn"
fi

# ------------------------------------------------------------ 2. merge it away
read -r saved0 used0 < <(sharing_info)
new_gfn=$(guest_gfns "$G" zero $((H + 1)) | tail -n 1)
new_h=$(nominate "$D" "$new_gfn") || new_h=
zero_ok=$(xme-peek "$D" zero "$new_gfn")
if [ -z "$new_h" ] || [ "$zero_ok" != "$new_gfn" ]; then
    result heavy-client FAIL "gfn $new_gfn: handle '$new_h', zero check '$zero_ok'"
elif out=$(memshare share "$D" "0x$heavy_gfn" "$heavy_h" "$D" "0x$new_gfn" "$new_h" 2>&1); then
    result heavy-client PASS "the page of $H gfns (client, gfn $heavy_gfn) merged into gfn $new_gfn"
else
    result heavy-client FAIL "share $heavy_gfn -> $new_gfn: $out"
fi

# ------------------------------------------------------------ 3. counts
read -r saved1 used1 < <(sharing_info)
if [ "$saved1" = $((saved0 + 1)) ] && [ "$used1" = "$used0" ]; then
    result heavy-counts PASS "pages saved $saved0 -> $saved1, shared frames $used0 -> $used1"
else
    result heavy-counts FAIL "pages saved $saved0 -> $saved1 (want +1), shared frames $used0 -> $used1 (want same)"
fi
# The heavy page's handle died with it: a share naming it as the source
# is refused with XENMEM_SHARING_OP_S_HANDLE_INVALID (another zero gfn as
# the client), which xen-memshare prints as "problem with client handle"
# (its two labels are swapped, as are those of 'xen-memshare info').
x_gfn=$(guest_gfns "$G" zero $((H + 2)) | tail -n 1)
x_h=$(nominate "$D" "$x_gfn") || x_h=
if [ -z "$x_h" ]; then
    result heavy-handle-gone FAIL "gfn $x_gfn could not be nominated"
elif stale=$(memshare share "$D" "0x$x_gfn" "$x_h" "$D" "0x$heavy_gfn" "$heavy_h" 2>&1); then
    result heavy-handle-gone FAIL "a share with the heavy page's old handle succeeded: $stale"
else
    case "$stale" in
    *"problem with client handle"*) result heavy-handle-gone PASS "the heavy page's old handle is refused: $stale" ;;
    *) result heavy-handle-gone FAIL "a share with the old handle: '$stale'" ;;
    esac
fi

# ------------------------------------------------------------ 4. unshare all
memtest_check write "$G" write 300
memtest_check verify "$G" verify 120
read -r saved2 used2 < <(sharing_info)
xme_log "after the writes: pages saved $saved2, shared frames $used2"

guest_destroy "$G"
exit $fail
