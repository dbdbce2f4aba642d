#!/usr/bin/env bash
# Real-network test: four `shoal peer` processes, each in its own network namespace, on one bridge, discovering
# each other with mDNS (no addresses given) and syncing over TCP with the real LAN transport.
#
#   1. all four meet; a document written at A reaches D;
#   2. links are cut (unicast between non-neighbours blackholed) to make a line A–B–C–D: an edit at A still
#      reaches D, through B and C;
#   3. the line is cut in the middle (B–C): edits at both ends while partitioned stay on their side;
#   4. links healed: all four converge to the same documents;
#   5. on the same bridge, a peer enrolled by another authority, and one enrolled by the app's authority but
#      revoked, get nothing.
#
# Every peer is enrolled with a certificate from the app authority (`shoal authority`, `shoal enrol`): the links
# are checked with certificates, not a shared secret.
#
# Needs root (network namespaces). Usage: core/tests/netns/line.sh PATH/TO/shoal
set -euo pipefail

SHOAL=$(realpath "${1:?usage: line.sh PATH/TO/shoal}")
TAG="shl$$"
HUB="${TAG}hub"
WORK=$(mktemp -d)
PIDS=()
NAMES=(a b c d x y)

ns() { echo "${TAG}${1}"; }
ipof() { case $1 in a) echo 10.231.0.1;; b) echo 10.231.0.2;; c) echo 10.231.0.3;; d) echo 10.231.0.4;; x) echo 10.231.0.9;; y) echo 10.231.0.10;; esac; }

cleanup() {
    set +e
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
    sleep 1
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null; done
    for n in "${NAMES[@]}"; do ip netns del "$(ns "$n")" 2>/dev/null; done
    ip netns del "$HUB" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; for n in "${NAMES[@]}"; do [ -f "$WORK/$n.log" ] && { echo "--- $n.log (tail)"; tail -n 15 "$WORK/$n.log"; }; done; exit 1; }

# The bridge lives in its own namespace, so nothing of the host's network is touched.
ip netns add "$HUB"
ip -n "$HUB" link add br0 type bridge
ip -n "$HUB" link set br0 up
for n in "${NAMES[@]}"; do
    ip netns add "$(ns "$n")"
    ip link add "v$TAG$n" type veth peer name "h$TAG$n"
    ip link set "v$TAG$n" netns "$(ns "$n")"
    ip link set "h$TAG$n" netns "$HUB"
    ip -n "$HUB" link set "h$TAG$n" master br0
    ip -n "$HUB" link set "h$TAG$n" up
    ip -n "$(ns "$n")" link set lo up
    ip -n "$(ns "$n")" link set "v$TAG$n" name eth0
    ip -n "$(ns "$n")" addr add "$(ipof "$n")/24" dev eth0
    ip -n "$(ns "$n")" link set eth0 up multicast on
    ip -n "$(ns "$n")" route add 224.0.0.0/4 dev eth0
done

start() { # name
    local n=$1
    ip netns exec "$(ns "$n")" env SHOAL_LOG=info "$SHOAL" --db "$WORK/$n.db" peer --name "$n" \
        --listen "$(ipof "$n"):7700" > "$WORK/$n.out" 2> "$WORK/$n.log" &
    PIDS+=($!)
}

cli() { local n=$1; shift; ip netns exec "$(ns "$n")" "$SHOAL" --db "$WORK/$n.db" "$@"; }

# enrol NAME AUTHORITY-DIR: NAME's store makes its keys and a request; the authority issues a certificate; the
# store installs it. Prints the certificate.
enrol() {
    local n=$1 dir=$2 key request cert
    key=$(cat "$dir/public")
    request=$(cli "$n" enrol request "$n")
    cert=$("$SHOAL" authority issue "$dir" "$request" --grant 'read *' --grant 'write *' --days 1)
    cli "$n" enrol install "$key" "$cert" > /dev/null
    echo "$cert"
}
authority() { # DIR: a new authority; its public key in DIR/public
    mkdir -p "$1"
    "$SHOAL" authority init "$1" | sed -E 's/.*"authority":"([0-9a-f]+)".*/\1/' > "$1/public.tmp"
    mv "$1/public.tmp" "$1/public"
}
authority "$WORK/authority"
authority "$WORK/other"
for n in a b c d y; do enrol "$n" "$WORK/authority" > /dev/null; done
enrol x "$WORK/other" > /dev/null
# y is revoked by its certificate's serial (the fifth issued) before anyone starts.
list=$("$SHOAL" authority revoke "$WORK/authority" --serial 5)
for n in a b c d; do cli "$n" enrol revocations "$list" > /dev/null; done

# wait_for NAME COLLECTION ID [SECONDS]: until the document is in NAME's store.
wait_for() {
    local n=$1 c=$2 id=$3 secs=${4:-90}
    for _ in $(seq 1 "$secs"); do
        cli "$n" get "$c" "$id" > /dev/null 2>&1 && return 0
        sleep 1
    done
    return 1
}

cut() { # cut A B: no unicast between them (mDNS still flows; dialling fails, links time out)
    ip -n "$(ns "$1")" route add blackhole "$(ipof "$2")/32"
    ip -n "$(ns "$2")" route add blackhole "$(ipof "$1")/32"
}
heal() {
    ip -n "$(ns "$1")" route del blackhole "$(ipof "$2")/32"
    ip -n "$(ns "$2")" route del blackhole "$(ipof "$1")/32"
}

for n in a b c d; do start "$n"; done

echo "1. four peers meet through mDNS"
cli a put notes '{"_id": "hello", "from": "a"}' > /dev/null
wait_for d notes hello || fail "a's document did not reach d"

echo "2. a line a–b–c–d: a's edit reaches d through b and c"
cut a c; cut a d; cut b d
sleep 25 # links between non-neighbours time out
cli a put notes '{"_id": "line", "from": "a"}' > /dev/null
wait_for d notes line || fail "a's edit did not cross the line to d"

echo "3. partitioned in the middle: edits at both ends stay on their side"
cut b c
sleep 25
cli a put notes '{"_id": "left", "from": "a"}' > /dev/null
cli d put notes '{"_id": "right", "from": "d"}' > /dev/null
cli a put notes '{"_id": "hello", "edited": "a"}' > /dev/null
cli d put notes '{"_id": "hello", "edited": "d"}' > /dev/null
wait_for b notes left 30 || fail "a's edit did not reach b"
wait_for c notes right 30 || fail "d's edit did not reach c"
if cli c get notes left > /dev/null 2>&1; then fail "an edit crossed the partition"; fi

echo "4. healed: all converge"
heal b c; heal a c; heal a d; heal b d
for n in a b c d; do
    wait_for "$n" notes left || fail "$n lacks left"
    wait_for "$n" notes right || fail "$n lacks right"
done
converged=0
for _ in $(seq 1 60); do
    ref=$(cli a query notes | sort)
    same=1
    for n in b c d; do [ "$(cli "$n" query notes | sort)" = "$ref" ] || same=0; done
    if [ $same = 1 ]; then converged=1; break; fi
    sleep 1
done
[ $converged = 1 ] || fail "the four stores differ"
echo "   all four hold: $(cli a query notes | wc -l) documents, identical"

echo "5. a peer of another authority, and a revoked one, get nothing"
start x
start y
refused=0
for _ in $(seq 1 60); do
    if cat "$WORK"/[abcd].log | grep -q "revoked: certificate 5"; then refused=1; break; fi
    sleep 1
done
[ $refused = 1 ] || fail "no peer logged refusing the revoked certificate"
sleep 10
[ -z "$(cli x query notes)" ] || fail "the peer of another authority received documents"
[ -z "$(cli y query notes)" ] || fail "the revoked peer received documents"

echo "netns line test: ok"
