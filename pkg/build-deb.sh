#!/usr/bin/env bash
# Builds the xen-mem-event Debian package into build/deb/ (make deb):
# the release binary and xme-docgen, the man pages and completions
# generated from the clap definitions (build/deb/gen/), then cargo-deb.
# Prints the path of the .deb on its last line.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
export PATH="$HOME/.cargo/bin:$PATH"
out=$top/build/deb
cd "$top"
cargo build --release --locked -q -p xen-mem-event-tools --bin xen-mem-event --bin xme-docgen
rm -rf "$out/gen"
target=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
"$target/release/xme-docgen" "$out/gen" > /dev/null
mkdir -p "$out"
rm -f "$out"/xen-mem-event_*.deb
cargo deb --locked --no-build --strip -p xen-mem-event-tools --output "$out" >&2
deb=$(ls -1 "$out"/xen-mem-event_*.deb 2>/dev/null | tail -n 1)
[ -n "$deb" ] || { echo "build-deb: cargo deb made no package" >&2; exit 1; }
echo "$deb"
