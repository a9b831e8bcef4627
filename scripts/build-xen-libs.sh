#!/usr/bin/env bash
# Build the patched toolstack C libraries (tools/include, tools/libs) in the
# patched tree, incrementally.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
SRC=${1:-$top/build/xen}
JOBS=${JOBS:-$(nproc)}
log=$top/build/obj/xen-libs.log
mkdir -p "$top/build/obj"

[ -f "$SRC/configure" ] || { echo "build-xen-libs: no Xen tree at $SRC (run 'make xen-src')" >&2; exit 1; }
cd "$SRC"
if [ ! -f config/Tools.mk ] || [ configure -nt config/Tools.mk ]; then
    echo "build-xen-libs: configuring the tools"
    ./configure PYTHON=/usr/bin/python3 --prefix=/usr --disable-docs \
        --disable-stubdom --disable-xen --disable-monitors --disable-ocamltools \
        --disable-xsmpolicy --disable-seabios --disable-golang --disable-pvshim \
        --disable-qemu-traditional --disable-rombios --disable-ipxe \
        --with-system-qemu=/usr/bin/qemu-system-i386 \
        --with-xenstored=xenstored > "$log" 2>&1 \
        || { tail -20 "$log" >&2; echo "build-xen-libs: configure failed ($log)" >&2; exit 1; }
fi
echo "build-xen-libs: tools/include, tools/libs, tools/tests/mem-event, tools/xenpaging"
{ make -C tools/include && make -C tools/libs -j"$JOBS" &&
  make -C tools/tests/mem-event && make -C tools/xenpaging; } >> "$log" 2>&1 \
    || { grep -E 'error' "$log" | tail -20 >&2; echo "build-xen-libs: failed ($log)" >&2; exit 1; }
ls tools/libs/ctrl/libxenctrl.so* tools/tests/mem-event/test-mem-event tools/xenpaging/xenpaging >/dev/null
echo "build-xen-libs: done ($(ls tools/libs/*/lib*.so | wc -l) libraries)"
