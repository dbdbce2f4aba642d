// swift-tools-version:5.9
// ShoalDB for iOS and macOS: the Swift API (target ShoalDB) over the Rust core, which ships as a binary
// XCFramework of static libraries (target ShoalDBFFI, module ShoalDBFFI, imported by the generated ShoalDB.swift).
//
// Local development (the default here): run ./build-xcframework.sh, which writes ShoalDBFFI.xcframework next to
// this file and copies the generated bindings into Sources/ShoalDB/Generated/, then add this directory to an
// Xcode project as a local package (or `swift build` on a Mac).
//
// Releases: SwiftPM only resolves a package whose Package.swift is at the root of a git repository, and this one
// sits in ios/ of the Shoal monorepo. A release is therefore published to a separate distribution repository:
// its root holds this Package.swift and Sources/ (with Generated/ filled in), and its GitHub release holds
// ShoalDBFFI.xcframework.zip. `./build-xcframework.sh --release` makes the zip and prints its checksum; the
// release script then rewrites the three `let`s below (useLocalFramework = false, releaseTag, releaseChecksum)
// in the copy it commits and tags there. Apps depend on the distribution repository, never on this directory.
//
// Tests: Tests/ShoalDBTests (the test runner, a plain program with its own small harness rather than XCTest) and
// Tests/MeshPeer (a peer of the cross-language mesh test) import ShoalDB as an app would. bindings/swift/test.sh
// compiles them with swiftc and runs them with Swift 6 on Linux. They are not targets of this package: a SwiftPM
// test target runs XCTest or Swift Testing cases, not a program of its own, and the distribution repository
// receives only this file and Sources/.

import PackageDescription

/// true: use ./ShoalDBFFI.xcframework built by build-xcframework.sh. false: download the release zip.
let useLocalFramework = true
/// Rewritten by the release script: the distribution repository's tag that carries ShoalDBFFI.xcframework.zip.
let releaseTag = "0.1.0"
/// Rewritten by the release script: the output of `swift package compute-checksum ShoalDBFFI.xcframework.zip`.
let releaseChecksum = "0000000000000000000000000000000000000000000000000000000000000000"
/// The distribution repository (placeholder until one exists).
let distributionRepository = "https://github.com/shoaldb/shoaldb-swift"

let ffiTarget: Target = useLocalFramework
    ? .binaryTarget(name: "ShoalDBFFI", path: "ShoalDBFFI.xcframework")
    : .binaryTarget(
        name: "ShoalDBFFI",
        url: "\(distributionRepository)/releases/download/\(releaseTag)/ShoalDBFFI.xcframework.zip",
        checksum: releaseChecksum
    )

let package = Package(
    name: "ShoalDB",
    platforms: [
        .iOS(.v15),
        .macOS(.v12),
    ],
    products: [
        .library(name: "ShoalDB", targets: ["ShoalDB"]),
    ],
    targets: [
        ffiTarget,
        .target(
            name: "ShoalDB",
            dependencies: ["ShoalDBFFI"],
            path: "Sources/ShoalDB"
        ),
    ]
)
