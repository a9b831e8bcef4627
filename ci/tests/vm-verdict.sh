#!/usr/bin/env bash
# Tests of ci/vm-verdict.sh, the VM run's verdict, on canned serial logs:
# what it exits with and the lines CI reads.  No VM needed (make ci-check).
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
verdict=$top/ci/vm-verdict.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
nfail=0

# serial NAME LINES...: a log directory whose serial.log holds LINES, with
# CRLF line ends as QEMU writes them.
serial() {
    local d=$tmp/$1
    shift
    mkdir -p "$d"
    printf '%s\r\n' "$@" > "$d/serial.log"
    echo "qemu-system-x86_64: terminating on signal 15" > "$d/qemu.out"
    echo "$d"
}

# expect NAME WANT_RC RC [ELAPSED] -- GREP...: run the verdict on log NAME
# with QEMU status RC; it must exit WANT_RC and print a line matching each
# extended regular expression GREP.
expect() {
    local name=$1 want=$2 rc=$3 got out re
    shift 3
    [ "$1" = -- ] && shift
    out=$(XME_QUIET=1 bash "$verdict" "$tmp/$name" "$rc" 60 3000 tcg 2>&1)
    got=$?
    if [ "$got" != "$want" ]; then
        echo "FAIL $name: exit $got, want $want; output:"
        sed 's/^/    /' <<< "$out"
        nfail=$((nfail + 1))
        return
    fi
    for re in "$@"; do
        if ! grep -qE -- "$re" <<< "$out"; then
            echo "FAIL $name: no line matching '$re'; output:"
            sed 's/^/    /' <<< "$out"
            nfail=$((nfail + 1))
            return
        fi
    done
    echo "ok   $name (exit $got)"
}

ok=(
    "(XEN) Xen version 4.17.5"
    "XME-BEGIN scenarios=all uptime=9.1s"
    "XME-RESULT setup.xen-daemons PASS xenstored+xenconsoled up after 3s"
    "[xme a] guest a is domain 1, ready in 29s (attempt 1)"
    "XME-RESULT a.guest-boot PASS domid=1"
    "XME-RESULT a.complete PASS 68s"
)
serial pass "${ok[@]}" "XME-DONE pass=3 fail=0" > /dev/null
expect pass 0 0 -- '^PASSED: 3 checks$' '^void runs \(a guest died; run once more\): none$' \
    '^vm-tier: 3 passed, 0 failed$'

serial void "${ok[@]}" \
    "[xme b] VOID ATTEMPT: guest b crashed or gone; its results, not counted:" \
    "XME-RESULT b.complete PASS 80s" "XME-DONE pass=4 fail=0" > /dev/null
expect void 0 0 -- '^void runs \(a guest died; run once more\): b$' '^vm-tier: 4 passed, 0 failed$'

serial fail "${ok[@]}" "[xme b] guest b: no answer to 'verify'" \
    "XME-RESULT b.verify FAIL (no answer)" "XME-RESULT b.complete FAIL a check failed" \
    "XME-DONE pass=3 fail=2" > /dev/null
expect fail 1 0 -- '^FAILED: 2 check\(s\) failed$' '^---- what scenario b logged' \
    "^\[xme b\] guest b: no answer to 'verify'$" '^---- the failed checks ----$' \
    '^XME-RESULT b.verify FAIL \(no answer\)$' '^vm-tier: 3 passed, 2 failed$'

serial nodone "${ok[@]}" > /dev/null
expect nodone 1 0 -- '^FAILED: no XME-DONE' '^---- last 60 lines of '

serial xenbug "${ok[@]}" "(XEN) Assertion 'list_empty(&x)' failed at mem_sharing.c:1182" \
    "XME-DONE pass=3 fail=0" > /dev/null
expect xenbug 1 0 -- '^FAILED: the hypervisor reported errors:$' "Assertion 'list_empty"

serial timeout "${ok[@]}" > /dev/null
expect timeout 1 124 -- '^TIMEOUT: QEMU killed after 3000s$'

serial qemufail "${ok[@]}" "XME-DONE pass=3 fail=0" > /dev/null
expect qemufail 1 1 -- '^QEMU exited with status 1 \(qemu-system-x86_64: terminating'

serial none "XME-DONE pass=0 fail=0" > /dev/null
expect none 1 0 -- '^FAILED: no PASS results at all$'

mkdir -p "$tmp/usage"
expect usage 2 0 -- 'usage: '

if [ "$nfail" -gt 0 ]; then
    echo "ci/tests/vm-verdict.sh: $nfail case(s) failed"
    exit 1
fi
echo "ci/tests/vm-verdict.sh: every case passed"
