# shellcheck shell=bash
# Library for guest scripts of the BLE test VM (sourced, not run). run.sh copies it to /opt/shoal/guest-common.sh;
# a guest script starts with
#
#   #!/bin/bash
#   . /opt/shoal/guest-common.sh      # mounts, hostname, hci_vhci, dbus, bluetoothd; powers off on exit
#   start_controllers 3               # hci0..hci2: virtual LE controllers on one emulated radio, powered
#   ...                               # test; write results to $OUT (/opt/shoal/out, copied back to the host)
#   finish 0                          # writes $OUT/status, syncs, powers off (never returns)
#
# The script runs as PID 1 (init=/sbin/shoal-init). If it exits or fails without calling finish, the EXIT trap
# calls finish with its exit status (so the VM always powers off and the host sees a status).
#
# Environment knobs (set them before sourcing):
#   BLUETOOTHD_ARGS  extra bluetoothd arguments (default "-E": experimental D-Bus interfaces; "" to test without)
#   BLUETOOTHD=0     do not start bluetoothd (e.g. to test raw-socket code only)
#   GUEST_HOSTNAME   hostname (default shoal-ble)
#   BTVIRT_ARGS      controller type for btvirt (default "-L": LE-only; "" = dual-mode BT 5.x, BR/EDR switched off)

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8
OUT=/opt/shoal/out
LOGS=/tmp/shoal-logs
BTVIRT_PID=   # pids of the background daemons, for scripts that want to stop or restart them
BLUETOOTHD_PID=
export BTVIRT_PID BLUETOOTHD_PID

# log MSG...: timestamped (seconds since boot) line on the serial console.
log() { echo "[guest $(cut -d' ' -f1 /proc/uptime 2>/dev/null)] $*"; }

# finish CODE: saves daemon logs to $OUT/logs, writes CODE to $OUT/status, syncs, powers the VM off.
finish() {
    local code=${1:-1}
    trap - EXIT
    set +e
    mkdir -p "$OUT/logs"
    cp -f "$LOGS"/*.log "$OUT/logs/" 2>/dev/null
    dmesg > "$OUT/logs/dmesg.log" 2>/dev/null
    echo "$code" > "$OUT/status"
    log "finish $code"
    sync
    # Give the console a moment to drain, then power off at once (no init system to shut down).
    sleep 0.2
    echo o > /proc/sysrq-trigger
    sleep 5
    poweroff -f
    sleep 30
}

# wait_for SECONDS CMD...: runs CMD every 0.2 s until it succeeds (0) or SECONDS pass (1).
wait_for() {
    local deadline=$(( $(date +%s) + $1 )); shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

_guest_boot() {
    mount -t proc proc /proc 2>/dev/null
    mount -t sysfs sys /sys 2>/dev/null
    mount -t devtmpfs dev /dev 2>/dev/null
    mkdir -p /dev/pts /dev/shm /run /tmp
    mount -t devpts devpts /dev/pts 2>/dev/null
    mount -t tmpfs tmpfs /run
    mount -t tmpfs tmpfs /tmp
    mount -t tmpfs tmpfs /dev/shm 2>/dev/null
    mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
    mount -o remount,rw / 2>/dev/null
    ip link set lo up 2>/dev/null
    hostname "${GUEST_HOSTNAME:-shoal-ble}"
    mkdir -p "$OUT" "$LOGS"
    rm -f "$OUT/status"
    log "kernel $(uname -r), $(nproc) cpu(s), $(awk '/MemTotal/{print $2" kB"}' /proc/meminfo)"

    modprobe hci_vhci || { log "modprobe hci_vhci failed"; return 1; }
    [ -c /dev/vhci ] || { log "/dev/vhci missing"; return 1; }

    mkdir -p /run/dbus
    dbus-daemon --system --fork || { log "dbus-daemon failed"; return 1; }
    if [ "${BLUETOOTHD:-1}" != 0 ]; then
        # shellcheck disable=SC2086
        /usr/libexec/bluetooth/bluetoothd -n ${BLUETOOTHD_ARGS--E} >"$LOGS/bluetoothd.log" 2>&1 &
        BLUETOOTHD_PID=$!
        wait_for 10 dbus-send --system --print-reply --dest=org.bluez / org.freedesktop.DBus.ObjectManager.GetManagedObjects \
            || { log "bluetoothd did not come up"; cat "$LOGS/bluetoothd.log"; return 1; }
        log "bluetoothd up (pid $BLUETOOTHD_PID, args: ${BLUETOOTHD_ARGS--E})"
    fi
}

# ctrl_addr I: public address of hciI (e.g. 00:AA:01:00:00:00).
ctrl_addr() { btmgmt --index "$1" info 2>/dev/null | awk '$1 == "addr" {print $2; exit}'; }

# ctrl_powered I: true when hciI is powered (mgmt settings).
ctrl_powered() { btmgmt --index "$1" info 2>/dev/null | grep -q 'current settings:.*powered'; }

# start_controllers N: starts `btvirt -L -lN` (N LE-only virtual controllers on one emulated radio), waits for
# hci0..hci(N-1), switches each to LE-only, powered, and waits until it is powered. Prints index and address.
# A controller that does not come up (on a loaded host the kernel's HCI Reset to btvirt can time out: "Opcode
# 0x0c03 failed: -110") gets one more chance: btvirt is restarted (its controllers go away with it) and all N are
# set up again.
start_controllers() {
    local n=${1:?start_controllers N}
    _start_controllers "$n" && return 0
    log "restarting btvirt and setting the controllers up once more"
    kill "$BTVIRT_PID" 2>/dev/null
    wait "$BTVIRT_PID" 2>/dev/null
    wait_for 15 _no_controllers || { log "the controllers did not go away"; return 1; }
    _start_controllers "$n"
}

_no_controllers() { ! compgen -G '/sys/class/bluetooth/hci*' >/dev/null; }

_start_controllers() {
    local n=$1 i
    # shellcheck disable=SC2086
    btvirt ${BTVIRT_ARGS--L} "-l$n" >"$LOGS/btvirt.log" 2>&1 &
    BTVIRT_PID=$!
    for ((i = 0; i < n; i++)); do
        wait_for 15 test -e "/sys/class/bluetooth/hci$i" || { log "hci$i did not appear"; cat "$LOGS/btvirt.log"; return 1; }
    done
    for ((i = 0; i < n; i++)); do
        # LE on, BR/EDR off (needs power off; an -L controller has no BR/EDR and the call fails harmlessly), power on.
        btmgmt --index "$i" power off >/dev/null 2>&1
        btmgmt --index "$i" le on >/dev/null 2>&1
        btmgmt --index "$i" bredr off >/dev/null 2>&1
        btmgmt --index "$i" power on >/dev/null 2>&1
        wait_for 15 ctrl_powered "$i" || { log "hci$i did not power up"; btmgmt --index "$i" info; return 1; }
        log "hci$i $(ctrl_addr "$i") powered"
    done
}

trap 'finish $?' EXIT
_guest_boot || finish 1
