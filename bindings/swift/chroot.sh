#!/usr/bin/env bash
# Makes (once) a Debian trixie chroot with Swift 6 (`swiftlang`) for compiling and running the Swift bindings on
# Linux. Idempotent; the chroot is cached (default /var/cache/shoal/swift-trixie, or $SHOAL_SWIFT_CHROOT).
# Needs root (debootstrap, chroot). Prints the chroot's path on stdout.
set -euo pipefail

root="${SHOAL_SWIFT_CHROOT:-/var/cache/shoal/swift-trixie}"
stamp="$root/.shoal-ready"

if [ -f "$stamp" ]; then
  echo "$root"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "chroot.sh: making the Swift chroot needs root" >&2
  exit 1
fi

if ! command -v debootstrap >/dev/null 2>&1; then
  apt-get install -y -q debootstrap >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null; }
fi

mkdir -p "$(dirname "$root")"
# A half-made chroot from an interrupted run is thrown away and made again.
if [ -d "$root" ]; then
  umount "$root/proc" 2>/dev/null || true
  rm -rf "$root"
fi
tmp="$root.tmp"
umount "$tmp/proc" 2>/dev/null || true
rm -rf "$tmp"
echo "chroot.sh: debootstrap trixie into $tmp (about a minute)" >&2
debootstrap --variant=minbase trixie "$tmp" http://deb.debian.org/debian >&2
cp /etc/resolv.conf "$tmp/etc/resolv.conf" 2>/dev/null || true
mount -t proc proc "$tmp/proc"
trap 'umount "$tmp/proc" 2>/dev/null || true' EXIT
chroot "$tmp" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
chroot "$tmp" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends swiftlang libc6-dev >&2
chroot "$tmp" /usr/bin/env DEBIAN_FRONTEND=noninteractive apt-get clean
umount "$tmp/proc"
trap - EXIT
mv "$tmp" "$root"
touch "$stamp"
echo "$root"
