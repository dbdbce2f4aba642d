// Runs every scenario, printing its name and result, and ends with `N passed, M failed` (exit 1 on any failure).
// Built by bindings/swift/test.sh against module ShoalDB (the generated bindings + ios/Sources/ShoalDB).
//
//   ShoalTests [FILTER]                                 the scenarios (whose name contains FILTER)
//   ShoalTests --air-phone <air address> <phone name>   an iPhone on the simulated air, run by a driver
//                                                       (AirPhone.swift)

import Foundation
import ShoalDB

Shoal.installDefaultLogger(level: .warn)

if CommandLine.arguments.dropFirst().first == "--air-phone" {
    await runAirPhone(Array(CommandLine.arguments.dropFirst(2)))
}

func readmeTest() async throws {
    let dir = try makeTempDir("readme")
    defer { removeTempDir(dir) }
    let printed = try await readmeExample(directory: dir)
    try expectEqual(printed, [#"["Buy oat milk"]"#, "1 todos"])
}

let tests: [(String, () async throws -> Void)] = [
    ("open a store", testOpenStore),
    ("registers: string, int, double, bool, bytes, JSON", testRegisters),
    ("counter", testCounter),
    ("text: insert, delete, splice", testText),
    ("nested maps and dotted paths", testNestedMaps),
    ("arrays: push, insert, delete, items[0].done", testArrays),
    ("attachment field", testAttachmentField),
    ("storage stats and garbage collection", testGarbageCollection),
    ("compaction of the change log", testCompaction),
    ("expiry by a collection's time to live", testExpiry),
    ("a storage budget evicts what was used least recently", testStorageBudget),
    ("atomic multi-document write", testAtomicWrite),
    ("write builder on the main actor", testWriteFromMainActor),
    ("query: filter, params, sort, limit", testQuery),
    ("indexes: create, explain, drop", testIndexServesQuery),
    ("indexes: an invalid index is InvalidArgument", testInvalidIndex),
    ("observer as AsyncSequence", testObserver),
    ("Codable round trip", testCodable),
    ("errors: InvalidArgument, NotFound, Closed", testErrors),
    ("logging through a Swift logger", testLogging),
    ("two stores sync over loopback and converge", testSyncConverges),
    ("presence shows the other device over LAN", testPresence),
    ("attachment fetched over sync with progress", testAttachmentOverSync),
    ("iPhones sync over Bluetooth LE (the shipped radio, GATT, on a simulated air)", testBluetoothGatt),
    ("iPhones sync over Bluetooth LE (the shipped radio, L2CAP, on a simulated air)", testBluetoothL2cap),
    ("three iPhones on a line over Bluetooth LE: the ends sync through the middle", testBluetoothLine),
    ("an iPhone walks out of Bluetooth LE range mid-transfer and back, and they converge", testBluetoothWalkAway),
    ("iPhone programs driven through the Bluetooth LE air: a note and an attachment cross", testAirPhonesDriven),
    ("CoreBluetooth state restoration on the air: what the stack kept is handed back", testStateRestorationOnTheAir),
    ("enrolled stores sync with certificates; another authority's and a revoked one do not", testEnrolledStoresSync),
    ("a roster refuses the devices certified before it that it does not list", testRosterRefusesUnlistedDevices),
    ("states an attester signs let enrolled devices fold their signed changes", testAttestedStatesLetDevicesFold),
    ("enrolment mistakes are Certificate errors", testEnrolmentMistakes),
    ("key vault: the private keys live in a Swift vault, none in the database", testKeysLiveInTheVault),
    ("key vault: a vault that throws fails the open with Storage", testVaultFailureFailsTheOpen),
    ("async calls and their blocking twins", testAsyncCallsAndBlockingTwins),
    ("cancelling the Task rolls back the write in Rust", testCancellingTheTaskRollsBackTheWrite),
    ("Codable write-back keeps the other device's edits", testCodableWriteBackKeepsOtherDevicesEdits),
    ("documents stream: current, then latest results; typed", testDocumentsStream),
    ("native query parameters: Int, Double, String, Bool, lists, nil", testNativeQueryParameters),
    ("Shoal.databasePath: a directory of its own, ready for a store", testDatabasePathIsReadyForAStore),
    ("README example", readmeTest),
]

/// Per test: generous for a slow shared machine (the tests' own waits are 30 s each).
let perTestTimeout: TimeInterval = 180
let only = CommandLine.arguments.dropFirst().first

var passed = 0
var failed = 0
let suiteStart = Date()
for (name, body) in tests {
    if let only, !name.localizedCaseInsensitiveContains(only) { continue }
    print("TEST \(name) ...")
    let start = Date()
    let outcome = Locked<Result<Void, Error>?>(nil)
    let task = Task {
        do {
            try await body()
            outcome.mutate { $0 = .success(()) }
        } catch {
            outcome.mutate { $0 = .failure(error) }
        }
    }
    while outcome.get() == nil && Date().timeIntervalSince(start) < perTestTimeout {
        await sleep(ms: 20)
    }
    let seconds = String(format: "%.2f", Date().timeIntervalSince(start))
    switch outcome.get() {
    case .success?:
        passed += 1
        print("PASS \(name) (\(seconds) s)")
    case .failure(let error)?:
        failed += 1
        print("FAIL \(name) (\(seconds) s): \(error)")
    case nil:
        task.cancel()
        failed += 1
        print("FAIL \(name): timed out after \(Int(perTestTimeout)) s")
    }
}
print(String(format: "swift tests took %.1f s", Date().timeIntervalSince(suiteStart)))
print("\(passed) passed, \(failed) failed")
exit(failed == 0 && passed > 0 ? 0 : 1)
