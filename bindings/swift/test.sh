#!/usr/bin/env bash
# Builds and tests the Swift bindings on Linux (as root): the host builds libshoaldb_ffi.so and generates the Swift
# bindings; a Debian trixie chroot with Swift 6 (bindings/swift/chroot.sh, cached under /var/cache) compiles the
# module ShoalDB (generated ShoalDB.swift + ios/Sources/ShoalDB/*.swift), the test runner (ios/Tests/ShoalDBTests/,
# importing ShoalDB as an app would) and the mesh peer (ios/Tests/MeshPeer/), then runs the tests. Idempotent; run
# from anywhere.
#
# The Bluetooth tests run the shipped iOS radio over the simulated air, a separate process: before the tests this
# script builds and starts the air server on the host (`shoal-air serve`, crate shoaldb-air, core/air/PROTOCOL.md),
# passes its address into the chroot as SHOAL_AIR, and stops it on exit.
#
# Both programs are compiled with swiftc, not SwiftPM: ios/Package.swift's binary target (the XCFramework) exists
# only on Apple platforms, and the test runner is a plain program (main.swift, its own small harness), not XCTest.
#
#   bindings/swift/test.sh               build, then run every test (exit 1 if any fails)
#   bindings/swift/test.sh FILTER        build, then run the tests whose name contains FILTER
#   bindings/swift/test.sh --build-only  build only (e.g. for a mesh script), then print the chroot's path
#   bindings/swift/test.sh --air-phone-command
#                                        print the shell command that, with `<air address> <phone name>` appended, runs
#                                        an iPhone on the air (ShoalTests --air-phone, ios/Tests/ShoalDBTests/AirPhone.swift;
#                                        build first; root). A shell runs it, as `shoal-air mesh --phone I1=COMMAND`
#                                        does (`sh -c "exec COMMAND ADDRESS NAME"`), e.g.:
#     sh -c "exec $(bindings/swift/test.sh --air-phone-command) 127.0.0.1:40123 I1"
#
# Everything lands in $ROOT/work/shoal (recreated each run; ROOT = the chroot, printed by chroot.sh):
#   lib/libshoaldb_ffi.so, lib/libShoalDB.so   the Rust library and the Swift module (binaries find them by rpath)
#   lib/libCoreBluetooth.so                    the test stand-in for Apple's CoreBluetooth (ios/Tests/CoreBluetooth)
#   ShoalTests                                 the test runner; `ShoalTests --air-phone ADDRESS NAME`: an iPhone
#                                              on the simulated air, run by a driver (PROTOCOL.md, "Phone drivers")
#   MeshPeer                                   usage: MeshPeer DB NAME SECRET LISTEN [CONNECT...]
#
# Running the mesh peer yourself after --build-only (paths are inside the chroot; loopback is shared with the
# host). swiftc needs proc mounted in the chroot, and so do the built programs: Swift on Linux reads a program's
# arguments from /proc/self/cmdline (without it CommandLine.arguments is empty). Their rpath names /work/shoal/lib,
# so LD_LIBRARY_PATH is optional:
#   ROOT=$(bindings/swift/test.sh --build-only)
#   mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
#   mkdir -p "$ROOT/tmp/mesh"
#   chroot "$ROOT" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LD_LIBRARY_PATH=/work/shoal/lib \
#       /work/shoal/MeshPeer /tmp/mesh/swift.db swift SECRET 127.0.0.1:7402 127.0.0.1:7401
#   # ... its dump is "$ROOT/tmp/mesh/swift.db.dump"; touch "$ROOT/tmp/mesh/swift.db.stop" to end it ...
#   umount "$ROOT/proc"
#
# Environment: SHOAL_SWIFT_CHROOT (the chroot's path, see chroot.sh), CARGO_TARGET_DIR.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
build_only=0
filter=()
case "${1:-}" in
  --build-only) build_only=1 ;;
  --air-phone-command)
    root="$("$here/chroot.sh")"
    [ -x "$root/work/shoal/ShoalTests" ] || echo "test.sh: $root/work/shoal/ShoalTests is not built yet (run test.sh --build-only)" >&2
    # A shell command: it mounts the chroot's /proc if needed (Swift reads a program's arguments from
    # /proc/self/cmdline; one phone at a time: phones start together) and leaves it mounted; the address and the
    # name appended become "$@".
    echo "sh -c 'flock $root.proc-lock sh -c \"mountpoint -q $root/proc || mount -t proc proc $root/proc\"; exec chroot $root /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 LD_LIBRARY_PATH=/work/shoal/lib /work/shoal/ShoalTests --air-phone \"\$@\"' air-phone"
    exit 0 ;;
  -h|--help) sed -n '2,44p' "$0"; exit 0 ;;
  "") ;;
  *) filter=("$1") ;;
esac

if [ "$(id -u)" != 0 ]; then
  echo "test.sh: needs root (chroot, mount)" >&2
  exit 1
fi

root="$("$here/chroot.sh")"
target="${CARGO_TARGET_DIR:-$repo/target}"
gen="$target/uniffi/swift"
work_in="/work/shoal"            # inside the chroot
work="$root$work_in"             # the same, seen from the host

echo "== building libshoaldb_ffi.so (host)" >&2
(cd "$repo" && cargo build --locked -q -p shoaldb-ffi)
lib="$target/debug/libshoaldb_ffi.so"

echo "== generating the Swift bindings into $gen" >&2
rm -rf "$gen"
mkdir -p "$gen"
(cd "$repo" && cargo run --locked -q -p uniffi-bindgen -- generate --library "$lib" --language swift \
  --out-dir "$gen" --no-format)

rm -rf "$work"
mkdir -p "$work/gen" "$work/lib" "$work/src" "$work/tests" "$work/meshpeer" "$work/build" "$work/corebluetooth"
cp "$gen/ShoalDB.swift" "$gen/ShoalDBFFI.h" "$gen/ShoalDBFFI.modulemap" "$work/gen/"
cp "$lib" "$work/lib/"
cp "$repo"/ios/Sources/ShoalDB/*.swift "$work/src/"
cp "$repo"/ios/Tests/ShoalDBTests/*.swift "$work/tests/"
cp "$repo"/ios/Tests/MeshPeer/*.swift "$work/meshpeer/"
cp "$repo"/ios/Tests/CoreBluetooth/*.swift "$work/corebluetooth/"

# What to undo on exit: the air server this run started, and /proc if this run mounted it.
mounted_proc=0
air_pid=""
air_dir=""
cleanup() {
  if [ -n "$air_pid" ]; then
    kill "$air_pid" 2>/dev/null || true
    wait "$air_pid" 2>/dev/null || true
  fi
  [ -z "$air_dir" ] || rm -rf "$air_dir"
  if [ "$mounted_proc" = 1 ]; then
    umount "$root/proc" 2>/dev/null || umount -l "$root/proc" 2>/dev/null || true
  fi
}
trap cleanup EXIT

# swiftc needs /proc inside the chroot (to find libswiftCore.so). Unmount only what this run mounted.
if ! mountpoint -q "$root/proc"; then
  mount -t proc proc "$root/proc"
  mounted_proc=1
fi

in_chroot() {
  chroot "$root" /usr/bin/env -i PATH=/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
    LD_LIBRARY_PATH="$work_in/lib" "$@"
}

# Every compile sees the C module of the generated bindings; binaries find lib/ by rpath.
common=(-swift-version 6 -module-cache-path "$work_in/build/module-cache"
  -I "$work_in/gen" -Xcc "-fmodule-map-file=$work_in/gen/ShoalDBFFI.modulemap")

# Linux has no CoreBluetooth: the test stand-in (ios/Tests/CoreBluetooth: Apple's API over a simulated air) takes its
# place, so the shipped CoreBluetoothRadio.swift compiles into ShoalDB unchanged and runs in the tests.
echo "== compiling module CoreBluetooth (the Linux test stand-in)" >&2
in_chroot sh -c "cd $work_in && swiftc -swift-version 5 -module-cache-path $work_in/build/module-cache \
  -parse-as-library -module-name CoreBluetooth -emit-library -o lib/libCoreBluetooth.so -emit-module \
  -emit-module-path build/CoreBluetooth.swiftmodule corebluetooth/*.swift"

echo "== compiling module ShoalDB ($(in_chroot swiftc --version 2>/dev/null | head -1))" >&2
in_chroot sh -c "cd $work_in && swiftc ${common[*]} -I build -parse-as-library -module-name ShoalDB \
  -emit-library -o lib/libShoalDB.so -emit-module -emit-module-path build/ShoalDB.swiftmodule \
  gen/ShoalDB.swift src/*.swift -L lib -lshoaldb_ffi -lCoreBluetooth -Xlinker -rpath -Xlinker '\$ORIGIN'"

echo "== compiling the tests and the mesh peer" >&2
for program in ShoalTests:tests MeshPeer:meshpeer; do
  name="${program%%:*}" dir="${program##*:}"
  in_chroot sh -c "cd $work_in && swiftc ${common[*]} -I build -module-name $name $dir/*.swift -o $name \
    -L lib -lShoalDB -lshoaldb_ffi -lCoreBluetooth -Xlinker -rpath -Xlinker '\$ORIGIN/lib' -Xlinker -rpath -Xlinker $work_in/lib"
done

if [ "$build_only" = 1 ]; then
  echo "== built $work/ShoalTests and $work/MeshPeer" >&2
  echo "$root"
  exit 0
fi

# The simulated air the Bluetooth tests share: a server on the host's loopback, which the chroot shares.
echo "== building and starting the air server (shoal-air)" >&2
(cd "$repo" && cargo build --locked -q -p shoaldb-air)
air_dir="$(mktemp -d /tmp/shoal-swift-air.XXXXXX)"
"$target/debug/shoal-air" serve --port-file "$air_dir/port" > "$air_dir/air.log" 2>&1 &
air_pid=$!
air=""
for _ in $(seq 1 600); do
  if [ -s "$air_dir/port" ]; then
    air="$(tr -d '[:space:]' < "$air_dir/port")"
    [ -n "$air" ] && break
  fi
  if ! kill -0 "$air_pid" 2>/dev/null; then
    echo "test.sh: the air server exited:" >&2
    cat "$air_dir/air.log" >&2
    exit 1
  fi
  sleep 0.05
done
[ -n "$air" ] || { echo "test.sh: the air server wrote no port in 30 s" >&2; exit 1; }
case "$air" in *:*) ;; *) air="127.0.0.1:$air" ;; esac
echo "== the air is at $air" >&2

echo "== running the Swift tests" >&2
status=0
in_chroot SHOAL_AIR="$air" "$work_in/ShoalTests" "${filter[@]}" || status=$?
if [ "$status" != 0 ] && [ -s "$air_dir/air.log" ]; then
  echo "--- the air server's log (last lines)" >&2
  tail -n 30 "$air_dir/air.log" >&2
fi
exit "$status"
