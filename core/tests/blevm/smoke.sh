#!/bin/bash
# Guest script: proves the VM's Bluetooth LE stack works, with three virtual LE controllers on one emulated radio.
#   1. hci0 advertises connectable LE; hci1 discovers it (btmgmt find -l).
#   2. hci1 reads hci0's GATT primary services over an LE connection (gatttool --primary; bluetoothd's GATT server).
#   3. hci2 sends data to hci0 over an L2CAP LE credit-based channel (l2test, PSM 0x80); the receiver checks the
#      sequence numbers and sizes of every packet and the byte count.
# Writes /opt/shoal/out/summary.txt (+ the tools' logs); finishes 0 only if all three passed.
#
#   core/tests/blevm/run.sh core/tests/blevm/smoke.sh
. /opt/shoal/guest-common.sh

start_controllers 3
A0=$(ctrl_addr 0); A1=$(ctrl_addr 1); A2=$(ctrl_addr 2)
SUM=$OUT/summary.txt
: > "$SUM"
FAILED=0
result() {  # result NAME ok|fail DETAIL
    local line
    if [ "$2" = ok ]; then line="PASS $1: $3"; else line="FAIL $1: $3"; FAILED=$((FAILED + 1)); fi
    echo "$line" >> "$SUM"
    log "$line"
}
echo "controllers: hci0 $A0, hci1 $A1, hci2 $A2 (btvirt ${BTVIRT_ARGS--L}); bluetoothd ${BLUETOOTHD_ARGS--E}" >> "$SUM"

# 1. Advertising + discovery.
btmgmt --index 0 connectable on >/dev/null
btmgmt --index 0 advertising on > "$OUT/adv.log" 2>&1
# (btmgmt's output is block-buffered into a file until it exits, so scan in short rounds.)
: > "$OUT/find.log"
for _ in 1 2 3 4; do
    timeout 4 btmgmt --index 1 find -l >> "$OUT/find.log" 2>&1
    grep -q "dev_found: $A0 type LE" "$OUT/find.log" && break
done
if grep -q "dev_found: $A0 type LE" "$OUT/find.log"; then
    result discovery ok "hci1 found hci0 ($A0) advertising: $(grep -m1 "dev_found: $A0" "$OUT/find.log" | sed 's/^hci1 //')"
else
    result discovery fail "hci1 did not find $A0 (see find.log)"
    cat "$OUT/find.log"
fi

# 2. GATT over an LE connection.
timeout 30 gatttool -i hci1 -b "$A0" -t public --primary > "$OUT/gatt.log" 2>&1
NSVC=$(grep -c 'uuid: ' "$OUT/gatt.log")
if grep -q 'uuid: 00001800-0000-1000-8000-00805f9b34fb' "$OUT/gatt.log"; then
    result gatt ok "hci1 read $NSVC primary services of hci0: $(grep -o 'uuid: [0-9a-f]\{8\}' "$OUT/gatt.log" | cut -c7- | tr '\n' ' ')"
else
    result gatt fail "no GAP service in gatttool output (see gatt.log)"
    cat "$OUT/gatt.log"
fi
sleep 1

# 3. L2CAP LE credit-based channel, hci2 -> hci0.
N=${L2_COUNT:-2000} B=${L2_SIZE:-600}
l2test -i hci0 -r -V le_public -P 128 > "$OUT/l2recv.log" 2>&1 &
L2PID=$!
sleep 1
T0=$(date +%s.%N)
# -g 2000: wait 2 s before disconnecting. Closing an LE CoC socket right after the last write can drop data still
# queued for lack of credits (seen once in ~8 runs: the last 16800 bytes never arrived).
timeout 120 l2test -i hci2 -s -V le_public -P 128 -N "$N" -b "$B" -g 2000 "$A0" > "$OUT/l2send.log" 2>&1
SRC=$?
T1=$(date +%s.%N)
# The receiver reports when the peer disconnects; give it a moment.
wait_for 10 grep -q 'Disconnect' "$OUT/l2recv.log"
kill "$L2PID" 2>/dev/null
GOT=$(awk '/ bytes in /{s += $2} END {print s + 0}' "$OUT/l2recv.log")
BAD=$(grep -cE 'mismatch|error|Error' "$OUT/l2recv.log")
SECS=$(awk -v a="$T0" -v b="$T1" 'BEGIN{printf "%.2f", b - a - 2}')
RATE=$(awk -v n="$((N * B))" -v s="$SECS" 'BEGIN{printf "%.0f", n / 1024 / s}')
# l2test -r prints a line per >= 672 bytes received, so up to one line's worth may be unreported at the end.
if [ "$SRC" = 0 ] && [ "$BAD" = 0 ] && grep -q "Connected to $A2" "$OUT/l2recv.log" && [ "$GOT" -ge $((N * B - 1344)) ]; then
    result l2cap ok "hci2 -> hci0 LE CoC: $N x $B bytes sent, $GOT reported received, 0 bad packets, ${SECS} s (~${RATE} kB/s)"
else
    result l2cap fail "sender status $SRC, $GOT of $((N * B)) bytes received, $BAD bad packets (see l2send.log, l2recv.log)"
    tail -5 "$OUT/l2send.log" "$OUT/l2recv.log"
fi
grep -m1 'Options' "$OUT/l2recv.log" | sed 's/^l2test\[[0-9]*\]: /l2cap receiver /' >> "$SUM"

echo "--- summary"; cat "$SUM"
if [ "$FAILED" = 0 ]; then finish 0; else finish 1; fi
