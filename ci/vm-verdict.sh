#!/usr/bin/env bash
# The verdict of a VM run (ci/run-vm.sh), from what it left in LOGDIR:
# serial.log (the VM's serial console) and qemu.out (QEMU's own output).
#   - every 'XME-RESULT <check> PASS|FAIL ...' line; any FAIL fails the run
#   - 'XME-DONE' must be present (else: timeout, hang or crash)
#   - hypervisor failures ('(XEN)' lines): Assertion/BUG/WARN/FATAL/Panic on
#     CPU/Xen call trace
# Writes LOGDIR/serial.clean.log and LOGDIR/results.txt, prints the summary.
#
# Usage: ci/vm-verdict.sh LOGDIR QEMU_RC ELAPSED_S VM_TIMEOUT_S ACCEL
#   env: XME_QUIET=1 (the serial log was not streamed: print its tail on
#        failure)
# Exit: 0 all passed, 1 a check failed / no XME-DONE / hypervisor error /
#       QEMU failed or was killed, 2 usage.
set -euo pipefail

if [ $# != 5 ] || [ ! -f "$1/serial.log" ]; then
    echo "usage: $0 LOGDIR QEMU_RC ELAPSED_S VM_TIMEOUT_S ACCEL (LOGDIR/serial.log must exist)" >&2
    exit 2
fi
LOGDIR=$1 rc=$2 elapsed=$3 vm_timeout=$4 accel=$5
SERIAL=$LOGDIR/serial.log

# ------------------------------------------------------------------ verdict
# The serial log has CRLFs and dom0/Xen lines can interleave; strip CRs.
clean=$LOGDIR/serial.clean.log
tr -d '\r' < "$SERIAL" > "$clean"
grep -aoE 'XME-RESULT [^ ]+ (PASS|FAIL).*' "$clean" > "$LOGDIR/results.txt" || true
npass=$(grep -c ' PASS' "$LOGDIR/results.txt" || true)
nfail=$(grep -cE '^XME-RESULT [^ ]+ FAIL' "$LOGDIR/results.txt" || true)
verdict=0
echo
echo "================ xen-mem-event VM tier: $elapsed s, accel=$accel, log $SERIAL"
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
    echo "TIMEOUT: QEMU killed after ${vm_timeout}s"
    verdict=1
elif [ "$rc" != 0 ]; then
    echo "QEMU exited with status $rc ($(tail -n 3 "$LOGDIR/qemu.out" 2>/dev/null | tr '\n' ' '))"
    verdict=1
fi
sed 's/^/  /' "$LOGDIR/results.txt"
if [ "$nfail" -gt 0 ]; then
    echo "FAILED: $nfail check(s) failed"
    verdict=1
fi
if ! grep -aq 'XME-DONE' "$clean"; then
    echo "FAILED: no XME-DONE (the VM crashed, hung or timed out before the end)"
    verdict=1
fi
# Only the hypervisor's own lines ('(XEN) ...', possibly mid-line when dom0
# output interleaves); userspace assertions are not hypervisor failures.
xen_errs=$(grep -anE '\(XEN\).*(Assertion .* failed|Xen BUG at|FATAL (TRAP|PAGE FAULT)|Panic on CPU|Xen call trace|Xen WARN at)' "$clean" | head -n 20 || true)
if [ -n "$xen_errs" ]; then
    echo "FAILED: the hypervisor reported errors:"
    echo "$xen_errs" | sed 's/^/  /'
    verdict=1
fi
# What the test hypervisor's TCG workarounds did (ci/xen-test-patches):
# reported, not judged.
npf=$(grep -ac 'TEST: #PF' "$clean" || true)
ndied=$(grep -acE 'TEST: d[0-9]+v[0-9]+ (halted|shut down)' "$clean" || true)
echo "test hypervisor: $npf #PF(s) not the guest's, not reflected; $ndied guest vCPU(s) died at once"
# (No VOID ATTEMPT line is the usual case: grep's status 1 must not end
# this script, set -o pipefail.)
voids=$(grep -a 'VOID ATTEMPT:' "$clean" | sed -n 's/^\[xme \([^]]*\)\].*/\1/p' | paste -sd ' ' || true)
echo "void runs (a guest died; run once more): ${voids:-none}"
if [ "$npass" = 0 ]; then
    echo "FAILED: no PASS results at all"
    verdict=1
fi
if [ $verdict = 0 ]; then
    echo "PASSED: $npass checks"
elif [ "${XME_QUIET:-0}" = 1 ]; then
    echo "---- last 60 lines of $clean ----"
    tail -n 60 "$clean"
fi
# What each failed scenario logged about itself (its '[xme S]' lines with
# their indented continuations, guests' early console lines '(dN)'): CI
# keeps only the end of the output, where the serial log's tail rarely
# says why.
if [ "$nfail" -gt 0 ]; then
    for s in $(sed -n 's/^XME-RESULT \([^.]*\)\.[^ ]* FAIL.*/\1/p' "$LOGDIR/results.txt" | sort -u); do
        echo "---- what scenario $s logged (at most 80 lines) ----"
        awk -v s="$s" '
            /xme: === scenario / { on = ($4 == s) }
            on && (index($0, "[xme " s "]") == 1 || /^    (\||xen\|)/ || /^(\(XEN\) )?\(d[0-9]+\) /) { print }
        ' "$clean" | cut -c1-300 | head -n 80
    done
fi
# The failed checks once more, last: CI may keep only the end of the output.
if [ "$nfail" -gt 0 ]; then
    echo "---- the failed checks ----"
    grep -E '^XME-RESULT [^ ]+ FAIL' "$LOGDIR/results.txt" | cut -c1-400
fi
echo "vm-tier: $npass passed, $nfail failed"
exit $verdict
