#!/usr/bin/env bash
# Builds (once) and caches the root filesystem of the BLE test VM: Debian bookworm with Debian's kernel, BlueZ and
# its test tools (btvirt, btmgmt, l2test, gatttool, btgatt-client, btmon, ...).
#
#   core/tests/blevm/rootfs.sh          -> prints the cache dir (rootfs is in DIR/rootfs)
#
# Cache dir: ${SHOAL_BLE_VM_CACHE:-/var/cache/shoal/ble-vm}. DIR/stamp marks a complete build; a cache without it
# (interrupted run) is thrown away and rebuilt. Needs root (debootstrap). Installs qemu-system-x86, e2fsprogs and
# debootstrap with apt-get if they are missing.
set -euo pipefail

CACHE="${SHOAL_BLE_VM_CACHE:-/var/cache/shoal/ble-vm}"
SUITE=bookworm
MIRROR="${SHOAL_BLE_VM_MIRROR:-http://deb.debian.org/debian}"
PKGS=linux-image-amd64,bluez,bluez-test-tools,dbus,kmod,udev,procps,iproute2
# Bump when the recipe changes, so old caches are rebuilt.
RECIPE="v1 $SUITE $PKGS"

log() { echo "rootfs.sh: $*" >&2; }

need_host_tools() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    command -v mkfs.ext4 >/dev/null && command -v debugfs >/dev/null || missing+=(e2fsprogs)
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
    fi
}

need_host_tools

if [ -f "$CACHE/stamp" ] && [ "$(cat "$CACHE/stamp")" = "$RECIPE" ] && [ -d "$CACHE/rootfs" ]; then
    echo "$CACHE"
    exit 0
fi

[ "$(id -u)" = 0 ] || { log "needs root (debootstrap)"; exit 1; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
# Someone else may have finished it while we waited for the lock.
if [ -f "$CACHE/stamp" ] && [ "$(cat "$CACHE/stamp")" = "$RECIPE" ] && [ -d "$CACHE/rootfs" ]; then
    echo "$CACHE"
    exit 0
fi

log "building $SUITE rootfs in $CACHE (takes a few minutes)"
# A debootstrap killed half-way may leave proc/sys/dev mounted in its target: unmount (deepest first) before
# deleting, and never let rm cross into another filesystem.
discard() {
    local m
    for m in $(awk -v p="$1" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r); do umount -l "$m" || true; done
    rm -rf --one-file-system "$1"
}
rm -f "$CACHE/stamp"
discard "$CACHE/rootfs"
discard "$CACHE/rootfs.tmp"
T0=$(date +%s)
debootstrap --variant=minbase --include="$PKGS" "$SUITE" "$CACHE/rootfs.tmp" "$MIRROR" >&2

R="$CACHE/rootfs.tmp"
# Make it smaller: package caches and lists, docs, man pages, locales, and kernel modules a headless VM with virtual
# Bluetooth controllers never loads (GPU, sound, media, wireless, InfiniBand, ...). The initrd keeps its own copy of
# what the boot needs (virtio).
chroot "$R" apt-get clean
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/cache/apt/*.bin "$R"/var/cache/debconf/*-old
rm -rf "$R"/usr/share/doc/* "$R"/usr/share/man/* "$R"/usr/share/info/* "$R"/usr/share/locale/* \
       "$R"/usr/share/i18n/* "$R"/usr/share/lintian "$R"/usr/share/zoneinfo/right
for kdir in "$R"/lib/modules/*; do
    [ -d "$kdir/kernel" ] || continue
    rm -rf "$kdir"/kernel/drivers/{gpu,media,infiniband,net/wireless,net/ethernet,isdn,staging,iio,scsi,md,hid,input,usb,nfc,mtd,thunderbolt,platform/x86} \
           "$kdir"/kernel/sound "$kdir"/kernel/fs/{btrfs,xfs,ocfs2,gfs2,nfs,nfsd,cifs,smb,ceph,f2fs,jfs,reiserfs,ntfs3,ubifs,dlm} \
           "$kdir"/kernel/net/{mac80211,wireless,sunrpc,ceph}
    chroot "$R" depmod -a "$(basename "$kdir")"
done
# The boot uses init=/sbin/shoal-init (see run.sh); give root an empty password for debugging on the serial console.
chroot "$R" passwd -d root >/dev/null 2>&1 || true
echo "shoal-ble" > "$R/etc/hostname"

ls "$R"/boot/vmlinuz-* "$R"/boot/initrd.img-* >/dev/null
command -v "$R/usr/bin/btvirt" >/dev/null 2>&1 || [ -x "$R/usr/bin/btvirt" ] || { log "btvirt missing"; exit 1; }

mv "$R" "$CACHE/rootfs"
echo "$RECIPE" > "$CACHE/stamp"
log "done in $(( $(date +%s) - T0 )) s, $(du -sh "$CACHE/rootfs" | cut -f1)"
echo "$CACHE"
