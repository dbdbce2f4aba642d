// Device identity: stores enrolled by an app authority sync with certificates; strangers and the revoked do not.

import Foundation
import ShoalDB

func isCertificateError(_ e: Error) -> Bool { if case ShoalError.Certificate = e { return true }; return false }
func isNotPermitted(_ e: Error) -> Bool { if case ShoalError.NotPermitted = e { return true }; return false }

/// A store with no app secret (certificates only), listening on loopback only, without mDNS.
private func openEnrollable(_ dir: String, _ name: String, peers: [String] = []) async throws -> Store {
    try await Store.open(path: "\(dir)/\(name).db", deviceName: name,
                         sync: SyncConfig(listen: "127.0.0.1:0", mdns: false, peers: peers))
}

/// Enrols `store` with `authority`: request → certificate with `grants` → install.
@discardableResult
private func enrol(_ store: Store, _ name: String, _ authority: Authority, serial: UInt64,
                   grants: [String] = ["read *", "write *"]) async throws -> CertificateInfo {
    let request = try store.enrolmentRequest(name: name)
    let certificate = try authority.issue(request: request, serial: serial, grants: grants, validFor: 365 * 86_400)
    let info = try await store.installCertificate(authorityPublicKey: authority.publicKey(), certificate: certificate)
    try expectEqual(info.name, name)
    try expectEqual(info.serial, serial)
    try expectEqual(info.deviceId, try store.deviceId())
    try expectEqual(info.grants, grants)
    try expectEqual(try store.certificate()?.signingKey, info.signingKey)
    return info
}

/// Keeps every warning logged from now on (the test installs the default logger again).
private func capturingLog() -> Locked<[String]> {
    let lines = Locked<[String]>([])
    Shoal.setLogHandler(level: .warn) { _, _, message in lines.mutate { $0.append(message) } }
    return lines
}

func testEnrolledStoresSync() async throws {
    let dir = try makeTempDir("enrolment")
    defer { removeTempDir(dir) }
    let lines = capturingLog()
    defer { Shoal.installDefaultLogger(level: .warn) }

    let authority = try Authority.generate()
    let sameAuthority = try Authority.fromPrivateKey(privateKey: authority.privateKey())
    try expectEqual(sameAuthority.publicKey(), authority.publicKey(), "the key survives a round trip")
    let other = try Authority.generate()

    let a = try await openEnrollable(dir, "A")
    defer { a.shutdown() }
    try await enrol(a, "A", authority, serial: 1)
    let revoked = try await openEnrollable(dir, "Revoked")
    defer { revoked.shutdown() }
    let revokedInfo = try await enrol(revoked, "Revoked", authority, serial: 3)
    let stranger = try await openEnrollable(dir, "Stranger")
    defer { stranger.shutdown() }
    try await enrol(stranger, "Stranger", other, serial: 1)

    // A takes in the authority's revocation list before it syncs.
    let list = try authority.revoke(number: 1, entries: [.device(signingKey: revokedInfo.signingKey)])
    let news = try await a.installRevocations(list: list)
    try expect(news, "the list is news")
    let again = try await a.installRevocations(list: list)
    try expect(!again, "the same list again is no news")
    let othersList = try other.revoke(number: 2, entries: [])
    try await expectErrorAsync("another authority's list", isCertificateError) {
        _ = try await a.installRevocations(list: othersList)
    }

    try await a.startSync()
    guard let address = a.listenAddress() else { throw fail("A has no listen address") }
    _ = try await a.collection(name: "tasks").upsert(json: #"{"_id": "t1", "title": "from A"}"#)
    let b = try await openEnrollable(dir, "B", peers: [address])
    defer { b.shutdown() }
    try await enrol(b, "B", sameAuthority, serial: 2)
    try await b.startSync()
    let tasksB = try b.collection(name: "tasks")
    try await eventually("B receiving A's document over a certified link") { try await tasksB.get(id: "t1") != nil }
    try await eventually("B and A seeing each other") {
        b.peers().map(\.name) == ["A"] && a.peers().map(\.name) == ["B"]
    }

    // The revoked store and the other authority's store dial A too.
    for store in [revoked, stranger] {
        _ = try await store.collection(name: "tasks").upsert(json: #"{"_id": "theirs"}"#)
        try store.connect(address: address)
        try await store.startSync()
    }
    try await eventually("A refusing the revoked store's certificate") {
        lines.get().contains { $0.contains("revoked: device key") }
    }
    await sleep(ms: 2_000)  // time for the stranger's dials too: no link comes up
    for store in [revoked, stranger] {
        try expect(store.peers().isEmpty, "no link came up: \(store.peers().map(\.name))")
        try expectEqual(try await store.collection(name: "tasks").get(id: "t1"), nil, "nothing of A's reached it")
    }
    try expectEqual(a.peers().map(\.name), ["B"], "A is linked with B only")
    try expectEqual(try await a.collection(name: "tasks").get(id: "theirs"), nil, "nothing of theirs reached A")
}

func testRosterRefusesUnlistedDevices() async throws {
    let dir = try makeTempDir("roster")
    defer { removeTempDir(dir) }
    let lines = capturingLog()
    defer { Shoal.installDefaultLogger(level: .warn) }

    let authority = try Authority.generate()
    let a = try await openEnrollable(dir, "A")
    defer { a.shutdown() }
    let aInfo = try await enrol(a, "A", authority, serial: 1)
    let member = try await openEnrollable(dir, "Member")
    defer { member.shutdown() }
    let memberInfo = try await enrol(member, "Member", authority, serial: 2)
    let outsider = try await openEnrollable(dir, "Outsider")
    defer { outsider.shutdown() }
    let outsiderInfo = try await enrol(outsider, "Outsider", authority, serial: 3)
    // The roster closes the membership as of now: A and Member are on it; Outsider, certified before it too, is not.
    let untilMs = UInt64(Date().timeIntervalSince1970 * 1000)
    for info in [aInfo, memberInfo, outsiderInfo] {
        try expect(info.notBeforeMs <= untilMs, "\(info.name) is certified before the roster")
    }
    for bad in ["xyz", String(memberInfo.signingKey.dropLast()), memberInfo.signingKey + "00"] {
        try expectError("a roster member key \(bad)", isInvalidArgument) {
            _ = try authority.revoke(number: 1, entries: [.roster(members: [aInfo.signingKey, bad], untilMs: untilMs)])
        }
    }
    let list = try authority.revoke(
        number: 1, entries: [.roster(members: [aInfo.signingKey, memberInfo.signingKey], untilMs: untilMs)])
    let news = try await a.installRevocations(list: list)
    try expect(news, "the roster is news")

    // Newcomer is certified after the roster's time: the roster does not concern it.
    let newcomer = try await openEnrollable(dir, "Newcomer")
    defer { newcomer.shutdown() }
    let request = try newcomer.enrolmentRequest(name: "Newcomer")
    let certificate = try authority.issue(request: request, serial: 4, grants: ["read *", "write *"],
                                          validFromMs: untilMs + 1, validUntilMs: untilMs + 365 * 86_400_000)
    let newcomerInfo = try await newcomer.installCertificate(authorityPublicKey: authority.publicKey(),
                                                             certificate: certificate)
    try expectEqual(newcomerInfo.notBeforeMs, untilMs + 1)

    try await a.startSync()
    guard let address = a.listenAddress() else { throw fail("A has no listen address") }
    _ = try await a.collection(name: "tasks").upsert(json: #"{"_id": "t1", "title": "from A"}"#)
    for store in [member, outsider, newcomer] {
        let id = try store.deviceId()
        _ = try await store.collection(name: "tasks").upsert(json: #"{"_id": "from-\#(id)"}"#)
    }
    let tasksA = try a.collection(name: "tasks")

    // The member syncs both ways.
    try member.connect(address: address)
    try await member.startSync()
    try await eventually("Member receiving A's document") {
        try await member.collection(name: "tasks").get(id: "t1") != nil
    }
    let memberId = try member.deviceId()
    try await eventually("A receiving Member's document") { try await tasksA.get(id: "from-\(memberId)") != nil }

    // The outsider, certified before the roster and not on it, is refused.
    try outsider.connect(address: address)
    try await outsider.startSync()
    try await eventually("A refusing Outsider: not on the roster") {
        lines.get().contains { $0.contains("is not on it") }
    }
    let refusal = lines.get().first { $0.contains("is not on it") } ?? ""
    try expect(refusal.contains("(Outsider)"), refusal)
    try expect(refusal.contains(String(outsiderInfo.signingKey.prefix(16))), refusal)

    // The newcomer, certified after it, syncs both ways.
    try newcomer.connect(address: address)
    try await newcomer.startSync()
    try await eventually("Newcomer receiving A's document") {
        try await newcomer.collection(name: "tasks").get(id: "t1") != nil
    }
    let newcomerId = try newcomer.deviceId()
    try await eventually("A receiving Newcomer's document") { try await tasksA.get(id: "from-\(newcomerId)") != nil }

    await sleep(ms: 2_000)  // time for more of the outsider's dials: no link comes up
    try expect(outsider.peers().isEmpty, "no link came up: \(outsider.peers().map(\.name))")
    try expectEqual(try await outsider.collection(name: "tasks").get(id: "t1"), nil, "nothing of A's reached Outsider")
    let outsiderId = try outsider.deviceId()
    try expectEqual(try await tasksA.get(id: "from-\(outsiderId)"), nil, "nothing of Outsider's reached A")
    try expectEqual(a.peers().map(\.name).sorted(), ["Member", "Newcomer"], "A is linked with the two")
    let notOnIt = lines.get().filter { $0.contains("is not on it") }
    try expect(notOnIt.allSatisfy { $0.contains("(Outsider)") }, "only Outsider is refused: \(notOnIt)")
}

func testEnrolmentMistakes() async throws {
    let dir = try makeTempDir("enrolment-errors")
    defer { removeTempDir(dir) }
    let authority = try Authority.generate()
    let store = try await openEnrollable(dir, "Bare")
    defer { store.shutdown() }
    try expect(try store.certificate() == nil, "no certificate")
    try await expectErrorAsync("sync with neither certificate nor secret", isCertificateError) {
        try await store.startSync()
    }
    let request = try store.enrolmentRequest(name: "Bare")
    try expect(request.hasPrefix("shoal-enrol-1 "), request)
    try expectError("a bad grant", isCertificateError) {
        _ = try authority.issue(request: request, serial: 1, grants: ["delete *"], validFor: 86_400)
    }
    try expectError("not a request", isCertificateError) {
        _ = try authority.issue(request: "hello", serial: 1, grants: [], validFor: 86_400)
    }
    let certificate = try authority.issue(request: request, serial: 1, grants: ["read *"], validFor: 86_400)
    let strangerKey = try Authority.generate().publicKey()
    try await expectErrorAsync("another authority", isCertificateError) {
        try await store.installCertificate(authorityPublicKey: strangerKey, certificate: certificate)
    }
    try await expectErrorAsync("garbage", isCertificateError) {
        try await store.installCertificate(authorityPublicKey: authority.publicKey(), certificate: Data([1, 2]))
    }
    try await expectErrorAsync("a bad key", isInvalidArgument) {
        try await store.installCertificate(authorityPublicKey: "xyz", certificate: certificate)
    }
    try expectError("a short private key", isInvalidArgument) { _ = try Authority.fromPrivateKey(privateKey: Data(count: 5)) }
    let other = try await openStore(dir, "Other")
    defer { other.shutdown() }
    try await expectErrorAsync("another device's certificate", isCertificateError) {
        try await other.installCertificate(authorityPublicKey: authority.publicKey(), certificate: certificate)
    }
    try expect(try store.certificate() == nil, "no certificate")
    let info = try await store.installCertificate(authorityPublicKey: authority.publicKey(), certificate: certificate)
    try expectEqual(info.grantDeviceId.count, 16)
    // The certificate grants reading only: the store refuses a write every peer would refuse.
    try await expectErrorAsync("a write the certificate does not allow", isNotPermitted) {
        _ = try await store.collection(name: "tasks").upsert(json: #"{"_id": "t"}"#)
    }
    try expect(try store.collection(name: "tasks").getBlocking(id: "t") == nil, "nothing written")
    try await store.startSync()
    try expect(store.isSyncing(), "syncs with its certificate")
}

func testAttestedStatesLetDevicesFold() async throws {
    let dir = try makeTempDir("attested")
    defer { removeTempDir(dir) }
    let authority = try Authority.generate()
    let attester = try await openEnrollable(dir, "Attester")
    defer { attester.shutdown() }
    try await enrol(attester, "Attester", authority, serial: 1, grants: ["read *", "write *", "attest *"])
    try await attester.startSync()
    guard let address = attester.listenAddress() else { throw fail("the attester has no listen address") }
    let b = try await openEnrollable(dir, "B", peers: [address])
    defer { b.shutdown() }
    try await enrol(b, "B", authority, serial: 2)
    let tasks = try b.collection(name: "tasks")
    for i in 1...5 { _ = try await tasks.upsert(json: #"{"_id": "t\#(i)", "n": \#(i)}"#) }
    try await expectErrorAsync("a device without the grant attests", isNotPermitted) { _ = try await b.attest() }
    let everything = CompactionPolicy(horizonMs: 0)
    try expectEqual(try await b.compact(policy: everything).changes, 0, "signed changes wait for an attested state")

    try await b.startSync()
    let theirs = try attester.collection(name: "tasks")
    try await eventually("the attester receiving B's documents") { try await theirs.all().count == 5 }
    try expectEqual(try await attester.attest().documents, 5)
    try expectEqual(try attester.attestBlocking().documents, 0, "nothing new to sign")
    // The states reach B over the open link; B folds its log once they have.
    var folded: UInt64 = 0
    try await eventually("B folding its signed changes") {
        folded += try b.compactBlocking(policy: everything).changes
        return folded == 5
    }
    try expectEqual(try await attester.compact(policy: everything).changes, 5)
    try expectEqual(try await tasks.all().count, 5, "the documents stay whole")
}
