# Shared helpers for the ci/ scripts (sourced, not executed).
# shellcheck shell=bash

ci_top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VM=${XME_VM_DIR:-$ci_top/build/vm}

log()  { printf '[%s] %s\n' "${XME_LOG_TAG:-ci}" "$*" >&2; }
die()  { printf '[%s] ERROR: %s\n' "${XME_LOG_TAG:-ci}" "$*" >&2; exit 1; }

# JOBS: never more than 2 (the machines have 2 cores, shared with others).
JOBS=${JOBS:-2}
[ "$JOBS" -le 2 ] 2>/dev/null || JOBS=2

# hash_files FILE... : one sha256 over the contents (and names) of FILEs.
hash_files() {
    local f
    for f in "$@"; do printf '%s\n' "${f#"$ci_top"/}"; cat "$f"; done | sha256sum | cut -d' ' -f1
}
