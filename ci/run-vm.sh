#!/usr/bin/env bash
# Boot the test VM (QEMU: KVM with nested virtualisation when the host has
# it, TCG otherwise): the VM's debug Xen (build/vm/xen), Debian dom0
# (build/vm/vmlinuz + initrd.img, root on build/vm/rootfs.img), and run the
# scenarios in dom0 (ci/vm/run.sh via xme-tests.service).
#
# The serial console (Xen + dom0's hvc0 + the test driver) is streamed to the
# terminal and saved in build/vm/logs/<timestamp>/serial.log (and
# build/vm/logs/latest).  Afterwards ci/vm-verdict.sh (tested by
# ci/tests/vm-verdict.sh) checks the log and gives the exit status.
#
# Usage: ci/run-vm.sh [--scenarios a+b|all] [--timeout S] [--shell] [--accel kvm|tcg]
#   env: XME_SCENARIOS, XME_VM_TIMEOUT (default 1500 s), XME_SCENARIO_TIMEOUT
#        (default 1200 s), XME_ACCEL, XME_QUIET=1 (do not stream the console),
#        XME_XEN_EXTRA (more hypervisor command line options)
# Exit: 0 all passed, 1 a check failed / no XME-DONE / hypervisor error,
#       2 usage or missing build products.
set -euo pipefail
XME_LOG_TAG=run-vm
. "$(dirname "$0")/lib.sh"

scenarios=${XME_SCENARIOS:-all}
vm_timeout=${XME_VM_TIMEOUT:-1500}
sc_timeout=${XME_SCENARIO_TIMEOUT:-1200}
accel=${XME_ACCEL:-auto}
shell=0
while [ $# -gt 0 ]; do
    case "$1" in
    --scenarios) scenarios=$2; shift 2 ;;
    --timeout) vm_timeout=$2; shift 2 ;;
    --shell) shell=1; shift ;;
    --accel) accel=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "usage: $0 [--scenarios a+b|all] [--timeout S] [--shell] [--accel kvm|tcg]" >&2; exit 2 ;;
    esac
done
[ $shell = 1 ] && scenarios=shell
case "$scenarios" in *,*) die "separate scenarios with '+', not ',' (QEMU's -initrd splits on commas)" ;; esac

for f in xen vmlinuz initrd.img rootfs.img; do
    [ -f "$VM/$f" ] || { log "missing $VM/$f: build it with ci/vm-image.sh"; exit 2; }
done
command -v qemu-system-x86_64 >/dev/null || { log "qemu-system-x86_64 not found"; exit 2; }

# KVM only when it can virtualise a hypervisor (vmx/svm); PVM-only KVM cannot.
if [ "$accel" = auto ]; then
    if [ -w /dev/kvm ] && grep -qE '^flags.* (vmx|svm)( |$)' /proc/cpuinfo; then
        accel=kvm
    else
        accel=tcg
    fi
fi
case "$accel" in
kvm) accel_args=(-accel kvm -cpu host,-monitor) ;;
# -monitor: without MONITOR/MWAIT (Xen takes a #GP in mwait_idle under TCG).
tcg) accel_args=(-accel tcg,thread=multi -cpu EPYC,+svm,-monitor) ;;
*) log "unknown accelerator '$accel'"; exit 2 ;;
esac

stamp=$(date +%Y%m%d-%H%M%S)
LOGDIR=$VM/logs/$stamp
mkdir -p "$LOGDIR"
ln -sfn "$stamp" "$VM/logs/latest"
SERIAL=$LOGDIR/serial.log

xen_cmdline="console=com1 com1=115200,8n1 dom0_mem=1024M,max:1024M loglvl=all guest_loglvl=all"
xen_cmdline+=" conring_size=1m"
# Under TCG, Xen's lazy FPU switching (its default on AMD CPUs such as the
# emulated EPYC: CR0.TS set on a vCPU switch, state restored on #NM)
# corrupts dom0's vector registers: a checker holding patterns in
# xmm0-15/ymm0-15 across preemption saw 23 corruptions in ~2,000 rounds
# (xmm and ymm alike), and xl, xenpaging and even systemd died in glibc's
# malloc checks or segfaulted.  With spec-ctrl=eager-fpu (state switched
# with the vCPU, no #NM): 0 in ~89,000 rounds.  A host CPU would not need it.
[ "$accel" = tcg ] && xen_cmdline+=" spec-ctrl=eager-fpu"
[ -z "${XME_XEN_EXTRA:-}" ] || xen_cmdline+=" $XME_XEN_EXTRA"
dom0_cmdline="root=/dev/vda rw console=hvc0 panic=-1 loglevel=5"
dom0_cmdline+=" xme.scenarios=$scenarios xme.timeout=$sc_timeout"


qemu=(qemu-system-x86_64 "${accel_args[@]}" -machine q35 -smp 2 -m 3072
      -nographic -no-reboot -nic none
      -kernel "$VM/xen" -append "$xen_cmdline"
      -initrd "$VM/vmlinuz $dom0_cmdline,$VM/initrd.img"
      # snapshot=on: writes go to a throw-away overlay, the image stays pristine.
      -drive "file=$VM/rootfs.img,if=virtio,format=raw,cache=unsafe,snapshot=on")
echo "${qemu[*]}" > "$LOGDIR/qemu-cmdline"
log "accel=$accel scenarios=$scenarios timeout=${vm_timeout}s log=$SERIAL"

t0=$(date +%s)
rc=0
if [ $shell = 1 ]; then
    # Interactive: the console is the terminal (Ctrl-A X quits QEMU).
    "${qemu[@]}" -serial mon:stdio 2>&1 | tee "$SERIAL" || rc=$?
    exit "$rc"
fi
# stdin from /dev/null: QEMU must not take the terminal.
if [ "${XME_QUIET:-0}" = 1 ]; then
    timeout -k 10 "$vm_timeout" "${qemu[@]}" -serial "file:$SERIAL" -monitor none \
        < /dev/null > "$LOGDIR/qemu.out" 2>&1 || rc=$?
else
    touch "$SERIAL"
    tail -n +1 -F "$SERIAL" 2>/dev/null &
    tailpid=$!
    timeout -k 10 "$vm_timeout" "${qemu[@]}" -serial "file:$SERIAL" -monitor none \
        < /dev/null > "$LOGDIR/qemu.out" 2>&1 || rc=$?
    sleep 0.5
    kill "$tailpid" 2>/dev/null || true
    wait "$tailpid" 2>/dev/null || true
fi
elapsed=$(( $(date +%s) - t0 ))

# ------------------------------------------------------------------ verdict
exec bash "$(dirname "$0")/vm-verdict.sh" "$LOGDIR" "$rc" "$elapsed" "$vm_timeout" "$accel"
