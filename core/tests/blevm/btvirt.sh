#!/usr/bin/env bash
# Builds (once) and caches a patched `btvirt` for the BLE test VM, and prints its path.
#
#   core/tests/blevm/btvirt.sh        -> /var/cache/shoal/ble-vm/btvirt-<recipe>/btvirt
#
# Why: BlueZ 5.66's emulator (emulator/btdev.c) gives each end of a link the lowest connection handle free on that
# controller, but reports the initiator's handle to BOTH hosts in LE Connection Complete and forwards ACL data with
# the sender's handle. As long as every controller has one connection the handles agree; once a controller has two
# (a Shoal peer in the middle of a line), they differ and ATT/L2CAP traffic lands on the wrong connection
# (bluetoothd: "Failed to handle response PDU", "Primary service discovery failed"). The patch gives both ends of a
# link a handle that is free on both, which is what the rest of btdev.c assumes.
#
# Builds from Debian bookworm's bluez source package (the guest's BlueZ), fetched with apt-get through a private
# apt configuration (the host's apt sources are not touched); needs gcc and patch. The guest copies (same Debian
# release, so it runs there) replace /usr/bin/btvirt via PATH (see sync-guest.sh). Cache dir: SHOAL_BLE_VM_CACHE.
set -euo pipefail

CACHE="${SHOAL_BLE_VM_CACHE:-/var/cache/shoal/ble-vm}"
MIRROR="${SHOAL_BLE_VM_MIRROR:-http://deb.debian.org/debian}"
RECIPE=shared-handles-v1
DEST="$CACHE/btvirt-$RECIPE"
log() { echo "btvirt.sh: $*" >&2; }

if [ -x "$DEST/btvirt" ]; then
    echo "$DEST/btvirt"
    exit 0
fi
for tool in gcc patch xz; do
    command -v "$tool" >/dev/null || { log "needs $tool"; exit 1; }
done
mkdir -p "$CACHE"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/shoal-btvirt.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

log "fetching bluez source (bookworm)"
mkdir -p "$WORK/apt/lists/partial" "$WORK/apt/archives/partial"
echo "deb-src $MIRROR bookworm main" > "$WORK/apt/sources.list"
APT=(apt-get -qq -o "Dir::Etc::SourceList=$WORK/apt/sources.list" -o "Dir::Etc::SourceParts=$WORK/apt/none"
     -o "Dir::State::Lists=$WORK/apt/lists" -o "Dir::Cache::Archives=$WORK/apt/archives" -o "APT::Sandbox::User=root")
"${APT[@]}" update >&2
(cd "$WORK" && "${APT[@]}" source --download-only bluez >&2)
tar -C "$WORK" -xf "$WORK"/bluez_*.orig.tar.xz
SRC=$(find "$WORK" -maxdepth 1 -type d -name 'bluez-*' | head -n1)
[ -f "$SRC/emulator/btdev.c" ] || { log "no emulator/btdev.c in the source"; exit 1; }

log "patching and building btvirt"
patch -d "$SRC" -p1 >&2 <<'EOF'
--- a/emulator/btdev.c
+++ b/emulator/btdev.c
@@ -1092,6 +1092,16 @@ static struct btdev_conn *conn_link(struct btdev *dev, struct btdev *remote,
 {
 	struct btdev_conn *conn1, *conn2;
 
+	/* Both ends get the same handle: LE Connection Complete reports the
+	 * initiator's handle to both hosts and ACL data is forwarded with the
+	 * sender's handle, so a handle free on one end only would misroute
+	 * data as soon as a controller has two connections.
+	 */
+	while (queue_find(dev->conns, match_handle, UINT_TO_PTR(handle)) ||
+			queue_find(remote->conns, match_handle,
+						UINT_TO_PTR(handle)))
+		handle++;
+
 	conn1 = conn_new(dev, handle, type);
 	if (!conn1)
 		return NULL;
EOF
cd "$SRC"
mkdir -p lib/bluetooth
cp lib/*.h lib/bluetooth/
printf '#define VERSION "%s"\n#define PACKAGE "bluez"\n' "$(basename "$SRC" | sed 's/^bluez-//')" > config.h
gcc -O2 -DHAVE_CONFIG_H -I. -Ilib -o "$WORK/btvirt" \
    emulator/main.c emulator/serial.c emulator/server.c emulator/vhci.c emulator/btdev.c emulator/bthost.c \
    emulator/smp.c emulator/phy.c emulator/amp.c emulator/le.c lib/bluetooth.c lib/hci.c lib/uuid.c \
    src/shared/queue.c src/shared/util.c src/shared/crypto.c src/shared/ecc.c src/shared/io-mainloop.c \
    src/shared/timeout-mainloop.c src/shared/mainloop.c src/shared/mainloop-notify.c >&2
mkdir -p "$DEST.tmp"
install -m 0755 "$WORK/btvirt" "$DEST.tmp/btvirt"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
log "built $DEST/btvirt"
echo "$DEST/btvirt"
