#!/usr/bin/env bash
# How the cost of applying a change and of editing a document grows, checked on instruction counts (callgrind):
# deterministic whatever else the machine is doing, unlike times. Prints one JSON row per measurement and per goal;
# exits non-zero when a goal is missed.
# - applying one change of 60,000 operations costs at most 11 x one of 6,000 (linear; n log n would be 12.6 x);
# - 200 one-field edits of a 10 MiB document cost at most 2 x those of a 1 KiB document.
# Usage: core/bench/complexity.sh   (needs valgrind; installed with apt-get when missing and run as root)
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v valgrind >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -q valgrind >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q valgrind >/dev/null; }
  else
    echo "complexity.sh needs valgrind" >&2
    exit 1
  fi
fi

cargo build --release --locked -q -p shoaldb-bench --bin write_bench
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# count FUNCTION ARGS...: the instructions executed inside FUNCTION while write_bench runs with ARGS.
count() {
  local fn=$1
  shift
  valgrind --tool=callgrind --callgrind-out-file="$tmp/cg" --toggle-collect="$fn" \
    target/release/write_bench "$@" >"$tmp/log" 2>&1 || { cat "$tmp/log" >&2; exit 1; }
  awk '/^summary:/ { print $2 }' "$tmp/cg"
}

status=0
# check PHASE WHAT SMALL LARGE GOAL SMALL_COUNT LARGE_COUNT
check() {
  local ratio ok
  ratio=$(awk -v a="$7" -v b="$6" 'BEGIN { printf "%.2f", a / b }')
  ok=$(awk -v r="$ratio" -v g="$5" 'BEGIN { print (r <= g) ? "true" : "false" }')
  echo "{\"bench\":\"complexity\",\"phase\":\"$1\",\"$2\":$3,\"instructions\":$6}"
  echo "{\"bench\":\"complexity\",\"phase\":\"$1\",\"$2\":$4,\"instructions\":$7}"
  echo "{\"bench\":\"complexity\",\"phase\":\"$1\",\"ratio\":$ratio,\"goal\":$5,\"ok\":$ok}"
  [ "$ok" = true ] || status=1
}

a_small=$(count write_bench::apply_received --measure apply 6000)
a_large=$(count write_bench::apply_received --measure apply 60000)
check apply_large_change ops 6000 60000 11 "$a_small" "$a_large"

e_small=$(count write_bench::edit_title --measure edit 1024)
e_large=$(count write_bench::edit_title --measure edit 10485760)
check edit_large_doc doc_bytes 1024 10485760 2 "$e_small" "$e_large"

exit $status
