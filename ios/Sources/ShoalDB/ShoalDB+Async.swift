// The Swift layer over the generated bindings: observers as AsyncSequences, attachment fetches with a progress
// closure, and opening a store. Compiled into module ShoalDB together with the generated ShoalDB.swift.

import Foundation

// MARK: - Observing queries

extension Collection {
    /// The changes to the result of `query`, as an `AsyncSequence`.
    ///
    /// The first event is the current result (every document in `inserted` and `results`); then one event
    /// arrives per committed transaction — local or from another device — that changes the result. Events are
    /// buffered without limit, so none is lost while the consumer is busy (each carries the whole result in
    /// `results` too). The query first runs on Shoal's threads, never on the caller's. `documents(_:)` gives just
    /// the latest result instead.
    ///
    /// Observing stops when the stream terminates: when the iterating task is cancelled, the loop is left
    /// (`break`), or the stream is dropped.
    ///
    /// ```swift
    /// for try await event in tasks.changes(Query(filter: "done == false")) {
    ///     render(event.results)
    /// }
    /// ```
    ///
    /// A malformed query (`ShoalError.InvalidArgument`) or a closed store (`ShoalError.Closed`) ends the stream
    /// with that error.
    public func changes(_ query: Query = Query()) -> AsyncThrowingStream<ChangeEvent, Error> {
        observation(of: query, buffering: .unbounded) { $0 }
    }

    /// The documents matching `query` (JSON objects, in its order), as an `AsyncSequence` of whole results: the
    /// current result first, then the new one after each committed transaction — local or from another device —
    /// that changes it. Only the latest result waits while the consumer is busy, so a slow consumer skips to it.
    /// The query first runs on Shoal's threads, never on the caller's.
    ///
    /// Observing stops when the stream terminates: when the iterating task is cancelled, the loop is left
    /// (`break`), or the stream is dropped. A malformed query (`ShoalError.InvalidArgument`) or a closed store
    /// (`ShoalError.Closed`) ends the stream with that error.
    public func documents(_ query: Query = Query()) -> AsyncThrowingStream<[String], Error> {
        observation(of: query, buffering: .bufferingNewest(1)) { $0.results }
    }

    /// The documents matching `query`, in its order, decoded as `T`s, as an `AsyncSequence` of whole results: the
    /// current result first, then the new one after each committed transaction — local or from another device —
    /// that changes it. Only the latest result waits while the consumer is busy, so a slow consumer skips to it.
    /// Decoding runs on Shoal's threads, never on the caller's.
    ///
    /// ```swift
    /// for try await open in tasks.documents(Todo.self, Query(filter: "done == false")) {
    ///     self.open = open        // e.g. in a @MainActor model feeding a view
    /// }
    /// ```
    ///
    /// Observing stops when the stream terminates: when the iterating task is cancelled, the loop is left
    /// (`break`), or the stream is dropped. A malformed query (`ShoalError.InvalidArgument`), a closed store
    /// (`ShoalError.Closed`) or a document that does not fit `T` (`DecodingError`) ends the stream with that
    /// error.
    public func documents<T: Decodable>(
        _ type: T.Type,
        _ query: Query = Query(),
        decoder: JSONDecoder = .shoal()
    ) -> AsyncThrowingStream<[T], Error> {
        observation(of: query, buffering: .bufferingNewest(1)) { try $0.results(as: type, decoder: decoder) }
    }

    /// A stream of `element(event)` for each event of an observer of `query`, registered (through the async
    /// `observe`) by a task of its own, so the first query never runs on the caller's thread. An error — of the
    /// registration or thrown by `element` — ends the stream with it. The observer is cancelled when the stream
    /// terminates, also when that happens before the registration returns.
    private func observation<Element>(
        of query: Query,
        buffering: AsyncThrowingStream<Element, Error>.Continuation.BufferingPolicy,
        _ element: @escaping (ChangeEvent) throws -> Element
    ) -> AsyncThrowingStream<Element, Error> {
        AsyncThrowingStream(bufferingPolicy: buffering) { sink in
            let forwarder = ChangeForwarder(sink, element)
            let lifetime = ObservationLifetime()
            sink.onTermination = { _ in lifetime.end() }
            lifetime.registering(Task {
                do {
                    lifetime.registered(try await self.observe(query: query, observer: forwarder))
                } catch {
                    forwarder.finish(throwing: error)
                }
            })
        }
    }
}

/// Forwards a collection observer's events into a stream, as `element` makes them; an error `element` throws
/// ends the stream with it. Never throws back into Rust.
///
/// `@unchecked Sendable`: Rust calls `onChange` for one event at a time, `element` is only called there (it may
/// hold a `JSONDecoder`, which decoding only reads), and each element it makes is handed over to the stream and
/// never touched again here. The continuation itself is thread-safe.
private final class ChangeForwarder<Element>: CollectionObserver, @unchecked Sendable {
    private let sink: AsyncThrowingStream<Element, Error>.Continuation
    private let element: (ChangeEvent) throws -> Element

    init(
        _ sink: AsyncThrowingStream<Element, Error>.Continuation,
        _ element: @escaping (ChangeEvent) throws -> Element
    ) {
        self.sink = sink
        self.element = element
    }

    func onChange(event: ChangeEvent) {
        do {
            sink.yield(try element(event))
        } catch {
            sink.finish(throwing: error)
        }
    }

    /// Ends the stream with `error` (nothing happens if it has ended already).
    func finish(throwing error: Error) {
        sink.finish(throwing: error)
    }
}

/// One observation feeding a stream: the task registering the observer, then its handle. Whichever comes last —
/// the registration or the stream's end — cancels the handle, so nothing keeps observing for a stream that is gone.
private final class ObservationLifetime: @unchecked Sendable {
    private let lock = NSLock()
    private var registration: Task<Void, Never>?
    private var handle: ObserverHandle?
    private var ended = false

    /// The task registering the observer: cancelled (which cancels the registration) if the stream ends first.
    func registering(_ task: Task<Void, Never>) {
        lock.lock()
        let keep = !ended
        if keep { registration = task }
        lock.unlock()
        if !keep { task.cancel() }
    }

    /// The observer's handle, once registered: cancelled at once if the stream has ended meanwhile.
    func registered(_ handle: ObserverHandle) {
        lock.lock()
        let keep = !ended
        if keep { self.handle = handle; registration = nil }
        lock.unlock()
        if !keep { handle.cancel() }
    }

    /// The stream ended: stop registering, or stop observing.
    func end() {
        lock.lock()
        ended = true
        let (task, handle) = (registration, self.handle)
        registration = nil
        self.handle = nil
        lock.unlock()
        task?.cancel()
        handle?.cancel()
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
    /// Open (or create) the store at `path`, on Shoal's threads (opening reads the file and the key vault, and may
    /// migrate the schema). Sync does not start until `startSync()`.
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
    ) async throws -> Store {
        try await open(config: StoreConfig(path: path, deviceName: deviceName, appSecret: appSecret, sync: sync,
                                           keyVault: keyVault))
    }

    /// Like `open(path:deviceName:appSecret:sync:keyVault:)`, on the calling thread (blocking it until the store
    /// is open): for background threads only.
    public static func openBlocking(
        path: String,
        deviceName: String,
        appSecret: String? = nil,
        sync: SyncConfig = SyncConfig(),
        keyVault: KeyVault? = nil
    ) throws -> Store {
        try openBlocking(config: StoreConfig(path: path, deviceName: deviceName, appSecret: appSecret, sync: sync,
                                             keyVault: keyVault))
    }
}
