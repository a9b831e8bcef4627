#!/usr/bin/env bash
# Everything the VM tier boots, each step cached/incremental:
#   ci/build-vm-xen.sh   debug hypervisor (+ test-only patches) and tools
#   ci/build-guest.sh    guest initrd (memtest) and dom0 helpers
#   ci/build-rootfs.sh   dom0 rootfs (debootstrap, cached) -> build/vm/rootfs.img
# Then ci/run-vm.sh boots it.
set -euo pipefail
XME_LOG_TAG=vm-image
. "$(dirname "$0")/lib.sh"
t0=$(date +%s)
for step in build-vm-xen build-guest stage-tools build-rootfs; do
    s=$(date +%s)
    "$ci_top/ci/$step.sh"
    log "$step: $(( $(date +%s) - s ))s"
done
log "VM image ready in $(( $(date +%s) - t0 ))s: $VM/{xen,vmlinuz,initrd.img,rootfs.img}"
