#!/bin/bash
# Guest script: reports (does not assert) what the VM's BlueZ stack offers the Shoal BLE transport. Re-run it when
# BlueZ, the kernel or the btvirt controller type changes; README.md records its findings.
#   - controller version, LE features, PHYs, advertising instances / data length (btmgmt);
#   - D-Bus interfaces bluetoothd exposes on an adapter (with the current bluetoothd flags);
#   - D-Bus advertisements (LEAdvertisingManager1, via bluetoothctl) on hci0 AND hci2 at once, seen from hci1;
#   - a second advertising instance on hci0 (btmgmt add-adv): both seen from hci1;
#   - ATT MTU a central gets (gatttool `mtu 517`) and what bluetoothd's own GATT client negotiates (btmon).
# Output: /opt/shoal/out/facts.txt (+ btmon.txt). Always finishes 0 unless the stack does not come up.
#
#   core/tests/blevm/run.sh core/tests/blevm/facts.sh
#   BLUETOOTHD_ARGS / BTVIRT_ARGS (see guest-common.sh) can be set by passing a file named `env` as a FILE.
[ -f /opt/shoal/env ] && . /opt/shoal/env
. /opt/shoal/guest-common.sh

start_controllers 3
A0=$(ctrl_addr 0); A2=$(ctrl_addr 2)
F=$OUT/facts.txt
exec > >(tee "$F") 2>&1
strip() { tr -d '\r' | sed 's/\x1b\[[0-9;]*[A-Za-z]//g'; }
btmon -w /tmp/btmon.snoop >/dev/null 2>&1 &
MON=$!
sleep 0.5

echo "=== mode: btvirt ${BTVIRT_ARGS--L}, bluetoothd ${BLUETOOTHD_ARGS--E}"
btmgmt --index 0 info | sed -n 2,4p
btmgmt --index 0 phy
btmgmt --index 0 advinfo
echo "features (LMP page 0.., LE):"; cat /sys/kernel/debug/bluetooth/hci0/features

echo "=== D-Bus interfaces of /org/bluez/hci0"
dbus-send --system --print-reply --dest=org.bluez /org/bluez/hci0 org.freedesktop.DBus.Introspectable.Introspect |
    grep -o 'interface name="org.bluez[^"]*"' | cut -d'"' -f2

echo "=== D-Bus advertisements on hci0 (peer-zero) and hci2 (peer-two) at once; scan from hci1"
adv() { ( echo "select $1"; sleep 0.5; echo "menu advertise"; echo "name $2"; echo back; sleep 0.3
          echo "advertise peripheral"; sleep 14; echo quit ) | bluetoothctl > "/tmp/adv-$2.log" 2>&1 & }
adv "$A0" peer-zero
adv "$A2" peer-two
sleep 2.5
timeout 6 btmgmt --index 1 find -l 2>&1 | grep -E 'dev_found|name' | sort | uniq -c
for n in peer-zero peer-two; do echo "$n: $(strip < "/tmp/adv-$n.log" | grep -oE 'Advertising object registered|Failed[^#]*' | head -1)"; done

echo "=== second advertising instance on hci0 (btmgmt add-adv, name btmgmt-inst), scan from hci1"
btmgmt --index 0 add-adv -c -d 0c0962746d676d742d696e7374 3 2>&1 | tail -1
btmgmt --index 0 advinfo | tail -1
timeout 8 btmgmt --index 1 find -l 2>&1 | grep -E 'dev_found|name' | sort | uniq -c
sleep 5
btmgmt --index 0 rm-adv 3 >/dev/null 2>&1

echo "=== ATT MTU: gatttool (hci1 -> hci0) asks for 517"
btmgmt --index 0 connectable on >/dev/null; btmgmt --index 0 advertising on >/dev/null
( echo connect; sleep 3; echo "mtu 517"; sleep 2; echo disconnect; sleep 1; echo exit ) |
    timeout 20 gatttool -i hci1 -b "$A0" -t public -I 2>&1 | strip | grep -E 'success|MTU|rror'
sleep 1
kill "$MON"; sleep 0.5
btmon -r /tmp/btmon.snoop > "$OUT/btmon.txt" 2>&1
echo "=== btmon: ATT MTU exchanges, data length / PHY updates"
grep -E 'RX MTU|Data Length Change|PHY Update Complete|LE Set Data Length' "$OUT/btmon.txt" | sed 's/^ *//' | sort | uniq -c
finish 0
