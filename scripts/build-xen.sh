#!/usr/bin/env bash
# Build the hypervisor from the patched tree, out of tree, incrementally.
#   build-xen.sh release|debug [SRC] [OBJ]
# release: CONFIG_EXPERT, CONFIG_UNSUPPORTED, CONFIG_MEM_SHARING, CONFIG_MEM_PAGING.
# debug:   the same plus CONFIG_DEBUG and XSM/FLASK, so the FLASK hook of the
#          series is compiled too.
# Xen's -Werror stays on (it is the default of the hypervisor build).
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
flavour=${1:?usage: build-xen.sh release|debug [SRC] [OBJ]}
SRC=${2:-$top/build/xen}
OBJ=${3:-$top/build/obj/xen-$flavour}
JOBS=${JOBS:-$(nproc)}

frag="CONFIG_EXPERT=y
CONFIG_UNSUPPORTED=y
CONFIG_MEM_SHARING=y
CONFIG_MEM_PAGING=y"
case "$flavour" in
    release) ;;
    debug) frag="$frag
CONFIG_DEBUG=y
CONFIG_XSM=y
CONFIG_XSM_FLASK=y
CONFIG_XSM_FLASK_POLICY=n" ;;
    *) echo "build-xen: unknown flavour '$flavour' (release|debug)" >&2; exit 2 ;;
esac

[ -f "$SRC/xen/Makefile" ] || { echo "build-xen: no Xen tree at $SRC (run 'make xen-src')" >&2; exit 1; }
mkdir -p "$OBJ"
if [ ! -f "$OBJ/.config" ] || [ "$(cat "$OBJ/.xme-frag" 2>/dev/null)" != "$frag" ]; then
    rm -f "$OBJ/.config"
    make -s -C "$SRC/xen" O="$OBJ" defconfig >/dev/null
    printf '%s\n' "$frag" >> "$OBJ/.config"
    make -s -C "$SRC/xen" O="$OBJ" olddefconfig >/dev/null 2>&1
    while read -r line; do
        grep -qx "${line/=n/ is not set}" "$OBJ/.config" 2>/dev/null && continue
        grep -qx "$line" "$OBJ/.config" || grep -qx "# ${line%=n} is not set" "$OBJ/.config" \
            || { echo "build-xen: $line did not stick in $OBJ/.config" >&2; exit 1; }
    done <<< "$frag"
    printf '%s\n' "$frag" > "$OBJ/.xme-frag"
fi
echo "build-xen: $flavour hypervisor in $OBJ"
make -C "$SRC/xen" O="$OBJ" -j"$JOBS" > "$OBJ/build.log" 2>&1 || {
    grep -E 'error|warning' "$OBJ/build.log" | head -40 >&2
    echo "build-xen: $flavour build failed, full log: $OBJ/build.log" >&2
    exit 1
}
if grep -q 'warning:' "$OBJ/build.log"; then
    grep 'warning:' "$OBJ/build.log" | head -20 >&2
    echo "build-xen: warnings in the $flavour build (see $OBJ/build.log)" >&2
    exit 1
fi
ls -l "$OBJ/xen" | awk '{print "build-xen: " $NF " (" $5 " bytes)"}'
