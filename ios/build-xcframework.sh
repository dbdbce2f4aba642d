#!/usr/bin/env bash
# Builds ios/ShoalDBFFI.xcframework (static libraries of the Rust crate shoaldb-ffi plus the C header and module map
# of the ShoalDBFFI module) and copies the generated Swift bindings into ios/Sources/ShoalDB/Generated/.
#
#   ./build-xcframework.sh             build for local development (Package.swift's useLocalFramework = true)
#   ./build-xcframework.sh --release   also zip the XCFramework and print the SwiftPM checksum of the zip
#
# Slices: ios-arm64 (devices), ios-arm64_x86_64-simulator and macos-arm64_x86_64 (lipo'd fat libraries).
# macOS only: needs Xcode (xcodebuild, lipo), rustup and cargo.
set -euo pipefail

HERE="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd -- "$HERE/.." && pwd)"
PACKAGE="shoaldb-ffi"
LIB="libshoaldb_ffi"
MODULE="ShoalDB"
FFI_MODULE="ShoalDBFFI"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
STAGE="$TARGET_DIR/xcframework"         # intermediate files
XCFRAMEWORK="$HERE/$FFI_MODULE.xcframework"
ZIP="$HERE/$FFI_MODULE.xcframework.zip"
GENERATED_SWIFT="$HERE/Sources/$MODULE/Generated"

# Keep in step with `platforms` in Package.swift: the C code in the crate graph (SQLite, ring) is compiled for
# these, and the linker warns about objects built for a newer OS than the app's.
export IPHONEOS_DEPLOYMENT_TARGET=15.0
export MACOSX_DEPLOYMENT_TARGET=12.0

IOS_DEVICE=aarch64-apple-ios
IOS_SIMULATOR=(aarch64-apple-ios-sim x86_64-apple-ios)
MACOS=(aarch64-apple-darwin x86_64-apple-darwin)
ALL_TARGETS=("$IOS_DEVICE" "${IOS_SIMULATOR[@]}" "${MACOS[@]}")

step() { printf '==> %s\n' "$*"; }
fail() { printf 'error: %s\n' "$*" >&2; exit 1; }

RELEASE=0
for arg in "$@"; do
    case "$arg" in
        --release) RELEASE=1 ;;
        -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
        *) fail "unknown argument: $arg (try --help)" ;;
    esac
done

[[ "$(uname -s)" == Darwin ]] || fail "build-xcframework.sh runs on macOS only (it needs Xcode's xcodebuild and lipo)."
command -v xcodebuild >/dev/null 2>&1 || fail "xcodebuild not found: install Xcode and run 'xcode-select -s /Applications/Xcode.app'."
xcodebuild -version >/dev/null 2>&1 || fail "xcodebuild does not run (only the Command Line Tools selected?): run 'xcode-select -s /Applications/Xcode.app'."
command -v lipo >/dev/null 2>&1 || fail "lipo not found (it comes with Xcode)."
command -v cargo >/dev/null 2>&1 || fail "cargo not found: install Rust with rustup."
command -v rustup >/dev/null 2>&1 || fail "rustup not found: it installs the Apple targets' standard libraries."

CARGO_FLAGS=(--package "$PACKAGE" --release)
[[ "$RELEASE" == 1 ]] && CARGO_FLAGS+=(--locked)

step "Rust standard libraries for ${ALL_TARGETS[*]}"
rustup target add "${ALL_TARGETS[@]}"

for target in "${ALL_TARGETS[@]}"; do
    step "building $PACKAGE for $target"
    (cd "$ROOT" && cargo build "${CARGO_FLAGS[@]}" --lib --target "$target")
done

# The bindings come from one of the libraries just built, the host's macOS dylib (UniFFI's metadata is the same
# in all of them; nothing is stripped). The generator is the workspace member `uniffi-bindgen` (or, in a layout
# that ships it as a bin of shoaldb-ffi, that package).
HOST_TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
case "$HOST_TRIPLE" in
    aarch64-apple-darwin | x86_64-apple-darwin) ;;
    *) fail "unexpected host $HOST_TRIPLE" ;;
esac
BINDGEN_PACKAGE="uniffi-bindgen"
[[ -f "$ROOT/bindings/uniffi-bindgen/Cargo.toml" ]] || BINDGEN_PACKAGE="$PACKAGE"
step "generating Swift bindings"
BINDINGS="$STAGE/bindings"
rm -rf "$BINDINGS"
mkdir -p "$BINDINGS"
# No --config: in library mode uniffi-bindgen reads bindings/uniffi.toml (package and module names) from the crate
# root by itself, and UniFFI 0.32 ignores a flat uniffi.toml passed with --config (it expects [defaults]/[crates.*]).
(
    cd "$ROOT"
    cargo run --release --package "$BINDGEN_PACKAGE" --bin uniffi-bindgen -- \
        generate --library "$TARGET_DIR/$HOST_TRIPLE/release/$LIB.dylib" --language swift \
        --out-dir "$BINDINGS" --no-format
)
for f in "$MODULE.swift" "$FFI_MODULE.h" "$FFI_MODULE.modulemap"; do
    [[ -f "$BINDINGS/$f" ]] || fail "uniffi-bindgen did not write $f (check the module names in bindings/uniffi.toml)"
done

# Headers/ShoalDBFFI/{ShoalDBFFI.h,module.modulemap} in every slice: clang finds <dir>/<Module>/module.modulemap on
# the header search path, and the subdirectory keeps this module map from colliding with another XCFramework's
# Headers/module.modulemap in the same app.
HEADERS="$STAGE/headers"
rm -rf "$HEADERS"
mkdir -p "$HEADERS/$FFI_MODULE"
cp "$BINDINGS/$FFI_MODULE.h" "$HEADERS/$FFI_MODULE/"
cp "$BINDINGS/$FFI_MODULE.modulemap" "$HEADERS/$FFI_MODULE/module.modulemap"

step "lipo: iOS simulator (arm64 + x86_64) and macOS (arm64 + x86_64)"
mkdir -p "$STAGE/ios-simulator" "$STAGE/macos"
lipo -create \
    "$TARGET_DIR/${IOS_SIMULATOR[0]}/release/$LIB.a" \
    "$TARGET_DIR/${IOS_SIMULATOR[1]}/release/$LIB.a" \
    -output "$STAGE/ios-simulator/$LIB.a"
lipo -create \
    "$TARGET_DIR/${MACOS[0]}/release/$LIB.a" \
    "$TARGET_DIR/${MACOS[1]}/release/$LIB.a" \
    -output "$STAGE/macos/$LIB.a"

step "xcodebuild -create-xcframework -> $XCFRAMEWORK"
rm -rf "$XCFRAMEWORK"
xcodebuild -create-xcframework \
    -library "$TARGET_DIR/$IOS_DEVICE/release/$LIB.a" -headers "$HEADERS" \
    -library "$STAGE/ios-simulator/$LIB.a" -headers "$HEADERS" \
    -library "$STAGE/macos/$LIB.a" -headers "$HEADERS" \
    -output "$XCFRAMEWORK"

step "copying $MODULE.swift into $GENERATED_SWIFT"
mkdir -p "$GENERATED_SWIFT"
cp "$BINDINGS/$MODULE.swift" "$GENERATED_SWIFT/$MODULE.swift"

if [[ "$RELEASE" == 1 ]]; then
    step "zipping $ZIP"
    rm -f "$ZIP"
    (cd "$HERE" && ditto -c -k --sequesterRsrc --keepParent "$FFI_MODULE.xcframework" "$(basename -- "$ZIP")")
    if command -v swift >/dev/null 2>&1; then
        CHECKSUM="$(cd "$HERE" && swift package compute-checksum "$ZIP")"
    else
        CHECKSUM="$(shasum -a 256 "$ZIP" | cut -d ' ' -f 1)" # what compute-checksum prints
    fi
    echo
    echo "$ZIP"
    echo "checksum: $CHECKSUM"
    echo "Upload the zip to the distribution repository's release and set releaseChecksum in its Package.swift."
fi
step "done"
