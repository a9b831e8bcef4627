#!/usr/bin/env bash
# Build the test guest's payload and the dom0 helpers (all small, seconds):
#   build/vm/guest/memtest       static memory-pattern workload (ci/guest/memtest.c)
#   build/vm/guest/initrd.gz     busybox-static + memtest + /init (ci/guest/init)
#   build/vm/helpers/xme-peek    dom0: read-only foreign-map page checks
#                                (ci/dom0/xme-peek.c, links Debian's
#                                libxenforeignmemory.so.1, same ABI as dom0's)
#   build/vm/helpers/xme-mem     dom0: a domain's pages and allowance (ci/dom0/xme-mem.c)
#   build/vm/helpers/xme-legacy-share  dom0: a sharing helper on the legacy
#                                sharing vm_event ring (ci/dom0/xme-legacy-share.c)
#   build/vm/helpers/xme-wmap    dom0: a writable foreign mapping (a foreign
#                                unshare; ci/dom0/xme-wmap.c)
#   build/vm/helpers/xme-vregs   dom0: vector registers kept across preemption?
#                                (ci/dom0/xme-vregs.c, the platform check)
# The guest kernel is dom0's Debian vmlinuz (PVH-capable), used in place.
set -euo pipefail
XME_LOG_TAG=guest
. "$(dirname "$0")/lib.sh"

G=$VM/guest
H=$VM/helpers
BUSYBOX=${BUSYBOX:-/bin/busybox}
mkdir -p "$G" "$H"

file "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' \
    || die "$BUSYBOX is not a static busybox (install busybox-static)"
pkg-config --exists xenforeignmemory || die "libxenforeignmemory headers missing (run scripts/deps.sh)"

# Rebuild only when a source is newer than the product.
newer() { local out=$1; shift; [ ! -e "$out" ] || [ -n "$(find "$@" -newer "$out" 2>/dev/null)" ]; }

if newer "$G/memtest" "$ci_top/ci/guest/memtest.c"; then
    log "compiling memtest (static)"
    gcc -static -O2 -Wall -Wextra -Werror -o "$G/memtest.tmp" "$ci_top/ci/guest/memtest.c"
    mv "$G/memtest.tmp" "$G/memtest"
fi

# dom0_helper NAME [PKG...]: build/vm/helpers/NAME from ci/dom0/NAME.c,
# linked against the pkg-config packages PKG (Debian's libraries).
dom0_helper() {
    local name=$1 src=$ci_top/ci/dom0/$1.c
    shift
    newer "$H/$name" "$src" || return 0
    log "compiling $name"
    # shellcheck disable=SC2046
    gcc -O2 -Wall -Wextra -Werror -o "$H/$name.tmp" "$src" \
        $([ $# -eq 0 ] || pkg-config --cflags --libs "$@")
    mv "$H/$name.tmp" "$H/$name"
}
dom0_helper xme-peek xenforeignmemory
dom0_helper xme-mem xencontrol
dom0_helper xme-legacy-share xencontrol xenevtchn xenforeignmemory
dom0_helper xme-wmap xenforeignmemory
dom0_helper xme-vregs

if newer "$G/initrd.gz" "$G/memtest" "$ci_top/ci/guest/init" "$BUSYBOX" "$0"; then
    log "assembling guest initrd"
    r=$G/initrd.root
    rm -rf "$r"
    mkdir -p "$r"/{bin,dev,proc,sys,tmp}
    cp "$BUSYBOX" "$r/bin/busybox"
    ln -s busybox "$r/bin/sh"
    install -m 0755 "$G/memtest" "$r/bin/memtest"
    install -m 0755 "$ci_top/ci/guest/init" "$r/init"
    (cd "$r" && find . | sort | cpio -o -H newc --quiet -R 0:0) | gzip -9n > "$G/initrd.gz.tmp"
    mv "$G/initrd.gz.tmp" "$G/initrd.gz"
    rm -rf "$r"
fi
log "guest: $G/initrd.gz ($(stat -c %s "$G/initrd.gz") bytes), helpers: $H"
