#!/usr/bin/env bash
# Prepare build/xen: the pristine upstream .orig tarball of Debian's xen
# source package as a git repository with one commit, plus the series in
# xen-patches/ applied with 'git am'.
#
# Re-running is cheap: when the series has not changed since the last
# successful run nothing happens.  When it has, the tree is reset to the
# pristine commit and the series re-applied; files the series does not touch
# keep their timestamps, so builds stay incremental.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
V=${XEN_DEB_VERSION:-4.17.5+72-g01140da4e8-1}
UPSTREAM=${V%-*}
DL=$top/build/dl
TREE=${XEN_TREE:-$top/build/xen}
SERIES_DIR=${SERIES_DIR:-$top/xen-patches}
ORIG=$DL/xen_${UPSTREAM}.orig.tar.xz
STAMP=$TREE.stamp
AMLOG=$TREE.am.log

export GIT_AUTHOR_NAME=xen-mem-event GIT_AUTHOR_EMAIL=build@xen-mem-event.invalid
export GIT_COMMITTER_NAME=xen-mem-event GIT_COMMITTER_EMAIL=build@xen-mem-event.invalid
export GIT_AUTHOR_DATE="2000-01-01T00:00:00Z" GIT_COMMITTER_DATE="2000-01-01T00:00:00Z"

patches=()
if [ -f "$SERIES_DIR/series" ]; then
    while read -r p; do
        case "$p" in ''|'#'*) continue ;; esac
        [ -f "$SERIES_DIR/$p" ] || { echo "xen-src: $SERIES_DIR/series names $p, which does not exist" >&2; exit 1; }
        patches+=("$SERIES_DIR/$p")
    done < "$SERIES_DIR/series"
fi

if [ ! -f "$ORIG" ]; then
    mkdir -p "$DL"
    echo "xen-src: fetching Debian source package xen=$V"
    (cd "$DL" && apt-get source --download-only -q "xen=$V") >/dev/null
    [ -f "$ORIG" ] || { echo "xen-src: $ORIG missing after download" >&2; exit 1; }
fi

stamp=$(cat "$ORIG" "${patches[@]}" | sha256sum | cut -d' ' -f1)
stamp="$V $stamp ${#patches[@]}"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$stamp" ]; then
    echo "xen-src: $TREE is up to date (${#patches[@]} patches)"
    exit 0
fi


if [ ! -d "$TREE/.git" ] || ! git -C "$TREE" rev-parse -q --verify refs/tags/pristine >/dev/null; then
    echo "xen-src: unpacking $(basename "$ORIG") into $TREE"
    rm -rf "$TREE"
    mkdir -p "$TREE"
    tar -C "$TREE" --strip-components=1 -xf "$ORIG"
    git -C "$TREE" init -q
    git -C "$TREE" add -A -f
    git -C "$TREE" commit -q -m "Xen $UPSTREAM: pristine upstream .orig tarball"
    git -C "$TREE" tag pristine
else
    git -C "$TREE" am --abort >/dev/null 2>&1 || true
    git -C "$TREE" reset -q --hard pristine
    # Untracked files from a previous series go; ignored build products stay.
    git -C "$TREE" clean -q -fd
fi
rm -f "$STAMP"

for p in "${patches[@]}"; do
    if ! git -C "$TREE" am -q --whitespace=nowarn "$p" >/dev/null 2>"$AMLOG"; then
        echo "xen-src: patch $(basename "$p") does not apply to the pristine tree:" >&2
        sed 's/^/  /' "$AMLOG" >&2
        git -C "$TREE" am --abort >/dev/null 2>&1 || true
        exit 1
    fi
done
rm -f "$AMLOG"
echo "$stamp" > "$STAMP"
echo "xen-src: $TREE at pristine + ${#patches[@]} patches"
