#!/usr/bin/env bash
# Phones of different platforms in one mesh: a Kotlin process (JVM, the generated bindings + Kotlin layer), a Swift
# process (Swift 6 on Linux, in the trixie chroot) and a `shoal` CLI peer sync one collection over the LAN transport
# (loopback TCP, Noise) and must end with identical data.
#
#   cli    listens on P1                     writes {"_id":"cli"}
#   kotlin listens on P2, dials P1           writes {"_id":"kotlin"}, then seen_by_kotlin on every document
#   swift  listens on P3, dials P1 and P2    writes {"_id":"swift"},  then seen_by_swift on every document
#
# Kotlin and Swift wait for each other's marks on all three documents, dump the collection, and the CLI's copy is
# read with `shoal query`. All three dumps must be byte-identical. The peers' sources live with their SDK's tests:
# android/src/test/kotlin/dev/shoaldb/MeshPeer.kt and ios/Tests/MeshPeer/main.swift.
#
# Needs the builds of bindings/kotlin/test.sh and bindings/swift/test.sh (run them first; .ci/test does). Root
# (the Swift process runs in a chroot).
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$repo"

swift_root="$(bindings/swift/chroot.sh)"
kotlin_cp_file="target/uniffi/kotlin-classpath.txt"
swift_work="$swift_root/work/shoal"
[ -s "$kotlin_cp_file" ] || { echo "mesh: run bindings/kotlin/test.sh first ($kotlin_cp_file missing)" >&2; exit 1; }
[ -x "$swift_work/MeshPeer" ] || { echo "mesh: run bindings/swift/test.sh first ($swift_work/MeshPeer missing)" >&2; exit 1; }

cargo build --locked -q -p shoaldb --bin shoal
shoal="$repo/target/debug/shoal"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
p1=$(free_port); p2=$(free_port); p3=$(free_port)

work="$(mktemp -d /tmp/shoal-mesh.XXXXXX)"
swift_dir="$swift_work/mesh"
rm -rf "$swift_dir"; mkdir -p "$swift_dir"
secret="mesh secret $(date +%s%N)"
printf '%s' "$secret" > "$work/secret"

pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  umount "$swift_root/proc" 2>/dev/null || true
  rm -rf "$work" "$swift_dir"
}
trap cleanup EXIT
mountpoint -q "$swift_root/proc" || mount -t proc proc "$swift_root/proc"

echo "== mesh: cli on $p1, kotlin on $p2, swift on $p3"
"$shoal" --db "$work/cli.db" put mesh '{"_id":"cli","from":"cli"}' > /dev/null
SHOAL_LOG=warn "$shoal" --db "$work/cli.db" peer --secret-file "$work/secret" --name cli --listen "127.0.0.1:$p1" --no-mdns \
  2> "$work/cli.log" &
pids+=($!)

java -Djna.library.path="$repo/target/debug" -cp "$(cat "$kotlin_cp_file")" dev.shoaldb.MeshPeerKt \
  "$work/kotlin.db" kotlin "$secret" "127.0.0.1:$p2" "127.0.0.1:$p1" 2> "$work/kotlin.log" &
kotlin_pid=$!
pids+=($kotlin_pid)

chroot "$swift_root" /usr/bin/env LD_LIBRARY_PATH=/work/shoal/lib /work/shoal/MeshPeer \
  /work/shoal/mesh/swift.db swift "$secret" "127.0.0.1:$p3" "127.0.0.1:$p1" "127.0.0.1:$p2" 2> "$work/swift.log" &
swift_pid=$!
pids+=($swift_pid)

show_logs() {
  for f in cli kotlin swift; do echo "--- $f.log (last lines)"; tail -n 15 "$work/$f.log" 2>/dev/null || true; done
}

deadline=$((SECONDS + 150))
until [ -f "$work/kotlin.db.dump" ] && [ -f "$swift_dir/swift.db.dump" ]; do
  if ! kill -0 "$kotlin_pid" 2>/dev/null && [ ! -f "$work/kotlin.db.dump" ]; then echo "mesh: the Kotlin peer exited early" >&2; show_logs; exit 1; fi
  if ! kill -0 "$swift_pid" 2>/dev/null && [ ! -f "$swift_dir/swift.db.dump" ]; then echo "mesh: the Swift peer exited early" >&2; show_logs; exit 1; fi
  if [ $SECONDS -ge $deadline ]; then echo "mesh: no convergence in 150 s" >&2; show_logs; exit 1; fi
  sleep 0.2
done

# The CLI peer receives the last marks a moment later; its store is read by a second process (WAL).
until "$shoal" --db "$work/cli.db" query mesh > "$work/cli.dump" 2>/dev/null && cmp -s "$work/cli.dump" "$work/kotlin.db.dump"; do
  if [ $SECONDS -ge $deadline ]; then echo "mesh: the CLI peer did not converge" >&2; diff "$work/cli.dump" "$work/kotlin.db.dump" >&2 || true; show_logs; exit 1; fi
  sleep 0.2
done

touch "$work/kotlin.db.stop" "$swift_dir/swift.db.stop"
status=0
wait "$kotlin_pid" || { echo "mesh: the Kotlin peer failed" >&2; status=1; }
wait "$swift_pid" || { echo "mesh: the Swift peer failed" >&2; status=1; }

if ! cmp -s "$work/kotlin.db.dump" "$swift_dir/swift.db.dump"; then
  echo "mesh: Kotlin and Swift ended with different data" >&2
  diff "$work/kotlin.db.dump" "$swift_dir/swift.db.dump" >&2 || true
  status=1
fi
docs=$(wc -l < "$work/cli.dump")
if [ "$docs" != 3 ] || ! grep -q '"seen_by_kotlin":true' "$work/cli.dump" || ! grep -q '"seen_by_swift":true' "$work/cli.dump"; then
  echo "mesh: unexpected final data:" >&2; cat "$work/cli.dump" >&2; status=1
fi
[ $status = 0 ] || { show_logs; exit 1; }
[ -z "${SHOAL_MESH_VERBOSE:-}" ] || show_logs
echo "== mesh: Kotlin, Swift and the CLI peer converged on identical data ($docs documents):"
cat "$work/cli.dump"
