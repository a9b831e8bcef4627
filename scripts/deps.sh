#!/usr/bin/env bash
# Install every system package xen-mem-event needs, idempotently.
# A no-op (a few dpkg queries) when everything is already present.
set -euo pipefail

XEN_DEB_VERSION=${XEN_DEB_VERSION:-4.17.5+72-g01140da4e8-1}
V=$XEN_DEB_VERSION

# The libFuzzer/sanitizer runtimes for clang-14 (make fuzz, make test's
# fuzz-smoke), pinned to the version of bookworm's clang-14.
CLANG_RT_VERSION=${CLANG_RT_VERSION:-1:14.0.6-12}
CLANG_PINNED=(clang-14 libclang-rt-14-dev)

# The Debian package checker run on 'make deb' output, pinned to bookworm's.
LINTIAN_VERSION=${LINTIAN_VERSION:-2.116.3+deb12u1}
# cargo-deb ('make deb'), from crates.io, pinned; kept if already there.
CARGO_DEB_VERSION=${CARGO_DEB_VERSION:-3.8.0}

# Packages pinned to the Xen source version the series is written against.
PINNED=(libxen-dev libxenmisc4.17 libxencall1 libxendevicemodel1 libxenevtchn1
        libxenforeignmemory1 libxengnttab1 libxenstore4 libxentoolcore1
        libxentoollog1 libxenhypfs1)
# Build dependencies of the hypervisor, the tool libraries, bindgen and the
# userspace harness (ASan/UBSan runtimes come with gcc).
PLAIN=(build-essential bison flex python3 python3-dev pkg-config git xz-utils
       dpkg-dev autoconf autotools-dev acpica-tools uuid-dev libyajl-dev
       libncurses-dev zlib1g-dev liblzma-dev libbz2-dev libclang-dev clang
       debootstrap e2fsprogs cpio busybox-static)
# QEMU comes from bookworm-backports (10.x; 7.2 conflicts with the
# backports qemu-utils already on these machines).
BACKPORTS=(qemu-system-x86)

SRC=/etc/apt/sources.list.d/xen-mem-event.sources

need_update=0
if [ ! -f "$SRC" ]; then
    cat > "$SRC" <<'SOURCES'
# Added by xen-mem-event (scripts/deps.sh): Xen source package and QEMU.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    need_update=1
fi

# cargo-deb: cargo install --locked, only when the pinned version is not
# the one installed (cargo's own cache keeps it across runs).
cargo_deb() {
    local cargo=${CARGO:-cargo}
    command -v "$cargo" >/dev/null || cargo=$HOME/.cargo/bin/cargo
    if "$cargo" deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION\|$CARGO_DEB_VERSION"; then
        return 0
    fi
    if "$cargo" install --list 2>/dev/null | grep -q "^cargo-deb v$CARGO_DEB_VERSION:"; then
        return 0
    fi
    echo "deps: cargo install --locked cargo-deb $CARGO_DEB_VERSION"
    "$cargo" install --locked -q cargo-deb --version "$CARGO_DEB_VERSION"
}
cargo_deb

missing=()
for p in "${PINNED[@]}"; do
    have=$(dpkg-query -W -f='${Status} ${Version}' "$p" 2>/dev/null || true)
    [ "$have" = "install ok installed $V" ] || missing+=("$p=$V")
done
for p in "${CLANG_PINNED[@]}"; do
    have=$(dpkg-query -W -f='${Status} ${Version}' "$p" 2>/dev/null || true)
    [ "$have" = "install ok installed $CLANG_RT_VERSION" ] \
        || missing+=("$p=$CLANG_RT_VERSION")
done
have=$(dpkg-query -W -f='${Status} ${Version}' lintian 2>/dev/null || true)
[ "$have" = "install ok installed $LINTIAN_VERSION" ] || missing+=("lintian=$LINTIAN_VERSION")
for p in "${PLAIN[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
        || missing+=("$p")
done
bp_missing=()
for p in "${BACKPORTS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
        || bp_missing+=("$p")
done

# The source package index is needed by 'make xen-src' too.
if ! ls /var/lib/apt/lists/*bookworm_main_source_Sources* >/dev/null 2>&1; then
    need_update=1
fi

if [ ${#missing[@]} -eq 0 ] && [ ${#bp_missing[@]} -eq 0 ] && [ $need_update -eq 0 ]; then
    echo "deps: all system packages present"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if [ $need_update -eq 1 ] || [ ${#missing[@]} -gt 0 ] || [ ${#bp_missing[@]} -gt 0 ]; then
    apt-get update -q
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing ${missing[*]}"
    apt-get install -y -q --no-install-recommends --allow-downgrades "${missing[@]}"
fi
if [ ${#bp_missing[@]} -gt 0 ]; then
    echo "deps: installing from bookworm-backports: ${bp_missing[*]}"
    apt-get install -y -q --no-install-recommends -t bookworm-backports "${bp_missing[@]}"
fi
echo "deps: done"
