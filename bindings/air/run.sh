#!/usr/bin/env bash
# The shipped phone radios in mesh scenarios on one simulated Bluetooth LE air (core/air, PROTOCOL.md there):
# Android phones are JVMs running Robolectric with the real AndroidBluetoothRadio over Bluetooth framework shadows
# that speak to the air; iPhones are the Swift test runner (Swift 6 on Linux, in the trixie chroot) running the real
# CoreBluetoothRadio.swift over the test-only CoreBluetooth module that speaks to the air; L1 is a Linux peer (the
# core's own BLE stack over a test radio for the air, `shoal-air linux-phone`; the shipped BlueZ radio needs BlueZ).
# Bluetooth is every phone's only transport. `shoal-air mesh` starts the air and the six phones (A1..A3, I1..I2, L1;
# A3 is Android 9, API 28: GATT only, the older framework calls), runs each scenario with several seeds (a JSON line per run) and
# exits non-zero on the first failure. Each phone uses L2CAP or keeps to GATT by the seed's draw; every third seed
# the air is rough (10 % of connection attempts are lost, a link drops after 0.2 % of packets, 2 % of packets
# overtake the one before):
#
#   line        A1–I1–A2–I2–A3: edits at both ends reach the other end; only neighbours ever connect
#   groups      {A1,I1,L1} and {A2,I2} edit apart, meet, split and meet again
#   dial        an Android phone and an iPhone come into range at once, both dial: they end with one link
#   walk        a phone walks out of range mid-transfer, both write apart, it comes back
#   attachment  48 KB crosses three mixed hops (A1–I1–A2–I2), relayed; I2 gets the exact bytes
#   background  a backgrounded iPhone: the Android phone never dials it, the iPhone finds it and reconnects
#   restore     A1–I1–I2–A2 over GATT: the system ends both iPhone apps while linked; launched again, their radios get
#               the links back (CoreBluetooth state restoration), end them, and all four converge on new links
#
#   bindings/air/run.sh [--only SCENARIO] [--seeds N]      (SHOAL_AIR_SEEDS: seeds per scenario, default 3)
#
# Needs the builds of bindings/kotlin/test.sh and bindings/swift/test.sh (run them first; .ci/test does), and root
# (the iPhones run in a chroot). Phone logs: target/air-mesh/<phone>.log.
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"
target="${CARGO_TARGET_DIR:-target}"
case "$target" in /*) ;; *) target="$repo/$target" ;; esac

cargo build --locked -q -p shoaldb-air
android="$(bindings/kotlin/test.sh --air-phone-command)"
ios="$(bindings/swift/test.sh --air-phone-command)"
logs="$target/air-mesh"
rm -rf "$logs"

status=0
"$target/debug/shoal-air" mesh \
  --phone "A1=$android" --phone "I1=$ios" --phone "A2=$android" --phone "I2=$ios" \
  --phone "A3=env SHOAL_AIR_SDK=28 $android" --phone "L1=$target/debug/shoal-air linux-phone" \
  --seeds "${SHOAL_AIR_SEEDS:-3}" --logs "$logs" "$@" || status=$?
if [ "$status" -ne 0 ]; then
  for log in "$logs"/*.log; do
    [ -f "$log" ] || continue
    echo "--- the last lines of $log" >&2
    tail -n 40 "$log" >&2
  done
fi
exit "$status"
