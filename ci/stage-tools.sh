#!/usr/bin/env bash
# Stage the Rust tools for the VM image: a release build of xen-mem-event
# (tools/), installed to build/vm/stage/usr/local/bin (lands at / in the
# image).  Debian's libxen* in dom0 satisfy its libraries.
set -euo pipefail
XME_LOG_TAG=stage-tools
. "$(dirname "$0")/lib.sh"
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -q -p xen-mem-event-tools --manifest-path "$ci_top/Cargo.toml"
mkdir -p "$VM/stage/usr/local/bin"
install -m 0755 "$ci_top/target/release/xen-mem-event" "$VM/stage/usr/local/bin/xen-mem-event"
log "staged $VM/stage/usr/local/bin/xen-mem-event"
