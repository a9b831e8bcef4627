#!/usr/bin/env bash
# Stage the Rust tools for the VM image: a release build of xen-mem-event
# (tools/) and of the library's examples/epoll (as xme-epoll), installed to
# build/vm/stage/usr/local/bin (lands at / in the image).  Debian's libxen* in dom0 satisfy its libraries.
set -euo pipefail
XME_LOG_TAG=stage-tools
. "$(dirname "$0")/lib.sh"
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -q -p xen-mem-event-tools --manifest-path "$ci_top/Cargo.toml"
# The library's event-loop example (both rings of a domain, one thread).
cargo build --release --locked -q -p xen-mem-event --example epoll --manifest-path "$ci_top/Cargo.toml"
mkdir -p "$VM/stage/usr/local/bin"
install -m 0755 "$ci_top/target/release/xen-mem-event" "$VM/stage/usr/local/bin/xen-mem-event"
install -m 0755 "$ci_top/target/release/examples/epoll" "$VM/stage/usr/local/bin/xme-epoll"
log "staged $VM/stage/usr/local/bin/xen-mem-event and xme-epoll (examples/epoll)"
