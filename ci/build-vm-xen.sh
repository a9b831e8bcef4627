#!/usr/bin/env bash
# Build the test VM's hypervisor and the dom0 tools that must come from the
# patched tree.
#
#   build/vm/xen-src     clone of build/xen (pristine + xen-patches/ series)
#                        plus ci/xen-test-patches/ (TEST ONLY, QEMU TCG
#                        workarounds).  Re-synced when build/xen's HEAD or a
#                        test patch changes (stamp: build/vm/xen-src/.xme-stamp).
#   build/vm/obj/xen     out-of-tree DEBUG hypervisor build
#   build/vm/xen         the 32-bit multiboot ELF that 'qemu -kernel' loads
#   build/vm/stage/      files that land at / in the VM image:
#       usr/local/lib/xme/bin/xenpaging   (built from the patched tree)
#       usr/local/lib/xme/lib/*.so*       (the patched tree's tool libraries;
#                                          NOT on the default linker path, so
#                                          Debian's tools keep Debian's libs)
#
# Incremental: a re-run with nothing changed only runs make (seconds).
# Usage: ci/build-vm-xen.sh [--xen-only]
set -euo pipefail
XME_LOG_TAG=vm-xen
. "$(dirname "$0")/lib.sh"

SRC=${XEN_TREE:-$ci_top/build/xen}
TREE=$VM/xen-src
OBJ=$VM/obj/xen
STAGE=$VM/stage
PATCHDIR=$ci_top/ci/xen-test-patches
MAKE_TIMEOUT=${MAKE_TIMEOUT:-2400}
# Hypervisor options the VM needs (on top of defconfig).
XEN_OPTS=(CONFIG_DEBUG CONFIG_EXPERT CONFIG_UNSUPPORTED CONFIG_MEM_SHARING
          CONFIG_MEM_PAGING)
TOOLS_CONFIGURE=(PYTHON=/usr/bin/python3 --prefix=/usr --disable-docs
    --disable-stubdom --disable-xen --disable-monitors --disable-ocamltools
    --disable-xsmpolicy --disable-seabios --disable-golang --disable-pvshim
    --disable-qemu-traditional --disable-rombios --disable-ipxe
    --with-system-qemu=/usr/bin/qemu-system-i386 --with-xenstored=xenstored)

export GIT_AUTHOR_NAME=xen-mem-event GIT_AUTHOR_EMAIL=build@xen-mem-event.invalid
export GIT_COMMITTER_NAME=xen-mem-event GIT_COMMITTER_EMAIL=build@xen-mem-event.invalid
export GIT_AUTHOR_DATE="2000-01-01T00:00:00Z" GIT_COMMITTER_DATE="2000-01-01T00:00:00Z"

git -C "$SRC" rev-parse -q --verify HEAD >/dev/null 2>&1 \
    || die "$SRC is not a git tree with a commit (run scripts/xen-src.sh first)"
if [ -n "$(git -C "$SRC" status --porcelain --untracked-files=no)" ]; then
    log "warning: $SRC has uncommitted changes; the VM build uses its HEAD only"
fi

patches=()
while read -r p; do
    case "$p" in ''|'#'*) continue ;; esac
    [ -f "$PATCHDIR/$p" ] || die "$PATCHDIR/series names $p, which does not exist"
    patches+=("$PATCHDIR/$p")
done < "$PATCHDIR/series"

head=$(git -C "$SRC" rev-parse HEAD)
stamp="$head $(hash_files "${patches[@]}")"

# ---------------------------------------------------------------- source tree
if [ -f "$TREE/.xme-stamp" ] && [ "$(cat "$TREE/.xme-stamp")" = "$stamp" ]; then
    log "source tree up to date ($TREE, build/xen HEAD ${head:0:12} + ${#patches[@]} test patches)"
else
    if [ ! -d "$TREE/.git" ]; then
        log "cloning $SRC into $TREE"
        rm -rf "$TREE"
        git clone -q --no-checkout "$SRC" "$TREE"
    fi
    log "syncing $TREE to build/xen HEAD ${head:0:12} + test patches"
    rm -f "$TREE/.xme-stamp"
    git -C "$TREE" am --abort >/dev/null 2>&1 || true
    git -C "$TREE" fetch -q --tags --force "$SRC" HEAD
    # reset keeps the timestamps of unchanged files: builds stay incremental.
    git -C "$TREE" checkout -q -B vm FETCH_HEAD
    git -C "$TREE" reset -q --hard FETCH_HEAD
    git -C "$TREE" clean -q -fd    # untracked leftovers; ignored build products stay
    for p in "${patches[@]}"; do
        if ! git -C "$TREE" am -q --whitespace=nowarn "$p" > "$VM/xen-test-am.log" 2>&1; then
            sed 's/^/  /' "$VM/xen-test-am.log" >&2
            git -C "$TREE" am --abort >/dev/null 2>&1 || true
            die "test patch $(basename "$p") does not apply on build/xen HEAD ${head:0:12}"
        fi
    done
    echo "$stamp" > "$TREE/.xme-stamp"
fi

# ---------------------------------------------------------------- hypervisor
mkdir -p "$OBJ"
xmake() { timeout -k 30 "$MAKE_TIMEOUT" make -C "$TREE/xen" O="$OBJ" "$@"; }
if [ ! -f "$OBJ/.config" ]; then
    log "hypervisor: defconfig"
    xmake defconfig > "$VM/xen-config.log" 2>&1 || { cat "$VM/xen-config.log" >&2; die "defconfig failed"; }
fi
# Touch .config only when an option is missing: rewriting it (even with the
# same content) makes the next build recompile everything.
missing=()
for o in "${XEN_OPTS[@]}"; do
    grep -qx "$o=y" "$OBJ/.config" || missing+=("$o")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "hypervisor: setting ${missing[*]} in .config, olddefconfig"
    for o in "${XEN_OPTS[@]}"; do
        sed -i -e "/^$o=/d" -e "/^# $o is not set/d" "$OBJ/.config"
        echo "$o=y" >> "$OBJ/.config"
    done
    xmake olddefconfig > "$VM/xen-config.log" 2>&1 || { cat "$VM/xen-config.log" >&2; die "olddefconfig failed"; }
    for o in "${XEN_OPTS[@]}"; do
        grep -qx "$o=y" "$OBJ/.config" || die "$o=y did not survive olddefconfig (see $OBJ/.config)"
    done
fi

log "hypervisor: building (debug, out of tree in $OBJ, -j$JOBS; log $VM/xen-build.log)"
t0=$(date +%s)
if ! xmake -j"$JOBS" > "$VM/xen-build.log" 2>&1; then
    tail -n 40 "$VM/xen-build.log" >&2
    die "hypervisor build failed (full log: $VM/xen-build.log)"
fi
[ -f "$OBJ/xen" ] || die "no $OBJ/xen after the build"
cmp -s "$OBJ/xen" "$VM/xen" || cp "$OBJ/xen" "$VM/xen"
log "hypervisor: $VM/xen ready ($(( $(date +%s) - t0 ))s)"

[ "${1:-}" = --xen-only ] && exit 0

# ---------------------------------------------------------------- tools
tmake() { timeout -k 30 "$MAKE_TIMEOUT" make -C "$TREE" "$@"; }
cfg_key="$(printf '%s\n' "${TOOLS_CONFIGURE[@]}" | sha256sum | cut -d' ' -f1)"
if [ ! -f "$TREE/config/Tools.mk" ] || [ "$(cat "$VM/tools-configure.stamp" 2>/dev/null)" != "$cfg_key" ]; then
    log "tools: configure (log $VM/tools-configure.log)"
    # The .orig tarball ships configure; Debian's unpacked tree would not.
    [ -x "$TREE/configure" ] || (cd "$TREE" && ./autogen.sh) > "$VM/tools-configure.log" 2>&1
    if ! (cd "$TREE" && timeout -k 10 600 ./configure "${TOOLS_CONFIGURE[@]}") >> "$VM/tools-configure.log" 2>&1; then
        tail -n 30 "$VM/tools-configure.log" >&2
        die "tools configure failed (missing build deps? run scripts/deps.sh)"
    fi
    echo "$cfg_key" > "$VM/tools-configure.stamp"
fi
log "tools: building tools/include, tools/libs, tools/xenpaging (-j$JOBS; log $VM/tools-build.log)"
t0=$(date +%s)
if ! { tmake -C tools/include && tmake -C tools/libs -j"$JOBS" && tmake -C tools/xenpaging -j"$JOBS" &&
       tmake -C tools/tests/mem-event; } \
        > "$VM/tools-build.log" 2>&1; then
    tail -n 40 "$VM/tools-build.log" >&2
    die "tools build failed (full log: $VM/tools-build.log)"
fi
log "tools: built ($(( $(date +%s) - t0 ))s)"

# ci/dom0/xme-ring: raw ring operations for the scenarios, against the
# patched libxenctrl (like test-mem-event).
libs=$TREE/tools/libs
gcc -O2 -Wall -Wextra -Werror -I"$TREE/tools/include" \
    -o "$VM/xme-ring" "$ci_top/ci/dom0/xme-ring.c" \
    -L"$libs/ctrl" -lxenctrl -L"$libs/foreignmemory" -lxenforeignmemory \
    $(for l in "$libs"/*/; do printf -- '-Wl,-rpath-link,%s ' "$l"; done) ||
    die "xme-ring did not build"

rm -rf "$STAGE/usr/local/lib/xme/lib"
mkdir -p "$STAGE/usr/local/lib/xme/bin" "$STAGE/usr/local/lib/xme/lib"
install -m 0755 "$TREE/tools/xenpaging/xenpaging" "$STAGE/usr/local/lib/xme/bin/xenpaging"
# The series' C test program (needs the patched libxenctrl, see below).
install -m 0755 "$TREE/tools/tests/mem-event/test-mem-event" "$STAGE/usr/local/lib/xme/bin/test-mem-event"
install -m 0755 "$VM/xme-ring" "$STAGE/usr/local/lib/xme/bin/xme-ring"
# The libraries (symlinks kept), for tools that need the patched libxenctrl:
# run them with LD_LIBRARY_PATH=/usr/local/lib/xme/lib.
find "$TREE/tools/libs" -maxdepth 2 -name 'lib*.so*' \( -type f -o -type l \) \
    -exec cp -P -t "$STAGE/usr/local/lib/xme/lib" {} +
log "tools: staged in $STAGE/usr/local/lib/xme ($(ls "$STAGE/usr/local/lib/xme/lib" | wc -l) library files)"
