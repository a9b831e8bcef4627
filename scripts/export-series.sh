#!/usr/bin/env bash
# Developer helper: export the commits on top of 'pristine' in build/xen as
# the series in xen-patches/ (git format-patch) and rewrite its series file.
# The cover letter (0000-cover-letter.patch) is kept as it is.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
TREE=${XEN_TREE:-$top/build/xen}
OUT=$top/xen-patches
find "$OUT" -maxdepth 1 -name '0[0-9][0-9][0-9]-*.patch' ! -name '0000-cover-letter.patch' -delete
git -C "$TREE" format-patch -q --no-signature --zero-commit -o "$OUT" pristine..HEAD
{
    echo "# Applied in order with 'git am' by scripts/xen-src.sh."
    (cd "$OUT" && ls 0[0-9][0-9][0-9]-*.patch | grep -v '^0000-cover-letter.patch$')
} > "$OUT/series"
cat "$OUT/series"
