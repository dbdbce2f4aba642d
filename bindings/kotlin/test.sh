#!/usr/bin/env bash
# Builds and tests Shoal's Kotlin SDK on a desktop JVM. Idempotent; run from anywhere.
#
#   bindings/kotlin/test.sh                    install what is missing, build libshoaldb_ffi.so, generate the Kotlin
#                                              bindings into target/uniffi/kotlin, run the JUnit tests of
#                                              android/src/test/kotlin (Maven), compile android/src/main/kotlin-android
#                                              against the Android API, run its Robolectric tests
#                                              (android/src/testAndroid/kotlin), print a summary
#   bindings/kotlin/test.sh --mesh-classpath   print the classpath that runs dev.shoaldb.MeshPeerKt (after a test run)
#   bindings/kotlin/test.sh --mesh-command     print the whole command: java -Djna.library.path=... -cp ... MeshPeerKt
#   bindings/kotlin/test.sh --air-phone-command
#                                              print the whole command that starts an Android phone on the simulated
#                                              air (after a test run): java -Djna.library.path=... -cp <the Robolectric
#                                              tests' classpath> dev.shoaldb.android.air.AirPhoneMainKt; append
#                                              <air address> <phone name> (see core/air/PROTOCOL.md)
#
# A mesh script runs a Kotlin peer without Maven as
#   java -Djna.library.path=<repo>/target/debug -cp "$(bindings/kotlin/test.sh --mesh-classpath)" \
#       dev.shoaldb.MeshPeerKt DB NAME SECRET LISTEN [CONNECT...]
# (a test run also writes that classpath to target/uniffi/kotlin-classpath.txt).
#
# The Maven project (pom.xml) is here; every source and test it builds is in android/ (see pom.xml).
# Honours CARGO_TARGET_DIR. Maven uses its default local repository (~/.m2). The Robolectric tests need two Android
# framework jars from Maven Central (about 250 MB, downloaded into ~/.m2 by the first run, offline after that).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
bindings="$target/uniffi/kotlin"
libdir="$target/debug"

mesh_classpath() {
  local cp="$here/target/classpath.txt"
  if [ ! -f "$cp" ] || [ ! -f "$here/target/test-classes/dev/shoaldb/MeshPeerKt.class" ]; then
    echo "test.sh: the Kotlin build is missing: run bindings/kotlin/test.sh first" >&2
    exit 1
  fi
  echo "$here/target/classes:$here/target/test-classes:$(cat "$cp")"
}

# The classpath of the Android phone program of the simulated air (android/src/testAndroid/kotlin/dev/shoaldb/android/air):
# the Robolectric tests' classes and dependencies, as the android-test profile's Surefire run has them.
air_phone_classpath() {
  local build="$here/target/android-test"
  if [ ! -f "$build/test-classpath.txt" ] || [ ! -f "$build/test-classes/dev/shoaldb/android/air/AirPhoneMainKt.class" ] \
    || [ ! -f "$build/aar/monitor/classes.jar" ]; then
    echo "test.sh: the Robolectric build is missing: run bindings/kotlin/test.sh first" >&2
    exit 1
  fi
  echo "$build/test-classes:$build/classes:$(cat "$build/test-classpath.txt"):$build/aar/monitor/classes.jar"
}

case "${1:-}" in
  --mesh-classpath)
    mesh_classpath
    exit 0
    ;;
  --mesh-command)
    echo "java -Djna.library.path=$libdir -cp $(mesh_classpath) dev.shoaldb.MeshPeerKt"
    exit 0
    ;;
  --air-phone-command)
    cp="$(air_phone_classpath)"
    echo "java -Djna.library.path=$libdir -Dshoal.root=$root -cp $cp dev.shoaldb.android.air.AirPhoneMainKt"
    exit 0
    ;;
  "") ;;
  *)
    echo "usage: $0 [--mesh-classpath | --mesh-command | --air-phone-command]" >&2
    exit 2
    ;;
esac

start=$(date +%s)

# --- tools ---
if ! command -v mvn >/dev/null 2>&1 || ! command -v java >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    echo "test.sh: installing Maven and a JDK" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q maven default-jdk-headless >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null && apt-get install -y -q maven default-jdk-headless >/dev/null; }
  else
    echo "test.sh: needs mvn and java (apt-get install maven default-jdk-headless)" >&2
    exit 1
  fi
fi
command -v cargo >/dev/null 2>&1 || { echo "test.sh: needs cargo (Rust)" >&2; exit 1; }

# --- native library and generated bindings ---
cd "$root"
cargo build --locked -q -p shoaldb-ffi
rm -rf "$bindings"
cargo run --locked -q -p uniffi-bindgen -- generate --library "$libdir/libshoaldb_ffi.so" \
  --language kotlin --out-dir "$bindings" --no-format >/dev/null
[ -f "$bindings/dev/shoaldb/shoaldb_ffi.kt" ] || { echo "test.sh: no Kotlin bindings were generated" >&2; exit 1; }

# --- JVM build and tests ---
# Compiled classes of deleted sources would linger (the Kotlin plugin does not remove them): start clean.
rm -rf "$here/target/classes" "$here/target/test-classes" "$here/target/surefire-reports" "$here/target/android" \
  "$here/target/android-test"
# Debian's Maven 3.8 prints stray colour resets ("ESC[0m") even in batch mode: drop them.
run_mvn() {
  mvn -B -q -f "$here/pom.xml" "-Duniffi.kotlin.dir=$bindings" "-Djna.library.path=$libdir" "$@" 2>&1 \
    | sed -u $'s/\e\\[0m//g'
}
status=0
run_mvn test || status=$?
# The classpath that runs dev.shoaldb.MeshPeerKt without Maven, for bindings/mesh/run.sh.
mesh_cp_file="$target/uniffi/kotlin-classpath.txt"
if [ -f "$here/target/test-classes/dev/shoaldb/MeshPeerKt.class" ]; then
  mesh_classpath > "$mesh_cp_file"
else
  rm -f "$mesh_cp_file"
fi

# --- Android-only sources: compile against the Android API (Robolectric's android-all, no tests) ---
android_src="$root/android/src/main/kotlin-android"
if [ ! -d "$android_src" ]; then
  echo "android: skipped (no $android_src)"
elif run_mvn -Pandroid compile; then
  echo "android: android/src/main/kotlin-android compiles against the Android API"
else
  echo "android: android/src/main/kotlin-android FAILED to compile against the Android API"
  status=1
fi

# --- Android-only sources: Robolectric tests on a desktop JVM (Android's framework, Bluetooth shadows; no device) ---
android_tests="$root/android/src/testAndroid/kotlin"
if [ ! -d "$android_tests" ]; then
  echo "android: Robolectric tests skipped (no $android_tests)"
else
  android_start=$(date +%s)
  if run_mvn -Pandroid-test test; then
    echo "android: the Robolectric tests pass ($(( $(date +%s) - android_start )) s)"
  else
    echo "android: the Robolectric tests FAILED (reports: $here/target/android-test/surefire-reports)"
    status=1
  fi
fi

# --- summary (from the Surefire reports) ---
read -r tests failed skipped < <(
  cat "$here"/target/surefire-reports/TEST-*.xml "$here"/target/android-test/surefire-reports/TEST-*.xml 2>/dev/null \
    | grep -o '<testsuite [^>]*' | awk '
    { t += m($0, "tests"); f += m($0, "failures") + m($0, "errors"); s += m($0, "skipped") }
    function m(line, key,   r) { if (match(line, key "=\"[0-9]+\"")) { r = substr(line, RSTART + length(key) + 2, RLENGTH - length(key) - 3); return r + 0 } return 0 }
    END { print t + 0, f + 0, s + 0 }'
)
if [ "$status" != 0 ] && [ "$failed" = 0 ]; then
  failed=1 # the build itself failed (compilation, or the Android check)
fi
echo "kotlin: test.sh took $(( $(date +%s) - start )) s"
echo "kotlin: $(( tests - failed - skipped )) passed, $failed failed, $skipped skipped"
exit "$status"
