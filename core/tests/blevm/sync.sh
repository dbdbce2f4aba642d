#!/usr/bin/env bash
# Host driver of the BLE sync test: builds `shoal` with Bluetooth (feature bluetooth-linux, release), makes sure the
# VM's root filesystem and a fixed btvirt are cached (rootfs.sh, btvirt.sh), boots the VM with sync-guest.sh (three
# `shoal peer` processes in a line over real BlueZ: a GATT-only round and an L2CAP round), prints the summary, and
# exits non-zero on any failure.
#
#   sudo core/tests/blevm/sync.sh
#
# Environment: ROUNDS ("gatt l2cap"), SHOAL_LOG (peers' log level, info), BULK_KB (256), SYNC_WAIT (150), BTMON (1:
# HCI trace), DBUS_MONITOR (1), EATT (0: turn BlueZ's enhanced ATT off), BLUETOOTHD_ARGS are passed to the guest (see
# sync-guest.sh); SHOAL_SKIP_BUILD=1 uses the binary already built; CARGO_TARGET_DIR as for cargo; SHOAL_BLE_VM_OUT
# (the results directory, default a new temp dir) and the other run.sh variables. Needs root (run.sh, rootfs.sh), gcc
# and patch (btvirt.sh) and, to build, libdbus-1-dev + pkg-config (installed with apt-get if missing).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../../.." && pwd)
T0=$(date +%s)
log() { echo "sync.sh: $*" >&2; }

if [ "${SHOAL_SKIP_BUILD:-0}" != 1 ]; then
    if ! pkg-config --exists dbus-1 2>/dev/null; then
        log "installing libdbus-1-dev pkg-config (needed to build bluer/btleplug)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends libdbus-1-dev pkg-config >&2
    fi
    log "building shoal (release, feature bluetooth-linux)"
    (cd "$REPO" && cargo build --release -p shoaldb --features bluetooth-linux --bin shoal)
fi
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
case $TARGET in /*) ;; *) TARGET=$REPO/$TARGET ;; esac
BIN=$TARGET/release/shoal
[ -x "$BIN" ] || { log "no binary at $BIN"; exit 2; }
T1=$(date +%s)

"$HERE/rootfs.sh" >/dev/null
# btvirt with the connection-handle fix (see btvirt.sh): without it a controller with two links misroutes data.
BTVIRT=$("$HERE/btvirt.sh")

OUTDIR=${SHOAL_BLE_VM_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/shoal-blevm-sync.XXXXXX")}
mkdir -p "$OUTDIR"
STAGE=$(mktemp -d "${TMPDIR:-/tmp}/shoal-blevm-sync-env.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
{
    echo "ROUNDS='${ROUNDS:-gatt l2cap}'"
    echo "SHOAL_LOG='${SHOAL_LOG:-info}'"
    echo "BULK_KB='${BULK_KB:-256}'"
    echo "SYNC_WAIT='${SYNC_WAIT:-150}'"
    [ -z "${BTMON:-}" ] || echo "BTMON='$BTMON'"
    [ -z "${EATT:-}" ] || echo "EATT='$EATT'"
    [ -z "${DBUS_MONITOR:-}" ] || echo "DBUS_MONITOR='$DBUS_MONITOR'"
    [ -z "${BLUETOOTHD_ARGS+x}" ] || echo "BLUETOOTHD_ARGS='$BLUETOOTHD_ARGS'"
} > "$STAGE/env"
cp "$BIN" "$STAGE/shoal"
cp "$BTVIRT" "$STAGE/btvirt"

set +e
SHOAL_BLE_VM_OUT=$OUTDIR "$HERE/run.sh" "$HERE/sync-guest.sh" "$STAGE/shoal" "$STAGE/btvirt" "$STAGE/env"
STATUS=$?
set -e
T2=$(date +%s)

echo
echo "=== BLE sync test (build $((T1 - T0)) s, VM $((T2 - T1)) s; results in $OUTDIR)"
if [ -f "$OUTDIR/summary.txt" ]; then cat "$OUTDIR/summary.txt"; else echo "(no summary)"; fi
if [ "$STATUS" = 0 ]; then
    echo "=== PASSED"
else
    echo "=== FAILED (status $STATUS)"
fi
exit "$STATUS"
