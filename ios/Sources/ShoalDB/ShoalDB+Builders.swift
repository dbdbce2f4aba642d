// Builders for edits and atomic writes, and FieldValue and QueryValue (query parameters) from Swift values.

import Foundation

// MARK: - FieldValue from Swift values

extension FieldValue {
    /// A string register.
    public init(_ value: String) { self = .string(value: value) }
    /// An integer register.
    public init(_ value: Int) { self = .int(value: Int64(value)) }
    /// An integer register.
    public init(_ value: Int64) { self = .int(value: value) }
    /// A double register (NaN and infinities are refused when written).
    public init(_ value: Double) { self = .double(value: value) }
    /// A boolean register.
    public init(_ value: Bool) { self = .bool(value: value) }
    /// A bytes register (stored inline: use an attachment for anything large).
    public init(_ value: Data) { self = .bytes(value: value) }
    /// A reference to an attachment.
    public init(_ token: AttachmentToken) { self = .attachment(token: token) }

    /// A register holding `value` as one atomic JSON value (a JSON object or array is replaced as a whole).
    public static func json<T: Encodable>(_ value: T, encoder: JSONEncoder = .shoal()) throws -> FieldValue {
        .json(json: try encodeJSON(value, encoder))
    }

    /// A map built from `value`, which must encode to a JSON object: nested objects become nested maps, other
    /// values registers, so concurrent edits of different fields merge.
    public static func map<T: Encodable>(_ value: T, encoder: JSONEncoder = .shoal()) throws -> FieldValue {
        .map(json: try encodeJSON(value, encoder))
    }

    /// A replicated array built from `items`: object elements become maps, other elements registers.
    public static func array<T: Encodable>(_ items: [T], encoder: JSONEncoder = .shoal()) throws -> FieldValue {
        .array(json: try encodeJSON(items, encoder))
    }
}

/// `"text"` is `FieldValue.string`.
extension FieldValue: ExpressibleByStringLiteral {
    /// A string register.
    public init(stringLiteral value: String) { self = .string(value: value) }
}

/// `42` is `FieldValue.int`.
extension FieldValue: ExpressibleByIntegerLiteral {
    /// An integer register.
    public init(integerLiteral value: Int64) { self = .int(value: value) }
}

/// `1.5` is `FieldValue.double`.
extension FieldValue: ExpressibleByFloatLiteral {
    /// A double register.
    public init(floatLiteral value: Double) { self = .double(value: value) }
}

/// `true` is `FieldValue.bool`.
extension FieldValue: ExpressibleByBooleanLiteral {
    /// A boolean register.
    public init(booleanLiteral value: Bool) { self = .bool(value: value) }
}

/// `nil` is `FieldValue.null`.
extension FieldValue: ExpressibleByNilLiteral {
    /// JSON `null`.
    public init(nilLiteral: ()) { self = .null }
}

// MARK: - Query parameters

extension QueryValue {
    /// A string.
    public init(_ value: String) { self = .string(value: value) }
    /// An integer.
    public init(_ value: Int) { self = .int(value: Int64(value)) }
    /// An integer.
    public init(_ value: Int64) { self = .int(value: value) }
    /// A double (NaN and infinities are refused when the query runs).
    public init(_ value: Double) { self = .double(value: value) }
    /// A boolean.
    public init(_ value: Bool) { self = .bool(value: value) }
    /// A list, for `field in $names` or equality with an array field.
    public init(_ items: [QueryValue]) { self = .array(items: items) }
    /// A list of strings, e.g. `QueryValue(selectedTags)` for `tag in $tags`.
    public init(_ items: [String]) { self = .array(items: items.map { .string(value: $0) }) }
    /// A list of integers.
    public init(_ items: [Int]) { self = .array(items: items.map { .int(value: Int64($0)) }) }
}

/// `"text"` is `QueryValue.string`: `Query(filter: "title == $t", params: ["t": "milk"])`.
extension QueryValue: ExpressibleByStringLiteral {
    /// A string.
    public init(stringLiteral value: String) { self = .string(value: value) }
}

/// `42` is `QueryValue.int`.
extension QueryValue: ExpressibleByIntegerLiteral {
    /// An integer.
    public init(integerLiteral value: Int64) { self = .int(value: value) }
}

/// `1.5` is `QueryValue.double`.
extension QueryValue: ExpressibleByFloatLiteral {
    /// A double.
    public init(floatLiteral value: Double) { self = .double(value: value) }
}

/// `true` is `QueryValue.bool`.
extension QueryValue: ExpressibleByBooleanLiteral {
    /// A boolean.
    public init(booleanLiteral value: Bool) { self = .bool(value: value) }
}

/// `["a", "b"]` is `QueryValue.list`: `Query(filter: "tag in $tags", params: ["tags": ["a", "b"]])`.
extension QueryValue: ExpressibleByArrayLiteral {
    /// A list.
    public init(arrayLiteral items: QueryValue...) { self = .array(items: items) }
}

/// `nil` is `QueryValue.null` (which matches a missing field too).
extension QueryValue: ExpressibleByNilLiteral {
    /// JSON `null`.
    public init(nilLiteral: ()) { self = .null }
}

// MARK: - Edits

/// Collects the edits of one document, for `Collection.update(_:_:)` and `WriteBatch.update(_:in:_:)`.
/// Paths name fields with dots and array positions with brackets: `address.city`, `items[2].done`.
public final class DocumentEditor {
    /// The edits collected so far, in order.
    public private(set) var edits: [Edit] = []

    /// An empty editor.
    public init() {}

    /// Set the field at `path` (creating the maps on the way).
    public func set(_ path: String, _ value: FieldValue) { edits.append(.set(path: path, value: value)) }

    /// Merge a map value into the map at `path` field by field (other fields are kept); any other value is set.
    public func merge(_ path: String, _ value: FieldValue) { edits.append(.merge(path: path, value: value)) }

    /// Remove the field (or array element) at `path`.
    public func remove(_ path: String) { edits.append(.remove(path: path)) }

    /// Add `by` (may be negative) to the counter at `path`, creating it if absent.
    public func increment(_ path: String, by: Int64 = 1) { edits.append(.increment(path: path, by: by)) }

    /// Insert `text` into the collaborative text at `path` before character `index` (Unicode scalars).
    public func insertText(_ path: String, at index: UInt64, _ text: String) {
        edits.append(.textInsert(path: path, index: index, text: text))
    }

    /// Delete `length` characters of the text at `path` from `index`.
    public func deleteText(_ path: String, at index: UInt64, length: UInt64) {
        edits.append(.textDelete(path: path, index: index, length: length))
    }

    /// Replace `length` characters of the text at `path` from `index` with `text`.
    public func spliceText(_ path: String, at index: UInt64, length: UInt64, with text: String) {
        edits.append(.textSplice(path: path, index: index, length: length, text: text))
    }

    /// Append `items` to the array at `path`.
    public func push(_ path: String, _ items: FieldValue...) { edits.append(.arrayPush(path: path, items: items)) }

    /// Insert `items` into the array at `path` before position `index`.
    public func insert(_ path: String, at index: UInt64, _ items: FieldValue...) {
        edits.append(.arrayInsert(path: path, index: index, items: items))
    }

    /// Delete `length` elements of the array at `path` from `index`.
    public func delete(_ path: String, at index: UInt64, length: UInt64 = 1) {
        edits.append(.arrayDelete(path: path, index: index, length: length))
    }

    /// Append an edit made by hand.
    public func add(_ edit: Edit) { edits.append(edit) }
}

extension Collection {
    #if compiler(>=6)
    /// Apply the edits `build` makes to document `id`, in one transaction: all of them or none. `build` runs first,
    /// on the caller's actor; the write runs on Shoal's threads, cancelled with the calling task
    /// (`CancellationError`: nothing was written).
    ///
    /// ```swift
    /// try await tasks.update("t1") { doc in
    ///     doc.set("done", true)
    ///     doc.increment("views")
    /// }
    /// ```
    ///
    /// - Throws: `ShoalError.NotFound` if the document does not exist, `ShoalError.InvalidArgument` for an edit
    ///   that does not fit (a bad path, `increment` on text…), or whatever `build` throws (then nothing is
    ///   written).
    public func update(
        _ id: String,
        isolation: isolated (any Actor)? = #isolation,
        _ build: (DocumentEditor) throws -> Void
    ) async throws {
        let editor = DocumentEditor()
        try build(editor)
        try await update(id: id, edits: editor.edits)
    }
    #else
    /// Apply the edits `build` makes to document `id`, in one transaction: all of them or none.
    ///
    /// - Throws: `ShoalError.NotFound` if the document does not exist, `ShoalError.InvalidArgument` for an edit
    ///   that does not fit, or whatever `build` throws (then nothing is written).
    public func update(_ id: String, _ build: (DocumentEditor) throws -> Void) async throws {
        let editor = DocumentEditor()
        try build(editor)
        try await update(id: id, edits: editor.edits)
    }
    #endif

    /// Like `update(_:_:)`, on the calling thread (blocking it until done): for background threads only.
    public func updateBlocking(_ id: String, _ build: (DocumentEditor) throws -> Void) throws {
        let editor = DocumentEditor()
        try build(editor)
        try updateBlocking(id: id, edits: editor.edits)
    }
}

// MARK: - Atomic writes

/// Collects the operations of one atomic write, for `Store.write(_:)`.
public final class WriteBatch {
    /// The operations collected so far, in order.
    public private(set) var ops: [WriteOp] = []

    /// An empty batch.
    public init() {}

    /// Insert a JSON object into `collection`, or merge it into the document named by its `_id`.
    public func upsert(json: String, into collection: String) { ops.append(.upsert(collection: collection, json: json)) }

    /// Insert `value` (which must encode to a JSON object) into `collection`, or merge it into the document
    /// named by its `_id`.
    public func upsert<T: Encodable>(_ value: T, into collection: String, encoder: JSONEncoder = .shoal()) throws {
        ops.append(.upsert(collection: collection, json: try encodeJSON(value, encoder)))
    }

    /// Insert or merge typed fields into document `id` of `collection` (`nil`: a generated id).
    public func put(_ fields: [String: FieldValue], id: String? = nil, into collection: String) {
        ops.append(.put(collection: collection, id: id, fields: fields))
    }

    /// Apply the edits `build` makes to document `id` of `collection`.
    public func update(_ id: String, in collection: String, _ build: (DocumentEditor) throws -> Void) rethrows {
        let editor = DocumentEditor()
        try build(editor)
        ops.append(.update(collection: collection, id: id, edits: editor.edits))
    }

    /// Apply `edits` to document `id` of `collection`.
    public func update(_ id: String, in collection: String, edits: [Edit]) {
        ops.append(.update(collection: collection, id: id, edits: edits))
    }

    /// Remove document `id` from `collection`.
    public func remove(_ id: String, from collection: String) { ops.append(.remove(collection: collection, id: id)) }
}

extension Store {
    #if compiler(>=6)
    /// Apply the operations `build` adds, atomically: all commit together or none does. The write runs on
    /// Shoal's threads; `build` runs first, on the caller's actor.
    ///
    /// ```swift
    /// try await store.write { batch in
    ///     try batch.upsert(Task(id: "t1", title: "Milk"), into: "tasks")
    ///     batch.update("list", in: "lists") { $0.increment("count") }
    /// }
    /// ```
    ///
    /// - Returns: The id of each operation's document, in order.
    /// - Throws: What `build` throws (nothing is written), or the `ShoalError` of the first operation that fails
    ///   (nothing is written either).
    @discardableResult
    public func write(
        isolation: isolated (any Actor)? = #isolation,
        _ build: (WriteBatch) throws -> Void
    ) async throws -> [String] {
        let batch = WriteBatch()
        try build(batch)
        return try await write(ops: batch.ops)
    }
    #else
    /// Apply the operations `build` adds, atomically: all commit together or none does.
    ///
    /// - Returns: The id of each operation's document, in order.
    /// - Throws: What `build` throws (nothing is written), or the `ShoalError` of the first operation that fails
    ///   (nothing is written either).
    @discardableResult
    public func write(_ build: (WriteBatch) throws -> Void) async throws -> [String] {
        let batch = WriteBatch()
        try build(batch)
        return try await write(ops: batch.ops)
    }
    #endif
}
