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
if newer "$H/xme-peek" "$ci_top/ci/dom0/xme-peek.c"; then
    log "compiling xme-peek"
    # shellcheck disable=SC2046
    gcc -O2 -Wall -Wextra -Werror -o "$H/xme-peek.tmp" "$ci_top/ci/dom0/xme-peek.c" \
        $(pkg-config --cflags --libs xenforeignmemory)
    mv "$H/xme-peek.tmp" "$H/xme-peek"
fi

if newer "$H/xme-mem" "$ci_top/ci/dom0/xme-mem.c"; then
    log "compiling xme-mem"
    # shellcheck disable=SC2046
    gcc -O2 -Wall -Wextra -Werror -o "$H/xme-mem.tmp" "$ci_top/ci/dom0/xme-mem.c" \
        $(pkg-config --cflags --libs xencontrol)
    mv "$H/xme-mem.tmp" "$H/xme-mem"
fi

if newer "$H/xme-legacy-share" "$ci_top/ci/dom0/xme-legacy-share.c"; then
    log "compiling xme-legacy-share"
    # shellcheck disable=SC2046
    gcc -O2 -Wall -Wextra -Werror -o "$H/xme-legacy-share.tmp" "$ci_top/ci/dom0/xme-legacy-share.c" \
        $(pkg-config --cflags --libs xencontrol xenevtchn xenforeignmemory)
    mv "$H/xme-legacy-share.tmp" "$H/xme-legacy-share"
fi

if newer "$H/xme-wmap" "$ci_top/ci/dom0/xme-wmap.c"; then
    log "compiling xme-wmap"
    # shellcheck disable=SC2046
    gcc -O2 -Wall -Wextra -Werror -o "$H/xme-wmap.tmp" "$ci_top/ci/dom0/xme-wmap.c" \
        $(pkg-config --cflags --libs xenforeignmemory)
    mv "$H/xme-wmap.tmp" "$H/xme-wmap"
fi

if newer "$H/xme-vregs" "$ci_top/ci/dom0/xme-vregs.c"; then
    log "compiling xme-vregs"
    gcc -O2 -Wall -Wextra -Werror -o "$H/xme-vregs.tmp" "$ci_top/ci/dom0/xme-vregs.c"
    mv "$H/xme-vregs.tmp" "$H/xme-vregs"
fi

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
