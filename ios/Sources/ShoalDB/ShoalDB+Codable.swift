// Codable documents: Swift values in and out of collections, as the JSON objects Shoal stores.

import Foundation

extension JSONEncoder {
    /// An encoder matching how Shoal renders values: `Data` as an array of byte values (the JSON form of a
    /// `FieldValue.bytes` register), keys sorted. Other strategies are Foundation's defaults.
    public static func shoal() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dataEncodingStrategy = .deferredToData
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }
}

extension JSONDecoder {
    /// A decoder matching how Shoal renders values: `Data` from an array of byte values (how a
    /// `FieldValue.bytes` register reads back). Other strategies are Foundation's defaults.
    public static func shoal() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dataDecodingStrategy = .deferredToData
        return decoder
    }
}

/// The JSON text of `value`.
func encodeJSON<T: Encodable>(_ value: T, _ encoder: JSONEncoder) throws -> String {
    String(decoding: try encoder.encode(value), as: UTF8.self)
}

/// `json` decoded as a `T`.
func decodeJSON<T: Decodable>(_ type: T.Type, _ json: String, _ decoder: JSONDecoder) throws -> T {
    try decoder.decode(type, from: Data(json.utf8))
}

extension Collection {
    #if compiler(>=6)
    /// Write `value` as its document: the document named by its `_id`, changing only the fields whose value differs
    /// from the stored one, or a new document. `value` must encode to a JSON object; name its id property `_id` in
    /// its `CodingKeys` (e.g. `case id = "_id"`). Nested objects become maps compared field by field; every other
    /// value is a last-writer-wins register.
    ///
    /// Writing back a value read earlier with one property changed writes that property only: a concurrent edit of
    /// another property on another device is not undone by the unchanged old value. A property that encodes to
    /// nothing (a `nil` optional, with `JSONEncoder`'s default) leaves the stored field as it is: remove a field
    /// with `update(_:_:)` (`$0.remove("note")`). The value is encoded on the caller's actor; the write runs on
    /// Shoal's threads, cancelled with the calling task (`CancellationError`: nothing was written).
    ///
    /// ```swift
    /// var todo = try await todos.get(Todo.self, id: "milk")!
    /// todo.title = "Buy oat milk"
    /// try await todos.upsert(todo)   // writes `title` only
    /// ```
    ///
    /// - Returns: The document's id (generated, time-sortable, when `value` has no `_id`).
    /// - Throws: `EncodingError`, or `ShoalError.InvalidArgument` when `value` is not a JSON object.
    @discardableResult
    public func upsert<T: Encodable>(
        _ value: T,
        encoder: JSONEncoder = .shoal(),
        isolation: isolated (any Actor)? = #isolation
    ) async throws -> String {
        try await upsertChanged(json: encodeJSON(value, encoder))
    }

    /// Document `id` decoded as a `T`, or `nil` when there is no such document. The read runs on Shoal's threads,
    /// cancelled with the calling task (`CancellationError`); decoding runs on the caller's actor.
    ///
    /// - Throws: `DecodingError` when the document does not fit `T`.
    public func get<T: Decodable>(
        _ type: T.Type,
        id: String,
        decoder: JSONDecoder = .shoal(),
        isolation: isolated (any Actor)? = #isolation
    ) async throws -> T? {
        guard let json = try await get(id: id) else { return nil }
        return try decodeJSON(type, json, decoder)
    }

    /// The documents matching `query`, in its order, decoded as `T`s. The query runs on Shoal's threads, cancelled
    /// with the calling task (`CancellationError`); decoding runs on the caller's actor.
    ///
    /// - Throws: `ShoalError.InvalidArgument` for a malformed query, `DecodingError` when a document does not
    ///   fit `T`.
    public func find<T: Decodable>(
        _ type: T.Type,
        _ query: Query = Query(),
        decoder: JSONDecoder = .shoal(),
        isolation: isolated (any Actor)? = #isolation
    ) async throws -> [T] {
        try await find(query: query).map { try decodeJSON(type, $0, decoder) }
    }
    #else
    /// Write `value` as its document, changing only the fields that differ from the stored ones (see
    /// `upsertChanged(json:)`); a new document when there is none.
    ///
    /// - Returns: The document's id.
    @discardableResult
    public func upsert<T: Encodable>(_ value: T, encoder: JSONEncoder = .shoal()) async throws -> String {
        try await upsertChanged(json: encodeJSON(value, encoder))
    }

    /// Document `id` decoded as a `T`, or `nil` when there is no such document.
    public func get<T: Decodable>(_ type: T.Type, id: String, decoder: JSONDecoder = .shoal()) async throws -> T? {
        guard let json = try await get(id: id) else { return nil }
        return try decodeJSON(type, json, decoder)
    }

    /// The documents matching `query`, in its order, decoded as `T`s.
    public func find<T: Decodable>(
        _ type: T.Type,
        _ query: Query = Query(),
        decoder: JSONDecoder = .shoal()
    ) async throws -> [T] {
        try await find(query: query).map { try decodeJSON(type, $0, decoder) }
    }
    #endif

    /// Like `upsert(_:encoder:)` (only the fields that differ are written), on the calling thread (blocking it
    /// until done): for background threads only.
    @discardableResult
    public func upsertBlocking<T: Encodable>(_ value: T, encoder: JSONEncoder = .shoal()) throws -> String {
        try upsertChangedBlocking(json: encodeJSON(value, encoder))
    }

    /// Like `get(_:id:decoder:)`, on the calling thread (blocking it until done): for background threads only.
    public func getBlocking<T: Decodable>(_ type: T.Type, id: String, decoder: JSONDecoder = .shoal()) throws -> T? {
        guard let json = try getBlocking(id: id) else { return nil }
        return try decodeJSON(type, json, decoder)
    }

    /// Like `find(_:_:decoder:)`, on the calling thread (blocking it until done): for background threads only.
    public func findBlocking<T: Decodable>(
        _ type: T.Type,
        _ query: Query = Query(),
        decoder: JSONDecoder = .shoal()
    ) throws -> [T] {
        try findBlocking(query: query).map { try decodeJSON(type, $0, decoder) }
    }
}

extension ChangeEvent {
    /// The whole result (`results`) decoded as `T`s, in query order.
    public func results<T: Decodable>(as type: T.Type, decoder: JSONDecoder = .shoal()) throws -> [T] {
        try results.map { try decodeJSON(type, $0, decoder) }
    }

    /// The documents that entered the result (`inserted`) decoded as `T`s.
    public func inserted<T: Decodable>(as type: T.Type, decoder: JSONDecoder = .shoal()) throws -> [T] {
        try inserted.map { try decodeJSON(type, $0, decoder) }
    }

    /// The documents whose content changed (`updated`) decoded as `T`s.
    public func updated<T: Decodable>(as type: T.Type, decoder: JSONDecoder = .shoal()) throws -> [T] {
        try updated.map { try decodeJSON(type, $0, decoder) }
    }
}

/// An attachment token encodes as the JSON object Shoal stores for it (`{"_attachment": hash, "len": n,
/// "meta": {...}}`), so a `Codable` document can hold attachments in its properties.
extension AttachmentToken: Codable {
    private enum CodingKeys: String, CodingKey {
        case hash = "_attachment"
        case length = "len"
        case meta
    }

    /// Decodes a token from its JSON object.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(
            hash: try c.decode(String.self, forKey: .hash),
            length: try c.decode(UInt64.self, forKey: .length),
            meta: try c.decodeIfPresent([String: String].self, forKey: .meta) ?? [:]
        )
    }

    /// Encodes the token as its JSON object.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(hash, forKey: .hash)
        try c.encode(length, forKey: .length)
        try c.encode(meta, forKey: .meta)
    }
}
