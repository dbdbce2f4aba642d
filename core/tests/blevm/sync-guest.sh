#!/bin/bash
# Guest script: three `shoal peer` processes sync over real BlueZ (kernel + bluetoothd, btvirt controllers), each
# bound to its own controller, in a LINE: peer0 (hci0) - peer1 (hci1) - peer2 (hci2). All controllers share one
# emulated radio, so the line is made with --ble-allow: peer0 and peer2 only accept/dial peer1, peer1 both.
#
# For each round (ROUNDS, default "gatt l2cap": --ble-gatt, then --ble-l2cap), with fresh stores:
#   1. start the three peers (no LAN: --no-mdns, no --listen);
#   2. peer0 and peer2 each write a document while their peer runs (`shoal put` from another process);
#   3. wait until peer0 has peer2's document and peer2 has peer0's (relayed by peer1);
#   4. edit the other end's document at both ends; wait until the three `shoal query` dumps are identical;
#   5. bulk: peer0 writes BULK_KB KiB of text (documents of <= 96 KiB); time until all are at peer2 (two BLE hops);
#   6. check which channel the links used (GATT round: no L2CAP; L2CAP round: both links over L2CAP);
#   7. stop the peers (SIGTERM), reset the controllers.
# Writes /opt/shoal/out/summary.txt (with the peers' warning and error lines and the L2CAP channels that took more
# than one attempt), per-round peer logs in /opt/shoal/out/ROUND/; finishes 0 only if all passed.
#
#   core/tests/blevm/sync.sh          (builds shoal with feature bluetooth-linux, then runs this in the VM)
#
# Options come from /opt/shoal/env if present (sync.sh writes it): ROUNDS, SHOAL_LOG (peers' log level, default
# info), BULK_KB (default 256; 0 skips the bulk step), SYNC_WAIT (s per wait, default 150), BTMON=1 (HCI trace of all
# controllers, decoded to out/btmon.txt; bookworm's btmon may crash on EATT traffic), BLUETOOTHD_ARGS (e.g. "-E -d"
# for bluetoothd's debug log in out/logs/), DBUS_MONITOR=1 (all system-bus traffic to out/dbus-monitor.txt),
# EATT=0 (turn BlueZ's EATT off: see below).
[ -f /opt/shoal/env ] && . /opt/shoal/env
# EATT (several ATT bearers per link, BlueZ's default: 3) sends write commands and notifications over whichever
# bearer is free, so they can arrive out of order; Shoal's GATT links put them back in order (the summary counts
# them). On, as BlueZ ships, unless EATT=0: [GATT] Channels = 1 in a config file of our own (the root
# filesystem's stays untouched).
if [ "${EATT:-1}" = 0 ]; then
    printf '[GATT]\nChannels = 1\n' > /opt/shoal/main.conf
    BLUETOOTHD_ARGS="${BLUETOOTHD_ARGS--E} -f /opt/shoal/main.conf"
fi
. /opt/shoal/guest-common.sh

SHOAL=/opt/shoal/shoal
ROUNDS=${ROUNDS:-gatt l2cap}
BULK_KB=${BULK_KB:-256}
SYNC_WAIT=${SYNC_WAIT:-150}
WARN_LINES=10   # warning/error lines of each peer copied into the summary
SUM=$OUT/summary.txt
FAILED=0
: > "$SUM"

result() {  # result NAME ok|fail DETAIL
    local line
    if [ "$2" = ok ]; then line="PASS $1: $3"; else line="FAIL $1: $3"; FAILED=$((FAILED + 1)); fi
    echo "$line" >> "$SUM"
    log "$line"
}
note() { echo "     $*" >> "$SUM"; log "$*"; }
now() { local up _; read -r up _ < /proc/uptime; echo "$up"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b - a}'; }
# Prefix each line with the guest's uptime (the peers' log lines carry no time).
stamp() { local l up _; while IFS= read -r l; do read -r up _ < /proc/uptime; printf '%s %s\n' "$up" "$l"; done; }

[ -x "$SHOAL" ] || { log "no $SHOAL"; finish 1; }
# The fixed btvirt (btvirt.sh) instead of Debian's, whose controllers misroute data once one has two connections.
if [ -x /opt/shoal/btvirt ]; then
    mkdir -p /tmp/bin && ln -sf /opt/shoal/btvirt /tmp/bin/btvirt && export PATH=/tmp/bin:$PATH
    BTVIRT_NOTE="patched btvirt"
else
    BTVIRT_NOTE="Debian's btvirt (a controller with two connections misroutes data)"
fi
if ! start_controllers 3; then
    result setup fail "the virtual controllers did not all come up: $(dmesg | grep -E 'Bluetooth: hci[0-9]: ' | grep -v 'Opcode 0x2005' | tail -n 3 | sed 's/^\[ *[0-9.]*\] //' | paste -sd ';')"
    finish 1
fi
A=("$(ctrl_addr 0)" "$(ctrl_addr 1)" "$(ctrl_addr 2)")
echo "controllers: hci0 ${A[0]}, hci1 ${A[1]}, hci2 ${A[2]} ($BTVIRT_NOTE ${BTVIRT_ARGS--L}); bluetoothd ${BLUETOOTHD_ARGS--E} (EATT $([ "${EATT:-1}" = 0 ] && echo off || echo on)); $("$SHOAL" --version)" >> "$SUM"
echo "shoal-ble-vm-test-secret" > /tmp/secret
if [ "${DBUS_MONITOR:-0}" = 1 ]; then
    dbus-monitor --system > "$OUT/dbus-monitor.txt" 2>&1 &
fi
if [ "${BTMON:-0}" = 1 ]; then
    btmon -w /tmp/btmon.snoop >/dev/null 2>&1 &
    BTMON_PID=$!
fi

declare -a PIDS
start_peer() {  # start_peer I MODE ALLOWED_ADDR...
    local i=$1 mode=$2 a; shift 2
    local args=(--db "$DIR/db$i" peer --secret-file /tmp/secret --name "peer$i" --no-mdns --ble "hci$i" "--ble-$mode")
    for a in "$@"; do args+=(--ble-allow "$a"); done
    SHOAL_LOG=${SHOAL_LOG:-info} "$SHOAL" "${args[@]}" > >(stamp > "$LOGDIR/peer$i.out") 2> >(stamp > "$LOGDIR/peer$i.log") &
    PIDS[i]=$!
}
stop_peers() {
    local i
    for i in 0 1 2; do [ -n "${PIDS[i]}" ] && kill -TERM "${PIDS[i]}" 2>/dev/null; done
    for i in 0 1 2; do
        [ -n "${PIDS[i]}" ] || continue
        wait_for 15 bash -c "! kill -0 ${PIDS[i]}" || { log "peer$i did not stop; killing it"; kill -KILL "${PIDS[i]}" 2>/dev/null; }
        PIDS[i]=
    done
    sleep 0.5
}
query() { "$SHOAL" --db "$DIR/db$1" query notes 2>/dev/null; }
has() { query "$1" | grep -q "\"_id\":\"$2\""; }
has_field() { query "$1" | grep -q "\"$2\""; }
both_have_the_other() { has 0 from2 && has 2 from0; }
converged() {
    local d0 d1 d2
    d0=$(query 0); d1=$(query 1); d2=$(query 2)
    [ -n "$d0" ] && [ "$d0" = "$d1" ] && [ "$d1" = "$d2" ] && grep -q '"edit0"' <<< "$d0" && grep -q '"edit2"' <<< "$d0"
}
bulk_at_2() { has_field 2 "bulk_end_$1"; }
bulk_all_at_2() { [ "$(query 2 | grep -c "\"bulk_end_$1")" -ge "$2" ]; }
running() { grep -q 'running as' "$LOGDIR/peer$1.out"; }

round() {
    local mode=$1 t0 t i n
    DIR=/tmp/round-$mode; LOGDIR=$OUT/$mode
    rm -rf "$DIR"; mkdir -p "$DIR" "$LOGDIR"
    log "=== round $mode"
    echo "--- round $mode (--ble-$mode)" >> "$SUM"
    t0=$(now)
    start_peer 0 "$mode" "${A[1]}"
    start_peer 1 "$mode" "${A[0]}" "${A[2]}"
    start_peer 2 "$mode" "${A[1]}"
    for i in 0 1 2; do
        wait_for 30 running "$i" || { result "$mode/start" fail "peer$i did not start"; tail -20 "$LOGDIR/peer$i.log"; stop_peers; return; }
    done
    note "peers running after $(since "$t0") s"

    # 1. One document at each end of the line, written by other processes while the peers run.
    "$SHOAL" --db "$DIR/db0" put notes '{"_id":"from0","text":"written at peer0","by":"peer0"}' >/dev/null
    "$SHOAL" --db "$DIR/db2" put notes '{"_id":"from2","text":"written at peer2","by":"peer2"}' >/dev/null
    t=$(now)
    if wait_for "$SYNC_WAIT" both_have_the_other; then
        result "$mode/first-sync" ok "peer0 has peer2's document and peer2 has peer0's, $(since "$t") s after the writes ($(since "$t0") s after start)"
    else
        result "$mode/first-sync" fail "after ${SYNC_WAIT} s: peer0 has from2: $(has 0 from2 && echo yes || echo no), peer2 has from0: $(has 2 from0 && echo yes || echo no)"
        stop_peers
        return
    fi

    # 2. Edit the other end's document at both ends; all three must converge.
    "$SHOAL" --db "$DIR/db0" put notes '{"_id":"from2","edit0":"peer0 was here"}' >/dev/null
    "$SHOAL" --db "$DIR/db2" put notes '{"_id":"from0","edit2":"peer2 was here"}' >/dev/null
    t=$(now)
    if wait_for "$SYNC_WAIT" converged; then
        result "$mode/converged" ok "the three stores are identical with both edits, $(since "$t") s after the edits"
    else
        result "$mode/converged" fail "not identical after ${SYNC_WAIT} s (see $mode/dump*.json)"
    fi
    for i in 0 1 2; do query "$i" > "$LOGDIR/dump$i.json"; done

    # 3. Bulk: BULK_KB KiB of random text from peer0 to peer2 (two hops, relayed by peer1), in documents of at most
    #    96 KiB (a command-line argument is at most 128 KiB).
    if [ "$BULK_KB" -gt 0 ]; then
        local left=$BULK_KB k n=0 secs rate
        t=$(now)
        while [ "$left" -gt 0 ]; do
            k=$(( left > 96 ? 96 : left ))
            "$SHOAL" --db "$DIR/db0" put notes "{\"_id\":\"bulk$n\",\"text\":\"$(head -c $((k * 768)) /dev/urandom | base64 -w0)\",\"bulk_end_$mode$n\":true}" >/dev/null
            left=$((left - k)); n=$((n + 1))
        done
        if wait_for "$SYNC_WAIT" bulk_at_2 "$mode$((n - 1))" && wait_for 10 bulk_all_at_2 "$mode" "$n"; then
            secs=$(since "$t")
            rate=$(awk -v k="$BULK_KB" -v s="$secs" 'BEGIN{printf "%.1f", k / (s > 0 ? s : 0.1)}')
            result "$mode/bulk" ok "${BULK_KB} KiB in $n document(s) went peer0 -> peer1 -> peer2 in ${secs} s (~${rate} KiB/s end to end, polled every 0.2 s)"
        else
            result "$mode/bulk" fail "the ${BULK_KB} KiB did not all reach peer2 within ${SYNC_WAIT} s"
        fi
    fi

    # 4. Which channels carried the links (the radio logs every connection it reports).
    grep -h 'bluez(hci[0-9]): connected [0-9]* to' "$LOGDIR"/peer?.log | sed 's/^[0-9.]* \[[a-z]*\] /     /' >> "$SUM"
    local l2cap gatt
    l2cap=$(grep -h 'bluez(hci[0-9]): connected [0-9]* to .* as central over L2cap' "$LOGDIR"/peer?.log | wc -l)
    gatt=$(grep -h 'bluez(hci[0-9]): connected [0-9]* to .* as central over Gatt' "$LOGDIR"/peer?.log | wc -l)
    case $mode in
        gatt) if [ "$l2cap" = 0 ] && [ "$gatt" -ge 2 ]; then
                  result "$mode/channel" ok "$gatt GATT connection(s) dialled, no L2CAP channel"
              else
                  result "$mode/channel" fail "$gatt GATT and $l2cap L2CAP connection(s) dialled (expected GATT only, >= 2)"
              fi ;;
        l2cap) if [ "$l2cap" -ge 2 ] && [ "$gatt" = 0 ]; then
                  result "$mode/channel" ok "$l2cap L2CAP channel(s) dialled, no GATT fallback"
              else
                  result "$mode/channel" fail "$l2cap L2CAP and $gatt GATT connection(s) dialled (expected L2CAP only, >= 2)"
              fi ;;
    esac
    # L2CAP channels a central opened only at a later attempt (transient failures, retried in the radio).
    grep -h 'bluez(hci[0-9]): L2CAP channel to .* open at attempt' "$LOGDIR"/peer?.log | sed 's/^[0-9.]* \[[a-z]*\] /     /' >> "$SUM"
    for i in 0 1 2; do
        n=$(grep -c -E '\[(warn|error)\]' "$LOGDIR/peer$i.log")
        note "peer$i: $n warning/error line(s); links: $(grep -c 'ble: link [0-9]* up' "$LOGDIR/peer$i.log") up, $(grep -c -E 'ble: connection [0-9]* .* (failed|ended)' "$LOGDIR/peer$i.log") failed/lost"
        # The lines themselves (the first WARN_LINES), so that a failure can be diagnosed from the summary alone.
        grep -E '\[(warn|error)\]' "$LOGDIR/peer$i.log" | head -n "$WARN_LINES" | sed 's/^/       /' >> "$SUM"
        [ "$n" -le "$WARN_LINES" ] || echo "       ... $((n - WARN_LINES)) more in $mode/peer$i.log" >> "$SUM"
    done

    t=$(now)
    stop_peers
    note "peers stopped in $(since "$t") s; round took $(since "$t0") s"
    # Every connection's end logs its packet counts; "out of order" ones came early over another ATT bearer (EATT).
    early=$(cat "$LOGDIR"/peer?.log | sed -n 's/.*(\([0-9]*\) out of order).*/\1/p' | awk '{ s += $1 } END { print s + 0 }')
    note "data packets received out of order (held until their turn): $early"
    for i in 0 1 2; do grep -q 'bluez(hci[0-9]): stopped' "$LOGDIR/peer$i.log" || note "peer$i: radio did not report 'stopped'"; done
    # Reset the controllers: no connection or advertisement survives into the next round.
    for i in 0 1 2; do
        btmgmt --index "$i" clr-adv >/dev/null 2>&1
        btmgmt --index "$i" power off >/dev/null 2>&1
        btmgmt --index "$i" power on >/dev/null 2>&1
        wait_for 10 ctrl_powered "$i"
    done
}

for r in $ROUNDS; do
    case $r in gatt|l2cap) round "$r" ;; *) result "round/$r" fail "unknown round (gatt or l2cap)" ;; esac
done

if [ -n "${BTMON_PID:-}" ]; then
    kill "$BTMON_PID"; sleep 0.5
    btmon -r /tmp/btmon.snoop > "$OUT/btmon.txt" 2>&1
fi
echo "--- summary"; cat "$SUM"
if [ "$FAILED" = 0 ]; then finish 0; else finish 1; fi
