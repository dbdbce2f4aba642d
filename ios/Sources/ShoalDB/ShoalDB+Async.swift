// The Swift layer over the generated bindings: observers as AsyncSequences, and attachment fetches with a
// progress closure. Compiled into module ShoalDB together with the generated ShoalDB.swift.

import Foundation

// MARK: - Observing queries

extension Collection {
    /// The changes to the result of `query`, as an `AsyncSequence`.
    ///
    /// The first event is the current result (every document in `inserted` and `results`); then one event
    /// arrives per committed transaction — local or from another device — that changes the result. Events are
    /// buffered without limit, so none is lost while the consumer is busy (each carries the whole result in
    /// `results` too).
    ///
    /// Observing stops when the stream terminates: when the iterating task is cancelled, the loop is left
    /// (`break`), or the stream is dropped.
    ///
    /// ```swift
    /// for await event in try tasks.changes(Query(filter: "done == false")) {
    ///     render(event.results)
    /// }
    /// ```
    ///
    /// - Throws: `ShoalError.InvalidArgument` for a malformed query, `ShoalError.Closed` after `shutdown()`.
    public func changes(_ query: Query = Query()) throws -> AsyncStream<ChangeEvent> {
        var continuation: AsyncStream<ChangeEvent>.Continuation!
        let stream = AsyncStream<ChangeEvent>(bufferingPolicy: .unbounded) { continuation = $0 }
        let sink: AsyncStream<ChangeEvent>.Continuation = continuation
        do {
            // `observe` delivers the current result before it returns: the stream buffers it.
            let handle = try observe(query: query, observer: ChangeForwarder(sink))
            sink.onTermination = { _ in handle.cancel() }
        } catch {
            sink.finish()
            throw error
        }
        return stream
    }
}

/// Forwards a collection observer's events into a stream. Never throws back into Rust.
private final class ChangeForwarder: CollectionObserver {
    private let sink: AsyncStream<ChangeEvent>.Continuation

    init(_ sink: AsyncStream<ChangeEvent>.Continuation) {
        self.sink = sink
    }

    func onChange(event: ChangeEvent) {
        sink.yield(event)
    }
}

// MARK: - Presence

extension Store {
    /// The devices this device can reach, as an `AsyncSequence`: the current list first, then the new list
    /// whenever a device appears, disappears or changes route. Only the newest list is kept while the consumer
    /// is busy. The list is empty while sync is stopped.
    ///
    /// Observing stops when the stream terminates (the iterating task is cancelled, the loop is left or the
    /// stream is dropped).
    ///
    /// - Throws: `ShoalError.Closed` after `shutdown()`.
    public func presence() throws -> AsyncStream<[Peer]> {
        var continuation: AsyncStream<[Peer]>.Continuation!
        let stream = AsyncStream<[Peer]>(bufferingPolicy: .bufferingNewest(1)) { continuation = $0 }
        let sink: AsyncStream<[Peer]>.Continuation = continuation
        do {
            let handle = try observePresence(observer: PresenceForwarder(sink))
            sink.onTermination = { _ in handle.cancel() }
        } catch {
            sink.finish()
            throw error
        }
        return stream
    }
}

/// Forwards presence lists into a stream. Never throws back into Rust.
private final class PresenceForwarder: PresenceObserver {
    private let sink: AsyncStream<[Peer]>.Continuation

    init(_ sink: AsyncStream<[Peer]>.Continuation) {
        self.sink = sink
    }

    func onPresence(peers: [Peer]) {
        sink.yield(peers)
    }
}

// MARK: - Attachments

extension Store {
    /// Fetch the attachment's bytes from the devices in reach (directly or through others), calling `progress`
    /// with `(done, total)` bytes as they arrive. Returns at once (after one `progress(total, total)`) if the
    /// bytes are already here.
    ///
    /// `progress` runs on one of Shoal's threads: keep it quick, and hop to the main actor yourself to update UI.
    ///
    /// - Throws: `ShoalError.Sync` when sync is not running, `ShoalError.AttachmentUnavailable` when no
    ///   reachable device has the bytes.
    public func fetchAttachment(
        _ token: AttachmentToken,
        progress: @escaping @Sendable (_ done: UInt64, _ total: UInt64) -> Void
    ) async throws {
        try await fetchAttachment(token: token, progress: ProgressForwarder(progress))
    }

    /// Fetch the attachment's bytes from the devices in reach; returns at once if they are already here.
    ///
    /// - Throws: `ShoalError.Sync` when sync is not running, `ShoalError.AttachmentUnavailable` when no
    ///   reachable device has the bytes.
    public func fetchAttachment(_ token: AttachmentToken) async throws {
        try await fetchAttachment(token: token, progress: nil)
    }
}

/// Calls a closure with attachment progress. Never throws back into Rust.
private final class ProgressForwarder: AttachmentProgress {
    private let report: @Sendable (UInt64, UInt64) -> Void

    init(_ report: @escaping @Sendable (UInt64, UInt64) -> Void) {
        self.report = report
    }

    func onProgress(done: UInt64, total: UInt64) {
        report(done, total)
    }
}

// MARK: - Opening

extension Store {
    /// Open (or create) the store at `path`. Sync does not start until `startSync()`.
    ///
    /// - Parameters:
    ///   - path: The database file, e.g. in Application Support.
    ///   - deviceName: This device's name as the other devices see it.
    ///   - appSecret: **Development mode**: a secret every device of the app shares; only devices holding it
    ///     sync with each other, and each is trusted with everything. Used only while no certificate is
    ///     installed (`installCertificate`, see `Authority`): an enrolled device syncs with its certificate
    ///     instead. `nil` (the default): certificates only (`startSync()` throws `ShoalError.Certificate` until
    ///     one is installed).
    ///   - sync: How this device finds and connects to the others.
    ///   - keyVault: Where this device's private keys (its Noise and signing keys) are kept; the database never
    ///     holds them. On iOS pass a `KeychainVault` (Keychain items that stay on this device and out of
    ///     backups). `nil` (the default): files in the directory `<path>-keys` beside the database, readable by
    ///     the app only — fine for tests and desktops; on a phone that directory would have to be kept out of
    ///     backups.
    /// - Throws: `ShoalError.InvalidArgument` for a bad configuration, `ShoalError.Storage` when the file
    ///   cannot be opened or `keyVault` throws (the message carries its reason).
    public static func open(
        path: String,
        deviceName: String,
        appSecret: String? = nil,
        sync: SyncConfig = SyncConfig(),
        keyVault: KeyVault? = nil
    ) throws -> Store {
        try open(config: StoreConfig(path: path, deviceName: deviceName, appSecret: appSecret, sync: sync,
                                     keyVault: keyVault))
    }
}
