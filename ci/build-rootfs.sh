#!/usr/bin/env bash
# Build the dom0 root filesystem of the test VM and assemble build/vm/rootfs.img.
#
#  1. build/vm/rootfs: debootstrap (minbase + PACKAGES).  Slow (~2-3 min) and
#     cached: redone only when PACKAGES/SUITE/MIRROR change.
#  2. Configure it in place (idempotent, a second): services masked/enabled,
#     xenconsoled guest logging, xme-tests.service.  Kernel + initrd copied
#     to build/vm/vmlinuz and build/vm/initrd.img.
#  3. build/vm/rootfs.img: a hard-linked copy of the rootfs plus /opt/xme
#     (ci/vm/*, build/vm/stage, build/vm/guest) packed with 'mkfs.ext4 -d'.
#     Seconds, so editing a scenario never redoes step 1.
#
# Usage: ci/build-rootfs.sh [--base-only]
set -euo pipefail
XME_LOG_TAG=rootfs
. "$(dirname "$0")/lib.sh"

SUITE=${XME_SUITE:-bookworm}
MIRROR=${XME_MIRROR:-http://deb.debian.org/debian}
# Keep this list sorted; changing it (or SUITE/MIRROR) redoes debootstrap.
PACKAGES=(busybox initramfs-tools iproute2 kmod linux-image-amd64 procps
          systemd-sysv udev xen-utils-4.17)
DEBOOTSTRAP_TIMEOUT=${DEBOOTSTRAP_TIMEOUT:-1500}

ROOT=$VM/rootfs
IMGROOT=$VM/imgroot
IMG=$VM/rootfs.img

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, file ownership)"
for t in debootstrap mkfs.ext4 timeout; do
    command -v "$t" >/dev/null || die "$t not found (run scripts/deps.sh)"
done
mkdir -p "$VM"

# ---------------------------------------------------------------- 1. base
base_key="$SUITE $MIRROR $(IFS=,; echo "${PACKAGES[*]}")"
if [ -f "$ROOT/.xme-base" ] && [ "$(cat "$ROOT/.xme-base")" = "$base_key" ]; then
    log "base rootfs cached ($ROOT)"
else
    log "debootstrap $SUITE into $ROOT.new (a few minutes, timeout ${DEBOOTSTRAP_TIMEOUT}s)"
    t0=$(date +%s)
    rm -rf "$ROOT.new"
    if ! timeout --foreground -k 30 "$DEBOOTSTRAP_TIMEOUT" \
         debootstrap --variant=minbase --include="$(IFS=,; echo "${PACKAGES[*]}")" \
         "$SUITE" "$ROOT.new" "$MIRROR" > "$VM/debootstrap.log" 2>&1; then
        tail -n 30 "$VM/debootstrap.log" >&2
        # debootstrap may leave bind mounts behind on failure.
        for m in proc sys dev/pts dev; do umount -l "$ROOT.new/$m" 2>/dev/null || true; done
        die "debootstrap failed (full log: $VM/debootstrap.log)"
    fi
    chroot "$ROOT.new" apt-get clean
    echo "$base_key" > "$ROOT.new/.xme-base"
    rm -rf "$ROOT" "$IMGROOT"
    mv "$ROOT.new" "$ROOT"
    log "debootstrap done in $(( $(date +%s) - t0 ))s"
fi
[ "${1:-}" = --base-only ] && exit 0

# ---------------------------------------------------------------- 2. configure
# Idempotent, in place.  Never write into an existing file with '>': the image
# step hard-links this tree, so replace files (rm, then write) instead.
put() {     # put PATH MODE < content
    local p=$ROOT$1
    mkdir -p "$(dirname "$p")"
    rm -f "$p"
    cat > "$p"
    chmod "$2" "$p"
}
log "configuring $ROOT"
put /etc/hostname 0644 <<<"xme-dom0"
put /etc/hosts 0644 <<'X'
127.0.0.1 localhost
127.0.1.1 xme-dom0
X
put /etc/fstab 0644 <<'X'
/dev/vda / ext4 rw,noatime,errors=remount-ro 0 0
X
if [ ! -s "$ROOT/etc/machine-id" ]; then
    chroot "$ROOT" systemd-machine-id-setup >/dev/null
fi
chroot "$ROOT" passwd -d root >/dev/null    # for 'make run' (interactive)

# Debian's xen-utils start xenstored + xenconsoled from /etc/init.d/xen
# (xen.service via systemd's sysv generator), which sources /etc/default/xen.
# Guest consoles are logged to /var/log/xen/console/guest-NAME.log.
[ -f "$ROOT/etc/default/xen.xme-orig" ] || cp -p "$ROOT/etc/default/xen" "$ROOT/etc/default/xen.xme-orig"
{
    sed -e '$a\' "$ROOT/etc/default/xen.xme-orig"
    cat <<'X'

# xen-mem-event VM tier (ci/build-rootfs.sh): log every guest console to
# /var/log/xen/console/guest-NAME.log.
XENCONSOLED_TRACE=guest
XENCONSOLED_ARGS="--log=guest --log-dir=/var/log/xen/console"
X
} > "$ROOT/etc/default/xen.new"
mv "$ROOT/etc/default/xen.new" "$ROOT/etc/default/xen"
mkdir -p "$ROOT/var/log/xen/console"

# Units that hang, fight over hvc0 or are useless in a 1-minute VM.
MASK=(serial-getty@hvc0.service getty@tty1.service console-getty.service
      getty-static.service getty.target
      xendomains.service apt-daily.timer apt-daily-upgrade.timer
      dpkg-db-backup.timer e2scrub_all.timer fstrim.timer e2scrub_reap.service
      systemd-pstore.service man-db.timer)
for u in "${MASK[@]}"; do
    ln -sfn /dev/null "$ROOT/etc/systemd/system/$u"
done
rm -f "$ROOT/etc/systemd/system/getty.target.wants/getty@tty1.service"

put /etc/systemd/system/xme-tests.service 0644 <<'X'
[Unit]
Description=xen-mem-event VM-tier scenarios (/opt/xme/run.sh)
After=xen.service local-fs.target systemd-udev-settle.service
Wants=xen.service
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/opt/xme/run.sh
StandardInput=tty-force
StandardOutput=tty
StandardError=tty
TTYPath=/dev/hvc0
TTYReset=no
TTYVHangup=no
TTYVTDisallocate=no
TimeoutStartSec=3600
# Leftovers (e.g. xl's per-domain background processes) must not hold up
# the power-off for the default 90 s.
KillMode=control-group
TimeoutStopSec=5

[Install]
WantedBy=multi-user.target
X
mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants"
ln -sfn /etc/systemd/system/xme-tests.service \
    "$ROOT/etc/systemd/system/multi-user.target.wants/xme-tests.service"

# Kernel + initrd for QEMU (dom0) and for the guests (same vmlinuz).
# The tools: the xen-mem-event package (ci/stage-tools.sh), installed the
# way an operator does, with man-db for its man pages.  --reinstall: a
# rebuilt package keeps its version.
deb=$(ls -1 "$VM"/debs/xen-mem-event_*.deb 2>/dev/null | tail -n 1)
[ -n "$deb" ] || die "no $VM/debs/xen-mem-event_*.deb: run ci/stage-tools.sh first"
cp "$deb" "$ROOT/tmp/"
[ -s "$ROOT/etc/resolv.conf" ] || cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
mount -t proc proc "$ROOT/proc"
trap 'umount "$ROOT/proc" 2>/dev/null || true' EXIT
in_root() { chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive "$@"; }
install_tools() {
    in_root apt-get install -y -q --no-install-recommends man-db &&
    in_root apt-get install -y -q --reinstall --no-install-recommends "/tmp/$(basename "$deb")"
}
if ! install_tools > "$VM/deb-install.log" 2>&1; then
    in_root apt-get update -q >> "$VM/deb-install.log" 2>&1
    install_tools >> "$VM/deb-install.log" 2>&1 \
        || { tail -n 20 "$VM/deb-install.log" >&2; die "apt-get install $(basename "$deb") failed"; }
fi
in_root apt-get clean
# man-db's triggers may still hold it for a moment.
umount "$ROOT/proc" 2>/dev/null || umount -l "$ROOT/proc"
trap - EXIT
rm -f "$ROOT/tmp/$(basename "$deb")"
log "installed $(basename "$deb") and man-db with apt-get"

kver=$(basename "$(ls -1 "$ROOT"/boot/vmlinuz-* | sort -V | tail -n1)")
kver=${kver#vmlinuz-}
for f in "vmlinuz-$kver:vmlinuz" "initrd.img-$kver:initrd.img"; do
    cmp -s "$ROOT/boot/${f%%:*}" "$VM/${f##*:}" || cp "$ROOT/boot/${f%%:*}" "$VM/${f##*:}"
done
echo "/boot/vmlinuz-$kver" > "$VM/guest-kernel-path"

# ---------------------------------------------------------------- 3. image
t0=$(date +%s)
helpers=(xme-peek xme-mem xme-legacy-share xme-wmap xme-vregs)
for f in "$VM/guest/initrd.gz" "${helpers[@]/#/$VM/helpers/}"; do
    [ -f "$f" ] || die "$f missing: run ci/build-guest.sh first"
done
rm -rf "$IMGROOT"
cp -al "$ROOT" "$IMGROOT"
O=$IMGROOT/opt/xme
mkdir -p "$O/bin" "$O/guest"
cp -r "$ci_top"/ci/vm/. "$O/"
cp "$VM/guest/initrd.gz" "$O/guest/initrd.gz"
cp "${helpers[@]/#/$VM/helpers/}" "$O/bin/"
echo "/boot/vmlinuz-$kver" > "$O/guest/kernel-path"
find "$O" -name '*.sh' -exec chmod 0755 {} +
# build/vm/stage/ lands at / (new files only: never write through a hard link).
if [ -d "$VM/stage" ]; then
    cp -a --remove-destination "$VM/stage/." "$IMGROOT/"
fi
rm -f "$IMGROOT/.xme-base"
# Prune what dom0 never uses (smaller image, faster mkfs).  Only unlinks in
# the hard-linked copy: the cached rootfs keeps everything.
kmod=$IMGROOT/usr/lib/modules/$kver/kernel
rm -rf "$IMGROOT"/usr/share/{doc,locale,info} "$IMGROOT/boot/initrd.img-$kver" \
    "$kmod/sound" "$kmod/drivers/"{gpu,media,infiniband,net/wireless,net/ethernet,scsi,staging,iio,usb,bluetooth,isdn,mtd,hwmon,hid,input,platform,mfd,comedi,video,misc,leds,power,thunderbolt,nfc,rtc,spi,i2c,pinctrl,regulator,edac,crypto,firewire,ata,mmc,pcmcia,w1,ntb,fpga,gnss,mailbox,soundwire,watchdog}

used_mb=$(du -sm "$IMGROOT" | cut -f1)
size_mb=$(( used_mb + used_mb / 4 + 512 ))    # headroom for logs, paging files
rm -f "$IMG.new"
truncate -s "${size_mb}M" "$IMG.new"
mkfs.ext4 -q -F -L xme-root -J size=16 -E lazy_itable_init=1 -d "$IMGROOT" "$IMG.new" \
    || die "mkfs.ext4 -d failed"
mv "$IMG.new" "$IMG"
rm -rf "$IMGROOT"
log "image $IMG: ${size_mb} MiB (${used_mb} MiB used), assembled in $(( $(date +%s) - t0 ))s"
