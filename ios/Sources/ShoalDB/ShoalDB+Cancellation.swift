// Task cancellation for every async call: the same calls as the generated ones, minus their `cancel:` argument.
//
// Swift's generated code awaits a Rust future to its end, so cancelling the calling `Task` alone would not stop
// the work in Rust. Each call here passes a `Cancellation` tied to the calling task instead: cancelling the task
// stops the work in Rust at its next check, and the call then throws `CancellationError` (as Swift's own async APIs
// do). What had not begun does not begin; a batch `write(ops:)` stops between two operations and commits none of
// them; a file being stored stops and stores nothing; a fetch stops asking for bytes (at once). A write already
// committing finishes and returns its result, and so does a read already running: `CancellationError` always means
// that nothing was written. The generated calls taking `cancel:` stay available, for one token shared by several
// calls or cancelled from elsewhere.

import Foundation

/// Runs `call` with a `Cancellation` that the calling task cancels when it is cancelled (at once if it already
/// is), turning the call's `ShoalError.Cancelled` into `CancellationError`.
func withTaskCancellation<T>(_ call: (Cancellation) async throws -> T) async throws -> T {
    let token = Cancellation()
    do {
        return try await withTaskCancellationHandler {
            try await call(token)
        } onCancel: {
            token.cancel()
        }
    } catch ShoalError.Cancelled {
        throw CancellationError()
    }
}

// MARK: - Collection

extension Collection {
    /// Every document (JSON objects), by id. Cancelled with the calling task (`CancellationError`).
    public func all() async throws -> [String] {
        try await withTaskCancellation { try await all(cancel: $0) }
    }

    /// The attachment token in the field at `path` of document `id`, or `nil` when that field holds none.
    /// Cancelled with the calling task (`CancellationError`).
    public func attachment(id: String, path: String) async throws -> AttachmentToken? {
        try await withTaskCancellation { try await attachment(id: id, path: path, cancel: $0) }
    }

    /// The values concurrent writers left in the register at `path` of document `id` besides the one shown
    /// (JSON; empty when there was no conflict). Cancelled with the calling task (`CancellationError`).
    public func conflicts(id: String, path: String) async throws -> [String] {
        try await withTaskCancellation { try await conflicts(id: id, path: path, cancel: $0) }
    }

    /// Declare an index on the fields `paths` (most significant first, e.g. `["status", "due"]`), for queries that
    /// filter on them, sort by them, or both with a limit. Kept up to date on this device only; declaring it again
    /// does nothing. Takes time in proportion to the collection's size; cancelling the calling task cancels it
    /// (`CancellationError`).
    ///
    /// - Returns: Whether the index is new.
    @discardableResult
    public func createIndex(paths: [String]) async throws -> Bool {
        try await withTaskCancellation { try await createIndex(paths: paths, cancel: $0) }
    }

    /// Drop a document from this device only (nothing replicates) until `unevict`. Cancelled with the calling task
    /// (`CancellationError`).
    ///
    /// - Returns: Whether it was here.
    @discardableResult
    public func evict(id: String) async throws -> Bool {
        try await withTaskCancellation { try await evict(id: id, cancel: $0) }
    }

    /// Accept a document evicted earlier again: sync brings its changes back. Cancelled with the calling task
    /// (`CancellationError`).
    public func unevict(id: String) async throws {
        try await withTaskCancellation { try await unevict(id: id, cancel: $0) }
    }

    /// Remove this collection's documents once not modified for `ttlMs` milliseconds, at each `Store.expire`;
    /// `nil` stops it. Cancelled with the calling task (`CancellationError`).
    public func setTimeToLive(ttlMs: UInt64?) async throws {
        try await withTaskCancellation { try await setTimeToLive(ttlMs: ttlMs, cancel: $0) }
    }

    /// This collection's time to live (ms), if it has one. Cancelled with the calling task (`CancellationError`).
    public func timeToLive() async throws -> UInt64? {
        try await withTaskCancellation { try await timeToLive(cancel: $0) }
    }

    /// Drop the index on `paths` (as declared). Cancelled with the calling task (`CancellationError`).
    ///
    /// - Returns: Whether there was one.
    @discardableResult
    public func dropIndex(paths: [String]) async throws -> Bool {
        try await withTaskCancellation { try await dropIndex(paths: paths, cancel: $0) }
    }

    /// How `find` runs `query`: the indexes it uses, whether SQL does the filter and the sort, SQLite's plan.
    /// Cancelled with the calling task (`CancellationError`).
    public func explain(query: Query) async throws -> QueryPlan {
        try await withTaskCancellation { try await explain(query: query, cancel: $0) }
    }

    /// The documents matching `query` (JSON objects), in its order. Cancelled with the calling task
    /// (`CancellationError`).
    ///
    /// - Throws: `ShoalError.InvalidArgument` for a malformed query or a missing parameter.
    public func find(query: Query) async throws -> [String] {
        try await withTaskCancellation { try await find(query: query, cancel: $0) }
    }

    /// Document `id` as a JSON object, or `nil` when there is no such document. Cancelled with the calling task
    /// (`CancellationError`).
    public func get(id: String) async throws -> String? {
        try await withTaskCancellation { try await get(id: id, cancel: $0) }
    }

    /// One field of document `id` (`path` like `address.city` or `items[0]`) as JSON, or `nil`. Cancelled with the
    /// calling task (`CancellationError`).
    public func getField(id: String, path: String) async throws -> String? {
        try await withTaskCancellation { try await getField(id: id, path: path, cancel: $0) }
    }

    /// The indexes declared on this collection. Cancelled with the calling task (`CancellationError`).
    public func indexes() async throws -> [CollectionIndex] {
        try await withTaskCancellation { try await indexes(cancel: $0) }
    }

    /// Observe `query`: `observer` gets the current result first (one event with every document inserted),
    /// before this returns, then one event per committed transaction — local or from another device — that changes
    /// the result, on one of the store's threads, until the handle is cancelled. Cancelling the calling task
    /// before this returns leaves nothing observing (`CancellationError`). `changes(_:)` and `documents(_:)` wrap
    /// this in streams.
    public func observe(query: Query, observer: CollectionObserver) async throws -> ObserverHandle {
        try await withTaskCancellation { try await observe(query: query, observer: observer, cancel: $0) }
    }

    /// Insert or merge typed fields (choosing each field's CRDT) into document `id` (`nil`: a generated,
    /// time-sortable id). Cancelled with the calling task (`CancellationError`): nothing was written.
    ///
    /// - Returns: The document's id.
    @discardableResult
    public func put(id: String?, fields: [String: FieldValue]) async throws -> String {
        try await withTaskCancellation { try await put(id: id, fields: fields, cancel: $0) }
    }

    /// Remove document `id` (a delete that replicates). Cancelled with the calling task (`CancellationError`):
    /// nothing was removed.
    ///
    /// - Returns: Whether it existed.
    @discardableResult
    public func remove(id: String) async throws -> Bool {
        try await withTaskCancellation { try await remove(id: id, cancel: $0) }
    }

    /// Apply `edits` to document `id` in one transaction: all of them or none. Cancelled with the calling task
    /// (`CancellationError`): nothing was written. `update(_:_:)` builds the edits.
    ///
    /// - Throws: `ShoalError.NotFound` if the document does not exist, `ShoalError.InvalidArgument` for an edit
    ///   that does not fit (a bad path, `increment` on text…).
    public func update(id: String, edits: [Edit]) async throws {
        try await withTaskCancellation { try await update(id: id, edits: edits, cancel: $0) }
    }

    /// Insert a JSON object, or merge it into the document named by its `_id` (other fields are kept). Objects
    /// become nested maps merged field by field; every other value is a last-writer-wins register. Cancelled with
    /// the calling task (`CancellationError`): nothing was written.
    ///
    /// - Returns: The document's id (generated, time-sortable, when there is no `_id`).
    /// - Throws: `ShoalError.InvalidArgument` for malformed JSON or JSON that is not an object.
    @discardableResult
    public func upsert(json: String) async throws -> String {
        try await withTaskCancellation { try await upsert(json: json, cancel: $0) }
    }

    /// Write a whole JSON object back as document `_id`, writing only the fields that differ from the stored
    /// document: a field equal to the stored one is not written, so writing back a value read earlier cannot undo
    /// a concurrent edit of another field made on another device. Objects over maps are compared field by field;
    /// fields the object lacks are kept; inserts like `upsert(json:)` when there is no such document. Cancelled
    /// with the calling task (`CancellationError`): nothing was written.
    ///
    /// - Returns: The document's id.
    @discardableResult
    public func upsertChanged(json: String) async throws -> String {
        try await withTaskCancellation { try await upsertChanged(json: json, cancel: $0) }
    }
}

// MARK: - Store

extension Store {
    /// The attachment's bytes, if they are on this device. Cancelled with the calling task (`CancellationError`).
    ///
    /// - Throws: `ShoalError.NotFound` when they are not here (fetch them first: `fetchAttachment`).
    public func attachmentBytes(token: AttachmentToken) async throws -> Data {
        try await withTaskCancellation { try await attachmentBytes(token: token, cancel: $0) }
    }

    /// The names of the collections that have documents. Cancelled with the calling task (`CancellationError`).
    public func collections() async throws -> [String] {
        try await withTaskCancellation { try await collections(cancel: $0) }
    }

    /// Fetch the attachment's bytes from the devices in reach (directly or through others), reporting to
    /// `progress`; returns at once if they are already here. Cancelling the calling task stops asking for the
    /// bytes (`CancellationError`); those received so far stay for a while, so fetching again resumes from them.
    /// `fetchAttachment(_:progress:)` takes a closure instead.
    ///
    /// - Throws: `ShoalError.Sync` when sync is not running, `ShoalError.AttachmentUnavailable` when no reachable
    ///   device has the bytes.
    public func fetchAttachment(token: AttachmentToken, progress: AttachmentProgress?) async throws {
        try await withTaskCancellation { try await fetchAttachment(token: token, progress: progress, cancel: $0) }
    }

    /// Whether the attachment's bytes are on this device. Cancelled with the calling task (`CancellationError`).
    public func hasAttachment(token: AttachmentToken) async throws -> Bool {
        try await withTaskCancellation { try await hasAttachment(token: token, cancel: $0) }
    }

    /// What this store's file holds, by kind (documents, change log, snapshots, attachments, free pages). Cancelled
    /// with the calling task (`CancellationError`).
    public func storageStats() async throws -> StorageStats {
        try await withTaskCancellation { try await storageStats(cancel: $0) }
    }

    /// Delete what nothing here needs any more, as `policy` says (attachments no document names, stalled
    /// downloads), then return free pages to the system. Cancelled with the calling task (`CancellationError`).
    public func collectGarbage(policy: GarbagePolicy) async throws -> GarbageReport {
        try await withTaskCancellation { try await collectGarbage(policy: policy, cancel: $0) }
    }

    /// Keep the store's file within `maxBytes`, evicting what was used least recently (attachments' bytes, documents
    /// outside this device's subscriptions); returns what was evicted and why. Cancelled with the calling task
    /// (`CancellationError`).
    public func fitBudget(maxBytes: UInt64) async throws -> BudgetReport {
        try await withTaskCancellation { try await fitBudget(maxBytes: maxBytes, cancel: $0) }
    }

    /// Remove the documents not modified for their collection's time to live (ordinary removals, which
    /// replicate), and return them. Cancelled with the calling task (`CancellationError`).
    public func expire() async throws -> [ExpiredDocument] {
        try await withTaskCancellation { try await expire(cancel: $0) }
    }

    /// Fold the changes `policy` selects into documents' saved states and drop them from the change log (devices
    /// that lack them get the states). Cancelled with the calling task (`CancellationError`).
    public func compact(policy: CompactionPolicy) async throws -> CompactionReport {
        try await withTaskCancellation { try await compact(policy: policy, cancel: $0) }
    }

    /// Sign the current state of the documents whose changes the last signed state lacks (a device with an
    /// `attest` grant), so that devices can fold their signed changes. Cancelled with the calling task
    /// (`CancellationError`).
    public func attest() async throws -> AttestReport {
        try await withTaskCancellation { try await attest(cancel: $0) }
    }

    /// Store `bytes` as an attachment (the same bytes are stored once) and return its token, to put in a field
    /// (`FieldValue(token)`). Cancelled with the calling task (`CancellationError`).
    public func putAttachment(bytes: Data, meta: [String: String]) async throws -> AttachmentToken {
        try await withTaskCancellation { try await putAttachment(bytes: bytes, meta: meta, cancel: $0) }
    }

    /// Store the file at `path` as an attachment, streaming it (any size), and return its token. Cancelling the
    /// calling task stops reading and stores nothing (`CancellationError`).
    public func putAttachmentFile(path: String, meta: [String: String]) async throws -> AttachmentToken {
        try await withTaskCancellation { try await putAttachmentFile(path: path, meta: meta, cancel: $0) }
    }

    /// Write the attachment's bytes (verified against its hash) to the file at `path`, replacing it. Cancelling
    /// the calling task leaves `path` as it was (`CancellationError`).
    public func saveAttachment(token: AttachmentToken, path: String) async throws {
        try await withTaskCancellation { try await saveAttachment(token: token, path: path, cancel: $0) }
    }

    /// Apply `ops` atomically: all commit together or none does. Cancelling the calling task stops the batch
    /// between two operations and commits none of them (`CancellationError`; a batch already committing commits
    /// whole). `write(_:)` builds the operations.
    ///
    /// - Returns: The id of each operation's document, in order.
    /// - Throws: The `ShoalError` of the first operation that fails (nothing is written).
    @discardableResult
    public func write(ops: [WriteOp]) async throws -> [String] {
        try await withTaskCancellation { try await write(ops: ops, cancel: $0) }
    }
}
