#!/usr/bin/env bash
# Stage the Rust tools for the VM image:
#  - the xen-mem-event Debian package (pkg/build-deb.sh, what 'make deb'
#    builds) into build/vm/debs/; build-rootfs.sh installs it in dom0 with
#    apt-get (binary in /usr/bin, man pages, completions, systemd units);
#  - the library's examples/epoll, a test program, as xme-epoll in
#    build/vm/stage/usr/local/bin (lands at / in the image).
# Debian's libxen* in dom0 satisfy the libraries of both.
set -euo pipefail
XME_LOG_TAG=stage-tools
. "$(dirname "$0")/lib.sh"
export PATH="$HOME/.cargo/bin:$PATH"
deb=$(bash "$ci_top/pkg/build-deb.sh" | tail -n 1)
mkdir -p "$VM/debs"
rm -f "$VM/debs"/xen-mem-event_*.deb
cp "$deb" "$VM/debs/"
# The library's event-loop example (both rings of a domain, one thread).
cargo build --release --locked -q -p xen-mem-event --example epoll --manifest-path "$ci_top/Cargo.toml"
mkdir -p "$VM/stage/usr/local/bin"
# Images before the package had the binary copied here: it would shadow
# the package's /usr/bin/xen-mem-event.
rm -f "$VM/stage/usr/local/bin/xen-mem-event"
install -m 0755 "$ci_top/target/release/examples/epoll" "$VM/stage/usr/local/bin/xme-epoll"
log "staged $VM/debs/$(basename "$deb") and xme-epoll (examples/epoll)"
