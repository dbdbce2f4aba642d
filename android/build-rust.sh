#!/usr/bin/env bash
# Builds what the Android library packages from Rust, into android/build/generated/:
#   jniLibs/{arm64-v8a,armeabi-v7a,x86_64}/libshoaldb_ffi.so   cross-compiled with cargo-ndk (API 24, 16 KB pages)
#   uniffi/kotlin/dev/shoaldb/shoaldb_ffi.kt                    the UniFFI Kotlin bindings
# Gradle runs it (task buildRustLibraries) before every build; it can also be run by hand from any directory.
# Running it again is cheap: Cargo rebuilds only what changed, and unchanged outputs keep their timestamps.
#
# Needs: rustup + cargo, and ANDROID_NDK_HOME pointing at an Android NDK (r23 or newer; r28+ recommended).
# Installs cargo-ndk into <workspace>/target/tools if it is not on PATH (override with SHOAL_TOOLS_ROOT).
set -euo pipefail

HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd -- "$HERE/.." && pwd)"
PACKAGE="shoaldb-ffi"
LIB="libshoaldb_ffi"
API_LEVEL=24 # = minSdk in build.gradle.kts
ABIS=(arm64-v8a armeabi-v7a x86_64)
RUST_TARGETS=(aarch64-linux-android armv7-linux-androideabi x86_64-linux-android)
GENERATED="$HERE/build/generated"
JNILIBS="$GENERATED/jniLibs"
KOTLIN_OUT="$GENERATED/uniffi/kotlin"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
TOOLS_ROOT="${SHOAL_TOOLS_ROOT:-$TARGET_DIR/tools}"

step() { printf '==> %s\n' "$*"; }

if [[ -z "${ANDROID_NDK_HOME:-}" ]]; then
    cat >&2 <<'EOF'
error: ANDROID_NDK_HOME is not set.

build-rust.sh cross-compiles the Rust library with the Android NDK. Install an NDK (Android Studio:
Settings > Languages & Frameworks > Android SDK > SDK Tools > "NDK (Side by side)", or
`sdkmanager "ndk;28.0.13004108"`) and point ANDROID_NDK_HOME at it, for example:

    export ANDROID_NDK_HOME="$HOME/Android/Sdk/ndk/28.0.13004108"          # Linux
    export ANDROID_NDK_HOME="$HOME/Library/Android/sdk/ndk/28.0.13004108"  # macOS

To build the Android library from libraries built elsewhere, put them under android/build/generated/ and pass
-Pshoal.skipRustBuild to Gradle.
EOF
    exit 1
fi
if [[ ! -d "$ANDROID_NDK_HOME" ]]; then
    echo "error: ANDROID_NDK_HOME=$ANDROID_NDK_HOME is not a directory" >&2
    exit 1
fi

# Gradle started from an IDE may not have ~/.cargo/bin on PATH.
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
command -v cargo >/dev/null 2>&1 || { echo "error: cargo not found (install Rust with rustup)" >&2; exit 1; }

step "Rust standard libraries for ${RUST_TARGETS[*]}"
if command -v rustup >/dev/null 2>&1; then
    rustup target add "${RUST_TARGETS[@]}"
else
    echo "warning: rustup not found; the toolchain must already have ${RUST_TARGETS[*]}" >&2
fi

export PATH="$TOOLS_ROOT/bin:$PATH"
if ! command -v cargo-ndk >/dev/null 2>&1; then
    step "installing cargo-ndk into $TOOLS_ROOT"
    cargo install cargo-ndk --version '^4' --locked --root "$TOOLS_ROOT"
fi

# 16 KB alignment of the LOAD segments, for devices with 16 KB pages (Google Play requires it of apps targeting
# Android 15+ from November 2025). NDK r28+ does it by default and cargo-ndk 4 adds it for 64-bit ABIs with older
# NDKs; the flag is passed anyway so that every toolchain agrees.
# cargo-ndk always passes --target, so RUSTFLAGS reaches only the Android artifacts, not build scripts.
PAGE_FLAGS="-C link-arg=-Wl,-z,max-page-size=16384"
TARGET_ARGS=()
for abi in "${ABIS[@]}"; do TARGET_ARGS+=(-t "$abi"); done

step "cross-compiling $PACKAGE (release) for ${ABIS[*]} into $JNILIBS"
mkdir -p "$JNILIBS"
(
    cd "$ROOT"
    RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }$PAGE_FLAGS" \
        cargo ndk "${TARGET_ARGS[@]}" --platform "$API_LEVEL" -o "$JNILIBS" \
        build --package "$PACKAGE" --lib --release
)

# Check the alignment with the NDK's readelf (skipped when the NDK has none where expected).
READELF="$(compgen -G "$ANDROID_NDK_HOME/toolchains/llvm/prebuilt/*/bin/llvm-readelf" | head -n 1 || true)"
if [[ -n "$READELF" ]]; then
    for abi in arm64-v8a x86_64; do
        so="$JNILIBS/$abi/$LIB.so"
        [[ -f "$so" ]] || { echo "error: $so was not produced" >&2; exit 1; }
        while read -r align; do
            if (( align < 16384 )); then
                echo "error: $so has a LOAD segment aligned to $align bytes (want 16 KB)" >&2
                exit 1
            fi
        done < <("$READELF" -lW "$so" | awk '$1 == "LOAD" { print $NF }')
    done
    step "16 KB LOAD alignment checked (arm64-v8a, x86_64)"
fi

# Bindings are generated from a host build of the same crate (the metadata UniFFI reads is identical on every
# target). The library is never stripped before this step: stripping removes that metadata.
case "$(uname -s)" in
    Darwin) HOST_LIB="$TARGET_DIR/release/$LIB.dylib" ;;
    *) HOST_LIB="$TARGET_DIR/release/$LIB.so" ;;
esac
step "building $PACKAGE (release) for the host"
(cd "$ROOT" && cargo build --package "$PACKAGE" --lib --release)

step "generating Kotlin bindings into $KOTLIN_OUT"
# The generator is the workspace member `uniffi-bindgen` (UniFFI's CLI at the workspace's uniffi version); a
# layout that ships it as a bin of shoaldb-ffi instead works too.
BINDGEN_PACKAGE="uniffi-bindgen"
[[ -f "$ROOT/bindings/uniffi-bindgen/Cargo.toml" ]] || BINDGEN_PACKAGE="$PACKAGE"
# No --config: in library mode uniffi-bindgen reads bindings/uniffi.toml (package and module names) from the crate
# root by itself, and UniFFI 0.32 ignores a flat uniffi.toml passed with --config (it expects [defaults]/[crates.*]).
STAGING="$HERE/build/tmp/uniffi-kotlin"
rm -rf "$STAGING"
mkdir -p "$STAGING"
(
    cd "$ROOT"
    cargo run --release --package "$BINDGEN_PACKAGE" --bin uniffi-bindgen -- \
        generate --library "$HOST_LIB" --language kotlin --out-dir "$STAGING" --no-format
)
[[ -f "$STAGING/dev/shoaldb/shoaldb_ffi.kt" ]] || {
    echo "error: uniffi-bindgen did not write dev/shoaldb/shoaldb_ffi.kt" >&2
    exit 1
}
# Replace the output only when it changed, so that Gradle does not recompile unchanged Kotlin.
if [[ -d "$KOTLIN_OUT" ]] && diff -rq "$STAGING" "$KOTLIN_OUT" >/dev/null; then
    rm -rf "$STAGING"
    step "Kotlin bindings unchanged"
else
    rm -rf "$KOTLIN_OUT"
    mkdir -p "$(dirname -- "$KOTLIN_OUT")"
    mv "$STAGING" "$KOTLIN_OUT"
    step "Kotlin bindings updated"
fi
