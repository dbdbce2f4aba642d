// The iOS phone program of the simulated air (core/air/PROTOCOL.md, "Phone drivers"): one iPhone, run by a test
// driver through the air server. A mode of the test runner, so that it needs no second build:
//
//   ShoalTests --air-phone <air address> <phone name>
//
// (`bindings/swift/test.sh --air-phone-command` prints the whole chroot invocation to put before the two arguments.)
// The program joins the air as the iPhone <phone name> (`hello`: platform ios, ATT MTU 185) and runs the commands
// the driver sends it, one at a time, in order: "open" (a fresh store in a new directory, Bluetooth its only
// transport: the shipped CoreBluetoothRadio with its default options, over the test-only CoreBluetooth module on
// this connection; `"restore": true` opts in to state restoration), "put", "notes", "attach", "attachment",
// "terminate" (the system ends the app: its Bluetooth managers fall silent, the store's process is gone), "launch"
// (the app is launched again: the same store and radio options, its radio's managers restored from what the stack
// kept), "restored" (the links handed to restored managers: by role, still up, cancelled by the app), "close",
// "quit". It exits when told to quit (0) or when the air closes its connection (1). Progress goes to stderr.
//
// Stores of every phone program on the air use one app secret, "shoal air" (PROTOCOL.md names none; Android's phone
// program must use the same), so that they sync.

import CoreBluetooth
import Foundation
import ShoalDB

/// The app secret of every phone on the air.
private let airSecret = "shoal air"

/// Runs the phone program with `arguments` (air address, phone name); never returns.
func runAirPhone(_ arguments: [String]) async -> Never {
    guard arguments.count == 2 else {
        FileHandle.standardError.write(Data("usage: ShoalTests --air-phone <air address> <phone name>\n".utf8))
        exit(2)
    }
    let (address, name) = (arguments[0], arguments[1])
    let phone: SimulatedPhone
    do {
        phone = try SimulatedPhone.connect(air: address, name: name)
    } catch {
        FileHandle.standardError.write(Data("air phone \(name): \(error)\n".utf8))
        exit(1)
    }
    exit(await serveAirPhone(phone) ? 0 : 1)
}

/// Runs the driver's commands sent to `phone`, one at a time, until told to quit (true) or until the air closes the
/// connection (false); the store is closed either way. `verbose`: progress on stderr.
func serveAirPhone(_ phone: SimulatedPhone, verbose: Bool = true) async -> Bool {
    let program = AirPhoneProgram(phone: phone, verbose: verbose)
    program.log("on the air as \(phone.address)")
    let (commands, feed) = AsyncStream.makeStream(of: String.self)
    phone.onCommand { feed.yield($0) }
    phone.onEnd { feed.finish() }
    for await line in commands {
        if await program.run(line) { return true }
    }
    program.log("the air closed the connection")
    await program.closeStore()
    return false
}

/// The phone's state between commands. Used by the one task that runs the commands.
private final class AirPhoneProgram {
    let phone: SimulatedPhone
    private let verbose: Bool
    private let started = Date()
    private var store: Store?
    private var radio: CoreBluetoothRadio?
    private var dir: String?
    /// The open store's radio options (a relaunch makes its radio with the same).
    private var radioOptions = CoreBluetoothRadio.Options()
    /// Attachments whose download was asked for and has not ended, by hash.
    private let fetching = Locked<Set<String>>([])

    init(phone: SimulatedPhone, verbose: Bool) {
        self.phone = phone
        self.verbose = verbose
    }

    func log(_ message: String) {
        guard verbose else { return }
        let line = String(format: "[air-phone %@ %7.2fs] ", phone.name, Date().timeIntervalSince(started)) + message
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }

    /// Runs one `do` line and answers it with `done`; true if the program is to exit now.
    func run(_ line: String) async -> Bool {
        guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)),
              let command = object as? [String: Any]
        else {
            log("not a JSON object: \(line)")
            return false
        }
        let cmd = command["cmd"] as? String ?? ""
        var answer: [String: Any] = ["op": "done", "id": command["id"] ?? NSNull()]
        do {
            for (key, value) in try await execute(cmd, command) { answer[key] = value }
            answer["ok"] = true
        } catch {
            log("\(cmd) failed: \(error)")
            answer["ok"] = false
            answer["error"] = "\(error)"
        }
        phone.send(answer)
        return cmd == "quit"
    }

    private func execute(_ cmd: String, _ command: [String: Any]) async throws -> [String: Any] {
        switch cmd {
        case "open":
            try await open(
                useL2CAP: command["l2cap"] as? Bool ?? true, restore: command["restore"] as? Bool ?? false)
            return [:]
        case "terminate":
            try terminate()
            return [:]
        case "launch":
            try await launch()
            return [:]
        case "restored":
            let restored = phone.restored
            return [
                "central": restored.central, "peripheral": restored.peripheral, "open": restored.open,
                "cancelled": restored.cancelled,
            ]
        case "put":
            let doc = try argument("doc", command)
            let text = try argument("text", command)
            _ = try await openStore().collection(name: "notes").put(id: doc, fields: ["text": FieldValue(text)])
            return [:]
        case "notes":
            var notes: [String: Any] = [:]
            for json in try await openStore().collection(name: "notes").all() {
                guard let object = try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
                      let id = object["_id"] as? String
                else { continue }
                notes[id] = object["text"] ?? NSNull()
            }
            return ["notes": notes]
        case "attach":
            let doc = try argument("doc", command)
            guard let bytes = Data(base64Encoded: try argument("bytes", command)) else {
                throw AirPhoneError("attach: bytes is not base64")
            }
            let store = try openStore()
            let token = try await store.putAttachment(bytes: bytes, meta: [:])
            _ = try await store.collection(name: "files").put(id: doc, fields: ["blob": FieldValue(token)])
            return [:]
        case "attachment":
            return ["bytes": try await attachment(try argument("doc", command)) ?? NSNull()]
        case "close":
            await closeStore()
            return [:]
        case "quit":
            await closeStore()
            return [:]
        default:
            throw AirPhoneError("unknown command \"\(cmd)\"")
        }
    }

    private func argument(_ key: String, _ command: [String: Any]) throws -> String {
        guard let value = command[key] as? String else { throw AirPhoneError("missing \"\(key)\"") }
        return value
    }

    private func openStore() throws -> Store {
        guard let store else { throw AirPhoneError("no store open (send \"open\" first)") }
        return store
    }

    /// A fresh store in a new directory (a new identity), syncing over Bluetooth only, replacing an open one;
    /// `useL2CAP` false keeps every connection on GATT; `restore` opts in to CoreBluetooth state restoration.
    private func open(useL2CAP: Bool, restore: Bool) async throws {
        await closeStore()
        let dir = try makeTempDir("air-phone-\(phone.name)")
        self.dir = dir
        let name = phone.name
        radioOptions = CoreBluetoothRadio.Options(
            restoreIdentifier: restore ? "dev.shoaldb.air.\(name)" : nil, useL2CAP: useL2CAP,
            log: { line in FileHandle.standardError.write(Data("[air-phone \(name)] radio: \(line)\n".utf8)) })
        try await start(in: dir)
        log("opened a store in \(dir) as device \(try openStore().deviceId().prefix(16))…")
    }

    /// The system ends the app without a word: its Bluetooth managers fall silent (the stack keeps what they had
    /// if they opted in to restoration), then what is left of the process goes (nothing the old radio does now
    /// reaches the air). The store's directory stays for `launch`.
    private func terminate() throws {
        let store = try openStore()
        phone.terminateApp()
        store.shutdown()
        self.store = nil
        radio = nil
        log("the system ended the app")
    }

    /// The app is launched again after `terminate`: the same store, a new radio with the same options.
    private func launch() async throws {
        guard store == nil, let dir else { throw AirPhoneError("nothing to launch (send \"open\", \"terminate\")") }
        try await start(in: dir)
        log("launched the app again")
    }

    /// Opens the store in `dir` (made if new) and starts sync over a new radio with `radioOptions`.
    private func start(in dir: String) async throws {
        let name = phone.name
        let options = radioOptions
        let radio = phone.make { CoreBluetoothRadio(options: options) }
        let store = try await Store.open(
            path: "\(dir)/\(name).db",
            deviceName: name,
            appSecret: airSecret,
            sync: SyncConfig(listen: nil, mdns: false, peers: [])
        )
        do {
            try store.setBluetooth(radio: radio)
            try await store.startSync()
        } catch {
            store.shutdown()
            throw error
        }
        self.store = store
        self.radio = radio
    }

    /// The bytes of the attachment in field "blob" of document `doc` of "files", base64, if they are here; else
    /// nil, and their download is asked for (once: again only after an earlier download ended without them).
    private func attachment(_ doc: String) async throws -> String? {
        let store = try openStore()
        guard let token = try await store.collection(name: "files").attachment(id: doc, path: "blob") else {
            return nil
        }
        if try await store.hasAttachment(token: token) {
            let bytes = try await store.attachmentBytes(token: token).base64EncodedString()
            // The air closes a connection that sends a line over 256 KiB.
            guard bytes.utf8.count < 250_000 else {
                throw AirPhoneError("the attachment (\(token.length) bytes) is too large for one line of the air")
            }
            return bytes
        }
        let hash = token.hash
        let ask = fetching.mutate { $0.insert(hash).inserted }
        if ask {
            let fetching = self.fetching
            let verbose = self.verbose
            Task.detached {
                do {
                    try await store.fetchAttachment(token)
                } catch where verbose {
                    FileHandle.standardError.write(Data("[air-phone] fetching \(hash.prefix(12)): \(error)\n".utf8))
                } catch {}
                fetching.mutate { _ = $0.remove(hash) }
            }
        }
        return nil
    }

    /// Stops sync and closes the store, if one is open, and removes its directory.
    func closeStore() async {
        if let store {
            self.store = nil
            do {
                try await store.stopSync()
            } catch {
                log("stopping sync: \(error)")
            }
            store.shutdown()
        }
        guard dir != nil else { return }
        radio = nil
        if let dir { removeTempDir(dir) }
        dir = nil
        log("closed the store")
    }
}

private struct AirPhoneError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
