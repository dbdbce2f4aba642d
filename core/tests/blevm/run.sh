#!/usr/bin/env bash
# Boots the BLE test VM (Debian bookworm, real kernel Bluetooth + BlueZ, virtual LE controllers) with GUEST_SCRIPT as
# its init and returns the script's exit status.
#
#   core/tests/blevm/run.sh GUEST_SCRIPT [FILE...]
#
# - GUEST_SCRIPT becomes /sbin/shoal-init (PID 1). It should source /opt/shoal/guest-common.sh (copied in
#   automatically) and end with `finish CODE`, which writes CODE to /opt/shoal/out/status and powers the VM off.
# - Each FILE (e.g. a host-built test binary; same Debian release, so it runs) is copied to /opt/shoal/.
# - The serial console (kernel + script output) goes to stdout, and to serial.log in the output dir.
# - After poweroff, the guest's /opt/shoal/out/ is copied to $SHOAL_BLE_VM_OUT (default: a new temp dir; printed).
# - Exit status: the guest's status; 124 on timeout; 125 if the guest wrote no status.
#
# Environment: SHOAL_BLE_VM_TIMEOUT (s, default 600), SHOAL_BLE_VM_OUT, SHOAL_BLE_VM_CACHE (see rootfs.sh),
# SHOAL_BLE_VM_MEM (MB, default 1024), SHOAL_BLE_VM_SMP (default 2), SHOAL_BLE_VM_CPU (QEMU -cpu, default max: the
# emulated CPU has AVX2 etc., so host-built binaries do not hit SIGILL), SHOAL_BLE_VM_KEEP=1 (keep the work dir with
# the disk image), SHOAL_BLE_VM_APPEND (extra kernel command line). Needs root (first run: debootstrap).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
GUEST=${1:?usage: run.sh GUEST_SCRIPT [FILE...]}
shift
[ -f "$GUEST" ] || { echo "run.sh: no such guest script: $GUEST" >&2; exit 2; }
for f in "$@"; do [ -e "$f" ] || { echo "run.sh: no such file: $f" >&2; exit 2; }; done
TIMEOUT=${SHOAL_BLE_VM_TIMEOUT:-600}

log() { echo "run.sh: $*" >&2; }
T0=$(date +%s.%N)
elapsed() { awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f s", b-a}'; }

CACHE=$("$HERE/rootfs.sh")
ROOT="$CACHE/rootfs"
KERNEL=$(ls "$ROOT"/boot/vmlinuz-* | sort -V | tail -n1)
INITRD=$(ls "$ROOT"/boot/initrd.img-* | sort -V | tail -n1)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shoal-blevm.XXXXXX")
cleanup() { if [ "${SHOAL_BLE_VM_KEEP:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi; }
trap cleanup EXIT

# Stage the root: hard links to the cached files (instant, no copy) when on the same filesystem, else a copy.
# Only NEW files are added to the stage below (never written through a link), so the cache stays untouched.
STAGE="$WORK/root"
cp -al "$ROOT" "$STAGE" 2>/dev/null || { rm -rf "$STAGE"; cp -a "$ROOT" "$STAGE"; }
mkdir -p "$STAGE/opt/shoal/out"
install -m 0755 "$GUEST" "$STAGE/usr/sbin/shoal-init.new"   # /sbin -> usr/sbin (merged /usr)
mv -f "$STAGE/usr/sbin/shoal-init.new" "$STAGE/usr/sbin/shoal-init"
install -m 0644 "$HERE/guest-common.sh" "$STAGE/opt/shoal/guest-common.sh"
for f in "$@"; do cp -rL --preserve=mode "$f" "$STAGE/opt/shoal/"; done

# Disk: room for the root plus what the tests write.
USED_MB=$(du -sm "$STAGE" | cut -f1)
SIZE_MB=$(( USED_MB + 1024 ))
[ "$SIZE_MB" -ge 2048 ] || SIZE_MB=2048
IMG="$WORK/root.img"
: > "$IMG"
mkfs.ext4 -q -d "$STAGE" -F "$IMG" "${SIZE_MB}M"
rm -rf "$STAGE"
log "disk image ready ($USED_MB MB used, ${SIZE_MB} MB) after $(elapsed); booting (timeout ${TIMEOUT} s)"

# -accel tcg: KVM guests hung at boot on this kind of machine (see /work/shared/examples/ble-vm). panic=-1 + -no-reboot: a guest panic (e.g. the init
# script exiting) ends QEMU at once instead of hanging until the timeout.
set +e
timeout -k 10 "$TIMEOUT" qemu-system-x86_64 -accel tcg -cpu "${SHOAL_BLE_VM_CPU:-max}" -m "${SHOAL_BLE_VM_MEM:-1024}" -smp "${SHOAL_BLE_VM_SMP:-2}" \
    -kernel "$KERNEL" -initrd "$INITRD" \
    -append "root=/dev/vda rw console=ttyS0,115200 quiet panic=-1 init=/sbin/shoal-init ${SHOAL_BLE_VM_APPEND:-}" \
    -drive "file=$IMG,format=raw,if=virtio" -nic none \
    -display none -serial stdio -monitor none -no-reboot </dev/null | tee "$WORK/serial.log"
QRC=${PIPESTATUS[0]}
set -e
log "VM ended (qemu/timeout status $QRC) after $(elapsed)"

# Results: /opt/shoal/out from the image.
OUTDIR=${SHOAL_BLE_VM_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/shoal-blevm-out.XXXXXX")}
mkdir -p "$OUTDIR"
mkdir -p "$WORK/dump"
debugfs -R "rdump /opt/shoal/out $WORK/dump" "$IMG" >/dev/null 2>"$WORK/debugfs.err" || true
if [ -d "$WORK/dump/out" ]; then
    cp -a "$WORK/dump/out/." "$OUTDIR/"
else
    log "could not read /opt/shoal/out from the image: $(cat "$WORK/debugfs.err")"
fi
cp "$WORK/serial.log" "$OUTDIR/serial.log"
log "guest output in $OUTDIR"

if [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then
    log "TIMEOUT after $TIMEOUT s"
    exit 124
fi
if [ ! -s "$OUTDIR/status" ]; then
    log "guest wrote no status"
    exit 125
fi
STATUS=$(tr -dc '0-9' < "$OUTDIR/status")
log "guest status ${STATUS:-?}"
exit "${STATUS:-125}"
