#!/usr/bin/env bash
# make upstream-check: the series on upstream Xen master.
#
#  1. build/upstream/xen: the snapshot of xen.git master (XEN_UPSTREAM_TARBALL,
#     default ../shared/upstream/xen-c447b7308b.tar.xz) as a git repository
#     with one commit (tag 'base'), plus xen-patches/upstream/series applied
#     with 'git am'.  Cached: nothing is redone while the tarball and the
#     series are unchanged; when they change the tree is reset to 'base' and
#     the series re-applied (ignored build products stay, builds stay
#     incremental).
#  2. Drift check: the files that both series add (DRIFT_FILES below) must
#     be identical in the result of the 4.17 series (xen-patches/series,
#     the committed source of truth; the files are new in both series, so
#     they are rebuilt from the patches alone) and in build/upstream/xen,
#     after the normalisations listed in NORMALISE below and nothing else;
#     every patch of the 4.17 series has its counterpart (same subject) in
#     the upstream series, making the same change unless it is listed in
#     PORTED_WITH_CHANGES.  XME_SERIES_DIR overrides xen-patches/ (tests).
#  3. The hypervisor, release and debug (CONFIG_DEBUG, XSM/FLASK), with
#     CONFIG_MEM_SHARING (hence INTEL_VMX and MEM_EVENT_RING) and
#     CONFIG_MEM_PAGING, Xen's -Werror on and no warning allowed
#     (scripts/build-xen.sh), under build/upstream/obj/.
#  4. The tools: tools/include, the libraries libxenctrl needs, libxenctrl,
#     libxenstore, tools/tests/mem-event and xenpaging (-Werror, the tools'
#     default).
#  5. The harness tests (cargo test -p xen-mem-event-harness) against this
#     tree's xen/common/mem_event_ring.c, in build/target-upstream.
#
# Without the snapshot (a machine outside this project) it says so in one
# line and succeeds.  JOBS (default 2) bounds the parallelism of every step.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
TARBALL=${XEN_UPSTREAM_TARBALL:-$top/../shared/upstream/xen-c447b7308b.tar.xz}
UP=$top/build/upstream
TREE=$UP/xen
SERIES_DIR=$top/xen-patches/upstream
OLD_SERIES_DIR=${XME_SERIES_DIR:-$top/xen-patches}   # the 4.17 series
JOBS=${JOBS:-2}
STAMP=$UP/xen.stamp

if [ ! -f "$TARBALL" ]; then
    echo "upstream-check: skipped, no upstream Xen snapshot at $TARBALL"
    exit 0
fi

# Files the two series add: identical in both, up to NORMALISE.
DRIFT_FILES=(
    xen/include/public/mem_event.h
    xen/include/xen/mem_event_ring.h
    xen/common/mem_event_ring.c
    xen/include/xen/mem_event.h
    xen/common/mem_event.c
    tools/libs/ctrl/xc_mem_event.c
    tools/tests/mem-event/test-mem-event.c
    tools/tests/mem-event/Makefile
    tools/tests/mem-event/.gitignore
)
# The only differences allowed: a sed expression applied to the 4.17
# version of a file before it is compared with the upstream one.  Each is
# a convention of the tree, not a change of the code:
#  - tests/mem-event/Makefile: master installs test programs in
#    $(LIBEXEC)/tests, 4.17 in $(LIBEXEC_BIN), as every test's Makefile of
#    each tree does.
# Every patch of the 4.17 series has its counterpart in the upstream series
# (same subject, so the same file name but for the number), and the
# counterpart makes the same change (the same added and removed lines),
# except the patches below, which had to be ported (their shared files are
# checked above).
PORTED_WITH_CHANGES=(
    xen-public-add-per-event-type-memory-event-rings-ABI.patch
    xen-common-add-the-index-and-record-logic-of-per-typ.patch
    xen-add-XEN_DOMCTL_mem_event_ring-and-its-ring-frame.patch
    x86-mem_sharing-raise-OOM-and-handle-invalidation-me.patch
    tools-add-xc_mem_event_ring_-wrappers-and-a-test-pro.patch
)
declare -A NORMALISE=(
    [tools/tests/mem-event/Makefile]='s#$(LIBEXEC_BIN)#$(LIBEXEC)/tests#g'
)

t0=$SECONDS
step() { echo "upstream-check: $* ($((SECONDS - t0)) s)"; }

series_of() {    # series_of DIR: the patches DIR/series names, in order
    local dir=$1 p
    [ -f "$dir/series" ] || { echo "upstream-check: no $dir/series" >&2; exit 1; }
    while read -r p; do
        case "$p" in ''|'#'*) continue ;; esac
        [ -f "$dir/$p" ] || { echo "upstream-check: $dir/series names $p, which does not exist" >&2; exit 1; }
        echo "$dir/$p"
    done < "$dir/series"
}

mapfile -t patches < <(series_of "$SERIES_DIR")
mapfile -t old_patches < <(series_of "$OLD_SERIES_DIR")
mkdir -p "$UP"

# --- 1. the tree -------------------------------------------------------------
export GIT_AUTHOR_NAME=xen-mem-event GIT_AUTHOR_EMAIL=build@xen-mem-event.invalid
export GIT_COMMITTER_NAME=xen-mem-event GIT_COMMITTER_EMAIL=build@xen-mem-event.invalid
export GIT_AUTHOR_DATE="2000-01-01T00:00:00Z" GIT_COMMITTER_DATE="2000-01-01T00:00:00Z"

snap="$(basename "$TARBALL") $(sha256sum < "$TARBALL" | cut -d' ' -f1)"
stamp="$snap $(cat "${patches[@]}" | sha256sum | cut -d' ' -f1) ${#patches[@]}"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$stamp" ] && [ -d "$TREE/.git" ]; then
    step "$TREE is up to date (${#patches[@]} patches)"
else
    if [ -d "$TREE/.git" ] && git -C "$TREE" rev-parse -q --verify refs/tags/base >/dev/null \
       && [ "$(cat "$UP/tarball" 2>/dev/null)" = "$snap" ]; then
        git -C "$TREE" am --abort >/dev/null 2>&1 || true
        git -C "$TREE" reset -q --hard base
        git -C "$TREE" clean -q -fd
    else
        step "unpacking $(basename "$TARBALL") into $TREE"
        rm -rf "$TREE" "$UP/obj"
        mkdir -p "$TREE"
        tar -C "$TREE" -xf "$TARBALL"
        git -C "$TREE" init -q
        git -C "$TREE" add -A -f
        git -C "$TREE" commit -q -m "xen.git master: $(basename "$TARBALL")"
        git -C "$TREE" tag base
        echo "$snap" > "$UP/tarball"
    fi
    rm -f "$STAMP"
    for p in "${patches[@]}"; do
        if ! git -C "$TREE" am -q --whitespace=nowarn "$p" >/dev/null 2>"$UP/am.log"; then
            echo "upstream-check: patch $(basename "$p") does not apply to upstream master:" >&2
            sed 's/^/  /' "$UP/am.log" >&2
            git -C "$TREE" am --abort >/dev/null 2>&1 || true
            exit 1
        fi
    done
    echo "$stamp" > "$STAMP"
    step "$TREE at base + ${#patches[@]} patches"
fi

# --- 2. drift between the two series -------------------------------------------
old=$(mktemp -d)
trap 'rm -rf "$old"' EXIT
includes=()
for f in "${DRIFT_FILES[@]}"; do includes+=(--include="$f"); done
for p in "${old_patches[@]}"; do
    (cd "$old" && git apply --allow-empty "${includes[@]}" "$p") \
        || { echo "upstream-check: cannot rebuild the shared files from $(basename "$p")" >&2; exit 1; }
done
drift=0
compare() {    # compare WHAT LABEL_A LABEL_B A B: diff A B, report a drift
    diff -u --label "$2" --label "$3" "$4" "$5" > "$UP/drift.diff" && return 0
    echo "upstream-check: DRIFT: $1:" >&2
    head -40 "$UP/drift.diff" | sed 's/^/  /' >&2
    drift=1
}
for f in "${DRIFT_FILES[@]}"; do
    if [ ! -f "$old/$f" ] || [ ! -f "$TREE/$f" ]; then
        echo "upstream-check: DRIFT: $f is in $( [ -f "$old/$f" ] && echo "the 4.17 series only" || echo "the upstream series only")" >&2
        drift=1
        continue
    fi
    compare "$f differs between the 4.17 series and the upstream series" \
        "$f (4.17 series: xen-patches/)" "$f (upstream series: xen-patches/upstream/)" \
        <(sed -e "${NORMALISE[$f]:-}" "$old/$f") "$TREE/$f"
done
if [ $drift -ne 0 ]; then
    echo "upstream-check: shared files must stay identical in xen-patches/ and xen-patches/upstream/;" \
         "change both series together (allowed differences: NORMALISE in scripts/upstream-check.sh)" >&2
    exit 1
fi
changes() {    # the lines a patch adds and removes, in order
    sed -n '/^diff --git /,$p' "$1" | grep -E '^[-+]' | grep -vE '^(\+\+\+|---) '
}
for p in "${old_patches[@]}"; do
    name=$(basename "$p"); slug=${name#[0-9][0-9][0-9][0-9]-}
    q=
    for u in "${patches[@]}"; do
        [ "${u##*/[0-9][0-9][0-9][0-9]-}" = "$slug" ] && q=$u
    done
    if [ -z "$q" ]; then
        echo "upstream-check: DRIFT: $name of xen-patches/series has no counterpart in xen-patches/upstream/series: port it" >&2
        drift=1
        continue
    fi
    [[ " ${PORTED_WITH_CHANGES[*]} " == *" $slug "* ]] && continue
    compare "$name does not make the same change in both series" \
        "$name (4.17 series)" "$(basename "$q") (upstream series)" <(changes "$p") <(changes "$q")
done
if [ $drift -ne 0 ]; then
    echo "upstream-check: port the change to xen-patches/upstream/ (or, for a patch that had to" \
         "be adapted to master, list it in PORTED_WITH_CHANGES in scripts/upstream-check.sh)" >&2
    exit 1
fi
rm -f "$UP/drift.diff"
step "no drift: ${#DRIFT_FILES[@]} shared files identical in both series, ${#old_patches[@]} patches ported"

# --- 3. the hypervisor ----------------------------------------------------------
for flavour in release debug; do
    obj=$UP/obj/xen-$flavour
    # Xen's own make relinks every time; a binary newer than the tree and
    # than both scripts is up to date.
    if [ "$obj/xen" -nt "$STAMP" ] && [ "$obj/xen" -nt "$top/scripts/build-xen.sh" ] \
       && [ "$obj/xen" -nt "$top/scripts/upstream-check.sh" ]; then
        built="up to date"
    else
        JOBS=$JOBS bash "$top/scripts/build-xen.sh" "$flavour" "$TREE" "$obj" | sed 's/^build-xen: /upstream-check: /'
        built=built
    fi
    for opt in CONFIG_INTEL_VMX CONFIG_MEM_SHARING CONFIG_MEM_EVENT_RING CONFIG_MEM_PAGING; do
        grep -qx "$opt=y" "$obj/.config" \
            || { echo "upstream-check: $opt is not set in $obj/.config" >&2; exit 1; }
    done
    for o in common/mem_event.o common/mem_event_ring.o; do
        [ -f "$obj/$o" ] || { echo "upstream-check: $obj/$o was not built" >&2; exit 1; }
    done
    step "$flavour hypervisor $built"
done

# --- 4. the tools -----------------------------------------------------------------
tlog=$UP/tools.log
clog=$UP/tools-configure.log
cd "$TREE"
if [ ! -f config/Tools.mk ] || [ configure -nt config/Tools.mk ]; then
    step "configuring the tools"
    # What scripts/build-xen-libs.sh does for 4.17, less what master no
    # longer knows (qemu-traditional), plus --disable-pygrub (libfsimage).
    ./configure PYTHON=/usr/bin/python3 --prefix=/usr --disable-docs \
        --disable-stubdom --disable-xen --disable-monitors --disable-ocamltools \
        --disable-xsmpolicy --disable-seabios --disable-golang --disable-pvshim \
        --disable-pygrub --disable-rombios --disable-ipxe \
        --with-system-qemu=/usr/bin/qemu-system-i386 \
        --with-xenstored=xenstored > "$clog" 2>&1 \
        || { tail -20 "$clog" >&2; echo "upstream-check: tools configure failed ($clog; 'make deps' installs Xen's build dependencies)" >&2; exit 1; }
fi
(
    set -e
    make -C tools/include
    # libxenctrl and what it links against, libxenstore for xenpaging.
    for l in toolcore toollog evtchn gnttab call foreignmemory devicemodel ctrl store; do
        make -C "tools/libs/$l" -j"$JOBS"
    done
    make -C tools/tests/mem-event
    make -C tools/xenpaging
) > "$tlog" 2>&1 \
    || { grep -E 'error|warning' "$tlog" | tail -20 >&2; echo "upstream-check: tools build failed ($tlog)" >&2; exit 1; }
ls tools/libs/ctrl/libxenctrl.so tools/tests/mem-event/test-mem-event tools/xenpaging/xenpaging >/dev/null
step "tools built: libxenctrl, tools/tests/mem-event, xenpaging"

# --- 5. the harness on master's ring core ------------------------------------------
cd "$top"
XEN_MEM_EVENT_XEN_TREE=$TREE CARGO_BUILD_JOBS=$JOBS \
    ${CARGO:-cargo} test -p xen-mem-event-harness --locked --target-dir "$top/build/target-upstream" \
    > "$UP/harness.log" 2>&1 \
    || { tail -40 "$UP/harness.log" >&2; echo "upstream-check: harness tests failed ($UP/harness.log)" >&2; exit 1; }
grep -E '^test result:' "$UP/harness.log" | awk '{p += $4; f += $6} END {print "upstream-check: harness tests on master'\''s mem_event_ring.c: " p " passed, " f " failed"}'
step "passed"
